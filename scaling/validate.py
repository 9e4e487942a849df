"""Parity with the reference implementation: the shared model on imported weights against
Hugging Face ``transformers`` on the same folder, layer by layer, in float32.

``torch`` and ``transformers`` are imported only inside ``compare_with_hf`` (they are test and
validation tools, never dependencies of the package); without them it raises ``ValueError``
with the command that installs them.

Hugging Face's ``hidden_states`` are the embedding output, the output of every decoder layer
but the last, and the final norm's output; the comparison lines ours up with them: embeddings,
layers 1…L-1, final norm, logits. Each row gives the largest absolute difference and the
largest absolute value of the reference (its scale); the parity tolerance is relative to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import ModelConfig
from scaling.estimate.hf_config import model_config_from_hf

TOLERANCE = 1e-4  # max |ours - reference| / max |reference logits|, float32
INSTALL_HINT = (
    "scaling validate needs torch and transformers: `pip install torch transformers` "
    "(CPU wheels suffice), or run `uvx nox -s validate`"
)


@dataclass(frozen=True)
class ParityRow:
    name: str  # "embeddings", "layer 3", "final norm", "logits"
    max_abs_diff: float
    reference_scale: float  # max |reference|

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.reference_scale if self.reference_scale else 0.0

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "max_abs_diff": self.max_abs_diff,
                "reference_scale": self.reference_scale, "relative": self.relative}  # fmt: skip


@dataclass(frozen=True)
class ParityReport:
    model: ModelConfig
    rows: tuple[ParityRow, ...]
    batch: int
    seq: int
    tolerance: float = TOLERANCE

    @property
    def logits(self) -> ParityRow:
        return self.rows[-1]

    @property
    def passed(self) -> bool:
        return self.logits.relative <= self.tolerance

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model.name,
            "family": self.model.family,
            "batch": self.batch,
            "seq": self.seq,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "rows": [r.to_dict() for r in self.rows],
        }


def model_from_params(cfg: ModelConfig, params: dict):
    """The shared model (``scaling.model.TransformerLM``) holding ``params`` (a nested dict in
    the layout of ``nnx.to_pure_dict``). NumPy leaves are moved to the device one at a time and
    dropped from ``params``, so the model is never held twice."""
    import jax
    from flax import nnx

    from scaling.convert import flatten, nest
    from scaling.model import abstract_model

    flat = flatten(params)
    params.clear()
    on_device = {path: jax.device_put(flat.pop(path)) for path in list(flat)}
    graphdef, state = nnx.split(abstract_model(cfg))
    nnx.replace_by_pure_dict(state, nest(on_device))
    return nnx.merge(graphdef, state)


def our_outputs(cfg: ModelConfig, params: dict, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Embeddings, every block's output, the final norm's output and the logits (float32).
    ``params`` is consumed (see ``model_from_params``)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model_from_params(cfg, params))

    @jax.jit  # the parameters are arguments, not constants baked into the program
    def run(state, tokens):
        model = nnx.merge(graphdef, state)
        logits, embedded, blocks = model.forward_with_hidden(tokens)
        return logits, embedded, blocks, model.final_norm(blocks[-1])

    logits, embedded, blocks, final = run(state, jnp.asarray(tokens))
    return {"embeddings": np.asarray(embedded), "blocks": np.asarray(blocks),
            "final norm": np.asarray(final), "logits": np.asarray(logits)}  # fmt: skip


def reference_outputs(hf_dir: str | Path, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The same quantities from ``transformers`` (float32, eager attention, CPU)."""
    try:
        import torch
        import transformers
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    transformers.utils.logging.disable_progress_bar()  # stdout stays the report
    transformers.utils.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(hf_dir), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        out = model(torch.as_tensor(tokens, dtype=torch.long), output_hidden_states=True)
    hidden = [h.float().numpy() for h in out.hidden_states]
    return {"hidden_states": hidden, "logits": out.logits.float().numpy()}


def _row(name: str, ours: np.ndarray, reference: np.ndarray) -> ParityRow:
    if ours.shape != reference.shape:
        raise ValueError(f"{name}: shape {ours.shape} here, {reference.shape} in transformers")
    diff = float(np.max(np.abs(ours.astype(np.float64) - reference)))
    return ParityRow(name, diff, float(np.max(np.abs(reference))))


def compare_with_hf(
    hf_dir: str | Path,
    *,
    params: dict | None = None,
    checkpoint: str | Path | None = None,
    batch: int = 2,
    seq: int = 32,
    seed: int = 0,
) -> ParityReport:
    """Run the shared model and ``transformers`` on the same random tokens; compare per layer
    and the logits. The shared model's weights: ``params`` (consumed), else a converted
    ``checkpoint``, else the folder's own weights imported. transformers runs first and is
    released before the shared model is built, so at most one model is in memory at a time."""
    from scaling.convert import load_params, nest
    from scaling.hf_weights import read_params

    cfg = model_config_from_hf(hf_dir)
    if batch <= 0 or not 0 < seq <= cfg.max_seq_len:
        raise ValueError(f"need batch > 0 and 0 < seq <= {cfg.max_seq_len}, got {batch}, {seq}")
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, seq))
    reference = reference_outputs(hf_dir, tokens)
    if params is None and checkpoint is not None:
        params = load_params(checkpoint)
    elif params is None:
        params = nest(read_params(hf_dir, cfg))
    ours = our_outputs(cfg, params, tokens)
    hidden = reference["hidden_states"]
    if len(hidden) != cfg.n_layers + 1:
        raise ValueError(f"transformers returned {len(hidden)} hidden states for "
                         f"{cfg.n_layers} layers (expected {cfg.n_layers + 1})")  # fmt: skip
    rows = [_row("embeddings", ours["embeddings"], hidden[0])]
    rows += [_row(f"layer {i}", ours["blocks"][i - 1], hidden[i]) for i in range(1, cfg.n_layers)]
    rows.append(_row("final norm", ours["final norm"], hidden[-1]))
    rows.append(_row("logits", ours["logits"], reference["logits"]))
    return ParityReport(cfg, tuple(rows), batch, seq)
