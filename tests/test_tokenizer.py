import json
import os
import subprocess
import sys

import pytest
from helpers import stdlib_sample
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from scaling.prepare import split_of
from scaling.tokenizer import (
    EOT,
    byte_to_unicode,
    byte_tokenizer,
    end_of_text,
    parse_tokenizer,
    vocab_size,
)

MIXED_TEXT = "héllo\n\tworld ☃ 𝄞 — ünïcödé\x01\x7f <|endoftext|> done\r\n"


def test_byte_table_is_the_library_byte_level_alphabet():
    table = byte_to_unicode()
    assert sorted(table.values()) == sorted(pre_tokenizers.ByteLevel.alphabet())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for byte in range(128):  # each ASCII byte on its own goes through the library's mapping
        ((mapped, _),) = byte_level.pre_tokenize_str(chr(byte))
        assert mapped == table[byte], byte
    ((mapped, _),) = byte_level.pre_tokenize_str("é")  # two bytes: 0xC3 0xA9
    assert mapped == table[0xC3] + table[0xA9]


def test_byte_tokenizer_ids_are_the_utf8_bytes_and_decode_back():
    tokenizer = byte_tokenizer()
    tokenizer.encode_special_tokens = True
    ids = tokenizer.encode(MIXED_TEXT, add_special_tokens=False).ids
    assert ids == list(MIXED_TEXT.encode("utf-8"))
    assert tokenizer.decode(ids, skip_special_tokens=False) == MIXED_TEXT
    assert vocab_size(tokenizer) == 257 and end_of_text(tokenizer) == (EOT, 256)


TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from scaling.tokenizer import train_bpe
texts = [Path(p).read_text() for p in json.loads(sys.argv[1])]
sys.stdout.write(train_bpe(texts, int(sys.argv[2])).to_str())
"""


def _train_in_subprocess(files, vocab: int, threads: int) -> str:
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    args = [sys.executable, "-c", TRAIN_SCRIPT, json.dumps([str(f) for f in files]), str(vocab)]
    return subprocess.run(args, env=env, check=True, capture_output=True, text=True).stdout


def test_bpe_training_is_deterministic_across_processes_and_thread_counts(tmp_path):
    """Hash-map order changes from process to process (the library seeds its hashes per
    process); the trained vocabulary and merges must not."""
    files = sorted(stdlib_sample(tmp_path).iterdir())
    one = _train_in_subprocess(files, 512, threads=1)
    two = _train_in_subprocess(files, 512, threads=2)
    assert one == two
    fewer = _train_in_subprocess(files[:-3], 512, threads=2)
    assert fewer != one  # other text, other merges: the comparison can fail
    tokenizer = Tokenizer.from_str(one)
    assert vocab_size(tokenizer) == 512 and tokenizer.token_to_id(EOT) == 0
    for file in files:  # byte-level BPE reproduces any text
        text = file.read_text()
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text


def _foreign_tokenizer(path, texts) -> None:
    """A tokenizer.json unlike ours: NFKC normalizer, Metaspace pre-tokenizer (SentencePiece
    style), BPE with an unknown token, and </s> as its end-of-text token."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.save(str(path))


def test_given_tokenizer_json_gives_the_ids_the_library_gives(tmp_path, cli):
    import numpy as np

    text_dir = stdlib_sample(tmp_path / "text")
    files = sorted(text_dir.iterdir())
    _foreign_tokenizer(tmp_path / "tokenizer.json", [f.read_text() for f in files])
    out = tmp_path / "out"
    result = cli(
        "data", "prepare", text_dir, "--glob", "*.py", "--tokenizer",
        tmp_path / "tokenizer.json", "--val-fraction", "0.3", "--out", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    reference = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    eos = reference.token_to_id("</s>")
    assert meta["tokenizer"]["eot_id"] == eos and meta["tokenizer"]["eot_token"] == "</s>"
    expected, lossy = {"train": [], "val": []}, 0
    for file in files:
        split = split_of(f"text/{file.name}#0", 0, 0.3)
        ids = reference.encode(file.read_text(), add_special_tokens=False).ids
        expected[split] += [*ids, eos]
        lossy += reference.decode(ids) != file.read_text()
    for split in ("train", "val"):
        got = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"]).tolist()
        assert got == expected[split], split
    assert len(expected["train"]) > 0 and len(expected["val"]) > 0
    # NFKC and Metaspace do not give every text back; prepare counts what does not
    assert meta["round_trip"]["failures"] == lossy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("bpe:256", "too small for the 256 byte tokens and the end-of-text token"),
        ("bpe:", "bad --tokenizer 'bpe:'"),
        ("words", "valid: bytes, bpe:VOCAB"),
        ("missing/tokenizer.json", "tokenizer file 'missing/tokenizer.json' not found"),
    ],
)
def test_bad_tokenizer_specs_name_what_is_valid(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_tokenizer(text)


def test_parse_tokenizer_kinds():
    assert parse_tokenizer("bytes").kind == "bytes"
    assert parse_tokenizer("bpe:4096").vocab_size == 4096


def test_a_given_tokenizer_without_an_end_of_text_token_is_refused(tmp_path, cli):
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(["a b c"] * 10, trainers.BpeTrainer(special_tokens=["<unk>"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "in").mkdir()
    for i in range(4):
        (tmp_path / "in" / f"{i}.txt").write_text("a b c " * (i + 1))
    result = cli(
        "data", "prepare", tmp_path / "in", "--tokenizer", tmp_path / "tokenizer.json",
        "--out", tmp_path / "out", "--val-fraction", "0.5",
    )  # fmt: skip
    assert (
        result.exit_code == 2 and "no end-of-text token; looked for <|endoftext|>" in result.output
    )
    assert not (tmp_path / "out").exists()
