import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import last_json
from tokenizers import Tokenizer

from scaling import corpus
from scaling.corpus import corpus_sources, find_sources
from scaling.prepare import prepare, split_of
from scaling.prepared import open_prepared
from scaling.tokenizer import parse_tokenizer


def _hand_split(key: str, seed: int, fraction: float) -> str:
    """The documented rule, written out again: val iff blake2b(seed NUL key) / 2^64 < f."""
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "little") < fraction * 2**64 else "train"


def _decoded_documents(out: Path, split: str) -> list[str]:
    """Decode a split's .bin with its tokenizer and cut it at the end-of-text ids."""
    meta = json.loads((out / "meta.json").read_text())
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = np.fromfile(out / f"{split}.bin", dtype=meta["dtype"])
    ends = np.flatnonzero(ids == meta["tokenizer"]["eot_id"])
    assert len(ends) == meta[split]["documents"] and ends[-1] == len(ids) - 1
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [
        tokenizer.decode(ids[a:b].tolist(), skip_special_tokens=False)
        for a, b in zip(starts, ends, strict=True)
    ]


def test_prepared_splits_partition_the_documents_and_decode_back(prepared_dir):
    meta = json.loads((prepared_dir / "meta.json").read_text())
    text_dir = prepared_dir.parent / "text"
    expected = {"train": [], "val": []}
    for file in sorted(text_dir.glob("*.py")):
        expected[_hand_split(f"text/{file.name}#0", 0, 0.25)].append(file.read_text())
    assert expected["train"] and expected["val"]
    for split in ("train", "val"):
        assert _decoded_documents(prepared_dir, split) == expected[split]
        assert meta[split]["bytes"] == sum(len(t.encode()) for t in expected[split])
    assert not set(expected["train"]) & set(expected["val"])
    # counts: the splits sum to the whole, the files hold what meta.json says
    prepared = open_prepared(prepared_dir)
    tokens = {s: prepared.tokens(s) for s in ("train", "val")}
    assert meta["total"]["tokens"] == len(tokens["train"]) + len(tokens["val"])
    assert meta["total"]["documents"] == 14 == len(meta["sources"])
    tokenizer = Tokenizer.from_file(str(prepared_dir / "tokenizer.json"))
    by_hand = sum(
        len(tokenizer.encode(t, add_special_tokens=False).ids) + 1
        for t in expected["train"] + expected["val"]
    )
    assert meta["total"]["tokens"] == by_hand
    assert meta["vocab_size"] == 512 and meta["dtype"] == "uint16"
    assert max(int(t.max()) for t in tokens.values()) < meta["vocab_size"]
    assert meta["round_trip"]["failures"] == 0
    source = meta["sources"][0]
    path = text_dir / Path(source["name"]).name
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["bytes"] == path.stat().st_size


def test_split_rule_is_seeded_and_close_to_the_fraction():
    keys = [f"doc{i}#0" for i in range(20_000)]
    val = [split_of(k, 3, 0.1) == "val" for k in keys]
    assert abs(np.mean(val) - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(keys))  # 4 sigma
    assert val == [split_of(k, 3, 0.1) == "val" for k in keys]
    assert val != [split_of(k, 4, 0.1) == "val" for k in keys]
    assert all(split_of(k, 3, 0.1) == _hand_split(k, 3, 0.1) for k in keys[:500])


