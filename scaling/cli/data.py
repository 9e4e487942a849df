"""`scaling data ...`: turn text into a token file the trainer reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from scaling.cli.common import out_console, user_errors

app = typer.Typer(help="Prepare training data.", no_args_is_help=True)


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
