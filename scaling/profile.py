"""A readable summary of a ``jax.profiler`` trace of the training step: top operations by self
time and the step time by the model's named scopes. Never imports jax.

Inputs, both written by ``train.run`` under the profile directory:

- the Chrome/Perfetto trace ``plugins/profile/<time>/<host>.trace.json.gz`` that
  ``jax.profiler.stop_trace`` writes beside the ``.xplane.pb`` (no TensorBoard needed): one
  complete event (``"ph": "X"``) per executed HLO operation, with ``args.hlo_op`` (the
  instruction name), ``args.hlo_module`` and ``args.run_id`` (one per execution);
- ``step.hlo.txt``: the compiled step's optimised HLO (``compiled.as_text()``), whose
  instructions carry ``metadata={op_name="jit(train_step)/…/block/attention/…"}``: the path of
  ``jax.named_scope`` names the model and the step use (embed, attention, ffn, norm, head,
  loss, optimizer). An operation's scope is the innermost of those in its path; collectives
  (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute) are grouped as
  ``collectives`` whatever their path; no scope (parameter copies, loop bookkeeping): ``other``.

Self time: an operation's duration minus that of the operations nested inside it on the same
thread (a while loop's body runs inside the loop's event). The per-step figures divide by the
number of profiled executions of the step. On a CPU the operations of one step run one after
another on one executor thread at a time, so the scopes' self times add up to the step's wall
time, less the host's dispatch gaps (``coverage``: their sum ÷ the median measured step).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCOPES = ("attention", "ffn", "norm", "head", "loss", "optimizer", "embed")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
HLO_FILE = "step.hlo.txt"
SUMMARY_FILE = "summary.json"
STEP_MODULE = "jit_train_step"
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+(?:\{[^}]*\})?\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WORD = re.compile(r"[A-Za-z_]+")


@dataclass(frozen=True)
class OpTime:
    """One HLO operation: its self time per step (seconds) and its scope."""

    name: str
    scope: str
    self_s: float


@dataclass
class ProfileSummary:
    """Seconds per step by scope, the top operations, and how much of the step they cover."""

    steps: int  # profiled executions of the step
    step_time_s: float  # median measured step time (wall clock, ``StepClock``)
    scopes_s: dict[str, float] = field(default_factory=dict)  # per step, self time
    top_ops: list[OpTime] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(self.scopes_s.values())

    @property
    def coverage(self) -> float:
        """Scopes' self time per step ÷ the median measured step time."""
        return self.total_s / self.step_time_s if self.step_time_s > 0 else float("nan")

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s, "coverage": self.coverage}


def op_scopes(hlo_text: str) -> dict[str, str]:
    """Instruction name → scope (``SCOPES``, ``collectives`` or ``other``) of an HLO module's
    text; the scope is the innermost named scope in the instruction's ``op_name``."""
    scopes = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        if opcode.removesuffix("-start").removesuffix("-done") in COLLECTIVES:
            scopes[name] = "collectives"
            continue
        op_name = _OP_NAME.search(line)
        # transformations wrap scope names: "transpose(jvp(head))" is the head's backward
        words = _WORD.findall(op_name.group(1)) if op_name else []
        scopes[name] = next((w for w in reversed(words) if w in SCOPES), "other")
    return scopes


def newest_trace(profile_dir: str | Path) -> Path:
    """The newest ``*.trace.json.gz`` under ``profile_dir``; ``ValueError`` when none."""
    traces = sorted(Path(profile_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise ValueError(f"no *.trace.json.gz under {str(profile_dir)!r}; was it profiled?")
    return traces[-1]


def self_times(events: list[dict], module: str = STEP_MODULE) -> tuple[dict[str, float], int]:
    """Total self time (seconds) per HLO operation of ``module`` over the trace, and the number
    of executions of the module (distinct ``run_id``)."""
    per_thread: dict[tuple, list[dict]] = defaultdict(list)
    runs = set()
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
            per_thread[(e["pid"], e["tid"])].append(e)
            runs.add(args.get("run_id"))
    totals: dict[str, float] = defaultdict(float)
    for thread_events in per_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end_us, op name, children's µs]
        for e in thread_events:
            while stack and stack[-1][0] <= e["ts"]:
                _close(stack, totals)
            stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], 0.0, e["dur"]])
        while stack:
            _close(stack, totals)
    return dict(totals), len(runs)


def _close(stack: list[list], totals: dict[str, float]) -> None:
    _, name, children_us, dur_us = stack.pop()
    totals[name] += max(dur_us - children_us, 0.0) / 1e6
    if stack:
        stack[-1][2] += dur_us


def summarize(profile_dir: str | Path, step_time_s: float, top: int = 15) -> ProfileSummary:
    """The summary of the newest trace under ``profile_dir`` with its ``step.hlo.txt``."""
    profile_dir = Path(profile_dir)
    hlo = profile_dir / HLO_FILE
    if not hlo.is_file():
        raise ValueError(f"no {HLO_FILE} in {str(profile_dir)!r} (written by a profiled run)")
    scopes = op_scopes(hlo.read_text())
    with gzip.open(newest_trace(profile_dir), "rt") as f:
        events = json.load(f)["traceEvents"]
    totals, steps = self_times(events)
    if not steps:
        raise ValueError(f"the trace under {str(profile_dir)!r} has no {STEP_MODULE} operations")
    by_scope: dict[str, float] = defaultdict(float)
    ops = []
    for name, seconds in totals.items():
        scope = scopes.get(name, "other")
        by_scope[scope] += seconds / steps
        ops.append(OpTime(name, scope, seconds / steps))
    ops.sort(key=lambda op: op.self_s, reverse=True)
    ordered = dict(sorted(by_scope.items(), key=lambda kv: kv[1], reverse=True))
    return ProfileSummary(steps, step_time_s, ordered, ops[:top])
