"""Shared CLI plumbing: one-line errors with exit code 2, JSON output, stderr console."""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import sys
from collections.abc import Iterator

import typer
from rich.console import Console

err_console = Console(stderr=True)
out_console = Console()


KERNEL_HELP = {
    "attention": "Attention: reference | xla | cudnn (NVIDIA) | splash (TPU).",
    "loss_chunk": "Cross-entropy over chunks of N positions (0: whole logits).",
}


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; the caller raises the returned Exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


# What to do about an OS error, by errno (the message already names the path).
_OS_HINTS = {
    errno.ENOSPC: "free some space or choose another location",
    errno.EDQUOT: "free some space or choose another location",
    errno.EACCES: "choose a writable location",
    errno.EPERM: "choose a writable location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EISDIR: "give a file, not a directory",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file is where a directory should be",
}


def describe(exc: BaseException) -> str:
    """One line for an error the user can act on: the message, the path or value, a hint."""
    if isinstance(exc, UnicodeError) and isinstance(getattr(exc, "object", None), str):
        return f"the name {exc.object!r} is not valid UTF-8; use a UTF-8 file name"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {str(exc.filename)!r}" if exc.filename is not None else ""
        hint = _OS_HINTS.get(exc.errno or 0)
        return f"{exc.strerror}{where}" + (f" ({hint})" if hint else "")
    if isinstance(exc, MemoryError):
        return f"out of memory: {exc}" if str(exc) else "out of memory"
    if isinstance(exc, OverflowError):
        return f"a number is out of range: {exc}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn bad input (the library's ValueErrors) and the ordinary failures of files, numbers
    and memory (OSError and its kinds, UnicodeError, OverflowError, MemoryError) into one line
    naming the path or value, and exit code 2."""
    try:
        yield
    except (ValueError, OSError, OverflowError, MemoryError) as exc:
        raise fail(describe(exc)) from None


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (workers are stopped,
    temporary files removed) before the process exits with 128 + SIGTERM."""


@contextlib.contextmanager
def terminate_cleanly(message: str = "stopped by SIGTERM") -> Iterator[None]:
    """While the block runs, SIGTERM unwinds the stack like Ctrl-C instead of killing the
    process where it stands; ``message`` is printed as the one error line."""

    def handler(signum, frame):
        raise Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


PEAK_HELP = {
    "peak_tflops": "Peak dense TFLOP/s per device for an accelerator without a profile "
    "(default: a bf16 matmul probe).",
    "hbm_gbps": "HBM bandwidth per device, GB/s (replaces the profile's).",
}
SYNC_EVERY_HELP = (
    "Steps per timed window: dispatched without waiting, one host sync and one metrics fetch "
    "per window; each step's time is the window's mean (1: every step timed on its own)."
)
STEPS_PER_CALL_HELP = (
    "Optimizer steps per call of the compiled program (a device loop over stacked batches; "
    "windows hold at least this many steps, each step's time is the window's mean)."
)
MUP_HELP = {
    "base_width": "muP base width: the d_model the hyperparameters were tuned at (128).",
    "base_head_dim": "muP base head width (default: the model's d_head).",
    "alpha_in": "muP α_in: embedding output multiplier (1).",
    "alpha_out": "muP α_out: logits × α_out / m (1).",
    "alpha_attn": "muP α_attn: attention logits × α_attn·√d_head_base / d_head (1).",
    "zero_readout": "muP: zero-initialise the untied head.",
}


def mup_knobs(
    base_width: int | None,
    base_head_dim: int | None,
    alpha_in: float | None,
    alpha_out: float | None,
    alpha_attn: float | None,
    zero_readout: bool | None,
) -> dict[str, object]:
    """The muP options of `train`/`sweep` as ``config.MUP_KNOBS`` values (only those given)."""
    values = (base_width, base_head_dim, alpha_in, alpha_out, alpha_attn, zero_readout)
    from scaling.config import MUP_KNOBS

    return {k: v for k, v in zip(MUP_KNOBS, values, strict=True) if v is not None}


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
