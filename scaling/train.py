"""Training core: loss, schedule, the optax chain, the jitted (donating) step, the run loop.

The train state is ``(params, opt_state, step)`` with params as a plain nested dict of arrays
(``nnx.to_pure_dict``), so optax, Orbax and the PartitionSpec tables all see ordinary pytrees.
This module returns results and never prints.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from scaling import attention, host_loop, moe, parallel
from scaling.config import RunConfig
from scaling.data import batch_dataset, entropy_floor, loader
from scaling.estimate import param_counts
from scaling.evaluate import Evaluator, cross_entropy  # noqa: F401 (tests import it here)
from scaling.loss import next_token_loss_with_aux
from scaling.measure import MatmulProbe, StepClock, median_s, memory_figures
from scaling.model import build_model
from scaling.mup import lr_multipliers
from scaling.profile import HLO_FILE
from scaling.records import write_json_atomic, write_text_atomic
from scaling.roles import param_path, role_of


def cosine_lr(step, *, max_lr: float, min_lr: float, warmup: int, total: int):
    """CS336 form: linear warm-up to max_lr over ``warmup`` steps, cosine to min_lr at
    ``total``, then min_lr. Works on Python ints and traced arrays."""
    step = jnp.asarray(step, jnp.float32)
    warm = max_lr * step / max(warmup, 1)
    progress = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
    cosine = min_lr + 0.5 * (1.0 + jnp.cos(math.pi * progress)) * (max_lr - min_lr)
    return jnp.where(step < warmup, warm, jnp.where(step <= total, cosine, min_lr))


def make_schedule(run: RunConfig) -> optax.Schedule:
    return lambda step: cosine_lr(
        step,
        max_lr=run.lr,
        min_lr=run.lr * run.min_lr_ratio,
        warmup=run.lr_warmup_steps,
        total=max(run.steps, 1),
    )


def decay_mask(params) -> Any:
    """Weight decay where the parameter's role takes it (``Role.decayed``: matrices and
    embeddings, not norm gains or biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: role_of(param_path(path)).decayed, params
    )


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update leaf by a fixed per-parameter factor (muP's learning rates)."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(run: RunConfig, params) -> optax.GradientTransformation:
    """clip → Adam → per-parameter LR multipliers → weight decay → −lr(t).

    This is optax's AdamW (``scale_by_adam``, ``add_decayed_weights``, ``scale_by_learning_rate``)
    with global-norm clipping in front. Weight decay sits after the muP multipliers so that the
    decay per step, lr(t)·wd·w, does not depend on width. One Adam state for all parameters.
    """
    parts = [optax.clip_by_global_norm(run.grad_clip), optax.scale_by_adam(run.beta1, run.beta2)]
    if run.model.mup:
        parts.append(scale_by_tree(lr_multipliers(params, run.model)))
    parts += [
        optax.add_decayed_weights(run.weight_decay, mask=decay_mask(params)),
        optax.scale_by_learning_rate(make_schedule(run)),
    ]
    return optax.chain(*parts)


class TrainState(NamedTuple):
    params: dict
    opt_state: Any
    step: jax.Array


def init_state(run: RunConfig, tx: optax.GradientTransformation) -> TrainState:
    params = nnx.to_pure_dict(nnx.state(build_model(run.model, run.seed)))
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))


