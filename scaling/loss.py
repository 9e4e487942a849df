"""The training loss: next-token cross-entropy, whole or over sequence chunks (``loss_chunk``).

Whole: the model's (b, t, v) float32 logits, then ``evaluate.cross_entropy``. At 125m with the
GPT-3 vocabulary (50,304) and batch 8 × 2048 that is 3.3 GB of logits, plus as much again for
exp(logits) saved for the backward and for the logits gradient.

Chunked: the final hidden states (b, t, d) are split into t / c chunks of c positions; a
``lax.scan`` computes each chunk's read-out (head matmul, soft-cap, muP scale) and the sum of
its token losses under ``jax.checkpoint``, so only one (b, c, v) block of logits is live in the
forward, and the backward recomputes each chunk's logits instead of keeping them. The loss is
the same mean over all b·t predictions; only the summation order differs (float32 rounding).
The read-out's FLOPs are unchanged, plus one more read-out matmul forward per chunk in the
backward (the recompute): 2·b·t·d·v more FLOPs per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from scaling.evaluate import cross_entropy

READOUT_PARAMS = nnx.Any(nnx.PathContains("embed"), nnx.PathContains("head"))


def next_token_loss(model, tokens: Int[Array, "b t1"], loss_chunk: int = 0) -> Float[Array, ""]:
    """Mean next-token cross-entropy (nats/token, float32) of ``model`` on ``tokens``;
    ``loss_chunk`` > 0 computes it over chunks of that many positions."""
    return next_token_loss_with_aux(model, tokens, loss_chunk)[0]


def next_token_loss_with_aux(
    model, tokens: Int[Array, "b t1"], loss_chunk: int = 0
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """``next_token_loss`` and the MoE router statistics of the forward ({} when dense)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if not loss_chunk:
        logits, aux = model.forward_with_aux(inputs)
        with jax.named_scope("loss"):
            return cross_entropy(logits, targets), aux
    hidden, aux = model.final_hidden_with_aux(inputs)
    return chunked_cross_entropy(model, hidden, targets, loss_chunk), aux


def chunked_cross_entropy(
    model, hidden: Float[Array, "b t d"], targets: Int[Array, "b t"], chunk: int
) -> Float[Array, ""]:
    """Mean of ``logsumexp(logits) − logits[target]`` with ``model.readout`` applied to
    ``chunk`` positions at a time (see the module docstring). Only the read-out's parameters
    (token table, head) enter the scan, so the backward accumulates no other gradients there."""
    b, t, d = hidden.shape
    n = t // chunk
    graphdef, readout_state, rest = nnx.split(model, READOUT_PARAMS, ...)
    xs = hidden.reshape(b, n, chunk, d).swapaxes(0, 1)
    ys = targets.reshape(b, n, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_loss(state, x: Float[Array, "b c d"], y: Int[Array, "b c"]) -> Float[Array, ""]:
        with jax.named_scope("head"):
            logits = nnx.merge(graphdef, state, rest).readout(x)
        with jax.named_scope("loss"):
            target_logits = jnp.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
            return jnp.sum(jax.nn.logsumexp(logits, axis=-1) - target_logits)

    def body(total: Float[Array, ""], xy) -> tuple[Float[Array, ""], None]:
        return total + chunk_loss(readout_state, *xy), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (xs, ys))
    with jax.named_scope("loss"):
        return total / (b * t)
