"""Orbax checkpoints of a run: train state, data-iterator state, and the run config.

Restoring targets an abstract state (shapes, dtypes, shardings from ``nnx.eval_shape`` /
``jax.eval_shape``), so no throw-away model is materialised and each array lands directly in
its shards.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import orbax.checkpoint as ocp

from scaling.config import ModelConfig, RunConfig


def manager(run: RunConfig | str | Path) -> ocp.CheckpointManager:
    """The checkpoint manager of a run (its ``checkpoint_dir``) or of a directory."""
    directory = run.checkpoint_dir if isinstance(run, RunConfig) else run
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def config_json(run: RunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(run), default=str))


def save(mgr: ocp.CheckpointManager, step: int, state, iterator_state: dict, run: RunConfig):
    mgr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(iterator_state),
            config=ocp.args.JsonSave(config_json(run)),
        ),
    )


def restore(mgr: ocp.CheckpointManager, plan, step: int | None = None):
    """A checkpoint (default: the latest) into ``plan``'s abstract, sharded state; returns
    (state, iterator state)."""
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
    if run.get("mesh") is not None:
        run["mesh"] = tuple(run["mesh"])
    return RunConfig(model=model, **run)
