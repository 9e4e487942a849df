"""Orbax checkpoints of a run: train state, data-iterator state, the run config, and a checksum
of the state.

Restoring targets an abstract state (shapes, dtypes, shardings from ``nnx.eval_shape`` /
``jax.eval_shape``), so no throw-away model is materialised and each array lands directly in
its shards (another mode or mesh than the saved one is fine: the state is resharded).

What keeps a checkpoint directory safe:

* a fresh run (no ``resume``) refuses a directory that holds checkpoints (``overwrite``
  deletes them first), so it never mixes its steps with another run's;
* a resumed run compares the saved run config with its own: another model shape is refused,
  another batch, seed, LR schedule, data... unless ``allow_config_change`` names the field;
* restore tries the newest step first. A step that does not read (truncated file, missing
  manifest, empty directory of a killed save), whose state checksum differs from the one
  saved with it, or whose state is not finite, is named and moved to ``DIR/damaged/``, and
  the next older step is tried. The checksum is the wrap-around uint32 sum of every leaf's
  bit pattern: exact integer arithmetic, so it does not depend on the reduction order or on
  the sharding the state is restored into.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from scaling.config import ModelConfig, RunConfig, resume_differences
from scaling.records import write_text_atomic

DAMAGED_DIR = "damaged"
_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _drop_closed_loop_noise() -> None:
    """When orbax gives up on a damaged checkpoint (or a full disk), tensorstore reads and
    writes still in flight complete later into orbax's closed asyncio loop, and Python prints
    each ``RuntimeError('Event loop is closed')`` as an unraisable exception: dozens of
    tracebacks after the one error that matters, which this module reports itself. Drop
    exactly those; everything else goes to the previous hook. The same late reads can also
    reach asyncio's "Task exception was never retrieved" log (when the task is collected):
    ``orbax_task_noise`` drops those records too."""
    asyncio_log = logging.getLogger("asyncio")
    if orbax_task_noise not in asyncio_log.filters:
        asyncio_log.addFilter(orbax_task_noise)
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_noise", False):
        return

    def hook(unraisable) -> None:
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_closed_loop_noise = True
    sys.unraisablehook = hook


def orbax_task_noise(record: logging.LogRecord) -> bool:
    """A ``logging`` filter: False (drop) for asyncio's "Task exception was never retrieved"
    whose exception was raised inside orbax (a read abandoned with a damaged checkpoint)."""
    if not str(record.msg).startswith("Task exception was never retrieved"):
        return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return False
        tb = tb.tb_next
    return True


def check_directory(path: str | Path) -> Path:
    """The checkpoint directory as an absolute path, created and known to be writable; a
    ``ValueError`` (a file in its place) or ``OSError`` (naming the path) otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--checkpoint-dir {str(path)!r} is a file; give a directory")
    p.mkdir(parents=True, exist_ok=True)
    probe = p / ".write-check"
    write_text_atomic("", probe)
    probe.unlink()
    return p.absolute()


def step_dirs(path: Path) -> list[int]:
    """Every step directory, readable or not (orbax lists only the ones it can read)."""
    return sorted(int(d.name) for d in path.iterdir() if d.is_dir() and d.name.isdigit())


