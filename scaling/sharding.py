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
router            (L, d, E)        -         (-, data, -)   -               (-, data, -)
expert_column     (L, E, d, f)     -         (-,-,data,-)   (-,-,-,tensor)  (-,-,data,tensor)
  every expert's w1, w3
expert_row        (L, E, f, d)     -         (-,-,data,-)   (-,-,tensor,-)  (-,-,tensor,data)
  every expert's w2
batch             (B, T+1)         (data)    (data)         (data)          (data)
================  ===============  ========  =============  ==============  ===============

Expert parallelism (mixture-of-experts models only, ``scaling.moe``): ``ep`` splits the expert
axis E of the expert matrices over ``data`` and replicates everything else (dp for the dense
parts); ``fsdp_ep`` does the same for the experts and fsdp for the rest. Mesh ``(n, 1)``;
n_experts must be divisible by the data axis (``validate_plan``).

================  ===============  ==================  ==================
kind              shape            ep                  fsdp_ep
================  ===============  ==================  ==================
expert_column     (L, E, d, f)     (-, data, -, -)     (-, data, -, -)
expert_row        (L, E, f, d)     (-, data, -, -)     (-, data, -, -)
router            (L, d, E)        -                   (-, data, -)
embed/column/row  as dp            -                   as fsdp
batch             (B, T+1)         (data)              (data)
================  ===============  ==================  ==================

Collectives of ep per MoE layer (written out in ``scaling.moe.expert_parallel_ffn``, a
``shard_map`` over ``data``; counted in ``scaling.estimate.comm``): each device routes its own
tokens. Capacity dispatch sends its (E, C, d) buffer to the experts' devices and back (two
all-to-alls forward, two backward); dropless dispatch all-gathers the tokens and their routing
to every device and reduce-scatters the experts' outputs (and the transposes backward). The
expert gradients stay on their device (no all-reduce over data for them); the dense parts'
gradients are all-reduced over data as in dp. fsdp_ep adds fsdp's all-gathers/reduce-scatters
of the dense parts.

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
        "router": (None, DATA, None),
        "expert_column": (None, None, DATA, None),
        "expert_row": (None, None, DATA, None),
    },
    "tp": {
        "embed": (TENSOR, None),
        "column": (None, None, TENSOR),
        "row": (None, TENSOR, None),
        "head": (None, TENSOR),
        "column_bias": (None, TENSOR),
        "head_bias": (TENSOR,),
        "expert_column": (None, None, None, TENSOR),
        "expert_row": (None, None, TENSOR, None),
    },
    "fsdp_tp": {
        "embed": (TENSOR, DATA),
        "position": (None, DATA),
        "column": (None, DATA, TENSOR),
        "row": (None, TENSOR, DATA),
        "head": (DATA, TENSOR),
        "column_bias": (None, TENSOR),
        "head_bias": (TENSOR,),
        "router": (None, DATA, None),
        "expert_column": (None, None, DATA, TENSOR),
        "expert_row": (None, None, TENSOR, DATA),
    },
}
_EXPERTS_OVER_DATA: dict[str, Rule] = {
    "expert_column": (None, DATA, None, None),
    "expert_row": (None, DATA, None, None),
}
RULES["ep"] = dict(_EXPERTS_OVER_DATA)
RULES["fsdp_ep"] = {**RULES["fsdp"], **_EXPERTS_OVER_DATA}
BATCH_RULE: Rule = (DATA,)
MODES: tuple[str, ...] = tuple(RULES)
# The expert-parallel modes need a mixture-of-experts model; the others run any model.
EXPERT_MODES: tuple[str, ...] = ("ep", "fsdp_ep")
DENSE_MODES: tuple[str, ...] = tuple(m for m in MODES if m not in EXPERT_MODES)

# mode → (data axis must be 1, tensor axis must be 1, both axes must be > 1)
_MESH_RULES: dict[str, tuple[bool, bool, bool]] = {
    "none": (True, True, False),
    "dp": (False, True, False),
    "fsdp": (False, True, False),
    "tp": (True, False, False),
    "fsdp_tp": (False, False, True),
    "ep": (False, True, False),
    "fsdp_ep": (False, True, False),
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
    """dp/fsdp/ep/fsdp_ep ``(n, 1)``, tp ``(1, n)``, fsdp_tp ``(n/2, 2)``, none ``(1, 1)``."""
    check_mode(mode)
    if mode == "none":
        return (1, 1)
    if mode in ("dp", "fsdp", "ep", "fsdp_ep"):
        return (n_devices, 1)
    if mode == "tp":
        return (1, n_devices)
    return (max(n_devices // 2, 1), 2)


def moe_axes(mode: str) -> tuple[str | None, str | None]:
    """(token axis, expert axis) of the MoE layers' explicit dispatch (``scaling.moe``): the
    modes that split the batch over data route each device's tokens on that device (fsdp_tp
    leaves the tensor axis's split of the expert matrices to GSPMD), and the expert-parallel
    ones split the experts over the same axis; (None, None) where the mesh has no data axis
    (``none``, ``tp``): the layer is left to GSPMD."""
    if _MESH_RULES[check_mode(mode)][0]:
        return None, None
    return DATA, (DATA if splits_experts(mode) else None)


def expert_data_dims(mode: str) -> tuple[int | None, int | None]:
    """The dimension of one layer's expert matrices, w1/w3 ``(E, d, f)`` and w2 ``(E, f, d)``,
    that the mode splits over data without splitting the experts (fsdp's ZeRO-3 split); None
    where it is not split over data."""
    if splits_experts(mode):
        return None, None
    rules = RULES[check_mode(mode)]
    dims = [rules.get(kind, ()) for kind in ("expert_column", "expert_row")]
    column, row = (rule.index(DATA) - 1 if DATA in rule else None for rule in dims)
    return column, row


def splits_experts(mode: str) -> bool:
    """Whether the mode splits the expert axis over devices (expert parallelism)."""
    return RULES[check_mode(mode)].get("expert_column", (None, None))[1] == DATA


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
    n_experts: int = 0,
) -> None:
    """Raise ``ValueError`` (one line, naming the value and what is valid) for a plan that cannot
    run: the mode's mesh shape, the device count (when known), the dimensions the tensor axis
    splits (``tensor_divides``: (name, size) pairs, e.g. heads), the batch over data, and for
    the expert-parallel modes the experts (``n_experts``) over data."""
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
    if splits_experts(mode) and n_experts == 0:
        raise ValueError(
            f"mode {mode} splits experts but {model_name} is dense (n_experts=0); "
            "use a mixture-of-experts model or another mode"
        )
    if splits_experts(mode) and n_experts % data:
        raise ValueError(
            f"n_experts={n_experts} of {model_name} is not divisible by data={data}; "
            f"valid data sizes divide {n_experts}"
        )
    if batch % data:
        raise ValueError(
            f"global batch {batch} is not divisible by data={data}; use a multiple of {data}"
        )
