"""The package's modules import each other without a cycle.

Every ``import`` / ``from ... import`` statement of a module inside ``morphogen_exp`` counts, wherever it
stands (top level, inside a function, under ``if TYPE_CHECKING:``), absolute or relative: a type-only
import still ties two modules together. ``from pkg import name`` is an edge to the submodule ``pkg.name``
when that is a module, else to the package ``pkg`` itself. Not counted: the parent packages Python
imports implicitly, and modules loaded by name at run time (``importlib.import_module``, as
``pir.engine.get`` does for the engine modules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "morphogen_exp"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (see the module docstring for what counts)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a module: its module
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] == PACKAGE and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = _modules(root)
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph is acyclic (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "morphogen_exp.pir.engine" in graph["morphogen_exp.pir.scan"]
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_graph_counts_relative_type_only_and_function_level_imports(tmp_path: Path) -> None:
    """The walker itself: a cycle closed by a TYPE_CHECKING import, a relative one or one inside a function is found."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "a.py").write_text("from .sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n")
    (pkg / "c.py").write_text("def f():\n    import morphogen_exp.d\n")
    (pkg / "d.py").write_text("from morphogen_exp import c\n")
    graph = import_graph(pkg)
    assert graph[f"{PACKAGE}.sub"] == {f"{PACKAGE}.sub.b"} and graph[f"{PACKAGE}.a"] == {f"{PACKAGE}.sub.b"}
    assert find_cycle(graph) == [f"{PACKAGE}.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.a"]
    (pkg / "sub" / "b.py").write_text("")
    assert find_cycle(import_graph(pkg)) == [f"{PACKAGE}.c", f"{PACKAGE}.d", f"{PACKAGE}.c"]
    (pkg / "d.py").write_text("")
    assert find_cycle(import_graph(pkg)) == []


@pytest.mark.parametrize("module", ["morphogen_exp.pir.cuda.bmma", "morphogen_exp.pir.cuda.fused"])
def test_the_kernel_wrappers_import_nothing_above_their_folder(module: str) -> None:
    """The CUDA wrappers sit beside their kernels and import only their own folder (the build, dpf's constants)."""
    above = {m for m in import_graph()[module] if not m.startswith("morphogen_exp.pir.cuda")}
    assert not above, f"{module} imports upward: {sorted(above)}"


def _third_party(path: Path) -> set[str]:
    """The top-level names of the absolute imports in one file (wherever they stand)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def package_breaches(root: Path = ROOT) -> list[str]:
    """Each import that breaks a package's contract (its __init__ docstring), as `module -> what`."""
    graph, out = import_graph(root), []
    forbidden_libs = {"record": {"jax"}, "measure": {"hydra"}}
    forbidden_pkgs = {"measure": {"record", "decide", "run", "bench"}, "record": {"measure", "run"}, "decide": {"run"},
                      "strategies": {"measure", "record", "decide", "run"}, "pir": {"measure", "record", "decide", "run"}}
    for name, path in _modules(root).items():
        parts = name.split(".")
        if len(parts) < 3 and path.name != "__init__.py":
            continue
        pkg = parts[1] if len(parts) > 1 else ""
        out += [f"{name} -> {lib}" for lib in sorted(_third_party(path) & forbidden_libs.get(pkg, set()))]
        out += [f"{name} -> {m}" for m in sorted(graph[name]) if len(m.split(".")) > 1 and m.split(".")[1] in forbidden_pkgs.get(pkg, ())]
    return out


def test_each_package_keeps_its_contract() -> None:
    """record/ imports no JAX, measure/ no Hydra, no decide/ and no bench/; measure/ and record/ never import each other; nothing below run/
    imports it, decide/ imports no run/, strategies/ and pir/ none of the four."""
    assert package_breaches() == []


def test_a_planted_import_breaks_a_contract(tmp_path: Path) -> None:
    """The checker itself: one bad import of each kind is found (a library, a package beside, a package above)."""
    pkg = tmp_path / PACKAGE
    for sub in ("measure", "record", "decide", "run"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "run" / "cell.py").write_text("")
    (pkg / "record" / "store.py").write_text("import jax\n")
    (pkg / "measure" / "timing.py").write_text("def f():\n    from ..record import store\n")
    (pkg / "decide" / "report.py").write_text("from morphogen_exp.run import cell\n")
    assert package_breaches(pkg) == [f"{PACKAGE}.decide.report -> {PACKAGE}.run.cell",
                                     f"{PACKAGE}.measure.timing -> {PACKAGE}.record.store", f"{PACKAGE}.record.store -> jax"]
    for f in ("record/store.py", "measure/timing.py", "decide/report.py"):
        (pkg / f).write_text("")
    assert package_breaches(pkg) == []
