"""Mixture-of-experts FFN (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al.
2024), selected by ``ModelConfig.n_experts`` > 0 in place of the dense ``FeedForward``.

Routing follows Mixtral (transformers' ``MixtralSparseMoeBlock``): router logits ``x W_r``
(float32), softmax over all experts, the top-k probabilities, renormalised over the chosen k.
Each expert is the model's FFN kind (gated ``W2 (act(W1 x) ⊙ W3 x)`` or ``W2 act(W1 x)``) of
width ``d_ff``; an optional shared expert (one dense FFN of width ``d_ff``) sees every token.

Two dispatches, chosen by ``ModelConfig.moe_dispatch``; both see the whole (global) batch as
one routing group, so a run's loss does not depend on the mesh:

- ``dropless``: the token-expert assignments are sorted by expert and every expert multiplies
  its contiguous rows (``jax.lax.ragged_dot``, a grouped matmul). No token is dropped and the
  memory is that of the n·k assigned rows. Trade-off: XLA's CPU backend lowers ``ragged_dot``
  to a masked matmul over every group (its cost analysis counts E× the rows' FLOPs, measured
  with jax 0.10.2), so on CPU this path does E/k× the useful FFN work; accelerators have
  grouped-matmul kernels (megablox on TPU, cuBLAS grouped GEMM) that do only the useful work.
- ``capacity``: GShard/Switch-style fixed buffers. Each expert takes at most
  C = ceil(capacity_factor · n·k / E) rows (every token's first choice before any second
  choice, in token order); the rest are dropped (their share of the FFN output is 0; the
  residual carries the token). Dense einsums over (E, C, d) buffers: static shapes, exact
  FLOPs of capacity_factor× the useful work, and an expert axis GSPMD can split over devices.

Auxiliary losses (returned per layer; ``scaling.train`` averages them over layers and adds
them with ``moe_aux_loss_coef`` / ``moe_z_loss_coef``):

- load balancing, Mixtral's form (transformers' ``load_balancing_loss_func``):
  E · Σ_e f_e · P_e with f_e the fraction of tokens that chose expert e among their top-k
  (Σ_e f_e = k) and P_e the mean router probability of e; k when perfectly balanced.
- router z-loss (ST-MoE, Zoph et al. 2022, eq. 5): mean over tokens of logsumexp(logits)².

Letters: n tokens (b·t flattened), d model width, f FFN width, e experts, c capacity slots,
k experts per token.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from scaling.config import ModelConfig
from scaling.records import ROUTER_COLUMNS

Activation = Callable[[Array], Array]
Init = Callable[[jax.Array, tuple[int, ...], float], Array]


def route(
    logits: Float[Array, "n e"], k: int
) -> tuple[Float[Array, "n k"], Int[Array, "n k"], Float[Array, "n e"]]:
    """Mixtral's routing: softmax over experts, top-k, weights renormalised over the k chosen.
    Returns (weights, expert indices, probabilities), float32."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top_probs, experts = jax.lax.top_k(probs, k)
    return top_probs / jnp.sum(top_probs, axis=-1, keepdims=True), experts, probs


def expert_load(experts: Int[Array, "n k"], n_experts: int) -> Float[Array, " e"]:
    """Fraction of the n·k token-expert assignments that went to each expert (sums to 1)."""
    counts = jnp.sum(jax.nn.one_hot(experts, n_experts, dtype=jnp.float32), axis=(0, 1))
    return counts / experts.size


def load_balancing_loss(probs: Float[Array, "n e"], experts: Int[Array, "n k"]) -> Array:
    """E · Σ_e f_e · P_e (Mixtral / transformers' form; f_e sums to k): k when balanced."""
    n_experts, k = probs.shape[-1], experts.shape[-1]
    tokens_per_expert = expert_load(experts, n_experts) * k
    return n_experts * jnp.sum(tokens_per_expert * jnp.mean(probs, axis=0))


