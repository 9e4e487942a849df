"""Sharding modes as data: which mesh axis splits which dimension of each parameter kind, the
default mesh of each mode, and the one validation of a (mode, mesh, model, batch) plan.
Never imports jax: ``scaling.parallel`` turns these rules into PartitionSpecs, and
``scaling.estimate`` divides parameter shapes by them, so a run and its estimate cannot
disagree about what a device holds.

The mesh is ``(data, tensor)``. A rule is one entry per parameter dimension: the mesh axis
that splits it, or ``None``. The leading layer axis ``L`` of stacked parameters is never split
(the layers are scanned over it).

================  ===============  ========  =============  ==============  ===============
kind              shape            none/dp   fsdp           tp              fsdp_tp
================  ===============  ========  =============  ==============  ===============
embed             (V, d)           -         (data, -)      (tensor, -)     (tensor, data)
position          (T, d)           -         (-, data)      -               (-, data)
column            (L, d, out)      -         (-, data, -)   (-, -, tensor)  (-, data, tensor)
  q, k, v, FFN in / gate
row               (L, in, d)       -         (-, data, -)   (-, tensor, -)  (-, tensor, data)
  o, FFN out
head              (d, V)           -         (data, -)      (-, tensor)     (data, tensor)
column_bias       (L, out)         -         -              (-, tensor)     (-, tensor)
  biases of q, k, v, FFN in / gate
head_bias         (V,)             -         -              (tensor)        (tensor)
vector            (L, d) / (d,)    -         -              -               -
  norm gains and biases, biases of o and FFN out
batch             (B, T+1)         (data)    (data)         (data)          (data)
================  ===============  ========  =============  ==============  ===============

Megatron-style tp: the first matrix of attention (q, k, v) and of the FFN is split by columns
and the second (o, FFN out) by rows, so each block needs one all-reduce forward and one
backward per sub-layer; a column matrix's bias is split with its columns, a row matrix's
bias is added after the all-reduce and stays replicated. fsdp splits the same matrices over
``data`` and lets XLA all-gather them where they are used. Under tp the data axis has size 1,
so the batch rule keeps the batch replicated.

Adding a mode: a row of ``RULES``, its ``default_mesh_shape`` and its mesh constraint in
``_MESH_RULES``; nothing else in the package names modes.
"""

from __future__ import annotations

from collections.abc import Sequence

DATA, TENSOR = "data", "tensor"
MESH_AXES = (DATA, TENSOR)

Rule = tuple[str | None, ...]

# mode → parameter kind → mesh axis per dimension (kinds absent from a mode are replicated)
RULES: dict[str, dict[str, Rule]] = {
    "none": {},
    "dp": {},
    "fsdp": {
        "embed": (DATA, None),
        "position": (None, DATA),
        "column": (None, DATA, None),
        "row": (None, DATA, None),
        "head": (DATA, None),
    },
    "tp": {
        "embed": (TENSOR, None),
        "column": (None, None, TENSOR),
        "row": (None, TENSOR, None),
        "head": (None, TENSOR),
        "column_bias": (None, TENSOR),
        "head_bias": (TENSOR,),
    },
    "fsdp_tp": {
        "embed": (TENSOR, DATA),
        "position": (None, DATA),
        "column": (None, DATA, TENSOR),
        "row": (None, TENSOR, DATA),
        "head": (DATA, TENSOR),
        "column_bias": (None, TENSOR),
        "head_bias": (TENSOR,),
    },
}
BATCH_RULE: Rule = (DATA,)
MODES: tuple[str, ...] = tuple(RULES)

# mode → (data axis must be 1, tensor axis must be 1, both axes must be > 1)
_MESH_RULES: dict[str, tuple[bool, bool, bool]] = {
    "none": (True, True, False),
    "dp": (False, True, False),
    "fsdp": (False, True, False),
    "tp": (True, False, False),
    "fsdp_tp": (False, False, True),
}


# Simulated CPU devices share one host's cores and memory, and each adds XLA client state and
# threads; a few hundred is already far past anything useful. Measured on the 2-core host:
# 64 and 512 devices start in ~8 s, 4096 in 20 s (0.66 GB), 100,000 not within 90 s.
MAX_SIMULATED_DEVICES = 512


