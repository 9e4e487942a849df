"""KV-cache decoding (scaling.generate) against the full forward pass, and the sampling rules
on hand-built distributions."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling import parallel
from scaling.config import ModelConfig
from scaling.generate import (
    Decoder,
    Sampling,
    cache_sharding,
    cached_forward,
    empty_cache,
    filter_logits,
    generate,
    left_pad,
    sample,
)
from scaling.model import build_model
from scaling.presets import FAMILY_ARCHITECTURES

RTOL, ATOL = 1e-4, 1e-5  # float32, different summation orders (cache slots vs sequence)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 5]]  # left padding: row 1 starts at slot 4
CONTINUATION = [[12, 40, 2, 33, 17], [9, 9, 48, 1, 20]]  # teacher-forced decode inputs


def small_cfg(family: str = "llama", **kw) -> ModelConfig:
    base = dict(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=50, max_seq_len=16)
    return ModelConfig(**{**base, "family": family, **FAMILY_ARCHITECTURES[family], **kw})


# Every architecture family of the presets, plus the attention and position variants they use
# (GQA, MQA, a sliding window shorter than the sequence, soft-caps, sinusoidal, none, muP).
ARCHITECTURES = {
    "llama": small_cfg("llama"),
    "llama-gqa": small_cfg("llama", n_kv_heads=2, tied_embeddings=False),
    "gpt2": small_cfg("gpt2"),
    "mistral-window": small_cfg("mistral", sliding_window=4, n_kv_heads=2),
    "gemma-mqa-softcap": small_cfg("gemma", n_kv_heads=1, attn_softcap=5.0, final_softcap=3.0),
    "sinusoidal": small_cfg("llama", positions="sinusoidal"),
    "no-positions": small_cfg("llama", positions="none"),
    "mup": small_cfg("llama", mup=True, tied_embeddings=False, mup_base_width=16),
    # Mixtral: a dropless mixture of experts (capacity dispatch drops by token group, which
    # differs between a whole sequence and one decoded token)
    "mixtral-moe": small_cfg("mistral", n_kv_heads=2, n_experts=4, experts_per_token=2),
}


@functools.partial(jax.jit, static_argnums=0)
def _full(graphdef, state, tokens):
    return nnx.merge(graphdef, state)(tokens)


@functools.partial(jax.jit, static_argnums=0)
def _cached(graphdef, state, tokens, cache):
    return cached_forward(nnx.merge(graphdef, state), tokens, cache)


def _randomize(model, seed: int = 1) -> None:
    """Non-trivial norm gains and biases (they start at 1 or 0), so the cache path must use
    them as the full forward does."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(state):
        if path[-1] == "bias" or "norm" in str(path[-2]):
            shape = var.get_value().shape
            var.set_value(var.get_value() + jnp.asarray(0.3 * rng.standard_normal(shape)))
    nnx.update(model, state)


def _cached_logits(model, place=lambda tree, kind: tree):
    """Logits of prefill (each row's last prompt token) then of each teacher-forced step."""
    graphdef, state = nnx.split(model)
    state = nnx.to_pure_dict(state)
    tokens, pad = left_pad(PROMPTS)
    max_len = tokens.shape[1] + len(CONTINUATION[0])
    cache = place(empty_cache(model.cfg, jnp.asarray(pad), max_len), "cache")
    state = place(state, "state")
    logits, cache = _cached(graphdef, state, jnp.asarray(tokens), cache)
    steps = [logits[:, -1]]
    for i in range(len(CONTINUATION[0])):
        token = jnp.asarray([[row[i]] for row in CONTINUATION], jnp.int32)
        logits, cache = _cached(graphdef, state, token, cache)
        steps.append(logits[:, -1])
    return np.stack([np.asarray(s) for s in steps], axis=1)  # (b, steps, v)


def _reference_logits(model) -> np.ndarray:
    """The full forward pass over each row's unpadded growing sequence (causal: its logits at
    position t are those of the sequence cut after t; a shorter row is right-padded, which
    changes none of its own positions' logits), in one batch."""
    graphdef, state = nnx.split(model)
    sequences = [prompt + more for prompt, more in zip(PROMPTS, CONTINUATION, strict=True)]
    width = max(map(len, sequences))
    batch = jnp.asarray([s + [0] * (width - len(s)) for s in sequences], jnp.int32)
    logits = np.asarray(_full(graphdef, state, batch))
    n = len(CONTINUATION[0]) + 1
    return np.stack([logits[r, len(p) - 1 : len(p) - 1 + n] for r, p in enumerate(PROMPTS)])