def make_train_step(run: RunConfig, graphdef, tx: optax.GradientTransformation) -> Callable:
    schedule = make_schedule(run)

    def loss_of(params, tokens: Int[Array, "b t1"]) -> tuple[Float[Array, ""], dict]:
        """Cross-entropy plus the MoE auxiliary losses (``moe.aux_total``; 0 when dense);
        the reported ``loss`` is the cross-entropy alone, comparable with dense runs."""
        model = nnx.merge(graphdef, params)
        ce, aux = next_token_loss_with_aux(model, tokens, run.loss_chunk)
        with jax.named_scope("loss"):
            return ce + moe.aux_total(run.model, aux), {"loss": ce, **moe.router_metrics(aux)}

    def train_step(state: TrainState, tokens: Int[Array, "b t1"]):
        (_, reported), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params, tokens)
        with jax.named_scope("optimizer"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
        metrics = {**reported, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return train_step


def make_train_steps(run: RunConfig, one_step: Callable) -> Callable:
    """Up to ``run.steps_per_call`` (K) optimizer steps in one compiled program: a device loop
    over the first ``count`` of K stacked batches, each iteration ``one_step``. One dispatch and
    one set of XLA temporaries serve the K steps (on CPU, XLA allocates a call's temporaries
    afresh and the kernel zero-fills every page again: ~370,000 page faults per 125m step).
    ``count`` is an argument, not a constant, so a window cut short by the burn-in, an
    evaluation or a checkpoint runs the same program. Returns the state and each metric as a
    (K,) array whose first ``count`` entries are the steps'; the rest stay 0."""
    k = run.steps_per_call

    def train_steps(state: TrainState, tokens: Int[Array, "k b t1"], count: Int[Array, ""]):
        abstract = jax.eval_shape(one_step, state, tokens[0])[1]
        held = jax.tree.map(lambda m: jnp.zeros((k, *m.shape), m.dtype), abstract)

        def body(i, carry):
            state, held = carry
            state, metrics = one_step(state, tokens[i])
            return state, jax.tree.map(lambda h, m: h.at[i].set(m), held, metrics)

        return jax.lax.fori_loop(0, count, body, (state, held))

    return train_steps


@dataclass
class Plan:
    """Everything a run needs besides data: mesh, jitted functions and shardings."""

    run: RunConfig
    mesh: jax.sharding.Mesh
    mesh_shape: tuple[int, int]
    graphdef: Any
    tx: optax.GradientTransformation
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: jax.sharding.NamedSharding
    init: Callable[[], TrainState]
    step: Any  # jax.jit-wrapped train step (donates the state)
    # jax.jit-wrapped ``make_train_steps`` (donates the state) when run.steps_per_call > 1
    steps: Any = None
    stacked_batch_sharding: jax.sharding.NamedSharding | None = None

    @property
    def batch_shape(self) -> tuple[int, int]:
        return (self.run.batch, self.run.seq + 1)

    @property
    def stacked_batch_shape(self) -> tuple[int, int, int]:
        return (self.run.steps_per_call, *self.batch_shape)

    def abstract_batch(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.batch_shape, jnp.int32, sharding=self.batch_sharding)

    def abstract_state_inputs(self) -> TrainState:
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_state,
            self.state_shardings,
        )

    def abstract_inputs(self) -> tuple[TrainState, jax.ShapeDtypeStruct]:
        """Shapes, dtypes and shardings of the step's inputs; allocates nothing."""
        return self.abstract_state_inputs(), self.abstract_batch()

    def compile_call(self):
        """The compiled program the run calls: the one-step ``step`` (state, batch), or with
        ``steps_per_call`` > 1 ``steps`` (state, K stacked batches, count)."""
        if self.steps is None:
            return self.step.lower(*self.abstract_inputs()).compile()
        stacked = jax.ShapeDtypeStruct(
            self.stacked_batch_shape, jnp.int32, sharding=self.stacked_batch_sharding
        )
        count = jax.ShapeDtypeStruct((), jnp.int32)
        return self.steps.lower(self.abstract_state_inputs(), stacked, count).compile()


def plan(run: RunConfig, devices=None) -> Plan:
    """Validate the mode and mesh and build the sharded, jitted init and step."""
    devices = list(jax.devices() if devices is None else devices)
    attention.check_supported(run.model, devices[0].platform)
    mesh_shape = run.mesh or parallel.default_mesh_shape(run.mode, len(devices))
    n_used = len(devices) if run.mode != "none" else 1
    parallel.validate(run.mode, mesh_shape, n_used, run.model, run.batch)
    mesh = parallel.make_mesh(mesh_shape, devices[: mesh_shape[0] * mesh_shape[1]])
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(run.model, mode=run.mode)))
    abstract_params = jax.eval_shape(
        lambda: nnx.to_pure_dict(nnx.state(build_model(run.model, run.seed)))
    )
    tx = make_optimizer(run, abstract_params)
    abstract_state = jax.eval_shape(lambda: init_state(run, tx))
    state_sh = parallel.shardings(abstract_state, run.mode, mesh)
    batch_sh = parallel.batch_sharding(mesh)
    init = jax.jit(lambda: init_state(run, tx), out_shardings=state_sh)
    one_step = make_train_step(run, graphdef, tx)
    step = jax.jit(
        one_step,
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    p = Plan(run, mesh, mesh_shape, graphdef, tx, abstract_state, state_sh, batch_sh, init, step)
    if run.steps_per_call > 1:
        p.stacked_batch_sharding = parallel.stacked_batch_sharding(mesh)
        p.steps = jax.jit(
            make_train_steps(run, one_step),
            in_shardings=(state_sh, p.stacked_batch_sharding, None),
            out_shardings=(state_sh, None),
            donate_argnums=0,
        )
    return p


@dataclass
class RunResult:
    """What one training run measured. Times in seconds, losses in nats/token."""

    model_name: str  # ModelConfig.name, e.g. "tiny@256" (the preset key is the caller's)
    mode: str
    mesh: tuple[int, int]
    n_devices: int
    n_processes: int
    n_params: int
    n_params_active: int  # parameters one token uses (= n_params when dense)
    steps: int
    start_step: int
    tokens_per_step: int
    compile_s: float
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    step_times_s: list[float] = field(default_factory=list)
    timing_warmup_steps: int = 1
    steps_per_call: int = 1  # RunConfig.steps_per_call
    entropy_floor_nats: float | None = None
    device_kind: str = ""
    xla: dict[str, float] = field(default_factory=dict)
    diverged: bool = False  # stopped early on a non-finite loss
    # Time each step waited for its batch (loader + host-to-device placement), outside the
    # step's timed window; NaN-free, one per step.
    data_wait_s: list[float] = field(default_factory=list)
    # Validation loss after each step (NaN where the step had no evaluation) and its bits per
    # byte (NaN where the data does not know its bytes).
    val_losses: list[float] = field(default_factory=list)
    val_bpbs: list[float] = field(default_factory=list)
    eval_tokens: int = 0  # predicted tokens per evaluation
    notes: list[str] = field(default_factory=list)  # what the user should know (checkpoints)
    # A profiled run's trace summary (``scaling.profile.ProfileSummary.to_dict``), else None.
    profile: dict | None = None
    # MoE router statistics per step (``moe.router_metrics`` names → one value per step)
    router: dict[str, list[float]] = field(default_factory=dict)

    @property
    def already_done(self) -> bool:
        """Resumed from a checkpoint at (or past) the last step: nothing was trained."""
        return self.start_step >= self.steps

    @property
    def timed_step_times_s(self) -> list[float]:
        """The measured steps (after the timing warm-up); all steps when the run was shorter."""
        return self.step_times_s[self.timing_warmup_steps :] or self.step_times_s

    @property
    def step_time_s_median(self) -> float:
        return median_s(self.timed_step_times_s)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s_median

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")

    @property
    def final_val_loss(self) -> float:
        """The last step's validation loss (NaN when the last step had none)."""
        return self.val_losses[-1] if self.val_losses else float("nan")

    @property
    def final_val_bpb(self) -> float:
        return self.val_bpbs[-1] if self.val_bpbs else float("nan")

    @property
    def tokens_seen(self) -> int:
        """Training tokens consumed by the end of the run (resumed runs count from step 0)."""
        return self.tokens_per_step * (self.start_step + len(self.losses))

    @property
    def data_wait_fraction(self) -> float:
        """Median data wait ÷ median step time over the measured steps."""
        waits = self.data_wait_s[self.timing_warmup_steps :] or self.data_wait_s
        return median_s(waits) / self.step_time_s_median if waits else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "mode": self.mode,
            "mesh": f"{self.mesh[0]}x{self.mesh[1]}",
            "n_devices": self.n_devices,
            "n_processes": self.n_processes,
            "n_params": self.n_params,
            "n_params_active": self.n_params_active,
            "steps": self.steps,
            "start_step": self.start_step,
            "losses": self.losses,
            "grad_norms": self.grad_norms,
            "lrs": self.lrs,
            "step_times_s": self.step_times_s,
            "final_loss": self.final_loss,
            "compile_s": self.compile_s,
            "step_time_s_median": self.step_time_s_median,
            "tokens_per_s": self.tokens_per_s,
            "entropy_floor_nats": self.entropy_floor_nats,
            "device_kind": self.device_kind,
            "xla": self.xla,
            "notes": self.notes,
            "evals": [
                {"step": self.start_step + i, "val_loss": v, "val_bpb": b}
                for i, (v, b) in enumerate(zip(self.val_losses, self.val_bpbs, strict=True))
                if math.isfinite(v)
            ],
            "final_val_loss": _or_none(self.final_val_loss),
            "final_val_bpb": _or_none(self.final_val_bpb),
            "eval_tokens": self.eval_tokens,
            "tokens_seen": self.tokens_seen,
            "data_wait_s": self.data_wait_s,
            "data_wait_fraction": _or_none(self.data_wait_fraction),
            "profile": self.profile,
            **({"router": self.router} if self.router else {}),
        }