def router_z_loss(logits: Float[Array, "n e"]) -> Array:
    """ST-MoE's z-loss: mean over tokens of logsumexp(router logits)²."""
    return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2)


def capacity(n_tokens: int, k: int, n_experts: int, factor: float) -> int:
    """Slots per expert: ceil(factor · n·k / E), at least 1 and at most n (an expert is chosen
    at most once per token, so n slots never drop)."""
    return max(1, min(n_tokens, math.ceil(factor * n_tokens * k / n_experts)))


class Experts(nnx.Module):
    """``n_experts`` FFNs stacked on a leading expert axis: w1, w3 ``(e, d, f)``, w2 ``(e, f, d)``;
    w3 only for gated FFN kinds. Init as ``Linear``'s: σ² = 2/(d + f), truncated at ±3σ."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, init: Init):
        e, d, f = cfg.n_experts, cfg.d_model, cfg.d_ff
        std = math.sqrt(2.0 / (d + f))
        self.w1 = nnx.Param(init(rngs.params(), (e, d, f), std))
        self.w3 = nnx.Param(init(rngs.params(), (e, d, f), std)) if cfg.ffn_gated else None
        self.w2 = nnx.Param(init(rngs.params(), (e, f, d), std))

    def weights(self, dtype) -> tuple[Array, Array | None, Array]:
        w3 = None if self.w3 is None else self.w3[...].astype(dtype)
        return self.w1[...].astype(dtype), w3, self.w2[...].astype(dtype)


def _expert_ffn(x: Array, params, activation: Activation, matmul) -> Array:
    """The FFN kind on rows already grouped by expert; ``matmul(rows, w)`` applies each
    expert's matrix to its own rows (a grouped matmul, or a batched einsum over buffers)."""
    w1, w3, w2 = params
    hidden = activation(matmul(x, w1))
    if w3 is not None:
        hidden = hidden * matmul(x, w3)
    return matmul(hidden, w2)


def dropless_ffn(
    x: Float[Array, "n d"],
    weights: Float[Array, "n k"],
    experts: Int[Array, "n k"],
    params: tuple[Array, Array | None, Array],
    activation: Activation,
) -> Float[Array, "n d"]:
    """Sort the n·k assignments by expert, run each expert on its rows (grouped matmul), scale
    by the routing weight and add each token's k results back."""
    n_experts, k = params[0].shape[0], experts.shape[-1]
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    token = order // k
    sizes = jnp.bincount(flat, length=n_experts).astype(jnp.int32)
    grouped = lambda rows, w: jax.lax.ragged_dot(rows, w, sizes)  # noqa: E731
    out = _expert_ffn(x[token], params, activation, grouped)
    out = out * weights.reshape(-1)[order][:, None].astype(out.dtype)
    return jnp.zeros_like(x).at[token].add(out)


def capacity_ffn(
    x: Float[Array, "n d"],
    weights: Float[Array, "n k"],
    experts: Int[Array, "n k"],
    params: tuple[Array, Array | None, Array],
    activation: Activation,
    slots: int,
) -> tuple[Float[Array, "n d"], Array]:
    """Fixed (e, c, d) buffers: returns the combined output and the fraction of assignments
    dropped. Priority: all first choices (in token order), then all second choices, ..."""
    n_experts, (n, k), d = params[0].shape[0], experts.shape, x.shape[-1]
    flat = experts.T.reshape(-1)  # k-major: every token's first choice comes first
    token = jnp.tile(jnp.arange(n), k)
    onehot = jax.nn.one_hot(flat, n_experts, dtype=jnp.int32)
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)
    kept = position < slots
    dump = n_experts * slots  # dropped assignments write to (and read from) one spare row
    slot = jnp.where(kept, flat * slots + position, dump)
    buffer = jnp.zeros((dump + 1, d), x.dtype).at[slot].set(x[token])
    inputs = buffer[:dump].reshape(n_experts, slots, d)
    batched = lambda rows, w: jnp.einsum("eci,eio->eco", rows, w)  # noqa: E731
    outputs = _expert_ffn(inputs, params, activation, batched).reshape(dump, d)
    outputs = jnp.concatenate([outputs, jnp.zeros((1, d), outputs.dtype)])
    scale = (weights.T.reshape(-1) * kept).astype(x.dtype)
    combined = jnp.zeros_like(x).at[token].add(outputs[slot] * scale[:, None])
    return combined, 1.0 - jnp.mean(kept.astype(jnp.float32))


