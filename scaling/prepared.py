"""A prepared data directory (``scaling data prepare``): its files, ``meta.json``, the token
memory maps, and the fixed validation windows. NumPy only; never imports jax or grain.

Layout of ``DIR``::

    DIR/train.bin        token ids of the training documents, each followed by end-of-text
    DIR/val.bin          the same for the validation documents
    DIR/tokenizer.json   the Hugging Face tokenizer that wrote them
    DIR/meta.json        vocabulary, dtype, token/document/byte counts, sources, split seed

``.bin`` files are flat little-endian ``uint16`` (vocabulary ≤ 65,536) or ``uint32`` arrays with
no header, as nanoGPT's ``prepare.py`` writes them (``np.memmap(path, dtype, mode="r")``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META = "meta.json"
TOKENIZER = "tokenizer.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 1
EVAL_SEED = 0x5EED  # the validation windows' order: fixed, so every run sees the same ones
VOCAB_MULTIPLE = 64  # a model's vocabulary is padded to this (nanoGPT: 50257 → 50304)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (nanoGPT's choice), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def padded_vocab(vocab_size: int) -> int:
    """The model vocabulary for data of ``vocab_size`` ids: rounded up to a multiple of 64, so
    tensor-parallel splits of the embedding and head divide it (ids at or above the data's
    vocabulary never occur)."""
    return VOCAB_MULTIPLE * math.ceil(vocab_size / VOCAB_MULTIPLE)


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


@dataclass(frozen=True)
class Prepared:
    """A prepared directory, opened: ``meta`` as written, token files memory-mapped on use."""

    path: Path
    meta: dict

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.path / self.meta[split]["file"]

    def tokens(self, split: str) -> np.ndarray:
        return np.memmap(self.split_path(split), dtype=self.dtype, mode="r")

    def bytes_per_token(self, split: str) -> float | None:
        """UTF-8 bytes of text per token of ``split`` (end-of-text tokens included), or None
        where the bytes are unknown. Bits per byte = loss / ln 2 / bytes_per_token."""
        counts = self.meta[split]
        if not counts.get("bytes") or not counts.get("tokens"):
            return None
        return counts["bytes"] / counts["tokens"]


def open_prepared(path: str | Path) -> Prepared:
    """Read and check a prepared directory (meta.json present and consistent with the files)."""
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise ValueError(
            f"{str(path)!r} is not a prepared data directory (no {META}); "
            "make one with `scaling data prepare`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON: {exc}") from None
    prepared = Prepared(path, meta)
    for split in SPLITS:
        file = prepared.split_path(split)
        expected = int(meta[split]["tokens"]) * prepared.dtype.itemsize
        if not file.is_file() or file.stat().st_size != expected:
            raise ValueError(
                f"{str(file)!r} is missing or not {expected} bytes as {META} says; "
                "prepare the directory again"
            )
    return prepared


def window_count(n_tokens: int, seq: int) -> int:
    """Non-overlapping windows of ``seq + 1`` tokens (``seq`` predictions each) in a split."""
    return max((n_tokens - 1) // seq, 0)


def eval_window_starts(n_tokens: int, seq: int, n_windows: int) -> np.ndarray:
    """Start offsets of the first ``n_windows`` validation windows: the split's non-overlapping
    windows (start ``i·seq``, so no target token is predicted twice) in a fixed permuted order
    (``EVAL_SEED``, independent of the run's seed), spread over every validation document.
    The same (split, seq, n_windows) gives the same windows in every run and sharding mode; a
    run asking for more windows sees a superset."""
    available = window_count(n_tokens, seq)
    if n_windows > available:
        raise ValueError(
            f"the split holds {available} windows of {seq + 1} tokens, fewer than the "
            f"{n_windows} asked for; ask for fewer evaluation batches or a shorter --seq"
        )
    order = np.random.default_rng(EVAL_SEED).permutation(available)[:n_windows]
    return order.astype(np.int64) * seq


def windows(tokens: np.ndarray, starts: np.ndarray, seq: int) -> np.ndarray:
    """``(len(starts), seq + 1)`` int32 windows of ``tokens`` at ``starts``."""
    return np.stack([np.asarray(tokens[s : s + seq + 1]) for s in starts]).astype(np.int32)