def _or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


StepCallback = Callable[[int, dict[str, float]], None]


def run(
    run_cfg: RunConfig,
    on_step: StepCallback | None = None,
    profile_dir: str | None = None,
    probe: MatmulProbe | None = None,
) -> RunResult:
    """Train ``run_cfg.model`` for ``run_cfg.steps`` steps and measure it.

    Compilation is timed separately (``compile_s``); the steps run through a
    ``measure.StepClock`` in timed windows of ``run_cfg.sync_every`` steps (1: each step timed
    to completion; more: dispatched without waiting, each step's time the window's mean); the
    CPU ``probe``, evaluations and checkpoints run between windows, and ``profile_dir`` traces
    the measured steps. Metrics are fetched once per window. A non-finite loss stops the run
    (``diverged``) at the end of its window: up to ``sync_every - 1`` further steps may have
    run, and are not recorded.
    """
    from scaling import checkpoint  # orbax is slow to import; only runs need it

    p = plan(run_cfg)
    iterator = _loader(run_cfg, p)
    manager, notes = (
        checkpoint.open_manager(run_cfg, p.abstract_state) if run_cfg.checkpoint_dir else (None, [])
    )
    # closing stops the loader's prefetch threads/workers; settled lets saves in flight end
    with jax.set_mesh(p.mesh), contextlib.closing(iterator), checkpoint.settled(manager):
        state = _start_state(run_cfg, p, manager, iterator, notes)
        start = int(state.step)
        if start >= run_cfg.steps:  # resumed at the end: nothing to train or compile
            result = _new_result(run_cfg, p, start, math.nan, None)
            result.notes = notes
            return result
        evaluator = Evaluator(run_cfg, p, run_cfg.eval_batches) if run_cfg.evaluates else None
        t0 = time.perf_counter()
        compiled = p.compile_call()
        result = _new_result(run_cfg, p, start, time.perf_counter() - t0, compiled)
        result.notes = notes
        if profile_dir:  # the op → named-scope map the profile summary reads
            write_text_atomic(compiled.as_text(), Path(profile_dir) / HLO_FILE)
        result.eval_tokens = evaluator.tokens if evaluator else 0
        clock = StepClock(
            run_cfg.timing_warmup_steps,
            max(run_cfg.steps - start - run_cfg.timing_warmup_steps, 0),
            probe=probe,
            profile_dir=profile_dir,
        )

        def next_input(count: int) -> tuple:
            return host_loop.next_input(p, iterator, count, result.data_wait_s)

        step = start
        while step < run_cfg.steps and not result.diverged:
            end = host_loop.window_end(run_cfg, step, clock)
            state, held = host_loop.dispatch_window(
                compiled, state, end - step, clock, next_input, run_cfg.steps_per_call
            )
            fetched = host_loop.per_step(jax.device_get(held), end - step, run_cfg.steps_per_call)
            for metrics, index in zip(fetched, range(step, end), strict=True):
                metrics = _record_step(result, metrics, clock.step_times_s[index - start])
                _evaluate_if_due(run_cfg, evaluator, index, state, result, metrics)
                if on_step is not None:
                    on_step(index, metrics)
                if not math.isfinite(metrics["loss"]):
                    _mark_diverged(result, index, end)
                    break
            clock.after_window(end - step)
            step = end
            if manager is not None and not result.diverged and _checkpoint_due(run_cfg, step):
                checkpoint.save(manager, step, state, iterator.get_state(), run_cfg)
        clock.finish()
        if manager is not None:
            checkpoint.finish(manager)
    # only the steps up to a non-finite loss are recorded (a window may have run past it)
    result.step_times_s = clock.step_times_s[: len(result.losses)]
    del result.data_wait_s[len(result.losses) :]
    if profile_dir and clock.measured_steps > 0:
        _summarize_profile(result, profile_dir)
    return result