def check_device_count(n: int, option: str = "--devices") -> int:
    """``n`` itself, or one ``ValueError`` for a device count outside 1..MAX_SIMULATED_DEVICES."""
    if not 0 < n <= MAX_SIMULATED_DEVICES:
        raise ValueError(
            f"{option} must be in 1..{MAX_SIMULATED_DEVICES} (simulated CPU devices), got {n}"
        )
    return n


def check_mode(mode: str) -> str:
    """``mode`` itself, or the one ``ValueError`` for an unknown mode."""
    if mode not in RULES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    return mode


def rule(mode: str, kind: str) -> Rule:
    """Mesh axis per dimension for a parameter of ``kind`` under ``mode`` (() = replicated)."""
    return RULES[check_mode(mode)].get(kind, ())


def splits_tensor_work(mode: str) -> bool:
    """Whether the tensor axis splits the work of a step (not just replicates it)."""
    return any(TENSOR in r for r in RULES[check_mode(mode)].values())


def shards_over_data(mode: str) -> bool:
    """Whether parameters are split over the data axis (ZeRO-3 / FSDP)."""
    return any(DATA in r for r in RULES[check_mode(mode)].values())


def default_mesh_shape(mode: str, n_devices: int) -> tuple[int, int]:
    """dp/fsdp ``(n, 1)``, tp ``(1, n)``, fsdp_tp ``(n/2, 2)``, none ``(1, 1)``."""
    check_mode(mode)
    if mode == "none":
        return (1, 1)
    if mode in ("dp", "fsdp"):
        return (n_devices, 1)
    if mode == "tp":
        return (1, n_devices)
    return (max(n_devices // 2, 1), 2)


def shard_counts(rule_: Rule, mesh: tuple[int, int]) -> tuple[int, ...]:
    """How many ways each dimension is split on ``mesh`` = (data, tensor)."""
    sizes = dict(zip(MESH_AXES, mesh, strict=True))
    return tuple(1 if axis is None else sizes[axis] for axis in rule_)


def validate_mesh(mode: str, mesh: tuple[int, int]) -> None:
    """The mesh shape a mode allows, as one ``ValueError`` naming what would be valid."""
    check_mode(mode)
    if len(mesh) != 2 or any(int(a) <= 0 for a in mesh):
        raise ValueError(f"bad mesh {mesh!r}; expected (data, tensor) with positive integers")
    data, tensor = mesh
    data_one, tensor_one, both = _MESH_RULES[mode]
    if mode == "none" and data * tensor != 1:
        raise ValueError(f"mode none runs on one device; got mesh {data}x{tensor}, use 1x1")
    if tensor_one and tensor != 1:
        raise ValueError(
            f"mode {mode} needs tensor=1; got mesh {data}x{tensor}, use {data * tensor}x1"
        )
    if data_one and data != 1:
        raise ValueError(
            f"mode {mode} needs data=1; got mesh {data}x{tensor}, use 1x{data * tensor}"
        )
    if both and (data == 1 or tensor == 1):
        raise ValueError(
            f"mode {mode} needs data>1 and tensor>1; got mesh {data}x{tensor} (e.g. use 4x2)"
        )


def validate_plan(
    mode: str,
    mesh: tuple[int, int],
    *,
    tensor_divides: Sequence[tuple[str, int]],
    batch: int,
    model_name: str,
    n_devices: int | None = None,
) -> None:
    """Raise ``ValueError`` (one line, naming the value and what is valid) for a plan that cannot
    run: the mode's mesh shape, the device count (when known), the dimensions the tensor axis
    splits (``tensor_divides``: (name, size) pairs, e.g. heads), and the batch over data."""
    validate_mesh(mode, mesh)
    data, tensor = mesh
    if n_devices is not None and mode != "none" and data * tensor != n_devices:
        raise ValueError(
            f"mesh {data}x{tensor} needs {data * tensor} devices but {n_devices} are available; "
            f"choose D·T = {n_devices}"
        )
    for name, value in tensor_divides:
        if value % tensor:
            raise ValueError(
                f"{name}={value} of {model_name} is not divisible by tensor={tensor}; "
                f"valid tensor sizes divide {value}"
            )
    if batch % data:
        raise ValueError(
            f"global batch {batch} is not divisible by data={data}; use a multiple of {data}"
        )
