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

from scaling.config import RunConfig


def manager(run: RunConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    return ocp.CheckpointManager(Path(run.checkpoint_dir).absolute(), options=options)


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


def restore(mgr: ocp.CheckpointManager, plan):
    """Latest checkpoint into ``plan``'s abstract, sharded state; returns (state, iterator)."""
    target, _ = plan.abstract_inputs()
    restored = mgr.restore(
        mgr.latest_step(),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        ),
    )
    return type(target)(*restored.state), restored.data
