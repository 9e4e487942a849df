"""Training data as Grain datasets: a learnable synthetic source with a known entropy floor,
memory-mapped token files, prepared directories (``scaling data prepare``) with their fixed
validation windows, the prefetching loader, and byte-level tokenisation of any text file.

Every source yields batches of ``(rows, seq + 1)`` int32 token ids; a batch is a pure function
of (seed, batch index), so the same seed gives the same batches and a data iterator's state is
just the index of its next batch. In a multi-process run each process builds only its own rows
(``rows`` is that process's slice of the global batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grain
import numpy as np

from scaling.prepared import (
    Prepared,
    eval_window_starts,
    open_prepared,
    window_count,
    windows,
)
from scaling.records import atomic_path

SYNTHETIC_VOCAB = 64  # Markov states (capped at the model vocabulary); small enough to learn fast
SYNTHETIC_BRANCHING = 4  # successors per state
SYNTHETIC_ZIPF = 1.0  # transition probabilities ∝ rank^-ZIPF
TOKEN_FILE_SUFFIXES = (".bin", ".npy")


@dataclass(frozen=True)
class MarkovChain:
    """A sparse first-order Markov chain over ``vocab`` states with Zipf transitions.

    Each state has ``branching`` distinct successors (seeded), with probabilities ∝ rank^-zipf.
    Sequences start in the stationary distribution, so every next-token prediction has the same
    optimal expected loss: the entropy rate H = Σ_s π(s) · H(P[s, :]) (nats/token). A model
    conditioned on the previous token can reach it; none can go below it.
    """

    successors: np.ndarray  # (vocab, branching) int
    probs: np.ndarray  # (branching,) float64, shared by every state
    stationary: np.ndarray  # (vocab,) float64

    @classmethod
    def build(
        cls,
        vocab: int = SYNTHETIC_VOCAB,
        branching: int = SYNTHETIC_BRANCHING,
        zipf: float = SYNTHETIC_ZIPF,
        seed: int = 0,
    ) -> MarkovChain:
        rng = np.random.default_rng([seed, 0x5CA1])
        successors = np.stack([rng.choice(vocab, branching, replace=False) for _ in range(vocab)])
        probs = np.arange(1, branching + 1, dtype=np.float64) ** -zipf
        probs /= probs.sum()
        transition = np.zeros((vocab, vocab))
        np.add.at(
            transition,
            (np.repeat(np.arange(vocab), branching), successors.ravel()),
            np.tile(probs, vocab),
        )
        stationary = _stationary_distribution(transition)
        return cls(successors, probs, stationary)

    @property
    def vocab(self) -> int:
        return len(self.stationary)

    @property
    def entropy_rate_nats(self) -> float:
        """Every state has the same transition distribution up to relabelling, so H = H(probs)."""
        return float(-(self.probs * np.log(self.probs)).sum())

    def sample(self, rng: np.random.Generator, rows: int, length: int) -> np.ndarray:
        cdf = np.cumsum(self.probs)
        out = np.empty((rows, length), dtype=np.int32)
        state = rng.choice(self.vocab, size=rows, p=self.stationary)
        out[:, 0] = state
        uniforms = rng.random((length - 1, rows))
        for t in range(1, length):
            choice = np.minimum(np.searchsorted(cdf, uniforms[t - 1]), len(cdf) - 1)
            state = self.successors[state, choice]
            out[:, t] = state
        return out


def _stationary_distribution(transition: np.ndarray, iters: int = 10_000) -> np.ndarray:
    """Left eigenvector of the transition matrix for eigenvalue 1, by power iteration."""
    pi = np.full(len(transition), 1.0 / len(transition))
    for _ in range(iters):
        nxt = 0.5 * (pi + pi @ transition)  # lazy chain: same fixed point, no periodicity
        if np.abs(nxt - pi).max() < 1e-13:
            break
        pi = nxt
    return pi / pi.sum()


class SyntheticBatches:
    """Batch ``i`` = global rows seeded by (seed, i); returns this process's ``rows`` slice."""

    def __init__(self, chain: MarkovChain, batch: int, seq: int, seed: int, rows: slice):
        self.chain, self.batch, self.seq, self.seed, self.rows = chain, batch, seq, seed, rows

    def __call__(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(index)])
        return self.chain.sample(rng, self.batch, self.seq + 1)[self.rows]


