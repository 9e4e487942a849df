"""Cross-check of the analytic estimator (``scaling.estimate``) against XLA's own counts of the
real sharded train step (``scaling.train.plan``), lowered on abstract inputs: no parameter
memory is allocated.

FLOPs. XLA counts a ``scan`` body once, not once per layer (FACTS.md: 0.376× at 12 layers), so
the count comes from an *unrolled* variant of the step (``ModelConfig.scan_layers=False``),
the same computation with a Python loop over the layers:

- ``unrolled lowering``: ``lowered.cost_analysis()`` of the unrolled step, no compile. For a
  sharded step this is the *global* program (the SPMD partitioner has not run yet), so it is
  compared with the analytic figure for all devices.
- ``unrolled compile (per device)``: for a sharded step, the unrolled step is also compiled
  and ``compiled.cost_analysis()`` gives the per-device program after SPMD partitioning; it is
  compared with the analytic per-device figure. This is the slow part on big models.

The analytic side is the hardware matmul FLOPs (``FlopCounts.hardware_per_step``: 6·N + full
attention + remat recompute, split over the devices that share the work) plus the elementwise
and reduction FLOPs in XLA's convention (``estimate.elementwise_flops``: norms, softmax, RoPE,
activations, loss, and the ~21 optimizer FLOPs per parameter a device holds, so dp repeats
them on every device) plus what only the unrolled lowering contains ((L-1) adds per stacked
layer parameter). ``xla_flops_ratio`` divides by that total; ``xla_flops_matmul_ratio`` by the
matmuls alone (1.02-1.03 at small batch: what a matmul-only model misses). Measured on CPU
(jax 0.10.2, batch 2, seq 128): unrolled lowering / analytic = 1.0000 for tiny, 10m and 125m
(matmuls alone: 1.029, 1.026, 1.020), and within 1.1e-5 for GPT-2, Gemma, Mistral and a
model with every optional component (tiny's widths; remat none/full/dots; float32 and
bfloat16); fsdp_tp 4x2 on tiny, compiled per device: 1.01 (the compiled program adds the
reductions inside the collectives and XLA's rewrites).

Memory. The real (scanned) step is compiled and ``compiled.memory_analysis()`` read per
device: ``argument`` (parameters and AdamW moments: 12 bytes per parameter held), ``output``
(the same, aliased to the donated inputs: ``alias``), ``temp`` (gradients, saved activations,
backward temporaries). ``xla_memory_ratio`` = (argument + temp) / analytic total (params +
grads + optimizer + activations). What remains different:

- XLA's temp also holds backward temporaries the estimator does not model (a layer's score
  gradients, the logits in float32 next to their exp and gradient, the optimizer's update
  tree): measured (argument + temp) / analytic on CPU, f32, remat none: tiny 1.02 (seq 128)
  to 1.08 (seq 512), 10m 1.02, 125m 1.04.
- remat ``dots`` / ``full``: XLA fuses the recomputed elementwise chains; the estimator's
  one-layer recompute is an approximation (tiny, seq 256: full 1.02, dots 0.87).
- bfloat16 on CPU: XLA's CPU backend computes bf16 elementwise ops in float32, so temp does
  not halve (tiny, seq 256: 1.39); the estimator models an accelerator with native bf16.
- sharded modes: per-device temp also holds collective buffers and the gathered weights of
  the layer in use. Measured on tiny (batch 8, seq 128, 8 devices), (argument + temp) /
  analytic: dp 1.06, fsdp 1.12, tp 1.09, fsdp_tp 1.04; FLOPs per device 1.002-1.007. (Before
  the model constrained its residual stream to batch-over-data, fsdp_tp came out at 2.7-3.0×:
  GSPMD had carried the parameters' width-over-data split into the activations.)

Communication. The real (scanned) step is compiled once more and the collectives of its HLO
right after SPMD partitioning are summed per device per step (``hlo_comm``: ring bytes, scan
bodies × their trip counts, the dtype moved before CPU's f32 rewrite), next to the analytic
``comm_bytes_per_device``. ``xla_comm_ratio`` = XLA ÷ analytic; measured on tiny and 10m,
every mode, f32 and bf16, remat none/full/dots, tied and untied: 0.998-1.002 (gpt2 with
learned positions 0.94-1.06).

jax is imported on first use, so importing this module (and ``scaling estimate`` without
``--compile``) stays fast.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from scaling import sharding
from scaling.config import RunConfig
from scaling.estimate import (
    comm_bytes_per_device,
    elementwise_flops,
    estimate,
    memory_per_device,
)
from scaling.estimate.hardware import HARDWARE, HardwareProfile
from scaling.estimate.roofline import DATASHEET, Efficiency

METHOD_LOWERING = "unrolled lowering"
METHOD_COMPILE = "unrolled compile (per device)"
_ANY_HW = HARDWARE["h100"]


def _ratio(numerator: float | None, denominator: float) -> float | None:
    return None if numerator is None or denominator <= 0 else numerator / denominator


def unrolled(run: RunConfig) -> RunConfig:
    """The same run with the layer loop unrolled (what XLA's FLOP count needs)."""
    return dataclasses.replace(run, model=dataclasses.replace(run.model, scan_layers=False))


def xla_cross_check(
    run: RunConfig,
    *,
    flops: bool = True,
    memory: bool = True,
    per_device_flops: bool = True,
    comm: bool = True,
) -> dict[str, Any]:
    """XLA's FLOPs, memory and communication for ``run``'s train step, next to the analytic
    figures.

    ``run.mode``/``run.mesh`` pick the sharding as ``scaling.train.plan`` does (the mesh
    defaults per mode over all devices; ``none`` uses one). FLOPs come from the unrolled step
    (see the module docstring), memory from compiling the real scanned step.
    ``per_device_flops=False`` skips the per-device compile of a sharded unrolled step (the
    global lowering is still compared). Returns a flat JSON-serialisable dict: FLOPs per step,
    bytes per device, seconds. Raises ``ValueError`` for a run ``plan`` rejects.
    """
    import jax

    from scaling.train import plan

    cfg = run.model
    out: dict[str, Any] = {}
    if flops:
        out.update(_flop_check(run, jax, plan, per_device_flops))
    if memory:
        out.update(_memory_check(run, jax, plan))
    if comm:
        out.update(_comm_check(run))
    if not out:
        return out
    out["xla_backend"] = jax.default_backend()
    out["size"] = cfg.name
    return out


def _flop_check(run: RunConfig, jax, plan, per_device: bool) -> dict[str, Any]:
    p = plan(unrolled(run))
    mesh = p.mesh_shape if run.mode != "none" else (1, 1)
    n = mesh[0] * mesh[1]
    t0 = time.perf_counter()
    with jax.set_mesh(p.mesh):
        lowered = p.step.lower(*p.abstract_inputs())
    lower_s = time.perf_counter() - t0
    from scaling.measure import cost_figures

    cost = cost_figures(lowered)
    if run.model.moe and sharding.moe_axes(run.mode)[0] is not None:
        # the MoE layers' shard_map body is lowered at one device's shapes: the global count
        # is the one-device program's (capacity routes per device there: ≤ E·D rows apart)
        cost = cost_figures(_global_lowering(run, jax, plan))

    # Analytic: matmuls (split over the devices that share the work) + elementwise.
    one = _analytic(run, mode="none", mesh=None)
    each = _analytic(run, mode=run.mode, mesh=mesh)
    global_flops = cost.get("flops")
    out: dict[str, Any] = {
        "xla_flops_global_per_step": global_flops,
        "analytic_flops_global_per_step": one["total"],
        "xla_flops_global_ratio": _ratio(global_flops, one["total"]),
        "xla_transcendentals_global_per_step": cost.get("transcendentals"),
        "xla_lower_s": lower_s,
        "n_devices": n,
        "mesh": list(mesh),
    }
    if n == 1:
        per_step, method, compile_s = global_flops, METHOD_LOWERING, 0.0
    elif per_device:
        t0 = time.perf_counter()
        with jax.set_mesh(p.mesh):
            compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        per_step, method = cost_figures(compiled).get("flops"), METHOD_COMPILE
    else:
        per_step, method, compile_s = None, METHOD_LOWERING + " (global only)", 0.0
    out.update({
        "xla_flops_method": method,
        "xla_flops_per_step_per_device": per_step,
        "analytic_flops_per_device": each["total"],
        "analytic_matmul_flops_per_device": each["matmul"],
        "analytic_elementwise_flops_per_device": each["elementwise"],
        "analytic_unrolled_stacking_flops_per_device": each["stacking"],
        "xla_flops_ratio": _ratio(per_step, each["total"]),
        "xla_flops_matmul_ratio": _ratio(per_step, each["matmul"]),
        "xla_flops_compile_s": compile_s,
    })  # fmt: skip
    return out


def _global_lowering(run: RunConfig, jax, plan):
    """The unrolled step of ``run`` on one device (mode ``none``), lowered."""
    p = plan(unrolled(dataclasses.replace(run, mode="none", mesh=None)))
    with jax.set_mesh(p.mesh):
        return p.step.lower(*p.abstract_inputs())


def _analytic(run: RunConfig, *, mode: str, mesh) -> dict[str, float]:
    """Matmul + elementwise FLOPs per device of the unrolled step, in XLA's convention."""
    cfg = run.model
    # The FLOP split over devices does not depend on the hardware profile.
    est = estimate(cfg, mode=mode, mesh=mesh, batch=run.batch, seq=run.seq, hardware=_ANY_HW)
    elem = elementwise_flops(cfg, batch=run.batch, seq=run.seq, mode=mode, mesh=mesh, unrolled=True)
    matmul = est.hardware_flops_per_device
    return {
        "matmul": matmul,
        "elementwise": elem.total - elem.unrolled_stacking,
        "stacking": elem.unrolled_stacking,
        "total": matmul + elem.total,
    }


def _memory_check(run: RunConfig, jax, plan) -> dict[str, Any]:
    p = plan(run)
    mesh = p.mesh_shape if run.mode != "none" else (1, 1)
    t0 = time.perf_counter()
    with jax.set_mesh(p.mesh):
        compiled = p.step.lower(*p.abstract_inputs()).compile()
    compile_s = time.perf_counter() - t0
    from scaling.measure import memory_figures

    figures = memory_figures(compiled)
    analytic = memory_per_device(run.model, mode=run.mode, mesh=mesh, batch=run.batch,
                                 seq=run.seq, loss_chunk=run.loss_chunk)  # fmt: skip
    out: dict[str, Any] = {"xla_compile_s": compile_s, "analytic_memory_per_device_bytes":
                           analytic.to_dict()}  # fmt: skip
    if not figures:
        out.update({"xla_memory": None, "xla_memory_ratio": None})
        return out
    xla = {name: int(figures[f"{name}_bytes"]) for name in ("argument", "output", "temp", "alias")}
    state = analytic.params + analytic.optimizer
    out.update({
        "xla_memory": xla,
        "xla_memory_ratio": _ratio(xla["argument"] + xla["temp"], analytic.total),
        "xla_argument_ratio": _ratio(xla["argument"], state),  # params + AdamW moments
        "xla_temp_ratio": _ratio(xla["temp"], analytic.grads + analytic.activations),
    })  # fmt: skip
    return out


def xla_comm_bytes(run: RunConfig) -> dict[str, float]:
    """Bytes one device sends per step by collective kind (and ``total``), read off the
    partitioned HLO of ``run``'s real step (``hlo_comm``); all zero on one device, without
    compiling."""
    return _partitioned_comm(run)[0]


def _partitioned_comm(run: RunConfig) -> tuple[dict[str, float], tuple[int, int] | None]:
    from scaling.estimate.hlo_comm import comm_bytes_by_kind

    if run.mode == "none":
        return comm_bytes_by_kind("ENTRY %main () -> () {\n}\n"), None
    import jax

    from scaling.measure import partitioned_hlo
    from scaling.train import plan

    p = plan(run)
    with jax.set_mesh(p.mesh):
        text = partitioned_hlo(p.step.lower(*p.abstract_inputs()))
    return comm_bytes_by_kind(text), p.mesh_shape


def _comm_check(run: RunConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    xla, mesh = _partitioned_comm(run)
    analytic = comm_bytes_per_device(
        run.model, mode=run.mode, mesh=mesh, batch=run.batch, seq=run.seq
    )
    return {
        "xla_comm_bytes_per_device_per_step": xla["total"],
        "xla_comm_bytes_by_collective": {k: v for k, v in xla.items() if k != "total"},
        "analytic_comm_bytes_per_device_per_step": analytic.total,
        "xla_comm_ratio": _ratio(xla["total"], analytic.total),
        "xla_comm_compile_s": time.perf_counter() - t0,
    }


def report(
    runs: list[RunConfig],
    *,
    hardware: HardwareProfile,
    causal_halving: bool = False,
    compile: bool = False,
    efficiency: Efficiency | None = None,
) -> list[dict[str, Any]]:
    """One flat dict per run: ``Estimate.to_dict()`` and, with ``compile``, the XLA
    cross-check (``xla_cross_check``) merged in. Raises ``ValueError`` for bad input."""
    rows = []
    for run in runs:
        est = estimate(
            run.model, mode=run.mode, mesh=run.mesh, batch=run.batch, seq=run.seq,
            hardware=hardware, causal_halving=causal_halving, efficiency=efficiency or DATASHEET,
            loss_chunk=run.loss_chunk,
        )  # fmt: skip
        row: dict[str, Any] = est.to_dict()
        row["peak_source"] = hardware.source
        if compile:
            check = xla_cross_check(run)
            check.pop("size", None)
            check.pop("mesh", None)
            check.pop("n_devices", None)
            row.update(check)
        rows.append(row)
    return rows
