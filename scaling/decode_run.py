"""``scaling generate``: a model (a checkpoint's, or a preset's at random init) and its
tokenizer, prompts in, continuations and tokens/s out.

A checkpoint's tokenizer is the ``tokenizer.json`` of the prepared directory it was trained on
(when that directory is still there); without one, prompts and continuations are token ids.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

import jax
from flax import nnx

from scaling import parallel
from scaling.config import ModelConfig
from scaling.generate import Decoder, Generation, Sampling, generate
from scaling.model import TransformerLM, build_model
from scaling.prepared import TOKENIZER, is_prepared


@dataclass
class Loaded:
    """A model ready to decode, where it came from, and its tokenizer (None: ids only)."""

    model: TransformerLM
    source: str
    tokenizer: object | None
    mesh: object = None
    mode: str = "none"

    @property
    def cfg(self) -> ModelConfig:
        return self.model.cfg


def _mesh_for(cfg: ModelConfig, mode: str, mesh_shape, batch: int):
    devices = jax.devices()
    shape = mesh_shape or parallel.default_mesh_shape(mode, len(devices))
    n_used = len(devices) if mode != "none" else 1
    parallel.validate(mode, shape, n_used, cfg, batch)
    return parallel.make_mesh(shape, devices[: shape[0] * shape[1]])


def load(
    *,
    checkpoint: str | None = None,
    size: str | None = None,
    step: int | None = None,
    seed: int = 0,
    mode: str = "none",
    mesh: tuple[int, int] | None = None,
    batch: int = 1,
) -> Loaded:
    """The model of ``checkpoint`` (restored into ``mode``'s shardings) or of the preset
    ``size`` at random init (``seed``); exactly one of the two."""
    from scaling import checkpoint as ckpt
    from scaling.presets import get_preset

    if (checkpoint is None) == (size is None):
        raise ValueError("give exactly one of --checkpoint and --size")
    if size is not None:
        cfg = get_preset(size)
        plan_mesh = _mesh_for(cfg, mode, mesh, batch) if mode != "none" else None
        return Loaded(build_model(cfg, seed), f"{size} (random init, seed {seed})", None,
                      plan_mesh, mode)  # fmt: skip
    from scaling import train

    path = Path(checkpoint)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {str(path)!r} not found")
    manager = ckpt.manager(path)
    step, saved = ckpt.saved_run(manager, step)
    run = dataclasses.replace(
        saved, mode=mode, mesh=mesh, batch=batch, checkpoint_dir=None, resume=False
    )
    plan = train.plan(run)
    with jax.set_mesh(plan.mesh):
        state, _ = ckpt.restore(manager, plan, step)
    model = nnx.merge(plan.graphdef, state.params)
    placed_mesh = plan.mesh if mode != "none" else None
    return Loaded(model, f"{path} (step {step})", _tokenizer_of(saved.data), placed_mesh, mode)


def _tokenizer_of(data: str):
    if not is_prepared(data) or not (Path(data) / TOKENIZER).is_file():
        return None
    from scaling.tokenizer import load_tokenizer

    return load_tokenizer(Path(data) / TOKENIZER)


def prompt_ids(loaded: Loaded, text: str | None, ids: list[int] | None) -> list[int]:
    """The prompt as token ids: ``ids`` as given, ``text`` through the tokenizer, or (neither)
    the end-of-text token (a document start) / id 0 without a tokenizer."""
    vocab = loaded.cfg.vocab_size
    if ids is not None:
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad or not ids:
            raise ValueError(f"prompt ids must be in 0..{vocab - 1}, got {bad or ids}")
        return ids
    if text is not None:
        if loaded.tokenizer is None:
            raise ValueError(
                f"{loaded.source} has no tokenizer (not trained on a prepared directory); "
                "give the prompt as --prompt-ids 1,2,3"
            )
        encoded = loaded.tokenizer.encode(text, add_special_tokens=False).ids
        if not encoded:
            raise ValueError("the prompt encodes to no tokens; give some text")
        return encoded
    if loaded.tokenizer is None:
        return [0]
    from scaling.tokenizer import end_of_text

    return [end_of_text(loaded.tokenizer)[1]]


def run_generation(
    loaded: Loaded,
    prompt: list[int],
    *,
    batch: int,
    max_new_tokens: int,
    sampling: Sampling,
    seed: int,
) -> dict:
    """Generate ``batch`` continuations of ``prompt``; a JSON-ready result with tokens/s."""
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    cfg = loaded.cfg
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens exceeds the context "
            f"of {cfg.name} ({cfg.max_seq_len}); shorten the prompt or --max-new-tokens"
        )
    stop = _stop_tokens(loaded)
    decoder = Decoder(loaded.model, batch, len(prompt), len(prompt) + max_new_tokens,
                      sampling, loaded.mesh, loaded.mode)  # fmt: skip
    out = generate(decoder, [prompt] * batch, max_new_tokens, seed=seed, stop_tokens=stop)
    return _result(loaded, prompt, out, decoder, sampling, seed)


def _stop_tokens(loaded: Loaded) -> tuple[int, ...]:
    if loaded.tokenizer is None:
        return ()
    from scaling.tokenizer import end_of_text

    return (end_of_text(loaded.tokenizer)[1],)


def _result(loaded, prompt, out: Generation, decoder: Decoder, sampling, seed) -> dict:
    decode_s = sum(out.step_s)
    decoded_tokens = len(out.step_s) * decoder.batch
    texts = None
    if loaded.tokenizer is not None:
        texts = [loaded.tokenizer.decode(row, skip_special_tokens=False) for row in out.tokens]
    return {
        "source": loaded.source,
        "model": loaded.cfg.name,
        "prompt_ids": prompt,
        "tokens": out.tokens,
        "texts": texts,
        "batch": decoder.batch,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "seed": seed,
        "compile_s": decoder.compile_s,
        "prefill_s": out.prefill_s,
        "decode_steps": len(out.step_s),
        "decode_step_median_s": statistics.median(out.step_s) if out.step_s else None,
        "decode_tokens_per_s": decoded_tokens / decode_s if decode_s > 0 else None,
        "tokens_per_s": out.new_tokens / (out.prefill_s + decode_s),
    }