class MoEFeedForward(nnx.Module):
    """Router + experts (+ shared expert). ``__call__`` returns the output and the layer's
    router statistics: ``aux_loss``, ``z_loss``, ``load`` (e,), ``dropped`` (fraction).

    The model's own pieces are passed in (``scaling.model`` builds this layer), so this module
    never imports the model: ``router`` a ``(d, e)`` linear layer, ``shared`` a dense FFN or
    None, ``activation`` the FFN's nonlinearity and ``init`` the truncated-normal init.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        rngs: nnx.Rngs,
        router: nnx.Module,
        shared: nnx.Module | None,
        activation: Activation,
        init: Init,
    ):
        self.k, self.n_experts = cfg.experts_per_token, cfg.n_experts
        self.dispatch, self.capacity_factor = cfg.moe_dispatch, cfg.moe_capacity_factor
        self.activation = activation
        self.router = router
        self.experts = Experts(cfg, rngs=rngs, init=init)
        self.shared = shared

    @jax.named_scope("moe")
    def __call__(self, x: Float[Array, "b t d"]) -> tuple[Float[Array, "b t d"], dict]:
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)
        with jax.named_scope("router"):
            logits = self.router(tokens.astype(jnp.float32))
            weights, experts, probs = route(logits, self.k)
        params = self.experts.weights(x.dtype)
        if self.dispatch == "dropless":
            out = dropless_ffn(tokens, weights, experts, params, self.activation)
            dropped = jnp.zeros((), jnp.float32)
        else:
            slots = capacity(b * t, self.k, self.n_experts, self.capacity_factor)
            out, dropped = capacity_ffn(tokens, weights, experts, params, self.activation, slots)
        out = out.reshape(b, t, d)
        if self.shared is not None:
            out = out + self.shared(x)
        stats = {
            "aux_loss": load_balancing_loss(probs, experts),
            "z_loss": router_z_loss(logits),
            "load": expert_load(experts, self.n_experts),
            "dropped": dropped,
        }
        return out, stats


def aux_total(cfg: ModelConfig, aux: dict[str, Array]) -> Array:
    """The auxiliary loss added to the training loss: coefficients × the per-layer losses
    averaged over layers (``aux`` holds (L,) arrays; 0 for a dense model)."""
    if not aux:
        return jnp.zeros((), jnp.float32)
    return cfg.moe_aux_loss_coef * jnp.mean(aux["aux_loss"]) + cfg.moe_z_loss_coef * jnp.mean(
        aux["z_loss"]
    )


ROUTER_METRICS = ROUTER_COLUMNS  # the names a step logs and the record stores


def router_metrics(aux: dict[str, Array]) -> dict[str, Array]:
    """Per-step router statistics from the per-layer ``aux`` ((L,) and (L, e) arrays): the
    losses averaged over layers, expert load min / max over layers and experts (fractions of
    assignments; 1/E when balanced), the mean over layers of the load's entropy (nats; ln E
    when balanced) and the fraction of assignments dropped (capacity dispatch)."""
    if not aux:
        return {}
    load = aux["load"]
    entropy = -jnp.sum(jnp.where(load > 0, load * jnp.log(jnp.maximum(load, 1e-30)), 0.0), -1)
    return {
        "aux_loss": jnp.mean(aux["aux_loss"]),
        "z_loss": jnp.mean(aux["z_loss"]),
        "expert_load_min": jnp.min(load),
        "expert_load_max": jnp.max(load),
        "expert_load_entropy": jnp.mean(entropy),
        "dropped_fraction": jnp.mean(aux["dropped"]),
    }