def state_bytes(state) -> int:
    """Bytes of a (possibly abstract) train state: what one checkpoint of it writes."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def check_space(path: Path, need: int, what: str) -> None:
    """``OSError`` (ENOSPC, naming the directory) when fewer than ``need`` bytes are free:
    checked before orbax starts writing, whose failure midway leaves a partial directory."""
    free = shutil.disk_usage(path).free
    if free < need:
        message = (
            f"{os.strerror(errno.ENOSPC)}: {what} needs {_size(need)}, {_size(free)} free "
            "(earlier steps are intact)"
        )
        raise OSError(errno.ENOSPC, message, str(path))


def _size(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def open_manager(run: RunConfig, state: object = None) -> tuple[ocp.CheckpointManager, list[str]]:
    """The manager of ``run.checkpoint_dir`` and notes for the user. A fresh run into a
    directory holding checkpoints is refused, or with ``overwrite`` they are deleted first;
    with the (abstract) ``state`` given, a disk without room for one checkpoint is refused
    before training starts."""
    path = check_directory(run.checkpoint_dir)
    notes = []
    existing = step_dirs(path)
    if existing and not run.resume:
        listed = ", ".join(map(str, existing))
        if not run.overwrite:
            raise ValueError(
                f"{str(path)!r} holds checkpoints of another run (steps {listed}); pass "
                "--resume to continue it, --overwrite to replace them, or choose an empty "
                "directory"
            )
        for step in existing:
            shutil.rmtree(path / str(step))
        notes.append(f"--overwrite: deleted the checkpoints of steps {listed} in {path}")
    if state is not None:
        check_space(path, state_bytes(state), "a checkpoint")
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(path, options=options), notes


def manager(run: RunConfig | str | Path) -> ocp.CheckpointManager:
    """The checkpoint manager of a run (its ``checkpoint_dir``) or of a directory, as it is
    (``open_manager`` is what a training run uses)."""
    directory = run.checkpoint_dir if isinstance(run, RunConfig) else run
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def config_json(run: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(run), default=str))


@jax.jit
def _digest(state):
    """Two trees like ``state``: the uint32 sum of each leaf's bit pattern (wraps, exact), and
    whether the leaf is finite."""

    def checksum(x):
        unsigned = _UNSIGNED.get(x.dtype.itemsize)
        if unsigned is None:
            return jnp.uint32(0)
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
        return jnp.sum(bits, dtype=jnp.uint32)

    def finite(x):
        return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True

    return jax.tree.map(checksum, state), jax.tree.map(finite, state)


def digest(state) -> tuple[dict[str, int], list[str]]:
    """({leaf path: checksum}, [paths of leaves holding NaN or inf])."""
    sums, finite = jax.device_get(_digest(state))
    flat = jax.tree_util.tree_flatten_with_path
    names = [jax.tree_util.keystr(path) for path, _ in flat(sums)[0]]
    totals = [int(v) for _, v in flat(sums)[0]]
    ok = [bool(v) for _, v in flat(finite)[0]]
    return dict(zip(names, totals, strict=True)), [
        n for n, good in zip(names, ok, strict=True) if not good
    ]


def save(mgr: ocp.CheckpointManager, step: int, state, iterator_state: dict, run: RunConfig):
    """Start saving ``step`` (orbax writes in the background; a failure of an earlier save
    surfaces here or in ``finish``, as an ``OSError`` naming the directory)."""
    _drop_closed_loop_noise()
    finish(mgr)  # the previous save's bytes are on disk before the free space is counted
    check_space(Path(mgr.directory), state_bytes(state), f"checkpoint step {step}")
    sums, _ = digest(state)
    with _saving(mgr):
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(iterator_state),
                config=ocp.args.JsonSave(config_json(run)),
                checksum=ocp.args.JsonSave(
                    {"method": "uint32 sum of bit patterns", "leaves": sums}
                ),
            ),
        )


def finish(mgr: ocp.CheckpointManager) -> None:
    """Wait for the saves in flight."""
    with _saving(mgr):
        mgr.wait_until_finished()


@contextlib.contextmanager
def settled(mgr: ocp.CheckpointManager | None) -> Iterator[None]:
    """On an error in the block, let the saves in flight end before the error propagates (a
    write still running when the interpreter exits prints tracebacks from its threads)."""
    try:
        yield
    except BaseException:
        if mgr is not None:
            with contextlib.suppress(Exception):
                mgr.wait_until_finished()
        raise


@contextlib.contextmanager
def _saving(mgr: ocp.CheckpointManager) -> Iterator[None]:
    """Orbax and tensorstore report a full disk as a ``ValueError`` carrying the OS error
    code in its text; turn it into the ``OSError`` it is, naming the checkpoint directory."""
    try:
        yield
    except Exception as exc:
        code = exc.errno if isinstance(exc, OSError) else None
        match = re.search(r"os_error_code='?(\d+)", str(exc))
        code = code or (int(match.group(1)) if match else None)
        where = str(mgr.directory)
        if code:
            message = f"{os.strerror(code)} while saving a checkpoint (earlier steps are intact)"
            raise OSError(code, message, where) from exc
        raise ValueError(f"cannot save a checkpoint to {where!r}: {_first_line(exc)}") from exc


def restore_intact(mgr: ocp.CheckpointManager, plan, run: RunConfig):
    """The newest intact checkpoint into ``plan``'s abstract, sharded state.

    Returns ``((state, iterator_state) or None, notes)``: None with a note when the directory
    holds no checkpoint. Damaged steps are named in the notes and moved aside; a ``ValueError``
    when every step is damaged, or when the saved run differs from ``run`` (see module doc)."""
    _drop_closed_loop_noise()
    path = Path(mgr.directory)
    steps = sorted(step_dirs(path), reverse=True)
    if not steps:
        return None, [f"no checkpoint in {path}; starting from step 0"]
    faults: list[tuple[int, str]] = []
    for step in steps:
        restored, fault = _restore_step(mgr, path, step, plan, run)
        if restored is not None:
            return restored, _set_aside(mgr, path, faults, step)
        faults.append((step, fault))
    listed = "; ".join(f"step {s}: {f}" for s, f in faults)
    raise ValueError(
        f"no intact checkpoint in {str(path)!r} ({listed}); delete the directory or train "
        "without --resume"
    )


def restore(mgr: ocp.CheckpointManager, plan, step: int | None = None):
    """A checkpoint (default: the latest) into ``plan``'s abstract, sharded state; returns
    (state, iterator state). No checks: ``restore_intact`` is what a resumed run uses."""
    target, _ = plan.abstract_inputs()
    restored = mgr.restore(
        mgr.latest_step() if step is None else step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        ),
    )
    return type(target)(*restored.state), restored.data


def saved_run(mgr: ocp.CheckpointManager, step: int | None = None) -> tuple[int, RunConfig]:
    """The step and the RunConfig a checkpoint was saved with (default: the latest step)."""
    steps = mgr.all_steps()
    if not steps:
        raise ValueError(f"no checkpoint found in {str(mgr.directory)!r}")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ValueError(f"no checkpoint of step {step}; saved steps: {sorted(steps)}")
    restored = mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return step, run_config_from_json(restored.config)


def run_config_from_json(data: dict) -> RunConfig:
    """Inverse of ``config_json``; fields a newer or older version wrote are ignored."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"model"}
    model = ModelConfig(**{k: v for k, v in data["model"].items() if k in model_fields})
    run = {k: v for k, v in data.items() if k in run_fields}
    for key in ("mesh", "allow_config_change"):  # tuples, written as JSON lists
        if run.get(key) is not None:
            run[key] = tuple(run[key])
    return RunConfig(model=model, **run)


