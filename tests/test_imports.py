"""No import circle among trainer's modules.

The import graph is read from the source with `ast`, so every module counts (export/ included, also those
whose optional dependencies are not installed here), and so do imports inside functions: a lazy import that
closes a circle only hides it until some caller imports in the other order. Imports under `if TYPE_CHECKING:`
count too: they never run, but a reader (and a type checker) follows them like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "trainer"


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is named by its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that `module` imports (the module itself when an imported name is a module)."""
    found: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in known:
                    found.add(submodule)
                elif target in known:
                    found.add(target)
    found.discard(module)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its code."""
    names = module_names(root)
    known = set(names)
    return {
        name: _imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", known)
        for name, path in names.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as [a, b, ..., a], or None when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: absolute, relative, from-package, lazy and TYPE_CHECKING imports are edges."""
    pkg = tmp_path / "trainer"
    (pkg / "data" / "sources").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "data/__init__.py": "",
        "data/index.py": "def build():\n    from trainer.data import sources\n",
        "data/sources/__init__.py": "from . import folder\n",
        "data/sources/folder.py": "from ..index import build\nimport trainer.data\n",
        "data/typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from trainer.data import index\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["trainer.data.index"] == {"trainer.data.sources"}
    assert graph["trainer.data.sources"] == {"trainer.data.sources.folder"}
    assert graph["trainer.data.sources.folder"] == {"trainer.data.index", "trainer.data"}
    assert graph["trainer.data.typed"] == {"trainer.data.index"}
    assert find_cycle(graph) == [
        "trainer.data.index",
        "trainer.data.sources",
        "trainer.data.sources.folder",
        "trainer.data.index",
    ]


def test_trainer_has_no_import_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "trainer.export.manifest" in graph and "trainer.data.index" in graph
    cycle = find_cycle(graph)
    if cycle:
        pytest.fail("import circle: " + " -> ".join(cycle))
