"""Text generation with a KV cache: prefill, then one-token decode steps, each compiled once
per shape (ahead of time, so no token ever recompiles), and sampling (greedy, temperature,
top-k, top-p and their combinations, stop tokens, seeded).

The cached forward reuses the shared model's sub-layers (norms, q/k/v/o, FFN, embedding and
head of ``scaling.model.TransformerLM``) and differs from ``TransformerLM.__call__`` only in
where keys and values come from: a preallocated cache ``(layers, batch, kv_heads, max_len,
head_dim)`` written at one slot index shared by every row. Batched prompts of different lengths
are left-padded: row ``i`` starts at slot ``pad[i]``, its positions are ``slot - pad[i]``, and
its queries never see slots before ``pad[i]``. A sliding window masks keys more than ``window
- 1`` slots back (the cache keeps every slot: memory is that of the full context, as the
estimator counts it). Grouped-query attention reads each kv head once for its ``g`` query
heads (no repeat).

Shapes: b batch, t new tokens, s cache slots, l layers, h kv heads, g query heads per kv head,
k head width, d model width, v vocabulary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from scaling import mup
from scaling.config import ModelConfig
from scaling.model import TransformerLM, apply_rope, compute_dtype, shard_over_batch, softcap


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits. ``temperature`` 0 is greedy (argmax);
    otherwise logits are divided by it, then restricted to the ``top_k`` most likely tokens,
    then to the smallest set whose probability reaches ``top_p`` (Holtzman et al. 2019), in the
    order of Hugging Face's logits warpers."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or self.top_k < 1):
            raise ValueError(f"top-k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(
    logits: Float[Array, "b v"], top_k: int | None, top_p: float | None
) -> Float[Array, "b v"]:
    """``logits`` with every token outside the top-k / top-p support set to -inf.

    Top-k keeps the ``k`` largest (ties at the k-th value are all kept). Top-p keeps, in order
    of decreasing probability, each token whose preceding mass is below ``p``: the smallest
    prefix whose mass reaches ``p`` (the most likely token always stays)."""
    neg_inf = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if top_p is not None and top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = mass_before < top_p
        keep = (
            jnp.zeros_like(keep_sorted)
            .at[jnp.arange(logits.shape[0])[:, None], order]
            .set(keep_sorted)
        )
        logits = jnp.where(keep, logits, neg_inf)
    return logits


def sample(logits: Float[Array, "b v"], sampling: Sampling, key: jax.Array) -> Int[Array, " b"]:
    """The next token of each row (int32)."""
    if sampling.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = logits.astype(jnp.float32) / sampling.temperature
    filtered = filter_logits(scaled, sampling.top_k, sampling.top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


class KVCache(NamedTuple):
    """Keys and values of every layer, the left padding of each row, and the next slot."""

    k: Float[Array, "l b h s k"]
    v: Float[Array, "l b h s k"]
    pad: Int[Array, " b"]
    index: Int[Array, ""]


def cache_shape(cfg: ModelConfig, batch: int, max_len: int) -> tuple[int, ...]:
    return (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.d_head)


def empty_cache(cfg: ModelConfig, pad: Int[Array, " b"], max_len: int) -> KVCache:
    shape = cache_shape(cfg, pad.shape[0], max_len)
    zeros = jnp.zeros(shape, compute_dtype(cfg))
    return KVCache(zeros, zeros, jnp.asarray(pad, jnp.int32), jnp.zeros((), jnp.int32))


def cache_sharding(mesh, cfg: ModelConfig) -> KVCache:
    """Rows over ``data``, kv heads over ``tensor`` where they divide it (else replicated)."""
    heads = "tensor" if cfg.kv_heads % mesh.shape["tensor"] == 0 else None
    kv = NamedSharding(mesh, P(None, "data", heads, None, None))
    return KVCache(kv, kv, NamedSharding(mesh, P("data")), NamedSharding(mesh, P()))


def _mask(cache: KVCache, slots: Int[Array, " t"], window: int | None) -> Bool[Array, "b t s"]:
    """Key slot j is visible to the query at slot i of row r when pad[r] <= j <= i and, with a
    sliding window, i - j < window (the window counts the query itself, as in the model)."""
    j = jnp.arange(cache.k.shape[3])[None, None, :]
    i = slots[None, :, None]
    allowed = (j >= cache.pad[:, None, None]) & (j <= i)
    return allowed if window is None else allowed & (i - j < window)


def _attention(attn, x, positions, mask, k_all, v_all, layer, index):
    """One layer's attention over the cache after writing this step's keys and values."""
    cfg = attn.cfg
    b, t, _ = x.shape
    q = attn._heads(attn.q(x), attn.n_heads)
    k = attn._heads(attn.k(x), attn.kv_heads)
    v = attn._heads(attn.v(x), attn.kv_heads)
    if cfg.positions == "rope":
        q = apply_rope(q, cfg, positions[:, None, :])
        k = apply_rope(k, cfg, positions[:, None, :])
    start = (layer, 0, 0, index, 0)
    k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), start)
    v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), start)
    keys, values = k_all[layer].astype(q.dtype), v_all[layer].astype(q.dtype)
    grouped = q.reshape(b, attn.kv_heads, attn.n_heads // attn.kv_heads, t, attn.d_head)
    scores = jnp.einsum("bhgtk,bhsk->bhgts", grouped, keys, preferred_element_type=jnp.float32)
    scores = softcap(scores * attn.scale, cfg.attn_softcap)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bhgts,bhsk->bhgtk", weights, values).reshape(b, attn.n_heads, t, -1)
    out = attn.o(out.transpose(0, 2, 1, 3).reshape(b, t, attn.n_heads * attn.d_head))
    return out, k_all, v_all


def cached_forward(
    model: TransformerLM, tokens: Int[Array, "b t"], cache: KVCache, *, unroll: bool = False
) -> tuple[Float[Array, "b t v"], KVCache]:
    """Logits of ``tokens`` written at slots ``cache.index ..`` (prefill: the padded prompt;
    decode: one token), attending to the cache; returns the advanced cache. ``unroll`` unrolls
    the layer scan (XLA's cost analysis counts a scan body once, FACTS.md)."""
    cfg = model.cfg
    slots = cache.index + jnp.arange(tokens.shape[1])
    positions = jnp.maximum(slots[None, :] - cache.pad[:, None], 0)
    mask = _mask(cache, slots, cfg.sliding_window)
    x = model._embed(tokens, positions)
    graphdef, stacked = nnx.split(model.blocks)

    def layer(carry, xs):
        h, k_all, v_all = carry
        layer_state, i = xs
        block = nnx.merge(graphdef, layer_state)
        out, k_all, v_all = _attention(
            block.attn, block.attn_norm(h), positions, mask, k_all, v_all, i, cache.index
        )
        h = h + out
        ffn = block.ffn(block.ffn_norm(h))
        if isinstance(ffn, tuple):  # a mixture of experts: (output, router statistics)
            ffn = ffn[0]
        h = shard_over_batch(h + ffn)
        return (h, k_all, v_all), None

    layers = jnp.arange(cfg.n_layers)
    (x, k_all, v_all), _ = jax.lax.scan(
        layer, (x, cache.k, cache.v), (stacked, layers), unroll=cfg.n_layers if unroll else 1
    )
    # The read-out of TransformerLM._forward (final norm, head, soft-cap, muP multiplier).
    x = model.final_norm(x)
    logits = model.embed.attend(x) if model.head is None else model.head.logits(x, model.embed)
    logits = softcap(logits.astype(jnp.float32), cfg.final_softcap) * mup.logit_multiplier(cfg)
    return logits, KVCache(k_all, v_all, cache.pad, cache.index + tokens.shape[1])


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens (b, P) int32, pad (b,))``: prompts right-aligned, ``pad_id`` before them."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
    return tokens, np.asarray([width - len(p) for p in prompts], np.int32)


