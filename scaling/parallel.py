"""Sharding of the shared model on a 2-D mesh ``("data", "tensor")``.

Every parameter (and each optimizer moment, which mirrors its parameter) gets a PartitionSpec
from the table below, chosen by the parameter's *kind* (its path) and the mode. The leading
axis of stacked layer parameters (``L``) is never split: the layers are scanned over it.

================  ===============  ========  =============  ==============  ===============
kind              shape            none/dp   fsdp           tp              fsdp_tp
================  ===============  ========  =============  ==============  ===============
embed             (V, d)           P()       P(data, -)     P(tensor, -)    P(tensor, data)
pos_embed         (T, d)           P()       P(-, data)     P()             P(-, data)
q, k, v, w1, w3   (L, d, out)      P()       P(-, data, -)  P(-, -, tensor) P(-, data, tensor)
  (column split)
o, w2             (L, in, d)       P()       P(-, data, -)  P(-, tensor, -) P(-, tensor, data)
  (row split)
head              (d, V)           P()       P(data, -)     P(-, tensor)    P(data, tensor)
norms             (L, d) / (d,)    P()       P()            P()             P()
batch             (B, T+1)         P(data)   P(data)        P(data)         P(data)
================  ===============  ========  =============  ==============  ===============

Megatron-style tp: the first matrix of attention (q, k, v) and of the FFN (w1, w3) is split by
columns and the second (o, w2) by rows, so each block needs one all-reduce forward and one
backward per sub-layer. fsdp splits the same matrices over ``data`` and lets XLA all-gather
them where they are used. Under tp the data axis has size 1, so ``P(data)`` keeps the batch
replicated.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling.config import MODES, ModelConfig

DATA, TENSOR = "data", "tensor"
COLUMN = ("q", "k", "v", "w1", "w3")
ROW = ("o", "w2")

SPEC_TABLE: dict[str, dict[str, P]] = {
    "none": {},
    "dp": {},
    "fsdp": {
        "embed": P(DATA, None),
        "pos_embed": P(None, DATA),
        "column": P(None, DATA, None),
        "row": P(None, DATA, None),
        "head": P(DATA, None),
    },
    "tp": {
        "embed": P(TENSOR, None),
        "column": P(None, None, TENSOR),
        "row": P(None, TENSOR, None),
        "head": P(None, TENSOR),
    },
    "fsdp_tp": {
        "embed": P(TENSOR, DATA),
        "pos_embed": P(None, DATA),
        "column": P(None, DATA, TENSOR),
        "row": P(None, TENSOR, DATA),
        "head": P(DATA, TENSOR),
    },
}
BATCH_SPEC = P(DATA)


def param_kind(path: tuple[str, ...]) -> str:
    """Classify a parameter by its path, e.g. ('blocks', 'attn', 'q', 'weight') → 'column'."""
    names = [str(p) for p in path]
    if any("norm" in n for n in names):
        return "norm"
    if names[0] in ("embed", "pos_embed", "head"):
        return names[0]
    if len(names) >= 2 and names[-2] in COLUMN:
        return "column"
    if len(names) >= 2 and names[-2] in ROW:
        return "row"
    raise ValueError(f"no sharding rule for parameter {'/'.join(names)}")


def param_spec(path: tuple[str, ...], mode: str) -> P:
    return SPEC_TABLE[mode].get(param_kind(path), P())


def key_names(key_path) -> tuple[str, ...]:
    return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in key_path)


def state_specs(tree, mode: str):
    """PartitionSpecs for any tree whose leaves sit under parameter paths: the parameters and
    the optimizer moments (``mu['blocks']['attn']['q']['weight']`` follows its parameter).
    Leaves outside parameter paths (Adam's step count) are replicated."""

    def spec(key_path, leaf) -> P:
        names = key_names(key_path)
        roots = [i for i, name in enumerate(names) if name in PARAM_ROOTS]
        if not roots:
            return P()
        candidate = param_spec(names[roots[0] :], mode)
        return candidate if len(candidate) <= np.ndim(leaf) else P()

    return jax.tree_util.tree_map_with_path(spec, tree)


PARAM_ROOTS = ("embed", "pos_embed", "blocks", "final_norm", "head")


def default_mesh_shape(mode: str, n_devices: int) -> tuple[int, int]:
    """dp/fsdp ``(n, 1)``, tp ``(1, n)``, fsdp_tp ``(n/2, 2)``, none ``(1, 1)``."""
    if mode == "none":
        return (1, 1)
    if mode in ("dp", "fsdp"):
        return (n_devices, 1)
    if mode == "tp":
        return (1, n_devices)
    return (max(n_devices // 2, 1), 2)


def validate(
    mode: str, mesh_shape: tuple[int, int], n_devices: int, cfg: ModelConfig, batch: int
) -> None:
    """Raise ``ValueError`` (one line, naming the value and what is valid) for a bad plan."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    data, tensor = mesh_shape
    if mode == "none" and data * tensor != 1:
        raise ValueError(f"mode none runs on one device; got mesh {data}x{tensor}, use 1x1")
    if mode in ("dp", "fsdp") and tensor != 1:
        raise ValueError(
            f"mode {mode} needs tensor=1; got mesh {data}x{tensor}, use {data * tensor}x1"
        )
    if mode == "tp" and data != 1:
        raise ValueError(f"mode tp needs data=1; got mesh {data}x{tensor}, use 1x{data * tensor}")
    if mode == "fsdp_tp" and (data == 1 or tensor == 1):
        raise ValueError(
            f"mode fsdp_tp needs data>1 and tensor>1; got mesh {data}x{tensor} (e.g. use 4x2)"
        )
    needed = data * tensor
    if mode != "none" and needed != n_devices:
        raise ValueError(
            f"mesh {data}x{tensor} needs {needed} devices but {n_devices} are available; "
            f"choose D·T = {n_devices}"
        )
    for name, value in (
        ("n_heads", cfg.n_heads),
        ("n_kv_heads", cfg.kv_heads),
        ("d_ff", cfg.d_ff),
        ("vocab_size", cfg.vocab_size),
    ):
        if value % tensor:
            raise ValueError(
                f"{name}={value} of {cfg.name} is not divisible by tensor={tensor}; "
                f"valid tensor sizes divide {value}"
            )
    if batch % data:
        raise ValueError(
            f"global batch {batch} is not divisible by data={data}; use a multiple of {data}"
        )


def make_mesh(mesh_shape: tuple[int, int], devices=None) -> Mesh:
    """A ``(data, tensor)`` mesh with Auto axis types (jax ≥ 0.9 defaults to Explicit)."""
    auto = (jax.sharding.AxisType.Auto,) * 2
    if devices is None:
        return jax.make_mesh(mesh_shape, (DATA, TENSOR), axis_types=auto)
    grid = np.asarray(devices).reshape(mesh_shape)
    return Mesh(grid, (DATA, TENSOR), axis_types=auto)


def shardings(tree, mode: str, mesh: Mesh):
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        state_specs(tree, mode),
        is_leaf=lambda x: isinstance(x, P),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, BATCH_SPEC)


def local_rows(sharding: NamedSharding, global_shape: tuple[int, ...]) -> slice:
    """The contiguous rows of a global batch that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(global_shape).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_shape[0] if rows.stop is None else rows.stop)
    return slice(min(starts), max(stops))


def place_batch(local: np.ndarray, sharding: NamedSharding, global_shape) -> jax.Array:
    """Assemble a global batch from each process's local rows."""
    return jax.make_array_from_process_local_data(sharding, local, global_shape)


def set_cpu_devices(n: int) -> None:
    """Simulate ``n`` CPU devices. Effective only before jax creates its backend; afterwards
    it is accepted when the CPU backend already has ``n`` devices and refused otherwise."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        have = len(jax.devices("cpu"))
        if have != n:
            raise ValueError(
                f"cannot simulate {n} CPU devices: jax already started with {have}; "
                "set --devices before anything initialises jax"
            )
        return
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    jax.config.update("jax_num_cpu_devices", n)


def init_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: int = 120
) -> None:
    """Join a multi-process job through ``jax.distributed`` (flags, or auto-detected by jax on
    SLURM / Open MPI / Cloud TPU when no flags are given)."""
    kwargs = {"initialization_timeout": timeout_s}
    if coordinator is not None:
        kwargs.update(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        if coordinator.startswith("127.0.0.1:") and process_id == 0:
            kwargs["coordinator_bind_address"] = coordinator
    jax.distributed.initialize(**kwargs)
