import numpy as np
import pytest

from scaling.data import (
    MarkovChain,
    batch_dataset,
    entropy_floor,
    load_token_file,
    text_to_tokens,
)


def test_markov_stationary_distribution_is_a_fixed_point():
    chain = MarkovChain.build(vocab=32, branching=4, seed=3)
    transition = np.zeros((32, 32))
    for s in range(32):
        transition[s, chain.successors[s]] = chain.probs
    np.testing.assert_allclose(chain.stationary @ transition, chain.stationary, atol=1e-10)
    assert chain.stationary.sum() == pytest.approx(1.0)


def test_entropy_rate_matches_empirical_conditional_entropy():
    """Independent check: estimate H(x_t+1 | x_t) from sampled sequences by counting."""
    chain = MarkovChain.build(vocab=16, branching=4, zipf=1.0, seed=1)
    seqs = chain.sample(np.random.default_rng(0), 400, 257)
    counts = np.zeros((16, 16))
    np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
    row = counts.sum(1, keepdims=True)
    p = np.divide(counts, row, out=np.zeros_like(counts), where=row > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.nansum(counts / counts.sum() * np.where(p > 0, np.log(p), 0))
    hand = -sum(q * np.log(q) for q in np.array([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))
    assert chain.entropy_rate_nats == pytest.approx(hand, rel=1e-12)
    assert h == pytest.approx(chain.entropy_rate_nats, abs=0.01)


def test_same_seed_same_batches_and_other_seed_differs():
    a = batch_dataset("synthetic", vocab_size=2048, batch=4, seq=32, seed=7)
    b = batch_dataset("synthetic", vocab_size=2048, batch=4, seq=32, seed=7)
    c = batch_dataset("synthetic", vocab_size=2048, batch=4, seq=32, seed=8)
    assert a[3].shape == (4, 33) and a[3].dtype == np.int32
    np.testing.assert_array_equal(a[3], b[3])
    assert not np.array_equal(a[3], c[3])
    assert not np.array_equal(a[3], a[4])


def test_process_slice_is_the_same_rows_of_the_global_batch(tmp_path):
    tokens = np.arange(5000, dtype=np.uint16) % 300
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    for data in ("synthetic", str(path)):
        full = batch_dataset(data, vocab_size=512, batch=8, seq=16, seed=0)
        half = batch_dataset(data, vocab_size=512, batch=8, seq=16, seed=0, rows=slice(4, 8))
        np.testing.assert_array_equal(full[2][4:8], half[2])


def test_token_file_windows_are_contiguous_text(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    path = tmp_path / "t.bin"
    tokens.tofile(path)
    batch = batch_dataset(str(path), vocab_size=1000, batch=3, seq=10, seed=0)[0]
    assert np.all(np.diff(batch, axis=1) == 1)


def test_token_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_token_file(tmp_path / "missing.bin", 256, 8)
    path = tmp_path / "big.npy"
    np.save(path, np.array([1, 2, 3000] * 20, dtype=np.uint32))
    with pytest.raises(ValueError, match="token id 3000 .* out of range for vocab_size=2048"):
        load_token_file(path, 2048, 8)
    bad = tmp_path / "t.txt"
    bad.write_text("x")
    with pytest.raises(ValueError, match="valid suffixes"):
        load_token_file(bad, 256, 8)


def test_text_to_bytes_round_trip(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("héllo world\n" * 10, encoding="utf-8")
    n = text_to_tokens(text, tmp_path / "a.bin")
    tokens = load_token_file(tmp_path / "a.bin", 256, 8)
    assert n == len(text.read_bytes())
    assert bytes(np.asarray(tokens, dtype=np.uint8)) == text.read_bytes()


def test_entropy_floor_only_for_synthetic():
    assert entropy_floor("synthetic", 2048, 0) > 0
    assert entropy_floor("tokens.bin", 2048, 0) is None


def test_loader_state_resumes_at_the_next_batch(prepared_dir):
    """A prefetching loader's state is the index of the next batch (what checkpoints store):
    restored into a new loader, it continues with that batch, whatever was prefetched."""
    from scaling.data import loader

    dataset = batch_dataset(str(prepared_dir), vocab_size=512, batch=4, seq=16, seed=0)
    first = loader(dataset, threads=2, prefetch=4)
    seen = [next(first) for _ in range(5)]
    state = first.get_state()
    assert state == {"next_index": 5}
    again = loader(dataset, threads=2, prefetch=4)
    again.set_state(state)
    np.testing.assert_array_equal(next(again), next(first))
    np.testing.assert_array_equal(seen[3], dataset[3])
    inline = loader(dataset, threads=0, prefetch=1)
    np.testing.assert_array_equal(next(inline), dataset[0])
    for it in (first, again, inline):
        it.close()


@pytest.mark.slow
def test_loader_with_worker_processes_gives_the_same_batches(prepared_dir):
    """grain.mp_prefetch (spawned workers, ~20 s to start here): same batches, same state."""
    from scaling.data import loader

    dataset = batch_dataset(str(prepared_dir), vocab_size=512, batch=4, seq=16, seed=0)
    workers = loader(dataset, threads=1, prefetch=2, processes=2)
    seen = [next(workers) for _ in range(5)]
    state = workers.get_state()
    again = loader(dataset, threads=1, prefetch=2, processes=2)
    again.set_state(state)
    np.testing.assert_array_equal(next(again), dataset[5])
    for i, batch in enumerate(seen):
        np.testing.assert_array_equal(batch, dataset[i])
    workers.close()
    again.close()


def test_token_files_pickle_without_their_contents(tmp_path):
    import pickle

    from scaling.data import TokenSource

    path = tmp_path / "t.bin"
    np.arange(100_000, dtype=np.uint16).tofile(path)
    source = TokenSource(path, "uint16")
    assert len(source.tokens()) == 100_000
    copy = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 1000  # a path, not 200 kB of tokens
    np.testing.assert_array_equal(copy.tokens()[:10], np.arange(10))
