"""Tokenizers for prepared data, all Hugging Face ``tokenizers`` objects saved as one
``tokenizer.json``: a byte-level vocabulary (ids are the bytes, 256 + end-of-text), a BPE
vocabulary trained on the corpus (byte-level pre-tokenisation, so any text round-trips), or a
given ``tokenizer.json`` (e.g. from a Hugging Face checkpoint). Never imports jax.

Determinism of BPE training: ``tokenizers``' BPE trainer has no random element. Its word counts
live in hash maps whose iteration order changes from process to process, but the byte-level
alphabet is sorted before ids are assigned and ties between equally frequent pairs are broken by
the pair's ids, so the same training text gives the same merges and ids in every process and
with any thread count (``tests/test_tokenizer.py`` trains in two processes and compares the
files byte for byte). What is *not* guaranteed: the same merges across ``tokenizers`` versions
(its pre-tokeniser regex and tie-breaking are implementation details), and BPE variants that use
a continuing-subword prefix (WordPiece-style ``##``), whose ids follow hash-map order
(huggingface/tokenizers#1794); this module never uses one. The split seed decides which
documents the vocabulary is trained on (the training split only), so a seed plus the inputs
fixes the vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"  # GPT-2's end-of-text marker, appended after every document
# Tokens a given tokenizer.json may use to end a document, in order of preference.
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>")
BYTE_ALPHABET = 256
MIN_BPE_VOCAB = BYTE_ALPHABET + 1  # every byte plus the end-of-text token
MAX_VOCAB = 2**32 - 1  # token ids are stored as uint32 at most


@dataclass(frozen=True)
class TokenizerSpec:
    """What ``--tokenizer`` asked for: ``bytes``, ``bpe`` (with ``vocab_size``) or ``file``."""

    kind: str
    vocab_size: int | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        return {"bytes": "bytes", "bpe": f"bpe:{self.vocab_size}"}.get(self.kind, str(self.path))


def parse_tokenizer(text: str) -> TokenizerSpec:
    """``bytes`` | ``bpe:VOCAB`` | ``PATH/tokenizer.json``; raise ValueError naming what is
    valid."""
    valid = "valid: bytes, bpe:VOCAB (e.g. bpe:4096), or a path to a tokenizer.json"
    if text == "bytes":
        return TokenizerSpec("bytes")
    if text.startswith("bpe:"):
        size = text[4:]
        if not size.isdigit():
            raise ValueError(f"bad --tokenizer {text!r}; {valid}")
        vocab = int(size)
        if vocab < MIN_BPE_VOCAB:
            raise ValueError(
                f"--tokenizer {text}: vocabulary {vocab} is too small for the 256 byte tokens "
                f"and the end-of-text token; need at least {MIN_BPE_VOCAB}"
            )
        if vocab > MAX_VOCAB:
            raise ValueError(f"--tokenizer {text}: vocabulary must be at most {MAX_VOCAB}")
        return TokenizerSpec("bpe", vocab_size=vocab)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise ValueError(f"tokenizer file {text!r} not found")
        return TokenizerSpec("file", path=text)
    raise ValueError(f"bad --tokenizer {text!r}; {valid}")


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """The byte → printable character table of byte-level BPE (GPT-2, Radford et al. 2019,
    ``encoder.py``; ``tokenizers.pre_tokenizers.ByteLevel`` uses the same): printable Latin-1
    bytes stand for themselves, the other 68 are shifted to U+0100 onwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = {}, 0
    for byte in range(BYTE_ALPHABET):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(BYTE_ALPHABET + shifted)
            shifted += 1
    return table


def _byte_level(tokenizer: Tokenizer) -> Tokenizer:
    """Byte-level pre-tokenisation (GPT-2's split of words, spaces and punctuation, then bytes
    as characters) and its decoder: every string is representable, so decoding reproduces it."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def byte_tokenizer() -> Tokenizer:
    """Vocabulary 257: token id ``b`` is byte ``b`` (as ``scaling data from-text`` writes) and
    256 is the end-of-text token. A BPE model with no merges over the byte alphabet."""
    vocab = {char: byte for byte, char in byte_to_unicode().items()}
    tokenizer = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])))
    tokenizer.add_special_tokens([EOT])
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE vocabulary of ``vocab_size`` tokens (the end-of-text token is id
    0, the 256 byte tokens follow, then the merges) on ``texts`` (streamed). A small corpus
    may stop short of ``vocab_size`` when no pair is left to merge."""
    tokenizer = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer, length=length)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the library raises its own Exception type for bad files
        first = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"cannot read tokenizer {str(path)!r}: {first}") from None


def end_of_text(tokenizer: Tokenizer) -> tuple[str, int]:
    """The token that ends each document, and its id."""
    for token in EOT_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token, token_id
    raise ValueError(
        f"the tokenizer has no end-of-text token; looked for {', '.join(EOT_CANDIDATES)}"
    )


def build_tokenizer(spec: TokenizerSpec, train_texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer ``spec`` names; ``train_texts`` feeds BPE training."""
    if spec.kind == "bytes":
        return byte_tokenizer()
    if spec.kind == "bpe":
        return train_bpe(train_texts or [], spec.vocab_size)
    return load_tokenizer(spec.path)


def vocab_size(tokenizer: Tokenizer) -> int:
    """Every id the tokenizer can emit: model vocabulary plus added (special) tokens."""
    return tokenizer.get_vocab_size(with_added_tokens=True)