def _mark_diverged(result: RunResult, index: int, window_end: int) -> None:
    result.diverged = True
    if window_end > index + 1:
        result.notes.append(
            f"steps {index + 1}..{window_end - 1} ran after the non-finite loss at step {index} "
            "(the host checks the loss once per timed window, --sync-every) and are not recorded"
        )


def _summarize_profile(result: RunResult, profile_dir: str) -> None:
    """The trace's summary by named scope (``scaling.profile``), in the result and stored as
    ``summary.json`` beside the trace; a trace it cannot read becomes a note, not a failure."""
    from scaling.profile import SUMMARY_FILE, summarize

    try:
        timed = result.timed_step_times_s  # the steps the trace holds (StepClock)
        steps = len(timed) if result.steps_per_call > 1 else None
        summary = summarize(profile_dir, sum(timed) / len(timed), steps=steps).to_dict()
    except (ValueError, OSError, KeyError) as exc:
        result.notes.append(f"profile summary not made: {exc}")
        return
    result.profile = summary
    write_json_atomic(summary, Path(profile_dir) / SUMMARY_FILE, indent=1)


def _start_state(run_cfg: RunConfig, p: Plan, manager, iterator, notes: list[str]) -> TrainState:
    """The newest intact checkpoint when resuming (the iterator moved to its position), else
    the imported weights of ``init`` with a fresh optimizer, else a freshly initialised state."""
    from scaling import checkpoint

    if manager is not None and run_cfg.resume:
        restored, more = checkpoint.restore_intact(manager, p, run_cfg)
        notes += more
        if restored is not None:
            state, iterator_state = restored
            iterator.set_state(iterator_state)
            return state
    if run_cfg.init is not None:  # imported weights, fresh optimizer
        from scaling.convert import initial_state

        return initial_state(run_cfg.init, p)
    return p.init()


