"""Mixture-of-experts FFN (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al.
2024), selected by ``ModelConfig.n_experts`` > 0 in place of the dense ``FeedForward``.

Routing follows Mixtral (transformers' ``MixtralSparseMoeBlock``): router logits ``x W_r``
(float32), softmax over all experts, the top-k probabilities, renormalised over the chosen k.
Each expert is the model's FFN kind (gated ``W2 (act(W1 x) ⊙ W3 x)`` or ``W2 act(W1 x)``) of
width ``d_ff``; an optional shared expert (one dense FFN of width ``d_ff``) sees every token.

Two dispatches, chosen by ``ModelConfig.moe_dispatch``; on one device, and under every mode
that does not split the experts, both see the whole (global) batch as one routing group, so
the loss does not depend on the mesh:

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

Under the modes that split the batch over ``data`` (``dp``, ``fsdp``, ``fsdp_tp``, ``ep``,
``fsdp_ep``) the layer is an explicit ``shard_map`` over ``data`` (``sharded_moe_ffn``): each
device routes its own tokens as one group; fsdp_tp's tensor axis, which splits the experts'
width, stays with GSPMD inside it. With the experts split too (``ep``, ``fsdp_ep``),
``capacity`` exchanges the (E, C, d) buffers by AllToAll (GShard) and ``dropless`` gathers
every token to every device, each runs its own experts, and the outputs are reduce-scattered
back (Megatron-Core's "allgather" dispatcher). ``tp`` (no data axis) is left to GSPMD.

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

from scaling import ops
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
    hidden = ops.gated(activation, matmul(x, w1), None if w3 is None else matmul(x, w3))
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


def _capacity_slots(
    experts: Int[Array, "n k"], n_experts: int, slots: int
) -> tuple[Int[Array, " nk"], Int[Array, " nk"], Array]:
    """Each assignment's buffer row (expert · slots + position), its token and whether it was
    kept, in priority order: all first choices (in token order), then all second choices, ...
    Dropped assignments point at the spare row ``n_experts · slots``."""
    n, k = experts.shape
    flat = experts.T.reshape(-1)  # k-major: every token's first choice comes first
    token = jnp.tile(jnp.arange(n), k)
    onehot = jax.nn.one_hot(flat, n_experts, dtype=jnp.int32)
    position = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=-1)
    kept = position < slots
    return jnp.where(kept, flat * slots + position, n_experts * slots), token, kept


def capacity_ffn(
    x: Float[Array, "n d"],
    weights: Float[Array, "n k"],
    experts: Int[Array, "n k"],
    params: tuple[Array, Array | None, Array],
    activation: Activation,
    slots: int,
    n_experts: int | None = None,
    exchange: Callable[[Callable, Array], Array] | None = None,
) -> tuple[Float[Array, "n d"], Array]:
    """Fixed (e, c, d) buffers: returns the combined output and the fraction of assignments
    dropped. ``exchange(run, buffer)`` carries the (e, c, d) buffer to the devices holding the
    experts and back (``sharded_moe_ffn``); ``params`` then holds only this device's
    experts and ``n_experts`` says how many there are in all."""
    n_experts = params[0].shape[0] if n_experts is None else n_experts
    d = x.shape[-1]
    slot, token, kept = _capacity_slots(experts, n_experts, slots)
    dump = n_experts * slots
    buffer = jnp.zeros((dump + 1, d), x.dtype).at[slot].set(x[token])
    inputs = buffer[:dump].reshape(n_experts, slots, d)
    batched = lambda rows, w: jnp.einsum("eci,eio->eco", rows, w)  # noqa: E731
    run = lambda rows: _expert_ffn(rows, params, activation, batched)  # noqa: E731
    outputs = (run(inputs) if exchange is None else exchange(run, inputs)).reshape(dump, d)
    outputs = jnp.concatenate([outputs, jnp.zeros((1, d), outputs.dtype)])
    scale = (weights.T.reshape(-1) * kept).astype(x.dtype)
    combined = jnp.zeros_like(x).at[token].add(outputs[slot] * scale[:, None])
    return combined, 1.0 - jnp.mean(kept.astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# Expert parallelism: experts split over a mesh axis, tokens split over the same axis


def _all_to_all_exchange(axis: str) -> Callable[[Callable, Array], Array]:
    """GShard's dispatch: this device's (E, C, d) buffer is split by expert group, each group
    sent to the device holding those experts (one AllToAll), run there on the (E/D, D·C, d)
    rows from every device, and sent back (a second AllToAll)."""

    def exchange(run: Callable, inputs: Float[Array, "e c d"]) -> Float[Array, "e c d"]:
        devices = jax.lax.axis_size(axis)
        n_experts, slots, d = inputs.shape
        local = n_experts // devices
        grouped = inputs.reshape(devices, local, slots, d)
        received = jax.lax.all_to_all(grouped, axis, 0, 0)  # (source device, local e, c, d)
        rows = received.transpose(1, 0, 2, 3).reshape(local, devices * slots, d)
        done = run(rows).reshape(local, devices, slots, d).transpose(1, 0, 2, 3)
        return jax.lax.all_to_all(done, axis, 0, 0).reshape(n_experts, slots, d)

    return exchange


def _all_gather_dropless(
    x: Float[Array, "n d"],
    weights: Float[Array, "n k"],
    experts: Int[Array, "n k"],
    params: tuple[Array, Array | None, Array],
    activation: Activation,
    axis: str,
) -> Float[Array, "n d"]:
    """Dropless dispatch over devices (Megatron-Core's "allgather" token dispatcher): every
    device gathers all tokens and their routing, runs its own experts on the rows routed to
    them (a grouped matmul; the rows routed elsewhere sort last and are masked) and the
    partial outputs are summed and scattered back to the tokens' devices (ReduceScatter).
    Variable-size AllToAll (``ragged_all_to_all``) would move only the routed rows, but
    XLA's CPU backend does not implement it (jax 0.10.2)."""
    x = jax.lax.all_gather(x, axis, tiled=True)
    weights = jax.lax.all_gather(weights, axis, tiled=True)
    experts = jax.lax.all_gather(experts, axis, tiled=True)
    local, k = params[0].shape[0], experts.shape[-1]
    index = experts - jax.lax.axis_index(axis) * local
    mine = (index >= 0) & (index < local)
    key = jnp.where(mine, index, local).reshape(-1)
    order = jnp.argsort(key, stable=True)
    token = order // k
    sizes = jnp.bincount(key, length=local + 1)[:local].astype(jnp.int32)
    grouped = lambda rows, w: jax.lax.ragged_dot(rows, w, sizes)  # noqa: E731
    out = _expert_ffn(x[token], params, activation, grouped)
    routed_here = (jnp.arange(order.size) < jnp.sum(sizes))[:, None]
    scale = (weights * mine).reshape(-1)[order][:, None].astype(out.dtype)
    out = jnp.where(routed_here, out * scale, 0)
    combined = jnp.zeros_like(x).at[token].add(out)
    return jax.lax.psum_scatter(combined, axis, scatter_dimension=0, tiled=True)


def _manual_axes(token_axis: str) -> set[str]:
    """The token axis, and the mesh's axes of size 1: an axis that splits work besides the
    tokens' (fsdp_tp's tensor axis, which splits the experts' width) is left to GSPMD."""
    mesh = jax.sharding.get_abstract_mesh()
    return {a for a in mesh.axis_names if a == token_axis or mesh.shape[a] == 1}


def sharded_moe_ffn(
    x: Float[Array, "n d"],
    weights: Float[Array, "n k"],
    experts: Int[Array, "n k"],
    params: tuple[Array, Array | None, Array],
    activation: Activation,
    *,
    dispatch: str,
    capacity_factor: float,
    token_axis: str,
    expert_axis: str | None,
    data_dims: tuple[int | None, int | None] = (None, None),
) -> tuple[Float[Array, "n d"], Array]:
    """The MoE FFN with the tokens split over the mesh axis ``token_axis`` and, when
    ``expert_axis`` (the same axis) is given, the experts too, as an explicit ``shard_map``:
    each device routes its own tokens as one group, and the collectives are the ones written
    here, not whatever GSPMD infers (for ``ep`` it all-reduced the routed rows, 8× the
    traffic; for ``dp`` it ran the whole batch's expert work on every device). Returns the
    output and the fraction of assignments dropped.

    Experts split (``ep``, ``fsdp_ep``): ``capacity`` sends each device's (E, C, d) buffer
    (C = ``capacity(n / D, k, E, factor)``, GShard's local groups) to the experts' devices by
    AllToAll and back; ``dropless`` is ``_all_gather_dropless``. Experts whole on every device
    (``dp``, ``fsdp``, ``fsdp_tp``, whose expert weights are gathered over data at the
    boundary like every fsdp matrix): each device runs the one-device dispatch on its tokens,
    with no collective over data (under fsdp_tp GSPMD splits the experts' width over tensor
    and all-reduces their outputs, Megatron-style). Left to GSPMD, fsdp_tp routed the global
    batch and moved 1.7-2.5× the estimated bytes (tiny-moe, 4 × 2 devices), with 1.26-3.4×
    the estimated memory.

    ``data_dims``: the dimension of (w1/w3, w2) split over ``token_axis`` (fsdp). Where no
    other mesh axis is left to GSPMD they are gathered inside by ``all_gather``, whose
    transpose is the gradients' ReduceScatter: gathered at the boundary instead, XLA
    all-reduced the gradients under remat ``full`` (1.28× the estimated bytes, tiny-moe fsdp)
    and gathered them twice under remat ``none`` though it kept them. Under fsdp_tp the
    explicit gather lost the tensor split of their width (1.5-1.8× the bytes), so the
    boundary gathers them there.
    ``dropless`` gives the one-device result either way; ``capacity`` drops what ``none``
    drops only when nothing is dropped, since ``none`` routes the whole batch as one group."""
    n_experts = params[0].shape[0]
    if expert_axis not in (None, token_axis):
        raise ValueError(f"experts over {expert_axis!r} need the tokens over it too")
    spec = jax.sharding.PartitionSpec
    tokens = spec(token_axis)
    manual = _manual_axes(token_axis)
    mesh = jax.sharding.get_abstract_mesh()
    if expert_axis is not None or len(manual) < len(mesh.axis_names):
        data_dims = (None, None)
    held = [spec(expert_axis) if d is None else spec(*[None] * d, token_axis) for d in data_dims]
    w1, w3, w2 = params

    def gather(w: Array | None, dim: int | None) -> Array | None:
        if w is None or dim is None:
            return w
        return jax.lax.all_gather(w, token_axis, axis=dim, tiled=True)

    def local(x, weights, experts, w1, w3, w2):
        column, row = data_dims
        own = (gather(w1, column), gather(w3, column), gather(w2, row))
        if dispatch == "dropless" and expert_axis is not None:
            out = _all_gather_dropless(x, weights, experts, own, activation, expert_axis)
            return out, jnp.zeros((), jnp.float32)
        if dispatch == "dropless":
            return dropless_ffn(x, weights, experts, own, activation), jnp.zeros((), jnp.float32)
        slots = capacity(x.shape[0], experts.shape[-1], n_experts, capacity_factor)
        exchange = None if expert_axis is None else _all_to_all_exchange(expert_axis)
        out, dropped = capacity_ffn(
            x, weights, experts, own, activation, slots, n_experts, exchange
        )
        return out, jax.lax.pmean(dropped, token_axis)

    sharded = jax.shard_map(
        local,
        in_specs=(tokens, tokens, tokens, held[0], None if w3 is None else held[0], held[1]),
        out_specs=(tokens, spec()),
        axis_names=manual,
    )
    return sharded(x, weights, experts, w1, w3, w2)


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
        # mesh axes the tokens (each device's routed as one group) and the experts are split
        # over (``build_model``, from the mode: ``sharding.moe_axes``), or None
        self.token_axis: str | None = None
        self.expert_axis: str | None = None
        self.expert_data_dims: tuple[int | None, int | None] = (None, None)

    @jax.named_scope("moe")
    def __call__(self, x: Float[Array, "b t d"]) -> tuple[Float[Array, "b t d"], dict]:
        b, t, d = x.shape
        tokens = x.reshape(b * t, d)
        with jax.named_scope("router"):
            logits = self.router(tokens.astype(jnp.float32))
            weights, experts, probs = route(logits, self.k)
        params = self.experts.weights(x.dtype)
        if self._splits_tokens():
            out, dropped = sharded_moe_ffn(
                tokens,
                weights,
                experts,
                params,
                self.activation,
                dispatch=self.dispatch,
                capacity_factor=self.capacity_factor,
                token_axis=self.token_axis,
                expert_axis=self.expert_axis,
                data_dims=self.expert_data_dims,
            )
        elif self.dispatch == "dropless":
            out = dropless_ffn(tokens, weights, experts, params, self.activation)
            dropped = jnp.zeros((), jnp.float32)
        else:
            slots = capacity(b * t, self.k, self.n_experts, self.capacity_factor)
            out, dropped = capacity_ffn(tokens, weights, experts, params, self.activation, slots)
        if self.shared is not None:  # on the router's rows: the backward keeps one copy of x
            out = out + self.shared(tokens)
        out = out.reshape(b, t, d)
        stats = {
            "aux_loss": load_balancing_loss(probs, experts),
            "z_loss": router_z_loss(logits),
            "load": expert_load(experts, self.n_experts),
            "dropped": dropped,
        }
        return out, stats

    def _splits_tokens(self) -> bool:
        """Tokens split over ``token_axis`` of the current mesh (more than one device)."""
        if self.token_axis is None:
            return False
        mesh = jax.sharding.get_abstract_mesh()
        return not mesh.empty and mesh.shape.get(self.token_axis, 1) > 1


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