def _restore_step(mgr, path: Path, step: int, plan, run: RunConfig):
    """((state, iterator_state), "") or (None, what is wrong with this step)."""
    step_dir = path / str(step)
    if not any(step_dir.iterdir()):
        return None, "empty directory (a save killed midway?)"
    missing = [item for item in ("state", "data", "config") if not (step_dir / item).is_dir()]
    if missing:
        return None, f"incomplete: no {', '.join(missing)} (a save killed midway?)"
    has_checksum = (step_dir / "checksum").is_dir()
    items = {"config": ocp.args.JsonRestore()}
    if has_checksum:
        items["checksum"] = ocp.args.JsonRestore()
    try:
        meta = mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as exc:  # orbax raises many kinds for a damaged file
        return None, f"unreadable metadata ({_first_line(exc)})"
    _check_config(meta.config, run, step, path)
    target, _ = plan.abstract_inputs()
    try:
        restored = mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
            ),
        )
    except Exception as exc:
        return None, f"unreadable state ({_first_line(exc)})"
    state = type(target)(*restored.state)
    sums, not_finite = digest(state)
    if has_checksum:
        changed = [k for k, v in meta.checksum["leaves"].items() if sums.get(k) != v]
        if changed:
            return None, f"checksum mismatch in {changed[0]} (the file changed after the save)"
    if not_finite:
        return None, f"non-finite values in {not_finite[0]}"
    return (state, restored.data), ""


def _check_config(saved: dict, run: RunConfig, step: int, path: Path) -> None:
    fixed, changed = resume_differences(saved, config_json(run))
    where = f"the checkpoint of step {step} in {str(path)!r}"
    if fixed:
        raise ValueError(
            f"{where} holds another model ({_listed(fixed)}); resume with the same model, or "
            "choose another --checkpoint-dir"
        )
    refused = {k: v for k, v in changed.items() if k not in run.allow_config_change}
    if refused:
        raise ValueError(
            f"{where} was saved with other settings ({_listed(refused)}): the data stream "
            "and LR schedule would not continue the saved run; resume with the saved values, "
            f"or pass --allow-config-change {','.join(refused)}"
        )


def _listed(diffs: dict[str, tuple]) -> str:
    return ", ".join(f"{k} {saved} → {now}" for k, (saved, now) in diffs.items())


def _set_aside(mgr, path: Path, faults: list[tuple[int, str]], restored_step: int) -> list[str]:
    """Move damaged steps to ``DIR/damaged/`` (so new saves do not collide with them)."""
    if not faults:
        return []
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    aside = path / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    notes = []
    for step, fault in faults:
        shutil.move(path / str(step), aside / f"{step}-{stamp}")
        notes.append(f"checkpoint step {step} in {path} is damaged: {fault}; moved to {aside}/")
    mgr.reload()
    notes.append(f"resumed from step {restored_step}, the newest intact checkpoint")
    return notes


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause (orbax wraps tensorstore's precise message)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = (str(exc).strip().splitlines() or [""])[0]
    for tail in (" See full TensorStore", " [tensorstore_spec"):  # a spec dump follows
        text = text.split(tail)[0]
    return f"{type(exc).__name__}: {text[:240]}"
