"""Collective bytes of a compiled step, read off its partitioned HLO text: the compiler's side of
the communication cross-check (``scaling.estimate.comm`` is the analytic side). Never imports
jax; ``scaling.measure.partitioned_hlo`` produces the text.

Which HLO: the module right after XLA's SPMD partitioner (``spmd-partitioning``), where every
collective the sharding implies exists and still carries the dtype that is moved. Later CPU
passes rewrite bf16 collectives to f32 (``all-reduce-promotion``, ``float-normalization-bf16``:
FACTS.md), which no accelerator does, so the final CPU HLO would count bf16 traffic twice.

What is counted: every ``all-reduce``, ``all-gather``, ``reduce-scatter``, ``all-to-all`` and
``collective-permute`` (and their ``-start`` forms), weighted like ``comm.CommEstimate``: the
bytes one device sends in a ring over its replica group of n devices, V the full (gathered,
reduced) array: AllGather V·(n-1)/n, ReduceScatter V·(n-1)/n (V = n × its result),
AllReduce 2·V·(n-1)/n, AllToAll V·(n-1)/n, CollectivePermute V. A collective inside a
``while`` body (the scanned layers) counts once per iteration: the trip count comes from the
loop's ``known_trip_count`` or from the constant bound its condition compares the counter to.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip

_HEADER = re.compile(r"^(ENTRY\s+)?%(?P<name>[\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z][a-z0-9]*)\[(?P<dims>[0-9,]*)\]")
_CALLED = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)="
                     r"%(?P<name>[\w.\-]+)")  # fmt: skip
_BRANCHES = re.compile(r"branch_computations=\{(?P<names>[^}]*)\}")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(?P<n>\d+)"')


@dataclass(frozen=True)
class Collective:
    """One collective instruction of the partitioned program."""

    kind: str  # one of KINDS
    result_bytes: int  # bytes of its result on one device (tuple results summed)
    dtypes: tuple[str, ...]
    group_size: int  # devices in its replica group
    executions: int  # times it runs per step (loop trip counts multiplied)
    computation: str

    @property
    def sent_bytes(self) -> float:
        """Bytes one device sends per execution (ring model, see the module docstring)."""
        n = self.group_size
        if self.kind == "collective-permute":
            return float(self.result_bytes)
        if n <= 1:
            return 0.0
        ring = (n - 1) / n
        if self.kind == "all-reduce":
            return 2.0 * self.result_bytes * ring
        if self.kind == "reduce-scatter":
            return self.result_bytes * n * ring
        return self.result_bytes * ring  # all-gather (result = V), all-to-all

    @property
    def sent_bytes_per_step(self) -> float:
        return self.sent_bytes * self.executions


@dataclass
class _Instruction:
    name: str
    shape: str
    opcode: str
    text: str
    operands: tuple[str, ...] = ()


def _split_shape(rest: str) -> tuple[str, str]:
    """``(shape, remainder)`` of an instruction's right-hand side (tuple shapes nest)."""
    rest = rest.strip()
    if not rest.startswith("("):
        shape, _, tail = rest.partition(" ")
        return shape, tail
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[: i + 1], rest[i + 1 :]
    raise ValueError(f"unbalanced tuple shape in HLO: {rest[:80]!r}")


