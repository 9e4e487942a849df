"""The package's shape: which modules may import jax, no import circles, modules and functions
of a readable size. Reads the source with `ast`; imports nothing it checks except in a
subprocess."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "scaling"
JAX_FREE = (
    "scaling.config",
    "scaling.presets",
    "scaling.spec",
    "scaling.sharding",
    "scaling.roles",
    "scaling.preflight",
    "scaling.launch",
    "scaling.hostmem",
    "scaling.sweep",
    "scaling.records",
    "scaling.estimate",
    "scaling.check",
    "scaling.report",
    "scaling.laws",
    "scaling.plan",
    "scaling.cli.main",
    "scaling.corpus",
    "scaling.tokenizer",
    "scaling.prepare",
    "scaling.prepared",
    "scaling.estimate.inference",
    "scaling.decode_record",
    "scaling.report.decode",
)
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.startswith("scaling")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules} - {name} for name, path in modules.items()
    }


def test_jax_free_modules_import_without_jax_flax_or_optax():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in JAX_FREE)
        + "bad = sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules)\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_import_circles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import circle: " + " → ".join(circle))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_import_graph_finds_a_planted_circle(tmp_path, monkeypatch):
    """The circle check can fail: two modules that import each other are caught."""
    (tmp_path / "scaling").mkdir()
    (tmp_path / "scaling" / "a.py").write_text("from scaling import b\n")
    (tmp_path / "scaling" / "b.py").write_text("def f():\n    from scaling.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "scaling")
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circles()


def test_modules_and_functions_stay_readable():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # the body: a Typer command's signature declares its options one per line
                length = node.end_lineno - node.body[0].lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.name}: {length} lines")
    assert not too_long, too_long
