"""`scaling generate`: from a trained checkpoint (with its tokenizer) and from a preset; bad
input is one line and exit code 2."""

import pytest
from helpers import last_json

from scaling.config import ModelConfig
from scaling.decode_run import Loaded, prompt_ids
from scaling.model import build_model
from scaling.tokenizer import load_tokenizer


@pytest.mark.slow  # trains a checkpoint first (~30 s on the loaded 2-core machine)
def test_generate_from_a_checkpoint_decodes_with_its_tokenizer(prepared_dir, tmp_path, cli):
    ckpt = tmp_path / "ckpt"
    train = cli(
        "train", "--size", "tiny", "--layers", 1, "--data", prepared_dir, "--seq", 16,
        "--batch", 2, "--steps", 2, "--checkpoint-dir", ckpt,
    )  # fmt: skip
    assert train.exit_code == 0, train.output
    result = cli(
        "generate", "--checkpoint", ckpt, "--prompt", "def main(", "--max-new-tokens", 6,
        "--batch", 2, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = last_json(result.stdout)
    tokenizer = load_tokenizer(prepared_dir / "tokenizer.json")
    small = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32, vocab_size=512)
    assert out["prompt_ids"] == tokenizer.encode("def main(", add_special_tokens=False).ids
    assert out["source"] == f"{ckpt} (step 2)" and out["batch"] == 2
    assert all(1 <= len(row) <= 6 for row in out["tokens"])
    assert out["tokens"][0] == out["tokens"][1]  # greedy: both rows alike
    assert out["texts"] == [
        tokenizer.decode(row, skip_special_tokens=False) for row in out["tokens"]
    ]
    assert out["tokens_per_s"] > 0 and out["prefill_s"] > 0
    # without a prompt: the document start
    loaded = Loaded(build_model(small), "x", tokenizer)
    assert prompt_ids(loaded, None, None) == [tokenizer.token_to_id("<|endoftext|>")]
    assert prompt_ids(Loaded(build_model(small), "x", None), None, None) == [0]


def test_generate_from_a_preset_prints_ids_and_speed(cli):
    result = cli("generate", "--size", "tiny", "--prompt-ids", "1,2,3", "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    ids = result.stdout.strip().split()
    assert len(ids) == 4 and all(0 <= int(i) < 2048 for i in ids)
    assert "tokens/s" in result.stderr and "time to first token" in result.stderr


LONG_PROMPT = ",".join(["1"] * 510)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--prompt-ids", LONG_PROMPT, "--max-new-tokens", 8],
            r"exceeds the context of tiny \(512\)",
        ),
        (["--top-p", "0"], r"top-p must be in \(0, 1\], got 0.0"),
        (["--top-p", "1.5"], r"top-p must be in \(0, 1\], got 1.5"),
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top-k", "0"], "top-k must be a positive integer"),
        (["--mode", "dp", "--batch", "3"], "global batch 3 is not divisible by data=8"),
        (["--prompt", "hello"], "has no tokenizer"),
        (["--prompt-ids", "1,x"], "'x' is not an integer"),
        (["--prompt-ids", "1,5000"], r"prompt ids must be in 0..2047"),
        (["--checkpoint", "nowhere"], "exactly one of --checkpoint and --size"),
        (["--max-new-tokens", "0"], "must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    import re

    result = cli("generate", "--size", "tiny", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert re.search(message, lines[0]), lines[0]


def test_missing_checkpoint_is_one_line(cli, tmp_path):
    result = cli("generate", "--checkpoint", tmp_path / "none")
    assert result.exit_code == 2 and "checkpoint directory" in result.stderr