class TokenFileBatches:
    """Random windows of ``seq + 1`` tokens from a memory-mapped token file.

    Only this process's rows are read: the window offsets of the whole global batch are drawn
    from (seed, index), then only the rows of ``rows`` are sliced out of the memory map. The
    map is opened lazily and never pickled, so Grain's worker processes each open their own
    instead of receiving a copy of the file.
    """

    def __init__(self, source: TokenSource, batch: int, seq: int, seed: int, rows: slice):
        self.source, self.batch, self.seq, self.seed, self.rows = source, batch, seq, seed, rows

    def __call__(self, index: int) -> np.ndarray:
        tokens = self.source.tokens()
        rng = np.random.default_rng([self.seed, int(index)])
        # valid starts: 0 .. len - (seq + 1), the last window ending at the file's last token
        offsets = rng.integers(0, len(tokens) - self.seq, size=self.batch)[self.rows]
        return np.stack([tokens[o : o + self.seq + 1] for o in offsets]).astype(np.int32)


@dataclass
class TokenSource:
    """A token file by path; ``tokens()`` memory-maps it once per process."""

    path: Path
    dtype: str | None = None  # None: a .npy file (its header says)

    def tokens(self) -> np.ndarray:
        if getattr(self, "_tokens", None) is None:
            if self.dtype is None:
                self._tokens = np.load(self.path, mmap_mode="r")
            else:
                self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def __getstate__(self) -> dict:
        return {"path": self.path, "dtype": self.dtype}


def load_token_file(path: str | Path, vocab_size: int, seq: int) -> np.ndarray:
    """Memory-map a ``.bin`` (uint16, as nanoGPT writes) or ``.npy`` token file and check it."""
    return _checked(_token_source(path), vocab_size, seq).tokens()


def _token_source(path: str | Path) -> TokenSource:
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"data file {str(path)!r} not found; use 'synthetic', a .bin/.npy path or a "
            "prepared directory"
        )
    if path.suffix == ".npy":
        return TokenSource(path)
    if path.suffix == ".bin":
        return TokenSource(path, "uint16")
    raise ValueError(
        f"unsupported data file {str(path)!r}; valid suffixes: {', '.join(TOKEN_FILE_SUFFIXES)}"
    )


def _checked(source: TokenSource, vocab_size: int, seq: int) -> TokenSource:
    tokens, path = source.tokens(), source.path
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"data file {str(path)!r} must hold a 1-D array of integer token ids")
    if len(tokens) < seq + 1:
        raise ValueError(
            f"data file {str(path)!r} has {len(tokens)} tokens; need at least seq + 1 = {seq + 1}"
        )
    largest = int(tokens.max())
    if largest >= vocab_size:
        raise ValueError(
            f"token id {largest} in {str(path)!r} is out of range for vocab_size={vocab_size}; "
            f"valid ids: 0..{vocab_size - 1}"
        )
    return source


def prepared_for_model(data: str | Path, vocab_size: int) -> Prepared:
    """Open a prepared directory and check the model can read it (its vocabulary must cover
    the data's: a smaller one is an error naming both)."""
    prepared = open_prepared(data)
    if vocab_size < prepared.vocab_size:
        raise ValueError(
            f"data {str(data)!r} has a vocabulary of {prepared.vocab_size} tokens but the model "
            f"has {vocab_size}; the model's vocabulary must be >= {prepared.vocab_size}"
        )
    return prepared


def synthetic_chain(vocab_size: int, seed: int) -> MarkovChain:
    return MarkovChain.build(vocab=min(SYNTHETIC_VOCAB, vocab_size), seed=seed)


def batch_dataset(
    data: str, *, vocab_size: int, batch: int, seq: int, seed: int, rows: slice | None = None
) -> grain.MapDataset:
    """A Grain ``MapDataset`` whose element ``i`` is batch ``i`` (this process's rows): the
    synthetic chain, a token file, or a prepared directory's ``train.bin``."""
    rows = rows or slice(0, batch)
    if data == "synthetic":
        make = SyntheticBatches(synthetic_chain(vocab_size, seed), batch, seq, seed, rows)
    elif Path(data).is_dir():
        prepared = prepared_for_model(data, vocab_size)
        source = TokenSource(prepared.split_path("train"), str(prepared.dtype))
        make = TokenFileBatches(_checked(source, vocab_size, seq), batch, seq, seed, rows)
    else:
        make = TokenFileBatches(
            _checked(_token_source(data), vocab_size, seq), batch, seq, seed, rows
        )
    # A practically endless index space: batch i is generated on demand.
    return grain.MapDataset.range(2**62).map(make)


