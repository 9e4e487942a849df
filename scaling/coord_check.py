"""The muP coord check (Tensor Programs V, figure 5): train a ladder of widths a few steps
under SP and muP and record the RMS of activations at fixed sites. An experiment that trains,
so it lives beside the training code, not in ``scaling.mup`` (the rules it validates)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from scaling import train
from scaling.data import batch_dataset
from scaling.presets import build_run


def coord_check(
    widths: list[int],
    *,
    steps: int = 5,
    lr: float = 1e-2,
    base: str = "tiny",
    n_layers: int = 2,
    batch: int = 8,
    seq: int = 64,
    seed: int = 0,
    parametrizations: tuple[bool, ...] = (False, True),
) -> list[dict]:
    """Train each width for ``steps`` Adam steps under SP and muP and record the RMS of the
    embedding output, every block's output and the logits on a fixed probe batch, at
    initialisation (step 0) and after every step. Both parametrizations use an untied head so
    that they differ only in what muP prescribes.

    Rows: ``{"mup": bool, "width": int, "step": int, "site": str, "rms": float}``. Under muP
    the RMS should not change with width; under SP the logits grow with width as training
    moves them (Tensor Programs V, figure 5).
    """

    rows: list[dict] = []
    for mup in parametrizations:
        for width in widths:
            run = build_run(
                base,
                width=width,
                mup=mup,
                steps=steps,
                batch=batch,
                seq=seq,
                lr=lr,
                lr_warmup_steps=0,
                seed=seed,
                weight_decay=0.0,
            )
            run = dataclasses.replace(
                run, model=dataclasses.replace(run.model, n_layers=n_layers, tied_embeddings=False)
            )
            p = train.plan(run)
            data = batch_dataset(
                run.data, vocab_size=run.model.vocab_size, batch=batch, seq=seq, seed=seed
            )
            probe = np.asarray(data[0])
            measure = jax.jit(
                lambda params, tokens, graphdef=p.graphdef: nnx.merge(
                    graphdef, params
                ).forward_with_rms(tokens[:, :-1])[1]
            )
            state = p.init()
            for step in range(steps + 1):
                if step:
                    state, _ = p.step(state, np.asarray(data[step]))
                sizes = jax.device_get(measure(state.params, probe))
                sites = {"embed": sizes["embed"], "logits": sizes["logits"]}
                sites.update({f"block_{i}": v for i, v in enumerate(sizes["blocks"])})
                rows += [
                    {"mup": mup, "width": width, "step": step, "site": site, "rms": float(value)}
                    for site, value in sites.items()
                ]
    return rows