def memory_problem(run_cfg: RunConfig, devices=None) -> str | None:
    """Why the estimator predicts that ``run_cfg`` will not fit in memory here, or None: the
    pre-flight check of ``scaling.preflight`` with this process's devices."""
    from scaling.preflight import device_memory_bytes
    from scaling.preflight import memory_problem as check

    devices = list(jax.devices() if devices is None else devices)
    mesh_shape = run_cfg.mesh or parallel.default_mesh_shape(run_cfg.mode, len(devices))
    used = devices[: mesh_shape[0] * mesh_shape[1]] if run_cfg.mode != "none" else devices[:1]
    local = [d for d in used if d.process_index == jax.process_index()]
    device = local[0] if local else jax.local_devices()[0]
    return check(
        run_cfg,
        mesh_shape,
        n_local_devices=max(len(local), 1),
        platform=device.platform,
        device_bytes=device_memory_bytes(device),
    )


def _loader(run_cfg: RunConfig, p: Plan):
    dataset = batch_dataset(
        run_cfg.data,
        vocab_size=run_cfg.model.vocab_size,
        batch=run_cfg.batch,
        seq=run_cfg.seq,
        seed=run_cfg.seed,
        rows=parallel.local_rows(p.batch_sharding, p.batch_shape),
    )
    return loader(
        dataset,
        threads=run_cfg.data_threads,
        prefetch=run_cfg.data_prefetch,
        processes=run_cfg.data_processes,
    )


def _evaluate_if_due(run_cfg, evaluator, step: int, state, result: RunResult, metrics) -> None:
    """Validation loss after every ``eval_every``-th step and after the last step (outside
    the step's timed window; the evaluation is its own compiled function)."""
    done = step + 1
    due = evaluator is not None and (
        done == run_cfg.steps or bool(run_cfg.eval_every and done % run_cfg.eval_every == 0)
    )
    loss = evaluator(state.params) if due else math.nan
    bpb = evaluator.bits_per_byte(loss) if due else math.nan
    result.val_losses.append(loss)
    result.val_bpbs.append(bpb)
    if due:
        metrics["val_loss"], metrics["val_bpb"] = loss, bpb
    metrics["data_wait_s"] = result.data_wait_s[len(result.val_losses) - 1]


def _new_result(run_cfg: RunConfig, p: Plan, start: int, compile_s: float, compiled) -> RunResult:
    return RunResult(
        model_name=run_cfg.model.name,
        mode=run_cfg.mode,
        mesh=p.mesh_shape,
        n_devices=p.mesh.size,
        n_processes=jax.process_count(),
        n_params=param_counts(run_cfg.model).total,
        n_params_active=param_counts(run_cfg.model).active,
        steps=run_cfg.steps,
        start_step=start,
        tokens_per_step=run_cfg.tokens_per_step,
        compile_s=compile_s,
        timing_warmup_steps=run_cfg.timing_warmup_steps,
        steps_per_call=run_cfg.steps_per_call,
        entropy_floor_nats=entropy_floor(run_cfg.data, run_cfg.model.vocab_size, run_cfg.seed),
        device_kind=jax.local_devices()[0].device_kind,
        xla=memory_figures(compiled) if compiled is not None else {},
    )


def _record_step(result: RunResult, metrics: dict, step_time_s: float) -> dict[str, float]:
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    metrics["step_time_s"] = step_time_s
    result.losses.append(metrics["loss"])
    result.grad_norms.append(metrics["grad_norm"])
    result.lrs.append(metrics["lr"])
    for name in moe.ROUTER_METRICS:
        if name in metrics:
            result.router.setdefault(name, []).append(metrics[name])
    return metrics


def _checkpoint_due(run_cfg: RunConfig, done: int) -> bool:
    every = run_cfg.checkpoint_every
    return done == run_cfg.steps or bool(every and done % every == 0)