def test_streaming_pieces_and_markers_give_the_same_documents(tmp_path, monkeypatch):
    """Tiny chunks and pieces force every boundary case: an end-of-text marker split across
    two chunks, documents longer than a piece, a multi-byte character across chunks."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 7)
    monkeypatch.setattr(corpus, "PIECE_CHARS", 40)
    docs = [
        "first document ☃\n" * 9,
        "second: ünïcödé " * 7,
        "",  # empty: skipped and counted
        "x" * 130 + "\n" + "tail",
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("<|endoftext|>".join(docs))
    sources = find_sources([str(tmp_path / "in")], "text")
    meta = prepare(sources, tmp_path / "o1", parse_tokenizer("bytes"), val_fraction=0.5, seed=1)
    again = prepare(sources, tmp_path / "o2", parse_tokenizer("bytes"), val_fraction=0.5, seed=1)
    assert meta["empty_documents_skipped"] == 1 and meta["total"]["documents"] == 3
    got = _decoded_documents(tmp_path / "o1", "train") + _decoded_documents(tmp_path / "o1", "val")
    assert sorted(got) == sorted(d for d in docs if d)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
    assert again["total"] == meta["total"]


def test_jsonl_and_parquet_inputs(tmp_path, cli):
    rows = [{"text": f"document number {i}: " + "abc " * i, "id": i} for i in range(30)]
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:15])
    pd.DataFrame(rows[15:]).to_parquet(tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    result = cli(
        "data", "prepare", tmp_path / "in", "--out", out, "--val-fraction", "0.3", "--json"
    )
    assert result.exit_code == 0, result.output
    meta = last_json(result.stdout)
    assert meta["total"]["documents"] == 30
    assert [s["documents"] for s in meta["sources"]] == [15, 15]
    got = _decoded_documents(out, "train") + _decoded_documents(out, "val")
    assert sorted(got) == sorted(r["text"] for r in rows)


def test_python_stdlib_corpus_is_the_standard_library_source():
    sources = corpus_sources("python-stdlib")
    assert len(sources) > 1000
    assert all(s.path.suffix == ".py" and "site-packages" not in s.path.parts for s in sources)
    assert {"json/decoder.py", "abc.py"} <= {s.name for s in sources}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".out."))


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty_dir", [], "no input files matching"),
        ("empty_file", [], "no text found in the inputs"),
        ("binary", [], "b.txt looks binary (NUL byte at offset 3)"),
        ("latin1", [], "c.txt is not UTF-8 text (byte 0xe9 at offset 3)"),
        ("good", ["--format", "xml"], "unknown format 'xml'; valid: auto, text, jsonl, parquet"),
        ("good", ["--tokenizer", "bpe:256"], "need at least 257"),
        ("good", ["--val-fraction", "0"], "--val-fraction must be in (0, 0.5], got 0.0"),
        ("good", ["--val-fraction", "0.6"], "--val-fraction must be in (0, 0.5], got 0.6"),
        ("jsonl_field", [], "a.jsonl line 1 has no text field 'text' (found: body)"),
        ("jsonl_bad", [], "a.jsonl line 2 is not JSON"),
        ("good", ["--corpus", "nope"], "unknown corpus 'nope'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, cli, setup, args, message):
    src = tmp_path / "in"
    src.mkdir()
    good = "a perfectly fine document\n" * 50
    if setup in ("good", "binary", "latin1"):
        for i in range(6):
            (src / f"ok{i}.txt").write_text(good + str(i))
    if setup == "empty_file":
        (src / "a.txt").write_text("")
    if setup == "binary":
        (src / "b.txt").write_bytes(b"abc\0def")
    if setup == "latin1":
        (src / "c.txt").write_bytes("café au lait".encode("latin-1"))
    if setup == "jsonl_field":
        (src / "a.jsonl").write_text('{"body": "x"}\n')
    if setup == "jsonl_bad":
        (src / "a.jsonl").write_text('{"text": "x"}\n{"text": \n')
    inputs = [] if "--corpus" in args else [src]
    result = cli(
        "data", "prepare", *inputs, "--out", tmp_path / "out", "--val-fraction", "0.4", *args
    )
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        (src / f"{i}.txt").write_text(f"document {i} " * 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = cli("data", "prepare", src, "--out", out, "--val-fraction", "0.5")
    assert result.exit_code == 2 and "already exists" in result.output
    assert (out / "mine.txt").read_text() == "keep me"
    result = cli("data", "prepare", src, "--out", out, "--val-fraction", "0.5", "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "mine.txt").exists() and (out / "meta.json").is_file()
    assert _leftovers(tmp_path) == []
