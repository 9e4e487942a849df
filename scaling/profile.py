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
  ``collectives`` whatever their path; no scope (parameter copies, loop bookkeeping): ``other``;
the time inside an execution (first operation's start to the last one's end) when no operation
ran — the executor dispatching between operations — is ``idle``, except after an asynchronous
operation: XLA:CPU runs a plain ``dot`` instruction (one no library fusion took: the weight
gradients inside the layer loop) on Eigen's thread pool and its trace event ends when the work
is handed over (1.3 ms of a 16 ms product at 125m), so the gap until the next operation starts
is that dot's computing and is credited to it (``async_ops``).

Self time: an operation's duration minus that of the operations nested inside it on the same
thread (a while loop's body runs inside the loop's event); where operations on several threads
overlap, the overlapping wall time is split evenly between them, so the scopes add up to the
time the step was busy, never more than its wall time. The per-step figures divide by the
number of profiled executions of the step; ``coverage`` is their sum ÷ the mean wall time of
the same (profiled, measured) steps, below 1 by the host's dispatch gaps. A mean, not the
median: the first traced step carries the profiler's start-up and both sides must hold it.
``matmul_s`` is the self time of the step's matrix multiplications alone: MFU × step time ÷
``matmul_s`` is the matmul-only ceiling, the MFU the step would reach if everything but its
matmuls took no time (its matmuls running at the rate they ran).
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
IDLE = "idle"  # inside the step's span, no operation running (executor dispatch between ops)
# the compiled step, and the loop of several steps per call (RunConfig.steps_per_call)
STEP_MODULES = ("jit_train_step", "jit_train_steps")
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

    steps: int  # profiled steps (executions of the step, or the steps they ran)
    step_time_s: float  # mean wall time of the profiled steps (``StepClock``)
    scopes_s: dict[str, float] = field(default_factory=dict)  # per step, self time
    top_ops: list[OpTime] = field(default_factory=list)
    # per step, self time of the matrix multiplications (``matmul_ops``), whatever their scope
    matmul_s: float = 0.0

    @property
    def total_s(self) -> float:
        return sum(self.scopes_s.values())

    @property
    def coverage(self) -> float:
        """Scopes' time per step ÷ the mean wall time of the profiled steps."""
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


def matmul_ops(hlo_text: str) -> set[str]:
    """Names of an HLO module's matrix multiplications: ``dot`` and ``convolution``
    instructions, and fusions a backend hands to a matmul library (CPU's ``ynn_fusion``: kind
    kCustom) whose ``op_name`` ends in ``dot_general``."""
    names = set()
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        custom_dot = (
            opcode == "fusion"
            and "kind=kCustom" in line
            and op_name is not None
            and op_name.group(1).endswith("dot_general")
        )
        if opcode in ("dot", "convolution") or custom_dot:
            names.add(name)
    return names


def async_ops(hlo_text: str) -> set[str]:
    """Names of the module's plain ``dot`` instructions: XLA:CPU hands them to Eigen's thread
    pool and their trace event covers only the hand-over (see the module docstring)."""
    names = set()
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match and match.group(2) == "dot":
            names.add(match.group(1))
    return names


