"""Shared CLI plumbing: one-line errors with exit code 2, JSON output, stderr console."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; the caller raises the returned Exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's ValueErrors (bad input) into one line and exit code 2."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
