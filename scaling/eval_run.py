"""``scaling eval``: a checkpoint's loss, perplexity and bits per byte on a prepared split.

The run is rebuilt from the RunConfig the checkpoint stores, with the model's parameters
restored straight into the shardings of the mode evaluated under (default: one device), and
evaluated with the same compiled function and windows as validation during training
(``scaling.evaluate``), so ``scaling eval`` on the val split with the run's ``eval_batches``
reproduces the run's ``final_val_loss``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import jax

from scaling import checkpoint, train
from scaling.evaluate import Evaluator
from scaling.prepared import TOKENIZER, is_prepared, open_prepared


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    data: str,
    *,
    split: str = "val",
    batches: int | None = None,
    batch: int | None = None,
    step: int | None = None,
    mode: str = "none",
    mesh: tuple[int, int] | None = None,
) -> dict:
    """Loss (nats/token), perplexity and bits per byte of a checkpoint on ``split`` of the
    prepared directory ``data`` (``batches`` None: every full batch of windows)."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {str(path)!r} not found")
    prepared = open_prepared(data)
    manager = checkpoint.manager(path)
    step, saved = checkpoint.saved_run(manager, step)
    _check_same_tokenizer(saved.data, data)
    run = dataclasses.replace(
        saved,
        data=str(data),
        mode=mode,
        mesh=mesh,
        batch=batch or saved.batch,
        checkpoint_dir=None,
        resume=False,
    )
    plan = train.plan(run)
    with jax.set_mesh(plan.mesh):
        state, _ = checkpoint.restore(manager, plan, step)
        evaluator = Evaluator(run, plan, n_batches=batches, split=split)
        loss = evaluator(state.params)
    return {
        "checkpoint": str(path),
        "step": step,
        "model": run.model.name,
        "data": str(data),
        "split": split,
        "data_vocab_size": prepared.vocab_size,
        "model_vocab_size": run.model.vocab_size,
        "batches": evaluator.n_batches,
        "windows": evaluator.n_batches * run.batch,
        "seq": run.seq,
        "tokens": evaluator.tokens,
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": evaluator.bits_per_byte(loss),
    }


def _tokenizer_sha(data: str) -> str | None:
    file = Path(data) / TOKENIZER
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def _check_same_tokenizer(trained_on: str, data: str) -> None:
    """A checkpoint trained on another tokenizer's ids cannot be evaluated on these (when the
    training directory is still there to compare)."""
    if not is_prepared(trained_on) or Path(trained_on).resolve() == Path(data).resolve():
        return
    if _tokenizer_sha(trained_on) != _tokenizer_sha(data):
        raise ValueError(
            f"the checkpoint was trained on {trained_on!r}, whose tokenizer differs from "
            f"{data!r}'s; evaluate on data prepared with the same tokenizer.json"
        )
