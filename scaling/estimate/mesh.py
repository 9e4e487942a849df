"""Shared rules of the estimator: dtype sizes, the one validation of a configuration (the same
``scaling.sharding.validate_plan`` a run uses), and how a mode splits the work."""

from __future__ import annotations

import math

from scaling import sharding
from scaling.config import ModelConfig
from scaling.roles import tensor_split_dims

F32_BYTES = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def validate(cfg: ModelConfig, mode: str, mesh: tuple[int, int] | None, batch: int, seq: int):
    """Raise ``ValueError`` for a configuration a run would refuse (unknown mode, a mesh the
    mode does not allow, a tensor axis that does not divide heads / FFN / vocabulary, a batch
    the data axis does not divide) or a sequence outside the model's context."""
    sharding.check_mode(mode)
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    if seq <= 0 or seq > cfg.max_seq_len:
        raise ValueError(
            f"seq={seq} is out of range; valid: 1..{cfg.max_seq_len} (the context of {cfg.name})"
        )
    if mesh is None or mode == "none":  # none is one device whatever the mesh
        return
    sharding.validate_plan(
        mode,
        (int(mesh[0]), int(mesh[1])) if len(mesh) == 2 else tuple(mesh),
        tensor_divides=tensor_split_dims(cfg),
        batch=batch,
        model_name=cfg.name,
        n_experts=cfg.n_experts,
    )


def effective_mesh(mode: str, mesh: tuple[int, int] | None) -> tuple[int, int]:
    """(data, tensor) the estimate uses: ``none`` is one device; a missing mesh means (1, 1)."""
    if mode == "none" or mesh is None:
        return (1, 1)
    return (int(mesh[0]), int(mesh[1]))


def n_devices(mode: str, mesh: tuple[int, int] | None) -> int:
    data, tensor = effective_mesh(mode, mesh)
    return data * tensor


def tensor_split(mode: str, tensor: int) -> int:
    """How many ways the per-head / FFN-hidden / vocabulary dimensions are split."""
    return tensor if sharding.splits_tensor_work(mode) else 1


def ceil(x: float) -> int:
    return math.ceil(x - 1e-9)