MAX_STOP_TOKENS = 8  # stop tokens are an argument of the compiled step, padded with -1


class StepState(NamedTuple):
    """What the decode loop carries on the devices between tokens."""

    cache: KVCache
    token: Int[Array, " b"]  # the last token of each row
    done: Bool[Array, " b"]  # the row produced a stop token


def _finish(logits, cache, done, step, key, sampling, stop):
    token = sample(logits[:, -1], sampling, jax.random.fold_in(key, step))
    token = jnp.where(done, jnp.int32(0), token)
    return StepState(cache, token, done | jnp.isin(token, stop))


@dataclass
class Decoder:
    """A model's prefill and decode step compiled for one (batch, prompt width, cache length)
    and one sampling rule; calling them never compiles. ``mesh``: place the parameters by
    ``mode`` (``scaling.parallel``), rows over ``data`` and kv heads over ``tensor``."""

    model: TransformerLM
    batch: int
    prompt_len: int
    max_len: int
    sampling: Sampling = field(default_factory=Sampling)
    mesh: object = None
    mode: str = "none"

    def __post_init__(self) -> None:
        cfg = self.model.cfg
        if self.max_len > cfg.max_seq_len:
            raise ValueError(
                f"prompt of {self.prompt_len} tokens + {self.max_len - self.prompt_len} new "
                f"tokens exceeds the context of {cfg.name} ({cfg.max_seq_len}); shorten them"
            )
        graphdef, state = nnx.split(self.model)
        self.graphdef, state = graphdef, nnx.to_pure_dict(state)
        self.state, state_sh, cache_sh, row_sh = self._place(state)
        sampling = self.sampling

        def prefill(state, tokens, pad, key, stop):
            model = nnx.merge(graphdef, state)
            logits, cache = cached_forward(model, tokens, empty_cache(cfg, pad, self.max_len))
            done = jnp.zeros((tokens.shape[0],), bool)
            return _finish(logits, cache, done, 0, key, sampling, stop)

        def step(state, carry: StepState, i, key, stop):
            model = nnx.merge(graphdef, state)
            logits, cache = cached_forward(model, carry.token[:, None], carry.cache)
            return _finish(logits, cache, carry.done, i, key, sampling, stop)

        b = self.batch
        tokens = jax.ShapeDtypeStruct((b, self.prompt_len), jnp.int32, sharding=row_sh)
        pad = jax.ShapeDtypeStruct((b,), jnp.int32, sharding=row_sh)
        key = jax.random.key(0)
        stop = jax.ShapeDtypeStruct((MAX_STOP_TOKENS,), jnp.int32)
        t0 = time.perf_counter()
        with self._mesh():
            self.prefill = jax.jit(prefill).lower(self.state, tokens, pad, key, stop).compile()
            carry = jax.eval_shape(prefill, self.state, tokens, pad, key, stop)
            if self.mesh is not None:
                carry = jax.tree.map(
                    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                    carry,
                    StepState(cache_sh, row_sh, row_sh),
                )
            step_jit = jax.jit(step, donate_argnums=1)
            self.step = step_jit.lower(self.state, carry, jnp.int32(1), key, stop).compile()
        self.compile_s = time.perf_counter() - t0

    def _place(self, state):
        from scaling import parallel

        if self.mesh is None:
            return state, None, None, None
        state_sh = parallel.shardings(state, self.mode, self.mesh)
        placed = jax.device_put(state, state_sh)
        cache_sh = cache_sharding(self.mesh, self.model.cfg)
        return placed, state_sh, cache_sh, NamedSharding(self.mesh, P("data"))

    def _mesh(self):
        import contextlib

        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()


