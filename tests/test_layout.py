"""The shape of the house: no import cycle inside ecgfast, ops that import nothing above them, and command lines
that answer --help without loading torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ecgfast

PACKAGE = Path(ecgfast.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """ecgfast modules that ``path`` imports anywhere in its body (lazy imports inside functions included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ecgfast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ecgfast"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}  # "from pkg import module"
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in _imports(path) if t in files and t != name
                       and not name.startswith(t + ".")}  # a module's own packages load first: not an import of it
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_inside_ecgfast():
    graph = _graph()
    assert "ecgfast.ops.vcg_op" in graph and "ecgfast.pretrain.loop" in graph
    assert _cycles(graph) == []


def test_ops_and_the_reference_import_nothing_above_them():
    below = ("ecgfast.ops", "ecgfast.reference", "ecgfast.kernels", "ecgfast._C", "ecgfast.lazy")
    for name, targets in _graph().items():
        if name.startswith(("ecgfast.ops", "ecgfast.reference")):
            above = sorted(t for t in targets if not t.startswith(below) and t != "ecgfast")
            assert above == [], (name, above)
        if name == "ecgfast.ops.vcg_params":  # parameter sampling imports no op
            assert not {t for t in targets if t.startswith("ecgfast.ops.") and t not in
                        ("ecgfast.ops.configs",)}, targets


def test_command_lines_answer_help_without_importing_torch():
    code = ("import sys\n"
            "from ecgfast.pretrain.cli import build_parser as t\n"
            "from ecgfast.eval.cli import build_parser as e\n"
            "from ecgfast.prepare import build_parser as p\n"
            "t().format_help(); e().format_help(); p().format_help()\n"
            "heavy = [m for m in ('torch', 'scipy.signal', 'pandas', 'wfdb') if m in sys.modules]\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