def loader(
    dataset: grain.MapDataset, *, threads: int, prefetch: int, processes: int = 0
) -> grain.DatasetIterator:
    """An iterator over ``dataset`` that prepares batches ahead of the training loop.

    ``threads`` Grain read threads fill a buffer of ``prefetch`` batches (0 threads: batches are
    made on demand, in the loop's thread). ``processes`` > 0 adds Grain worker processes
    (``mp_prefetch``), each with its own threads, for pipelines heavy enough to need another
    core. The iterator's ``get_state()`` is the index of the next batch (JSON), which
    checkpoints store so a resumed run continues with the same batches."""
    read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
    iterable = dataset.to_iter_dataset(read)
    if processes:
        _mark_absl_flags_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=processes, per_worker_buffer_size=prefetch
        )
        iterable = iterable.mp_prefetch(options)
    return iter(iterable)


def _mark_absl_flags_parsed() -> None:
    """grain 0.2.18 reads absl flags in its worker processes and raises
    ``UnparsedFlagAccessError`` unless they were parsed (fixed upstream after 0.2.18)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def validation_batches(
    data: str, *, vocab_size: int, batch: int, seq: int, seed: int, n_batches: int | None,
    rows: slice | None = None, split: str = "val",
) -> np.ndarray:  # fmt: skip
    """``(n_batches, rows, seq + 1)`` int32: the fixed evaluation windows of this process's
    rows. A prepared directory: windows of ``split`` (``prepared.eval_window_starts``, the same
    for every run and sharding mode; ``n_batches`` None: every full batch of windows). Synthetic
    data: batches of the same chain drawn from indices the training stream never reaches
    (≥ 2⁶²). Token files have no validation split."""
    rows = rows or slice(0, batch)
    if data == "synthetic":
        make = SyntheticBatches(synthetic_chain(vocab_size, seed), batch, seq, seed, rows)
        return np.stack([make(2**62 + i) for i in range(n_batches or 1)])
    if not Path(data).is_dir():
        raise ValueError(
            f"data {data!r} has no validation split; evaluate with a directory from "
            "`scaling data prepare` (or synthetic data)"
        )
    prepared = prepared_for_model(data, vocab_size)
    tokens = prepared.tokens(split)
    if n_batches is None:
        n_batches = window_count(len(tokens), seq) // batch
    if n_batches < 1:
        raise ValueError(
            f"the {split} split of {data!r} holds {window_count(len(tokens), seq)} windows of "
            f"{seq + 1} tokens, less than one batch of {batch}; use a smaller --batch or --seq"
        )
    try:
        starts = eval_window_starts(len(tokens), seq, n_batches * batch)
    except ValueError as exc:
        raise ValueError(
            f"{split} split of {data!r}: {exc} ({n_batches} batches × {batch} windows)"
        ) from None
    starts = starts.reshape(n_batches, batch)
    return np.stack([windows(tokens, s[rows], seq) for s in starts])


def bytes_per_token(data: str, split: str = "val") -> float | None:
    """UTF-8 bytes per token of a prepared directory's split (None for other data)."""
    return open_prepared(data).bytes_per_token(split) if Path(data).is_dir() else None


def entropy_floor(data: str, vocab_size: int, seed: int) -> float | None:
    """The best achievable loss (nats/token) when it is known, i.e. for synthetic data."""
    return synthetic_chain(vocab_size, seed).entropy_rate_nats if data == "synthetic" else None


def text_to_tokens(text_path: str | Path, out_path: str | Path) -> int:
    """Byte-level tokenisation (vocab 256): write the file's bytes as uint16 ``.bin``."""
    text_path, out_path = Path(text_path), Path(out_path)
    if not text_path.is_file():
        raise ValueError(f"text file {str(text_path)!r} not found")
    if out_path.suffix != ".bin":
        raise ValueError(f"output {str(out_path)!r} must end in .bin (uint16 tokens)")
    if out_path.is_dir():
        raise ValueError(
            f"output {str(out_path)!r} is a directory; give a file name ending in .bin"
        )
    tokens = np.frombuffer(text_path.read_bytes(), dtype=np.uint8).astype(np.uint16)
    if not len(tokens):
        raise ValueError(f"text file {str(text_path)!r} is empty; there is nothing to tokenise")
    with atomic_path(out_path) as tmp:
        tokens.tofile(tmp)
    return len(tokens)
