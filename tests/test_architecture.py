"""The packages' layering: no import cycles between modules, drrkit below vertebra."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drrkit", "vertebra")


def module_graph(root: Path, packages) -> dict[str, set[str]]:
    """{module: the package modules it imports}, lazy (in-function) imports included.

    A module's import of its own parent package is left out: the parent's ``__init__``
    runs first whichever module is imported, so that edge closes no cycle of its own.
    """
    files = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start, targets in graph.items():
        if start in index:
            continue
        work = [(start, iter(sorted(targets)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("import os\n")
    (pkg / "sub" / "d.py").write_text("from pkg.sub import q\nfrom . import e\n")  # parent
    (pkg / "a.py").write_text("def f():\n    from .b import y\n")
    (pkg / "b.py").write_text("import pkg.c\n")
    (pkg / "c.py").write_text("from pkg import a\nfrom pkg.sub import z\n")
    graph = module_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.c"] == {"pkg.a", "pkg.sub"}
    assert graph["pkg.sub.d"] == set() and graph["pkg.sub"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    (pkg / "b.py").write_text("")
    assert cycles(module_graph(tmp_path, ["pkg"])) == []


def test_no_import_cycles():
    assert cycles(module_graph(ROOT, PACKAGES)) == []


def test_drrkit_does_not_import_vertebra():
    graph = module_graph(ROOT, PACKAGES)
    reached = {(m, t) for m, targets in graph.items() if m.startswith("drrkit")
               for t in targets if t.startswith("vertebra")}
    assert reached == set()


#: Longest function (lines, docstring included) outside the compiled Numba kernels.
MAX_FUNCTION_LINES = 80


def long_functions(root: Path, packages, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:name (lines)`` of every function longer than ``limit`` lines, except those
    compiled by Numba (their loops are written out by hand for speed)."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                compiled = any("njit" in ast.unparse(d) for d in node.decorator_list)
                lines = node.end_lineno - node.lineno + 1
                if lines > limit and not compiled:
                    found.append(f"{path.relative_to(root)}:{node.name} ({lines})")
    return found


def test_long_function_finder(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(10))
    (pkg / "m.py").write_text(f"def short():\n{body}\n\n\n@numba.njit\ndef kernel():\n{body}\n")
    assert long_functions(tmp_path, ["pkg"], limit=5) == ["pkg/m.py:short (11)"]


def test_no_function_is_longer_than_80_lines():
    assert long_functions(ROOT, PACKAGES) == []
