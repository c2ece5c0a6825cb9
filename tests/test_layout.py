"""The package's layout holds: an acyclic import graph, tools outside the library, small modules.

The library is every module of `aiorcu` except `aiorcu._tools` (the CLI, the
benchmark and the torture run are users of the library, not rooms inside it).
Imports are read from the source with `ast`, so the test sees the imports a
module makes in functions too, not only the ones that ran at import time.

An edge A -> B means "A imports B".  Two kinds of imports are left out of the
runtime graph:

- imports under `if TYPE_CHECKING:` never run, so they cannot form an import
  cycle at run time; they are kept in a graph of their own and a cycle that
  only they close is reported as a warning (legal, but worth knowing);
- the implicit import of a parent package (importing `aiorcu._domain` first
  imports `aiorcu`) is not an edge: counting it would make every module part
  of a cycle with `aiorcu/__init__.py`, which only re-exports.  An explicit
  `from aiorcu import X` or `from . import X` where X is not a submodule *is*
  an edge to `aiorcu`, since it needs `__init__` to have run.
"""

from __future__ import annotations

import ast
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiorcu"
TOOLS = "aiorcu._tools"
MAX_LINES = 600
# Where the line limit applies.  tests/ is left out: two test modules
# (test_async.py, test_reader.py) are longer and are split separately.
SIZE_SCOPE = ("aiorcu", "examples")


@dataclass
class Imports:
    """The modules one source file imports, by when they are imported."""

    runtime: set[str] = field(default_factory=set)
    type_checking: set[str] = field(default_factory=set)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(package: Path = PACKAGE, root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(package.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (before its imported names)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(source: str, module: str, is_package: bool, known: set[str]) -> Imports:
    """Every import in ``source`` (a module named ``module``), anywhere in the file.

    ``known`` is the set of module names that exist: ``from pkg import x`` is an
    import of ``pkg.x`` when that is a module, and of ``pkg`` otherwise.
    """
    found = Imports()

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = _resolve(module, is_package, node)
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            names.append(sub if sub in known else base)
        return names

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            (found.type_checking if typing_only else found.runtime).update(targets(node))
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(ast.parse(source), False)
    return found


@functools.cache
def library_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(runtime edges, TYPE_CHECKING-only edges) between the library's modules."""
    everything = all_modules()
    known = set(everything) | {"aiorcu._hotpath", "aiorcu._aiorcu_cffi"}
    runtime: dict[str, set[str]] = {}
    typing_only: dict[str, set[str]] = {}
    for name, path in everything.items():
        if name == TOOLS or name.startswith(TOOLS + "."):
            continue
        found = imports_of(
            path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known
        )
        runtime[name] = {m for m in found.runtime if m == "aiorcu" or m.startswith("aiorcu.")}
        typing_only[name] = {
            m for m in found.type_checking if m == "aiorcu" or m.startswith("aiorcu.")
        }
    return runtime, typing_only


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components that are cycles (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_parser_sees_every_form_of_import() -> None:
    source = """
import aiorcu._a
from . import _b, helper
from ._c import thing
from .. import up
if TYPE_CHECKING:
    from ._d import Only
else:
    from ._e import Else
def later():
    from aiorcu import _f
    import aiorcu._g as g
class K:
    def m(self):
        if typing.TYPE_CHECKING:
            from . import _h
"""
    known = {f"pkg.aiorcu._{c}" for c in "bcdefh"} | {"aiorcu._f", "aiorcu._g"}
    found = imports_of(source, "pkg.aiorcu._x", False, known)
    assert found.runtime == {
        "aiorcu._a",
        "pkg.aiorcu._b",
        "pkg.aiorcu",  # `helper` is not a module: the package itself
        "pkg.aiorcu._c",
        "pkg",
        "pkg.aiorcu._e",
        "aiorcu._f",
        "aiorcu._g",
    }
    assert found.type_checking == {"pkg.aiorcu._d", "pkg.aiorcu._h"}
    # In a package's __init__, `from . import x` is relative to the package.
    init = imports_of("from . import _b", "pkg.aiorcu", True, known)
    assert init.runtime == {"pkg.aiorcu._b"}


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]


def test_the_graph_covers_the_library() -> None:
    runtime, _ = library_graph()
    assert {"aiorcu", "aiorcu._domain", "aiorcu._bitmap", "aiorcu.testing"} <= set(runtime)
    assert not any(name.startswith(TOOLS) for name in runtime)
    # __init__ re-exports, so it has edges; a graph without edges would pass anything.
    assert "aiorcu._domain" in runtime["aiorcu"]
    assert "aiorcu._lowlevel" in runtime["aiorcu._domain"]


def test_the_library_imports_form_no_cycle() -> None:
    runtime, _ = library_graph()
    found = cycles(runtime)
    assert found == [], (
        f"import cycles in the library: {found}; a module that needs part of another "
        "and is needed by it holds two concepts, or the shared part wants its own module"
    )


def test_cycles_closed_only_by_type_checking_imports_are_reported() -> None:
    runtime, typing_only = library_graph()
    both = {m: runtime[m] | typing_only[m] for m in runtime}
    only_typing = [c for c in cycles(both) if c not in cycles(runtime)]
    for cycle in only_typing:
        warnings.warn(
            f"an import cycle closed by `if TYPE_CHECKING:` imports: {cycle}",
            UserWarning,
            stacklevel=1,
        )


def test_the_library_does_not_import_its_tools() -> None:
    runtime, typing_only = library_graph()
    offenders = {
        module: sorted(t for t in runtime[module] | typing_only[module] if t.startswith(TOOLS))
        for module in runtime
    }
    offenders = {m: t for m, t in offenders.items() if t}
    assert offenders == {}, (
        f"library modules import aiorcu._tools: {offenders}; the tools use the library, "
        "not the other way round"
    )


@pytest.mark.parametrize("folder", SIZE_SCOPE)
def test_no_module_is_longer_than_the_limit(folder: str) -> None:
    paths = sorted((ROOT / folder).rglob("*.py"))
    assert paths, f"no Python files under {folder}/"
    long = {
        str(p.relative_to(ROOT)): n
        for p in paths
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, (
        f"modules longer than {MAX_LINES} lines: {long}; a module you cannot read in one "
        "sitting usually holds two concepts: split it"
    )