def _computations(text: str) -> tuple[dict[str, list[_Instruction]], str]:
    comps: dict[str, list[_Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith(" "):
            current = header["name"]
            comps[current] = []
            if header.group(1):
                entry = current
            continue
        if current is None:
            continue
        if line.startswith("}"):
            current = None
            continue
        inst = _INSTRUCTION.match(line)
        if inst:
            shape, tail = _split_shape(inst["rest"])
            opcode, _, args = tail.strip().partition("(")
            operands = tuple(re.findall(r"%([\w.\-]+)", args.split(")", 1)[0]))
            comps[current].append(_Instruction(inst["name"], shape, opcode.strip(), line, operands))
    if not entry:
        raise ValueError("no ENTRY computation in the HLO text")
    return comps, entry


def _array_bytes(shape: str) -> tuple[int, tuple[str, ...]]:
    total, dtypes = 0, []
    for m in _ARRAY.finditer(shape):
        if m["dtype"] not in DTYPE_BYTES:
            continue
        dims = [int(d) for d in m["dims"].split(",") if d]
        total += DTYPE_BYTES[m["dtype"]] * math.prod(dims)
        dtypes.append(m["dtype"])
    return total, tuple(dtypes)


def _start_result(kind: str, shape: str) -> str:
    """The result array of an async ``-start`` (its shape is a tuple holding buffers)."""
    parts = [m.group(0) for m in _ARRAY.finditer(shape)]
    if not parts or not shape.startswith("("):
        return shape
    return parts[-1] if kind in ("all-gather", "all-to-all") else parts[0]


def group_size(text: str, n_partitions: int) -> int:
    """Devices per replica group of one collective instruction's text.

    Formats: ``replica_groups={{0,1},{2,3}}``; the iota form ``replica_groups=[G,S]<=[...]``
    (G groups of S); the mesh-axis form ``replica_groups=mesh['a'=4,'b'=2] {'a'}`` (the
    product of the listed axes); ``{}`` (all partitions); collective-permute has none."""
    m = re.search(r"replica_groups=mesh\[(?P<axes>[^\]]*)\][^{]*\{(?P<used>[^}]*)\}", text)
    if m:
        pairs = re.findall(r"'?(\w+)'?\s*=\s*(\d+)", m["axes"])
        sizes = {name: int(size) for name, size in pairs}
        used = [u.strip().strip("'") for u in m["used"].split(",") if u.strip()]
        return math.prod(sizes[u] for u in used) if used else n_partitions
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", text)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{(?P<first>[^}]*)\}", text)
    if m:
        return len([x for x in m["first"].split(",") if x.strip()])
    if "replica_groups={}" in text or "replica_groups" not in text:
        return n_partitions
    raise ValueError(f"unrecognised replica_groups in: {text.strip()[:160]!r}")


def _trip_count(inst: _Instruction, comps: dict[str, list[_Instruction]]) -> int:
    known = _TRIP.search(inst.text)
    if known:
        return int(known["n"])
    cond = re.search(r"condition=%(?P<name>[\w.\-]+)", inst.text)
    body = comps.get(cond["name"], []) if cond else []
    constants = {}
    for c in body:
        value = re.search(r"\bconstant\((-?\d+)\)", c.text)
        if c.opcode == "constant" and value:
            constants[c.name] = int(value.group(1))
    for c in body:
        if c.opcode != "compare":
            continue
        operands = re.findall(r"%([\w.\-]+)", c.text.split("compare(", 1)[1].split(")", 1)[0])
        bound = [constants[o] for o in operands if o in constants]
        direction = re.search(r"direction=(\w+)", c.text)
        if len(bound) == 1 and direction:
            return bound[0] + (1 if direction.group(1) == "LE" else 0)
    raise ValueError(f"cannot find the trip count of while loop %{inst.name}")


def _multiplicities(comps: dict[str, list[_Instruction]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of the entry computation."""
    times: dict[str, int] = {}

    def visit(name: str, count: int, trail: tuple[str, ...]) -> None:
        if name in trail:  # recursion never happens in HLO; guard anyway
            return
        times[name] = times.get(name, 0) + count
        for inst in comps.get(name, []):
            called = [m["name"] for m in _CALLED.finditer(inst.text)]
            for m in _BRANCHES.finditer(inst.text):
                called += re.findall(r"%([\w.\-]+)", m["names"])
            trips = _trip_count(inst, comps) if inst.opcode == "while" else 1
            for callee in called:
                body = inst.opcode == "while" and f"body=%{callee}" in inst.text
                visit(callee, count * (trips if body else 1), (*trail, name))

    visit(entry, 1, ())
    return times


def _partitions(text: str) -> int:
    m = re.search(r"num_partitions=(\d+)", text)
    return int(m.group(1)) if m else 1


def _scatters(inst: _Instruction, users: list[_Instruction], size: int, n: int) -> bool:
    """An all-reduce whose every user is a dynamic-slice keeping 1/n of it: a reduce-scatter
    (the rewrite XLA's ReduceScatterCreator does on GPU and TPU; the CPU pipeline keeps the
    all-reduce). ZeRO-3 / FSDP gradients take this form after partitioning."""
    if inst.opcode != "all-reduce" or n <= 1 or not users:
        return False
    return all(u.opcode == "dynamic-slice" and _array_bytes(u.shape)[0] * n == size for u in users)


def collectives(text: str) -> list[Collective]:
    """Every collective of an HLO module's text, with its executions per step."""
    comps, entry = _computations(text)
    times = _multiplicities(comps, entry)
    n_partitions = _partitions(text)
    out = []
    for name, instructions in comps.items():
        users: dict[str, list[_Instruction]] = {}
        for inst in instructions:
            for operand in inst.operands:
                users.setdefault(operand, []).append(inst)
        for inst in instructions:
            kind = inst.opcode.removesuffix("-start")
            if kind not in KINDS or name not in times:
                continue
            shape = inst.shape
            if inst.opcode.endswith("-start"):
                shape = _start_result(kind, shape)
            size, dtypes = _array_bytes(shape)
            n = group_size(inst.text, n_partitions)
            if _scatters(inst, users.get(inst.name, []), size, n):
                kind, size = "reduce-scatter", size // n
            out.append(Collective(kind, size, dtypes, n, times[name], name))
    return out


def comm_bytes_by_kind(text: str) -> dict[str, float]:
    """Bytes one device sends per step, by collective kind (underscored names) and ``total``."""
    out = {kind.replace("-", "_"): 0.0 for kind in KINDS}
    for c in collectives(text):
        out[c.kind.replace("-", "_")] += c.sent_bytes_per_step
    out["total"] = sum(out.values())
    return out