# The four families run by default; the other variants with the slow suite.
SLOW_VARIANTS = {"llama", "sinusoidal", "no-positions", "mup"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_VARIANTS else n for n in ARCHITECTURES],
)
def test_cached_decoding_equals_full_forward(name):
    model = build_model(ARCHITECTURES[name], seed=3)
    _randomize(model)
    np.testing.assert_allclose(
        _cached_logits(model), _reference_logits(model), rtol=RTOL, atol=ATOL
    )


@pytest.mark.slow
def test_sliding_window_changes_the_logits():
    """The window case above is not vacuous: without the window the logits differ."""
    windowed = ARCHITECTURES["mistral-window"]
    model = build_model(windowed, seed=3)
    unwindowed = build_model(dataclasses.replace(windowed, sliding_window=None), seed=3)
    assert np.abs(_cached_logits(model) - _cached_logits(unwindowed)).max() > 1e-3


@pytest.mark.parametrize("mode, mesh_shape", [("fsdp_tp", (2, 2))])
def test_cached_decoding_sharded_equals_unsharded_full_forward(mode, mesh_shape):
    cfg = ARCHITECTURES["llama-gqa"]
    model = build_model(cfg, seed=3)
    mesh = parallel.make_mesh(mesh_shape, jax.devices()[: mesh_shape[0] * mesh_shape[1]])
    shardings = {"cache": cache_sharding(mesh, cfg)}

    def place(tree, kind):
        sharding = shardings.get(kind) or parallel.shardings(tree, mode, mesh)
        return jax.device_put(tree, sharding)

    with jax.set_mesh(mesh):
        got = _cached_logits(model, place)
    np.testing.assert_allclose(got, _reference_logits(model), rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="module")
def tiny_model():
    return build_model(small_cfg("llama", n_kv_heads=2), seed=0)


@pytest.fixture(scope="module")
def greedy_decoder(tiny_model):
    return Decoder(tiny_model, batch=2, prompt_len=7, max_len=16)


def test_greedy_generation_is_the_argmax_of_the_full_forward(tiny_model, greedy_decoder):
    out = generate(greedy_decoder, PROMPTS, max_new_tokens=6)
    graphdef, state = nnx.split(tiny_model)
    for prompt, new in zip(PROMPTS, out.tokens, strict=True):
        sequence = list(prompt)
        for _ in range(6):  # right-padded to a fixed width: one compile (causal model)
            padded = jnp.asarray([sequence + [0] * (16 - len(sequence))], jnp.int32)
            logits = _full(graphdef, state, padded)
            sequence.append(int(jnp.argmax(logits[0, len(sequence) - 1])))
        assert new == sequence[len(prompt) :]
    assert len(out.step_s) == 5 and out.prefill_s > 0


def test_sharded_decoder_generates_the_unsharded_tokens(tiny_model, greedy_decoder):
    mesh = parallel.make_mesh((2, 2), jax.devices()[:4])
    sharded = Decoder(tiny_model, batch=2, prompt_len=7, max_len=16, mesh=mesh, mode="fsdp_tp")
    want = generate(greedy_decoder, PROMPTS, 8).tokens
    assert generate(sharded, PROMPTS, 8).tokens == want


def test_stop_token_ends_a_row_and_all_stopped_rows_end_the_loop(greedy_decoder):
    free = generate(greedy_decoder, PROMPTS, 8).tokens
    stop = free[0][2]
    out = generate(greedy_decoder, PROMPTS, 8, stop_tokens=(stop,)).tokens
    assert out[0] == free[0][: free[0].index(stop) + 1]
    assert out[1] == (free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1])
    result = generate(greedy_decoder, PROMPTS, 8, stop_tokens=(free[0][0], free[1][0]))
    assert [len(r) for r in result.tokens] == [1, 1] and result.step_s == []
    with pytest.raises(ValueError, match="at most 8 stop tokens"):
        generate(greedy_decoder, PROMPTS, 8, stop_tokens=tuple(range(9)))


def test_same_seed_same_samples_and_another_seed_differs(tiny_model):
    sampler = Decoder(tiny_model, 2, 7, 16, Sampling(temperature=1.5, top_k=40, top_p=0.95))
    first = generate(sampler, PROMPTS, 8, seed=7).tokens
    assert generate(sampler, PROMPTS, 8, seed=7).tokens == first
    assert generate(sampler, PROMPTS, 8, seed=8).tokens != first


