"""Package layering, read from the source (ast) without importing anything.

Every import statement counts, at module level or inside a function: a deferred import is still
a dependency, and a cycle of them is what makes modules impossible to split or test alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (``from a import b`` gives a and a.b)."""
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (a package's ``__init__`` is a module too)."""
    files = sorted((REPO / package).rglob("*.py"))
    modules = {module_name(f): f for f in files}
    return {name: imported_names(path) & modules.keys() - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_trainer():
    graph = import_graph("trainer")
    assert {"trainer.train", "trainer.rescore", "trainer.scoring", "trainer.runtime"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_rescoring_does_not_depend_on_training():
    graph = import_graph("trainer")
    assert "trainer.train" not in graph["trainer.rescore"] | graph["trainer.runtime"]


def test_shards_do_not_import_spark_jobs():
    offenders = {
        module: sorted(n for n in imported_names(path) if n == "spark_jobs" or n.startswith("spark_jobs."))
        for path in sorted((REPO / "shards").rglob("*.py"))
        if (module := module_name(path))
    }
    assert not {m: names for m, names in offenders.items() if names}


def test_no_trainer_module_shadows_the_standard_library():
    """``python trainer/train.py`` puts ``trainer/`` first on ``sys.path``: a ``trainer/ssl/`` or
    ``trainer/select.py`` there would be imported in place of the standard library's module."""
    import sys

    names = {path.stem for path in (REPO / "trainer").iterdir()}  # modules and packages
    assert not names & set(sys.stdlib_module_names)
