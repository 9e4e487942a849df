"""`scaling data ...`: turn text into token files the trainer reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli.common import err_console, out_console, print_json, user_errors

app = typer.Typer(help="Prepare training data.", no_args_is_help=True)
Opt = typer.Option


@app.command("from-text")
def from_text(
    text: Annotated[Path, typer.Argument(help="Any text file.")],
    out: Annotated[Path, typer.Option(help="Output .bin (uint16 byte tokens).")] = Path(
        "tokens.bin"
    ),
) -> None:
    """Byte-level tokenise TEXT (vocab 256) into a .bin for `scaling train --data`."""
    from scaling.data import text_to_tokens

    with user_errors():
        n = text_to_tokens(text, out)
    out_console.print(f"wrote {n:,} tokens to {out}")


@app.command("prepare")
def prepare(
    inputs: Annotated[
        list[str] | None, typer.Argument(help="Text, JSON-lines or parquet files, or directories.")
    ] = None,
    out: Annotated[Path | None, Opt(help="Output directory (new, or see --overwrite).")] = None,
    tokenizer: Annotated[
        str, Opt(help="bytes | bpe:VOCAB (train BPE) | PATH/tokenizer.json.")
    ] = "bytes",
    val_fraction: Annotated[float, Opt(help="Share of documents held out, in (0, 0.5].")] = 0.01,
    format_: Annotated[str, Opt("--format", help="auto | text | jsonl | parquet.")] = "auto",
    text_field: Annotated[str, Opt(help="JSON key / parquet column of the text.")] = "text",
    glob: Annotated[str | None, Opt(help="File pattern inside directories, e.g. '*.py'.")] = None,
    corpus: Annotated[
        str | None, Opt(help="Built-in corpus instead of INPUTS: python-stdlib.")
    ] = None,
    seed: Annotated[int, Opt(help="Seed of the document split.")] = 0,
    workers: Annotated[int | None, Opt(help="Tokenizer threads (default: all cores).")] = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing --out directory.")] = False,
    json_: Annotated[bool, Opt("--json", help="Last stdout line: meta.json.")] = False,
) -> None:
    """Tokenise documents into OUT/train.bin, val.bin, tokenizer.json and meta.json
    (split by document; BPE trained on the training documents only)."""
    from scaling import corpus as corpora
    from scaling.prepare import check_val_fraction
    from scaling.prepare import prepare as run_prepare
    from scaling.tokenizer import parse_tokenizer

    with user_errors():
        if out is None:
            raise ValueError("give --out DIR, the directory to write")
        spec = parse_tokenizer(tokenizer)
        check_val_fraction(val_fraction)
        if corpus is not None:
            if inputs:
                raise ValueError("give INPUTS or --corpus, not both")
            sources, label = corpora.corpus_sources(corpus), corpus
        else:
            sources = corpora.find_sources(inputs or [], format_, glob)
            label = " ".join(inputs or [])
        total = sum(s.size for s in sources) if all(s.format == "text" for s in sources) else None
        with ByteProgress(total, disable=json_) as on_bytes:
            meta = run_prepare(
                sources, out, spec, val_fraction=val_fraction, seed=seed,
                text_field=text_field, workers=workers, skip_unreadable=corpus is not None,
                overwrite=overwrite, on_bytes=on_bytes, label=label,
            )  # fmt: skip
    if json_:
        print_json(meta)
        return
    train, val, total_counts = meta["train"], meta["val"], meta["total"]
    out_console.print(
        f"{out}: {total_counts['documents']:,} documents, {total_counts['bytes'] / 1e6:.1f} MB "
        f"→ {total_counts['tokens']:,} tokens (train {train['tokens']:,} in "
        f"{train['documents']:,} docs, val {val['tokens']:,} in {val['documents']:,}) · "
        f"vocab {meta['vocab_size']:,} {meta['dtype']} · "
        f"{meta['prepare']['tokens_per_s']:,.0f} tokens/s encoding"
    )
    if meta["skipped"]:
        err_console.print(f"skipped {len(meta['skipped'])} unreadable files (listed in meta.json)")
    if meta["round_trip"]["failures"]:
        err_console.print(
            f"[yellow]warning:[/] {meta['round_trip']['failures']} pieces do not decode back to "
            f"their text with this tokenizer (first: {meta['round_trip']['first_failure']})"
        )


class ByteProgress:
    """A Rich bar per phase on stderr with bytes done and bytes/s."""

    def __init__(self, total: int | None, *, disable: bool):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self.total = total
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=disable,
            transient=True,  # an error leaves one line, not a half-filled bar
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self.advance

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, phase: str, n_bytes: int) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=self.total)
        self.progress.advance(self.tasks[phase], n_bytes)