def test_prompt_plus_new_tokens_beyond_the_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="exceeds the context"):
        Decoder(tiny_model, batch=1, prompt_len=10, max_len=17)


# ------------------------------------------------------------------------------------------------
# Sampling rules on hand-built distributions
# ------------------------------------------------------------------------------------------------

# Probabilities 0.4, 0.3, 0.15, 0.1, 0.05, shuffled over the vocabulary so that the support is
# scattered back to the right ids.
PROBS = np.array([0.1, 0.4, 0.05, 0.15, 0.3])
LOGITS = jnp.log(jnp.asarray([PROBS], jnp.float32))


def _support(top_k, top_p) -> set[int]:
    kept = np.isfinite(np.asarray(filter_logits(LOGITS, top_k, top_p))[0])
    return set(np.flatnonzero(kept).tolist())


@pytest.mark.parametrize(
    "top_k, top_p, want",
    [
        (1, None, {1}),
        (2, None, {1, 4}),
        (4, None, {1, 4, 3, 0}),
        (5, None, {0, 1, 2, 3, 4}),
        (None, 0.3, {1}),  # 0.4 alone reaches 0.3
        (None, 0.5, {1, 4}),  # 0.4 < 0.5, 0.4 + 0.3 reaches it
        (None, 0.75, {1, 4, 3}),  # 0.7 < 0.75, 0.85 reaches it
        (None, 0.9, {1, 4, 3, 0}),
        (None, 1.0, {0, 1, 2, 3, 4}),
        (3, 0.75, {1, 4}),  # after top-k: 0.4/0.85 < 0.75 <= 0.7/0.85
        (3, 0.5, {1, 4}),
        (2, 0.9, {1, 4}),  # top-k first: top-p cannot add tokens back
    ],
)
def test_top_k_and_top_p_keep_exactly_the_expected_support(top_k, top_p, want):
    assert _support(top_k, top_p) == want


def test_top_p_is_computed_on_the_top_k_renormalised_distribution():
    """After top-k=3 the kept probabilities are 0.4/0.85, 0.3/0.85, 0.15/0.85; the HF order
    (top-k, then top-p on the renormalised survivors) keeps {1, 4} at p = 0.8: 0.4/0.85 = 0.47
    < 0.8, 0.7/0.85 = 0.82 reaches it."""
    assert _support(3, 0.8) == {1, 4}
    assert _support(None, 0.8) == {1, 4, 3}  # without top-k, 0.7 < 0.8 keeps the third


@pytest.mark.parametrize("top_k, top_p, want", [(2, None, {1, 4}), (None, 0.75, {1, 4, 3})])
def test_samples_stay_in_the_support_and_cover_it(top_k, top_p, want):
    rows = jnp.broadcast_to(LOGITS, (4000, 5))
    drawn = sample(rows, Sampling(1.0, top_k, top_p), jax.random.key(0))
    assert set(np.asarray(drawn).tolist()) == want


def test_sample_frequencies_follow_the_renormalised_probabilities():
    rows = jnp.broadcast_to(LOGITS, (20000, 5))
    drawn = np.asarray(sample(rows, Sampling(1.0, top_p=0.75), jax.random.key(1)))
    freq = np.bincount(drawn, minlength=5) / drawn.size
    want = np.where(np.isin(np.arange(5), [1, 4, 3]), PROBS, 0) / 0.85
    np.testing.assert_allclose(freq, want, atol=0.015)  # ~4 sigma at n = 20000


def test_temperature_towards_zero_equals_greedy():
    logits = jax.random.normal(jax.random.key(2), (64, 50)) * 3
    greedy = sample(logits, Sampling(0.0), jax.random.key(3))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), axis=-1))
    cold = sample(logits, Sampling(1e-4), jax.random.key(3))
    np.testing.assert_array_equal(cold, greedy)
    hot = sample(logits, Sampling(5.0), jax.random.key(3))
    assert (np.asarray(hot) != np.asarray(greedy)).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_p=0.0), r"top-p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top-p must be in \(0, 1\]"),
        (dict(top_k=0), "top-k must be a positive integer"),
    ],
)
def test_bad_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**kwargs)


def test_left_pad_right_aligns_prompts():
    tokens, pad = left_pad([[1, 2, 3], [4]])
    np.testing.assert_array_equal(tokens, [[1, 2, 3], [0, 0, 4]])
    np.testing.assert_array_equal(pad, [0, 2])
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []])
