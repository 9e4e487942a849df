"""Sharding of the shared model on a 2-D mesh ``("data", "tensor")``, in jax terms.

Which mesh axis splits which dimension of each parameter is data in ``scaling.sharding``
(``RULES``, with the table of every kind per mode); which kind a parameter is comes from its
role (``scaling.roles``). This module turns them into ``PartitionSpec``s and ``NamedSharding``s,
builds the mesh, places batches, simulates CPU devices and joins ``jax.distributed``.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from scaling import sharding
from scaling.config import ModelConfig
from scaling.roles import param_path, role_of, tensor_split_dims, under_param
from scaling.sharding import DATA, TENSOR

BATCH_SPEC = P(*sharding.BATCH_RULE)


def param_spec(path: tuple[str, ...], mode: str) -> P:
    """The PartitionSpec of the parameter at ``path`` under ``mode``."""
    return P(*sharding.rule(mode, role_of(path).kind))


def state_specs(tree, mode: str):
    """PartitionSpecs for any tree whose leaves sit under parameter paths: the parameters and
    the optimizer moments (``mu['blocks']['attn']['q']['weight']`` follows its parameter).
    Leaves outside parameter paths (Adam's step count) are replicated."""
    sharding.check_mode(mode)

    def spec(key_path, leaf) -> P:
        path = under_param(param_path(key_path))
        if path is None:
            return P()
        candidate = param_spec(path, mode)
        return candidate if len(candidate) <= np.ndim(leaf) else P()

    return jax.tree_util.tree_map_with_path(spec, tree)


default_mesh_shape = sharding.default_mesh_shape


def validate(
    mode: str, mesh_shape: tuple[int, int], n_devices: int, cfg: ModelConfig, batch: int
) -> None:
    """Raise ``ValueError`` (one line, naming the value and what is valid) for a bad plan."""
    sharding.validate_plan(
        mode,
        mesh_shape,
        tensor_divides=tensor_split_dims(cfg),
        batch=batch,
        model_name=cfg.name,
        n_devices=n_devices,
        n_experts=cfg.n_experts,
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


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Several steps' batches stacked on a leading axis (``RunConfig.steps_per_call``): each
    batch split as ``batch_sharding`` splits one, the step axis whole on every device."""
    return NamedSharding(mesh, P(None, *BATCH_SPEC))


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

    sharding.check_device_count(n)
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


DEFAULT_INIT_TIMEOUT_S = 120.0
JAX_TIMEOUT_MARGIN_S = 30  # jax's own timeout (which aborts the process) comes after ours


def init_distributed(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    timeout_s: float = DEFAULT_INIT_TIMEOUT_S,
) -> None:
    """Join a multi-process job through ``jax.distributed`` (flags, or auto-detected by jax on
    SLURM / Open MPI / Cloud TPU when no flags are given).

    When not every process has joined within ``timeout_s``, this process prints one line
    naming who is missing and exits with code 2 (jax itself would abort with a fatal log
    line and exit 134 only later)."""
    kwargs = {"initialization_timeout": int(timeout_s) + JAX_TIMEOUT_MARGIN_S}
    if coordinator is not None:
        kwargs.update(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
        if coordinator.startswith("127.0.0.1:") and process_id == 0:
            kwargs["coordinator_bind_address"] = coordinator
    joined = threading.Event()
    message = _missing_peer_message(coordinator, num_processes, process_id, timeout_s)
    threading.Thread(target=_init_watchdog, args=(joined, timeout_s, message), daemon=True).start()
    try:
        jax.distributed.initialize(**kwargs)
    finally:
        joined.set()


def _missing_peer_message(
    coordinator: str | None, num_processes: int | None, process_id: int | None, timeout_s: float
) -> str:
    where = f" (coordinator {coordinator})" if coordinator else ""
    hint = (
        "start every process with the same --coordinator and --num-processes, "
        "or raise --init-timeout"
    )
    if num_processes == 2 and process_id in (0, 1):
        other = 1 - process_id
        return f"process {other} of 2 did not join within {timeout_s:g} s{where}; {hint}"
    this = "" if process_id is None else f" (this is process {process_id})"
    count = f" {num_processes}" if num_processes else ""
    return f"not all{count} processes joined within {timeout_s:g} s{where}{this}; {hint}"


def _init_watchdog(joined: threading.Event, timeout_s: float, message: str) -> None:
    # jax.distributed.initialize blocks in C++ (with the GIL released) and cannot be
    # interrupted; leaving the process is the only way out before jax's own abort.
    if not joined.wait(timeout_s):
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(2)