@dataclass
class Generation:
    """Generated ids per row (up to and including a stop token) and the timings (seconds):
    ``prefill_s`` = time to first token, ``step_s`` one entry per decode step."""

    tokens: list[list[int]]
    prefill_s: float
    step_s: list[float]
    prompt_tokens: int

    @property
    def new_tokens(self) -> int:
        return sum(len(row) for row in self.tokens)


def generate(
    decoder: Decoder,
    prompts: list[list[int]],
    max_new_tokens: int,
    seed: int = 0,
    stop_tokens: tuple[int, ...] = (),
) -> Generation:
    """Continue each prompt by up to ``max_new_tokens`` tokens; a row ends after one of
    ``stop_tokens`` (the loop ends once every row has). Each token is read back before the
    next step, so the step times are per token."""
    if len(stop_tokens) > MAX_STOP_TOKENS:
        raise ValueError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(stop_tokens)}")
    stop = np.full((MAX_STOP_TOKENS,), -1, np.int32)
    stop[: len(stop_tokens)] = stop_tokens
    tokens, pad = left_pad(prompts)
    if tokens.shape != (decoder.batch, decoder.prompt_len):
        raise ValueError(
            f"prompts of shape {tokens.shape} do not fit the decoder's "
            f"({decoder.batch}, {decoder.prompt_len})"
        )
    if decoder.prompt_len + max_new_tokens > decoder.max_len:
        raise ValueError(f"{max_new_tokens} new tokens do not fit the cache of {decoder.max_len}")
    key = jax.random.key(seed)
    with decoder._mesh():
        t0 = time.perf_counter()
        carry = decoder.prefill(decoder.state, tokens, pad, key, stop)
        out = [np.asarray(carry.token)]
        prefill_s = time.perf_counter() - t0
        done = np.asarray(carry.done)
        step_s = []
        for i in range(1, max_new_tokens):
            if done.all():
                break
            t0 = time.perf_counter()
            carry = decoder.step(decoder.state, carry, jnp.int32(i), key, stop)
            out.append(np.asarray(carry.token))
            done = np.asarray(carry.done)
            step_s.append(time.perf_counter() - t0)
    return Generation(_trim(np.stack(out, axis=1), stop_tokens), prefill_s, step_s,
                      int(sum(len(p) for p in prompts)))  # fmt: skip


def _trim(ids: np.ndarray, stop_tokens: tuple[int, ...]) -> list[list[int]]:
    rows = []
    for row in ids.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stop_tokens), len(row))
        rows.append(row[:end])
    return rows


def xla_decode_step_costs(model: TransformerLM, batch: int, max_len: int) -> dict[str, float]:
    """XLA's ``cost_analysis`` of one decode step (one token per row over a ``max_len`` cache),
    layers unrolled so every layer is counted: ``flops`` and ``bytes accessed`` (one device,
    unsharded; lowering only, nothing is compiled)."""
    graphdef, state = nnx.split(model)
    cfg = model.cfg

    def step(state, token, cache):
        return cached_forward(nnx.merge(graphdef, state), token, cache, unroll=True)

    cache = jax.eval_shape(lambda: empty_cache(cfg, jnp.zeros((batch,), jnp.int32), max_len))
    token = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
    costs = jax.jit(step).lower(state, token, cache).cost_analysis()
    costs = costs[0] if isinstance(costs, list) else costs
    return {"flops": float(costs.get("flops", float("nan"))),
            "bytes": float(costs.get("bytes accessed", float("nan")))}  # fmt: skip
