"""Collective bytes per device per training step, by collective kind, in the dtype each
collective moves. What GSPMD does with this model was read off the partitioned HLO of the real
step (``scaling.estimate.hlo_comm``, jax 0.10.2) for every mode, f32 and bf16, remat none and
full, tied and untied; ``tests/test_xla_check.py`` pins analytic ÷ compiled within 10 %."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from scaling import sharding
from scaling.config import ModelConfig
from scaling.estimate.flops import expert_rows
from scaling.estimate.mesh import DTYPE_BYTES, F32_BYTES, effective_mesh, validate
from scaling.estimate.params import held_scalars
from scaling.roles import EXPERT_ROLES, Param, Role, parameters

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute")


@dataclass(frozen=True)
class CommEstimate:
    """Bytes each device sends per training step, by collective kind.

    Ring algorithms over an axis of n devices, V the full (gathered / reduced) array's bytes:
    AllGather, ReduceScatter and AllToAll send V·(n-1)/n, AllReduce 2·V·(n-1)/n ("How To Scale
    Your Model", jax-ml/scaling-book: T ≈ V/W and 2V/W, which drops the (n-1)/n factor),
    CollectivePermute V. ``scaling.estimate.hlo_comm`` weighs XLA's collectives the same way.
    """

    all_reduce: float
    all_gather: float
    reduce_scatter: float
    all_to_all: float = 0.0
    collective_permute: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, kind) for kind in KINDS)

    def to_dict(self) -> dict[str, float]:
        return {**{kind: getattr(self, kind) for kind in KINDS}, "total": self.total}


def _ring(n: int) -> float:
    return (n - 1) / n


@dataclass
class _Sent:
    """Bytes sent per kind, accumulated collective by collective."""

    kinds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))

    def add(self, kind: str, full_bytes: float, n: int, times: float = 1.0) -> None:
        """``times`` collectives of ``kind`` over ``n`` devices on arrays of ``full_bytes``."""
        if n > 1:
            factor = 2.0 if kind == "all_reduce" else 1.0
            self.kinds[kind] += times * factor * full_bytes * _ring(n)


def comm_bytes_per_device(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> CommEstimate:
    """Collective bytes sent per device per step (see ``CommEstimate`` for the ring model).

    c = bytes of the compute dtype; b = batch / data (rows per device), B the global batch.
    Parameters are float32 and cast to the compute dtype at use; GSPMD moves the cast before
    the collective, so the layer matrices travel in c (FACTS.md, "Checked in review"):

    - layer matrices sharded over data (fsdp, fsdp_tp): AllGather in the forward and again in
      the backward (remat's recompute reuses the backward's), ReduceScatter of their gradients,
      all in c (ZeRO-3 / FSDP); replicated over data (dp): AllReduce of the gradients in c.
      Expert matrices (fsdp, fsdp_tp) are kept for the backward under remat ``none``
      (gathered once; the memory estimate counts them). fsdp gathers them inside the MoE
      layer's ``shard_map`` (``scaling.moe.sharded_moe_ffn``), whose transpose reduce-scatters
      their gradients; fsdp_tp gathers them at its boundary, where XLA all-reduces their
      gradients over data instead (twice a ReduceScatter's bytes; measured, jax 0.10.2).
    - norm gains and biases: AllReduce of the float32 gradients over data.
    - tensor axis (tp, fsdp_tp), Megatron-style: per layer one AllReduce of the (b, t, d)
      activations in c after each row-split matrix in the forward (o, w2) and one after each
      column-split matrix in the backward, whose input gradients XLA reduces separately
      (q, k, v, and w1, w3: 7 per layer for SwiGLU, 6 for the GELU MLP); remat ``full``
      recomputes o's and adds one (w2's output is not recomputed).
    - the token and position tables and the read-out (``_vocab_tables``).
    - experts split over data (ep, fsdp_ep; ``_expert_dispatch``): the expert matrices never
      move (each device updates its own experts); the dispatched tokens do.
    Loss-side collectives of (b, t) scalars are left out (under 1/d of the activations').
    ``none`` (one device) and axes of size 1: nothing.
    """
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    data, tensor = m
    c = DTYPE_BYTES[cfg.dtype]
    sent = _Sent()
    for param in parameters(cfg):
        if param.role in (Role.EMBED, Role.POSITION, Role.HEAD):
            continue
        held = held_scalars(param, mode, m)
        if param.role in EXPERT_ROLES and sharding.splits_experts(mode):
            continue
        if param.role.hidden and _split_over(param, mode, sharding.DATA):
            expert = param.role in EXPERT_ROLES
            kept = expert and cfg.remat == "none"
            sent.add("all_gather", held * data * c, data, times=1 if kept else 2)
            if expert and tensor > 1:  # fsdp_tp: gathered at the MoE shard_map's boundary
                sent.add("all_reduce", held * data * c, data)
            else:
                sent.add("reduce_scatter", held * data * c, data)
        else:
            sent.add("all_reduce", held * (c if param.role.hidden else F32_BYTES), data)
    if sharding.splits_tensor_work(mode):
        b = math.ceil(batch / data)
        dense, experts = _tensor_all_reduces_per_layer(cfg)
        sent.add("all_reduce", b * seq * cfg.d_model * c, tensor, times=cfg.n_layers * dense)
        if experts:  # on the expert rows (E·C capacity, n·k dropless), not the tokens
            rows = expert_rows(cfg, b * seq)[1]
            sent.add("all_reduce", rows * cfg.d_model * c, tensor, times=cfg.n_layers * experts)
    _vocab_tables(cfg, mode, m, batch, seq, sent)
    if cfg.moe and sharding.splits_experts(mode):
        _expert_dispatch(cfg, data, batch, seq, sent)
    return CommEstimate(**sent.kinds)


def _expert_dispatch(cfg: ModelConfig, data: int, batch: int, seq: int, sent: _Sent) -> None:
    """Expert parallelism (``scaling.moe.expert_parallel_ffn``, an explicit ``shard_map``), per
    MoE layer; n = batch·seq tokens, c the compute dtype's bytes, r = remat ``full``:

    - capacity: each device's (E, C, d) buffer (C from its own n/data tokens) goes to the
      experts' devices and back: two AllToAlls forward, their transposes backward (4), and
      r's recompute of the forward pair (6).
    - dropless (all-gather dispatch): AllGather of the n·d tokens and ReduceScatter of the
      n·d outputs forward, their transposes backward (2 + 2), and r's recompute gathers the
      tokens again. The routing (n·k float32 weights, n·k int32 experts) is gathered beside
      them: two AllGathers forward, one more backward (jax 0.10.2 re-gathers one rather than
      keep it), three more under r, and the weights' gradient is reduce-scattered.

    Matched against the partitioned HLO on tiny-moe, 4 devices, batch 8 × 128 (ep, fsdp_ep,
    remat none/full): capacity 1.01-1.02× (GSPMD also gathers the (n, k) experts for the
    router statistics, not counted), dropless see ``tests/test_moe.py``."""
    layers, full = cfg.n_layers, cfg.remat == "full"
    c = DTYPE_BYTES[cfg.dtype]
    if cfg.moe_dispatch == "capacity":
        _, executed = expert_rows(cfg, math.ceil(batch / data) * seq)
        sent.add("all_to_all", executed * cfg.d_model * c, data, times=layers * (6 if full else 4))
        return
    tokens = batch * seq * cfg.d_model * c
    routing = batch * seq * cfg.experts_per_token * 4
    sent.add("all_gather", tokens, data, times=layers * (3 if full else 2))
    sent.add("reduce_scatter", tokens, data, times=layers * 2)
    sent.add("all_gather", routing, data, times=layers * (6 if full else 3))
    sent.add("reduce_scatter", routing, data, times=layers)


def _split_over(param: Param, mode: str, axis: str) -> bool:
    return axis in sharding.rule(mode, param.role.kind)


def _tensor_all_reduces_per_layer(cfg: ModelConfig) -> tuple[int, int]:
    """Row-split matrices (forward) + column-split matrices (backward) + remat's recompute,
    as (on the tokens' (b, t, d) activations, on the experts' rows). Remat ``full``
    recomputes o's all-reduce and, in a MoE layer, the expert w2's (the combine reads its
    output; a dense FFN's w2 output is not needed in the backward); remat ``dots`` saves o's
    output but recomputes the expert matmuls (batched einsums), w2's all-reduce with them."""
    layer = [p for p in parameters(cfg) if p.role.hidden]
    full = 1 if cfg.remat == "full" else 0
    dense = sum(p.role.kind in ("row", "column") for p in layer)
    experts = sum(p.role.kind in ("expert_row", "expert_column") for p in layer)
    return dense + full, experts + (int(cfg.remat != "none") if experts else 0)


def _vocab_tables(
    cfg: ModelConfig, mode: str, m: tuple[int, int], batch: int, seq: int, sent: _Sent
) -> None:
    """The lookups (token table, learned positions) and the read-out (the tied table, or the
    untied head). Which strategy GSPMD picks follows from which axis splits the rows (V, or T
    for positions) and which the width d of each table (``scaling.sharding.RULES``); B·t·d
    is the global batch's activations, b·t·d one device's, float32 unless noted:

    - replicated over data: the gradient is AllReduced; a tied table's lookup and read-out
      gradients are reduced separately (summed afterwards), so it counts twice.
    - lookup, rows over data (fsdp), B·t < V: each device looks up its rows for every token:
      ReduceScatter of B·t·d (forward), AllGather of its gradient (backward). B·t ≥ V: the
      table is gathered instead (ZeRO-3): AllGather of it, ReduceScatter of its gradient.
    - lookup, rows over tensor (tp, fsdp_tp): AllReduce over tensor of B·t·d / data.
    - lookup, d over data (fsdp_tp; positions under fsdp): AllToAll of b·t·d from width to
      batch rows, forward and backward.
    - read-out, V over data (fsdp, tied), B·t < V: the activations move instead of the
      table: AllGather of x (B·t·d, in c; bf16 gathers it again in float32 for the weight
      gradient), AllToAll of the logits' gradient (b·t·V), ReduceScatter of dx (B·t·d).
      B·t ≥ V: the lookup's gathered table serves (bf16 gathers it again in c and in float32),
      ReduceScatter of the read-out's gradient.
    - read-out, d over data (fsdp untied, fsdp_tp): AllGather of the table in c (forward),
      again in float32 for the backward (except f32 without a tensor split, which reuses the
      forward's), ReduceScatter of its gradient (ZeRO-3).
    - read-out, V over tensor (tp, fsdp_tp): AllReduce over tensor of dx (b·t·d).
    A table's own gradient needs nothing where its rows or its width are split (each device
    owns the part it updates).
    """
    data, tensor = m
    c, f32 = DTYPE_BYTES[cfg.dtype], F32_BYTES
    acts = math.ceil(batch / data) * seq * cfg.d_model  # b·t·d
    # GSPMD gathers a row-split table once the global batch's tokens reach its rows (B·t ≥ V:
    # checked at 10m, B·t = 1536 / 1600 / 2048 / 3072 against V = 2048, and 1.3b), and
    # moves the activations below that.
    gather_tables = batch * seq >= cfg.vocab_size
    tables = {
        p.role: p for p in parameters(cfg) if p.role in (Role.EMBED, Role.POSITION, Role.HEAD)
    }
    for role in (Role.EMBED, Role.POSITION):
        if role not in tables:
            continue
        rows, width = _axes(tables[role], mode)
        if rows is None and width is None:
            sent.add("all_reduce", held_scalars(tables[role], mode, m) * f32, data)
        if rows == sharding.DATA and gather_tables:
            sent.add("all_gather", held_scalars(tables[role], mode, m) * data * f32, data)
            sent.add("reduce_scatter", held_scalars(tables[role], mode, m) * data * f32, data)
        elif rows == sharding.DATA:
            sent.add("reduce_scatter", acts * data * f32, data)
            sent.add("all_gather", acts * data * f32, data)
        if rows == sharding.TENSOR:
            sent.add("all_reduce", acts * f32, tensor)
        if width == sharding.DATA:
            sent.add("all_to_all", acts * f32, data, times=2)

    readout = tables.get(Role.HEAD, tables[Role.EMBED])
    rows, width = _axes(readout, mode)
    if rows is None and width is None:
        sent.add("all_reduce", held_scalars(readout, mode, m) * f32, data)
    if rows == sharding.DATA and gather_tables:
        table = held_scalars(readout, mode, m) * data
        if c != f32:  # f32 reuses the lookup's gather of the tied table
            sent.add("all_gather", table * (c + f32), data)
        sent.add("reduce_scatter", table * f32, data)
    elif rows == sharding.DATA:
        sent.add("all_gather", acts * data * c, data)
        if c != f32:
            sent.add("all_gather", acts * data * f32, data)
        sent.add("all_to_all", acts / cfg.d_model * cfg.vocab_size * f32, data)
        sent.add("reduce_scatter", acts * data * f32, data)
    if width == sharding.DATA:
        gathered = held_scalars(readout, mode, m) * data
        sent.add("all_gather", gathered * c, data)
        if c != f32 or rows == sharding.TENSOR:
            sent.add("all_gather", gathered * f32, data)
        sent.add("reduce_scatter", gathered * f32, data)
    if rows == sharding.TENSOR:
        sent.add("all_reduce", acts * f32, tensor)


def _axes(table: Param, mode: str) -> tuple[str | None, str | None]:
    """(axis splitting the rows: vocabulary or positions, axis splitting the width d) of a
    (rows, d) lookup table or a (d, V) head."""
    rule = sharding.rule(mode, table.role.kind) or (None, None)
    first, second = rule
    return (second, first) if table.role is Role.HEAD else (first, second)
