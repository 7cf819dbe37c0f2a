"""How the package's modules import each other: never the book's build, no cycle, no import
hidden in a function.

The build of the book (``book/_ext/``) imports the package; the package imports nothing of the
build, so a student reads, and a notebook runs, `cvae_utils` without Sphinx or the build's
terminal. Its modules import each other at the top of the file only, along a graph without
cycles: a reader (and Python) can take them in an order where each module needs only those
before it.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cvae_utils"
BUILD_MODULES = sorted(path.stem for path in (REPO / "book" / "_ext").glob("*.py"))


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(PACKAGE.glob("*.py"))}


def _siblings(node: ast.AST, names: set[str]) -> list[str]:
    """The package's modules an import statement names (``from .x import``, ``from . import x``,
    ``from cvae_utils.x import``, ``from cvae_utils import x``, ``import cvae_utils.x``)."""
    if isinstance(node, ast.ImportFrom):
        if node.level == 1 or node.module == "cvae_utils" or (
                node.module or "").startswith("cvae_utils."):
            module = node.module or ""
            if node.level == 0:
                module = module[len("cvae_utils"):].lstrip(".")
            if module:
                return [module.split(".")[0]]
            return [alias.name for alias in node.names if alias.name in names]
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[1] for alias in node.names
                if alias.name.startswith("cvae_utils.")]
    return []


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_statements(body: list[ast.stmt]):
    """Statements run when the module is imported (into ``if``/``try`` blocks, not into
    ``if TYPE_CHECKING:``, functions or classes)."""
    for node in body:
        if _is_type_checking(node):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field, None)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            if isinstance(inner, list):
                yield from _top_level_statements(
                    [n for item in inner for n in (item.body if isinstance(item, ast.ExceptHandler)
                                                    else [item])])


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports when it is imported}."""
    modules = _modules()
    names = set(modules)
    return {name: {target for node in _top_level_statements(tree.body)
                   for target in _siblings(node, names) if target != name}
            for name, tree in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def function_level_imports() -> list[str]:
    """``module.py:line: function imports .sibling`` for every import of a sibling module inside
    a function or a class."""
    modules = _modules()
    names = set(modules)
    found = []
    for name, tree in modules.items():
        for scope in ast.walk(tree):
            if not isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(scope):
                for target in _siblings(node, names):
                    found.append(f"{name}.py:{node.lineno}: {scope.name} imports {target}")
    return sorted(set(found))


def test_the_graph_reader_sees_every_kind_of_import():
    tree = ast.parse("from .a import x\nfrom . import b\nfrom cvae_utils.c import y\n"
                     "from cvae_utils import d\nimport cvae_utils.e\nimport os\n")
    names = {"a", "b", "c", "d", "e"}
    assert [t for node in tree.body for t in _siblings(node, names)] == ["a", "b", "c", "d", "e"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_imports_nothing_of_the_books_build():
    assert {"book_build", "book_plan", "book_terminal", "book_kernel",
            "book_browser"} <= set(BUILD_MODULES)
    code = ("import importlib, json, pkgutil, sys, cvae_utils\n"
            "for module in pkgutil.iter_modules(cvae_utils.__path__):\n"
            "    importlib.import_module('cvae_utils.' + module.name)\n"
            "print(json.dumps(sorted(sys.modules)))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=True)
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert "cvae_utils.settings" in loaded and "cvae_utils.progress" in loaded
    assert not loaded & set(BUILD_MODULES), sorted(loaded & set(BUILD_MODULES))
    assert not any(name == "sphinx" or name.startswith("sphinx.") for name in loaded)
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                named = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                assert not any(n.split(".")[0] in BUILD_MODULES for n in named), \
                    f"{path.name}:{node.lineno} imports the book's build"


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert graph["book_models"] >= {"cache", "classifier", "config", "variants"}
    assert graph["settings"] == set() and graph["progress"] == set()
    cycle = find_cycle(graph)
    assert cycle is None, f"the package's modules import each other in a cycle: {' -> '.join(cycle)}"


def test_no_module_imports_a_sibling_inside_a_function():
    """Imports of the package's own modules are at the top of each file, where a reader sees
    what a module depends on (and where the cycle test above sees it too)."""
    found = function_level_imports()
    assert not found, ("imports of the package's modules inside functions (move them to the top "
                       "of the file):\n" + "\n".join(found))
