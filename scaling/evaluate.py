"""Validation loss: a jitted evaluation of the model on fixed validation windows, separate from
the training step (it never touches step timing), the same windows in every run and sharding
mode (``data.validation_batches``), and bits per byte where the data knows its bytes.

The loss is the mean over the windows' ``seq`` predictions each, in nats/token: each batch's
mean is computed on the devices in float32 (``train.cross_entropy``), and the batch means (equal
sizes) are averaged on the host in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from scaling import parallel
from scaling.config import RunConfig
from scaling.data import bytes_per_token, validation_batches


def cross_entropy(logits: Float[Array, "b t v"], targets: Int[Array, "b t"]) -> Float[Array, ""]:
    """Mean of ``logsumexp(logits) - logits[target]`` (nats/token), in float32."""
    logits = logits.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - target_logits)


def loss_fn(graphdef) -> Callable:
    """``(params, tokens) → mean next-token loss`` of the model ``graphdef`` describes."""

    def eval_loss(params, tokens: Int[Array, "b t1"]) -> Float[Array, ""]:
        logits = nnx.merge(graphdef, params)(tokens[:, :-1])
        with jax.named_scope("loss"):
            return cross_entropy(logits, tokens[:, 1:])

    return eval_loss


def bits_per_byte(loss_nats: float, bytes_per_token: float | None) -> float:
    """Bits per UTF-8 byte of text: loss / ln 2 / (bytes per token), NaN where bytes are
    unknown. Compares tokenizers of different vocabularies on the same text."""
    if not bytes_per_token or not math.isfinite(loss_nats):
        return math.nan
    return loss_nats / math.log(2) / bytes_per_token


class Evaluator:
    """Validation loss of a run's parameters, compiled once for the plan's shardings, over
    ``n_batches`` batches of fixed windows of ``split`` (None: every full batch of the split)."""

    def __init__(self, run: RunConfig, plan, n_batches: int | None, split: str = "val"):
        self.run, self.plan = run, plan
        rows = parallel.local_rows(plan.batch_sharding, plan.batch_shape)
        self.batches = validation_batches(
            run.data,
            vocab_size=run.model.vocab_size,
            batch=run.batch,
            seq=run.seq,
            seed=run.seed,
            n_batches=n_batches,
            rows=rows,
            split=split,
        )
        self.n_batches = len(self.batches)
        self.bytes_per_token = bytes_per_token(run.data, split)
        abstract_params, abstract_batch = plan.abstract_inputs()[0].params, plan.abstract_batch()
        self.compiled = (
            jax.jit(
                loss_fn(plan.graphdef),
                in_shardings=(plan.state_shardings.params, plan.batch_sharding),
            )
            .lower(abstract_params, abstract_batch)
            .compile()
        )

    @property
    def tokens(self) -> int:
        """Predicted tokens per evaluation (all processes)."""
        return self.n_batches * self.run.batch * self.run.seq

    def __call__(self, params) -> float:
        losses = []
        for local in self.batches:
            tokens = parallel.place_batch(local, self.plan.batch_sharding, self.plan.batch_shape)
            losses.append(self.compiled(params, tokens))
        return float(np.mean(np.asarray(jax.device_get(losses), dtype=np.float64)))

    def bits_per_byte(self, loss: float) -> float:
        return bits_per_byte(loss, self.bytes_per_token)
