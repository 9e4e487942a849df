"""Collective bytes per device per training step, by collective kind."""

from __future__ import annotations

import math
from dataclasses import dataclass

from scaling import sharding
from scaling.config import ModelConfig
from scaling.estimate.mesh import DTYPE_BYTES, F32_BYTES, effective_mesh, validate
from scaling.estimate.params import held_scalars
from scaling.roles import parameters


@dataclass(frozen=True)
class CommEstimate:
    """Bytes each device sends per training step, by collective kind.

    Ring algorithms over an axis of n devices, V the full (gathered / reduced) array's bytes:
    AllGather and ReduceScatter send V·(n-1)/n, AllReduce 2·V·(n-1)/n ("How To Scale Your
    Model", jax-ml/scaling-book: T ≈ V/W and 2V/W, which drops the (n-1)/n factor).
    """

    all_reduce: float
    all_gather: float
    reduce_scatter: float

    @property
    def total(self) -> float:
        return self.all_reduce + self.all_gather + self.reduce_scatter

    def to_dict(self) -> dict[str, float]:
        return {
            "all_reduce": self.all_reduce,
            "all_gather": self.all_gather,
            "reduce_scatter": self.reduce_scatter,
            "total": self.total,
        }


def _ring(n: int) -> float:
    return (n - 1) / n


def comm_bytes_per_device(
    cfg: ModelConfig, *, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int
) -> CommEstimate:
    """Collective bytes sent per device per step (see ``CommEstimate`` for the ring model).

    Data axis (size > 1), gradients in float32 like the parameters:
    - parameters sharded over data (fsdp, fsdp_tp, per ``scaling.sharding.RULES``): AllGather of
      the f32 parameters in the forward and again in the backward, ReduceScatter of their
      gradients (ZeRO-3 / FSDP). Assumes the gather happens before the cast to the compute
      dtype, as the model casts at use.
    - parameters replicated over data (all of them under dp and tp, the norms under fsdp and
      fsdp_tp): AllReduce of their gradients.
    Tensor axis (tp, fsdp_tp), Megatron (Shoeybi et al. 2019): per layer two AllReduces of the
    (b, t, d) activations in the forward (after o and after w2) and two in the backward (input
    gradients of q/k/v and w1/w3), in the compute dtype; remat ``full`` repeats the two forward
    ones. Plus one for the vocabulary-split embedding lookup (float32: the table is cast after
    the gather) and one for the vocabulary-split head's input gradient (compute dtype).
    ``none`` (one device) and axes of size 1: nothing.
    """
    validate(cfg, mode, mesh, batch, seq)
    m = effective_mesh(mode, mesh)
    data, tensor = m
    all_reduce = all_gather = reduce_scatter = 0.0
    if data > 1:
        sharded = replicated = 0.0  # f32 bytes per device, before the data split
        for param in parameters(cfg):
            held = F32_BYTES * held_scalars(param, mode, m)
            if sharding.DATA in sharding.rule(mode, param.role.kind):
                sharded += held * data
            else:
                replicated += held
        all_gather += 2 * sharded * _ring(data)
        reduce_scatter += sharded * _ring(data)
        all_reduce += 2 * replicated * _ring(data)
    if sharding.splits_tensor_work(mode) and tensor > 1:
        bl = math.ceil(batch / data)
        activation = bl * seq * cfg.d_model * DTYPE_BYTES[cfg.dtype]
        per_layer = 4 + (2 if cfg.remat == "full" else 0)
        count = cfg.n_layers * per_layer + 1  # + the head's input gradient
        all_reduce += count * 2 * activation * _ring(tensor)
        all_reduce += 2 * bl * seq * cfg.d_model * F32_BYTES * _ring(tensor)  # embedding
    return CommEstimate(all_reduce, all_gather, reduce_scatter)