def newest_trace(profile_dir: str | Path) -> Path:
    """The newest ``*.trace.json.gz`` under ``profile_dir``; ``ValueError`` when none."""
    traces = sorted(Path(profile_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise ValueError(f"no *.trace.json.gz under {str(profile_dir)!r}; was it profiled?")
    return traces[-1]


def self_times(
    events: list[dict],
    modules: tuple[str, ...] = STEP_MODULES,
    async_names: frozenset[str] = frozenset(),
) -> tuple[dict[str, float], int, float]:
    """Wall time (seconds) attributed to each HLO operation of ``modules`` over the trace, the
    number of executions of the modules (distinct ``run_id``), and the idle seconds inside the
    executions' spans (first operation's start to last one's end) when no operation ran.

    Per thread an operation's self intervals are its span minus those of the operations nested
    in it; where self intervals of several threads overlap (XLA runs independent operations
    concurrently), the overlapping time is split evenly between them, so the totals add up to
    the time at least one operation ran, never more than the wall time. A gap when no
    operation ran that follows the end of an operation in ``async_names`` is that operation's
    (its work continues after its event ends)."""
    per_thread: dict[tuple, list[dict]] = defaultdict(list)
    spans: dict[object, list[float]] = {}
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") == "X" and args.get("hlo_module") in modules and "hlo_op" in args:
            per_thread[(e["pid"], e["tid"])].append(e)
            span = spans.setdefault(args.get("run_id"), [e["ts"], e["ts"] + e["dur"]])
            span[0], span[1] = min(span[0], e["ts"]), max(span[1], e["ts"] + e["dur"])
    segments: list[tuple[float, float, str]] = []
    for thread_events in per_thread.values():
        segments += _self_segments(thread_events)
    totals = _split_overlaps(segments)
    if async_names:
        _credit_gaps(per_thread, async_names, totals)
    spanned = sum(end - start for start, end in spans.values()) / 1e6
    return totals, len(spans), max(spanned - sum(totals.values()), 0.0)


def _credit_gaps(per_thread: dict, async_names: frozenset[str], totals: dict) -> None:
    """Adds to ``totals`` each gap (no operation of any thread running) that follows the end
    of an asynchronous operation, up to the next operation's start, within one execution."""
    by_run: dict[object, list[dict]] = defaultdict(list)
    for thread_events in per_thread.values():
        for e in thread_events:
            by_run[e["args"].get("run_id")].append(e)
    for run_events in by_run.values():
        run_events.sort(key=lambda e: e["ts"])
        end, last = run_events[0]["ts"] + run_events[0]["dur"], run_events[0]
        for e in run_events[1:]:
            name = last["args"]["hlo_op"]
            if e["ts"] > end and name in async_names:
                totals[name] = totals.get(name, 0.0) + (e["ts"] - end) / 1e6
            if e["ts"] + e["dur"] > end:
                end, last = e["ts"] + e["dur"], e


def _self_segments(events: list[dict]) -> list[tuple[float, float, str]]:
    """(start µs, end µs, op) pieces of each operation not covered by operations nested in it
    (events of one thread)."""
    events = sorted(events, key=lambda e: (e["ts"], -e["dur"]))
    out: list[tuple[float, float, str]] = []
    stack: list[list] = []  # [end, op, cursor]: cursor = where its current self piece began

    def close_until(t: float) -> None:
        while stack and stack[-1][0] <= t:
            end, op, cursor = stack.pop()
            out.append((cursor, end, op))
            if stack:
                stack[-1][2] = end

    for e in events:
        close_until(e["ts"])
        if stack:
            out.append((stack[-1][2], e["ts"], stack[-1][1]))
        stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], e["ts"]])
    close_until(float("inf"))
    return [s for s in out if s[1] > s[0]]


def _split_overlaps(segments: list[tuple[float, float, str]]) -> dict[str, float]:
    """Seconds per op, the time between consecutive boundaries shared by the active ops."""
    boundaries = sorted([(s, 1, i) for i, (s, _, _) in enumerate(segments)]
                        + [(e, -1, i) for i, (_, e, _) in enumerate(segments)])  # fmt: skip
    totals: dict[str, float] = defaultdict(float)
    active: set[int] = set()
    last = None
    for t, kind, i in boundaries:
        if active and last is not None and t > last:
            share = (t - last) / len(active) / 1e6
            for j in active:
                totals[segments[j][2]] += share
        last = t
        if kind == 1:
            active.add(i)
        else:
            active.discard(i)
    return dict(totals)


def summarize(
    profile_dir: str | Path, step_time_s: float, top: int = 15, steps: int | None = None
) -> ProfileSummary:
    """The summary of the newest trace under ``profile_dir`` with its ``step.hlo.txt``, per
    step: ``steps`` is the number of steps the trace holds where a call runs several
    (``RunConfig.steps_per_call``); by default one per execution of the step."""
    profile_dir = Path(profile_dir)
    hlo = profile_dir / HLO_FILE
    if not hlo.is_file():
        raise ValueError(f"no {HLO_FILE} in {str(profile_dir)!r} (written by a profiled run)")
    hlo_text = hlo.read_text()
    scopes, matmuls = op_scopes(hlo_text), matmul_ops(hlo_text)
    with gzip.open(newest_trace(profile_dir), "rt") as f:
        events = json.load(f)["traceEvents"]
    totals, executions, idle = self_times(events, async_names=frozenset(async_ops(hlo_text)))
    if not executions:
        names = " or ".join(STEP_MODULES)
        raise ValueError(f"the trace under {str(profile_dir)!r} has no {names} operations")
    steps = executions if steps is None else steps
    by_scope: dict[str, float] = defaultdict(float)
    ops = []
    for name, seconds in totals.items():
        scope = scopes.get(name, "other")
        by_scope[scope] += seconds / steps
        ops.append(OpTime(name, scope, seconds / steps))
    by_scope[IDLE] = idle / steps
    ops.sort(key=lambda op: op.self_s, reverse=True)
    ordered = dict(sorted(by_scope.items(), key=lambda kv: kv[1], reverse=True))
    matmul_s = sum(seconds for name, seconds in totals.items() if name in matmuls) / steps
    return ProfileSummary(steps, step_time_s, ordered, ops[:top], matmul_s)
