"""Greedy generation with the KV cache (scaling.generate) against ``transformers``'
``generate`` (greedy) on the same random Llama (GQA) and GPT-2 weights, imported with the
convert code; batched prompts of different lengths (left padding, per-row positions).

Needs CPU ``torch`` and ``transformers`` (``uvx nox -s validate``); skipped without them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch", reason="parity tests need CPU torch (uvx nox -s validate)")
transformers = pytest.importorskip(
    "transformers", reason="parity tests need transformers (uvx nox -s validate)"
)

from test_parity import randomized_hf_model  # noqa: E402 (after the skips)

from scaling import convert  # noqa: E402
from scaling.generate import Decoder, generate, left_pad  # noqa: E402
from scaling.hf_weights import read_params  # noqa: E402
from scaling.validate import model_from_params  # noqa: E402

PROMPTS = [[5, 17, 3, 44, 9, 21, 8], [31, 2, 60]]
NEW_TOKENS = 12


def hf_greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    """``generate`` with do_sample=False over left-padded prompts; no end-of-sequence stop."""
    tokens, pad = left_pad(prompts)
    mask = np.ones_like(tokens)
    for row, p in enumerate(pad):
        mask[row, :p] = 0
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
        )  # fmt: skip
    return out[:, tokens.shape[1] :].tolist()


@pytest.mark.parametrize("case", ["llama-gqa", "gpt2"])
def test_greedy_generation_matches_transformers(case, tmp_path):
    hf_model = randomized_hf_model(case)
    hf_model.save_pretrained(tmp_path / case)
    cfg = convert.model_config_from_hf(tmp_path / case)
    model = model_from_params(cfg, convert.nest(read_params(tmp_path / case, cfg)))
    width = max(map(len, PROMPTS))
    decoder = Decoder(model, batch=len(PROMPTS), prompt_len=width, max_len=width + NEW_TOKENS)
    ours = generate(decoder, PROMPTS, NEW_TOKENS).tokens
    theirs = hf_greedy(hf_model, PROMPTS, NEW_TOKENS)
    assert ours == theirs
    # each row alone (no padding) generates the same tokens as in the batch
    for prompt, row in zip(PROMPTS, theirs, strict=True):
        assert hf_greedy(hf_model, [prompt], NEW_TOKENS) == [row]
