"""Documents from text files, directories, JSON lines and parquet text columns, streamed in
bounded pieces. Never imports jax.

A *document* is the unit the train/validation split assigns:

* ``text``: a file is one document, except that GPT-2's end-of-text marker ``<|endoftext|>``
  separates documents inside a file (the form TinyStories' ``.txt`` files come in);
* ``jsonl``: one JSON object per line, its ``text_field`` is the document;
* ``parquet``: one row, its ``text_field`` column is the document (a Hugging Face dataset
  export).

Files are read in ``CHUNK_BYTES`` chunks and documents are yielded as ``Piece``s of at most
about ``PIECE_CHARS`` characters, cut after a newline where one is near, so memory stays bounded
however large a file or a document is. Each document has a stable ``key`` (source path relative
to the input it was found under, and its index in that file): the split is a function of the key
and the seed, never of the order files were listed in.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from scaling.tokenizer import EOT

FORMATS = ("auto", "text", "jsonl", "parquet")
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
DEFAULT_GLOBS = {"text": "*.txt", "jsonl": "*.jsonl", "parquet": "*.parquet"}
AUTO_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")  # what a directory gives with auto
CORPORA = ("python-stdlib",)
CHUNK_BYTES = 1 << 20
# Encoding holds ~150-200 bytes per character in flight (tokenizers' alignments); 64 Ki
# characters per piece and 1 Mi per batch keep a prepare at ~0.4 GB whatever the input size
# (measured: 8 MB and 64 MB inputs, 0.42 and 0.44 GB peak RSS; 1 Mi pieces: 0.86-1.2 GB).
# Pieces are encoded separately, so PIECE_CHARS is recorded in meta.json.
PIECE_CHARS = 1 << 16


@dataclass(frozen=True)
class Source:
    """One input file: where it is, its name in the record, and its format."""

    path: Path
    name: str  # relative to the input it was found under (stable across machines)
    format: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def sha256(self) -> str:
        with open(self.path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True)
class Piece:
    """Part of one document; ``last`` marks the document's final piece."""

    key: str
    text: str
    last: bool


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


class BadInput(ValueError):
    """An input that cannot be read as text (binary, bad JSON, missing field)."""


def format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    return SUFFIX_FORMATS.get(path.suffix.lower(), "text")


def find_sources(inputs: list[str], fmt: str = "auto", glob: str | None = None) -> list[Source]:
    """Every file the inputs name: files as given, directories searched recursively for
    ``glob`` (default by format: ``*.txt``, ``*.jsonl``, ``*.parquet``; with ``auto``, files
    ending in .txt, .md, .jsonl or .parquet), in sorted order."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if not inputs:
        raise ValueError("no input given; name files or directories, or use --corpus")
    sources: list[Source] = []
    for given in inputs:
        root = Path(given)
        if root.is_file():
            sources.append(Source(root, root.name, format_of(root, fmt)))
        elif root.is_dir():
            sources += _directory_sources(root, fmt, glob)
        else:
            raise ValueError(f"input {given!r} not found")
    if not sources:
        pattern = glob or DEFAULT_GLOBS.get(fmt, "|".join(f"*{s}" for s in AUTO_SUFFIXES))
        raise ValueError(
            f"no input files matching {pattern!r} under {', '.join(inputs)}; pass --glob"
        )
    return sources


def _directory_sources(root: Path, fmt: str, glob: str | None) -> list[Source]:
    if glob is not None:
        files = root.rglob(glob)
    elif fmt == "auto":
        files = (p for p in root.rglob("*") if p.suffix.lower() in AUTO_SUFFIXES)
    else:
        files = root.rglob(DEFAULT_GLOBS[fmt])
    found = sorted(p for p in files if p.is_file())
    return [Source(p, f"{root.name}/{p.relative_to(root)}", format_of(p, fmt)) for p in found]


def corpus_sources(name: str) -> list[Source]:
    """A corpus every machine has offline. ``python-stdlib``: the Python standard library's own
    ``.py`` source (``sysconfig.get_paths()["stdlib"]``, site-packages excluded), one document
    per file, named relative to the library root."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return [Source(p, str(p.relative_to(root)), "text") for p in files]


def read_pieces(source: Source, text_field: str = "text") -> Iterator[Piece]:
    """The source's documents as pieces, in file order. Raises ``BadInput`` (naming the file)
    for binary or undecodable content, bad JSON and missing fields."""
    if source.format == "text":
        yield from _text_pieces(source)
    elif source.format == "jsonl":
        for index, text in _jsonl_documents(source, text_field):
            yield from _split(f"{source.name}#{index}", text)
    elif source.format == "parquet":
        for index, text in _parquet_documents(source, text_field):
            yield from _split(f"{source.name}#{index}", text)
    else:
        raise ValueError(f"unknown format {source.format!r}; valid: {', '.join(FORMATS[1:])}")


def _split(key: str, text: str) -> Iterator[Piece]:
    """One document as pieces of at most about PIECE_CHARS (cut after a newline when one is in
    the last quarter of the piece, so pieces rarely split a line)."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        end = start + PIECE_CHARS
        newline = text.rfind("\n", end - PIECE_CHARS // 4, end)
        end = newline + 1 if newline >= 0 else end
        yield Piece(key, text[start:end], last=False)
        start = end
    yield Piece(key, text[start:], last=True)


def _decoded_chunks(source: Source) -> Iterator[str]:
    """The file as UTF-8 text, CHUNK_BYTES at a time; NUL bytes or invalid UTF-8 → BadInput."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(source.path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            if b"\0" in chunk:
                at = offset + chunk.index(b"\0")
                raise BadInput(f"{source.name} looks binary (NUL byte at offset {at}); not text")
            try:
                yield decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise BadInput(
                    f"{source.name} is not UTF-8 text (byte 0x{chunk[exc.start]:02x} at offset "
                    f"{offset + exc.start})"
                ) from None
            offset += len(chunk)
    try:
        yield decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise BadInput(f"{source.name} is not UTF-8 text (truncated at the end)") from None


def _text_pieces(source: Source) -> Iterator[Piece]:
    """Documents separated by EOT inside the file; a buffer holds at most a chunk plus a
    piece (a marker split across two chunks is kept whole by holding back its length)."""
    index, buffer = 0, ""
    for chunk in _decoded_chunks(source):
        buffer += chunk
        while (at := buffer.find(EOT)) >= 0:
            yield from _split(f"{source.name}#{index}", buffer[:at])
            index, buffer = index + 1, buffer[at + len(EOT) :]
        keep = len(EOT) - 1
        while len(buffer) - keep > PIECE_CHARS:
            piece = next(_split(f"{source.name}#{index}", buffer[: len(buffer) - keep]))
            yield piece
            buffer = buffer[len(piece.text) :]
    yield from _split(f"{source.name}#{index}", buffer)


def _jsonl_documents(source: Source, field: str) -> Iterator[tuple[int, str]]:
    with open(source.path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                message = str(exc).splitlines()[0][:120]
                raise BadInput(f"{source.name} line {number} is not JSON ({message})") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise BadInput(
                    f"{source.name} line {number} has no text field {field!r} "
                    f"(found: {keys}); pass --text-field"
                )
            yield number - 1, row[field]


def _parquet_documents(source: Source, field: str) -> Iterator[tuple[int, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInput(f"{source.name} is not a parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    if field not in names:
        raise BadInput(
            f"{source.name} has no column {field!r} (found: {', '.join(names)}); pass --text-field"
        )
    index = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield index, str(text)
            index += 1
