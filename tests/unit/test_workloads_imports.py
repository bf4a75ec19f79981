"""The shape of ``rayrelay_workloads``: its import graph has no cycle, and no arrow points up into a task.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, those
inside functions included, since a lazy import is an arrow too; only imports under
``if TYPE_CHECKING:`` are left out, as they never run). A task's folder is the
package of a module named in ``tasks.REGISTRY``; every other module is shared and
must not import a task's folder: shared code reaches a task through the registry.
The same checks run on small made-up graphs first, so each can be seen to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from rayrelay_workloads.tasks import REGISTRY

ROOT = Path(__file__).resolve().parents[2] / "workloads" / "rayrelay_workloads"
PACKAGE = "rayrelay_workloads"


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imports_of(source: str, name: str, modules: set[str]) -> set[str]:
    """The package's modules that ``source`` (module ``name``) imports, at any depth of its code."""
    tree = ast.parse(source)
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path.read_text(), name, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def task_packages() -> set[str]:
    """The folders of the registered tasks (``rayrelay_workloads.textgen`` for ``textgen.task``)."""
    return {entry.module.rsplit(".", 1)[0] for entry in REGISTRY.values()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def upward_arrows(graph: dict[str, set[str]], tasks: set[str]) -> list[str]:
    """Imports of a task's folder by a module outside it (shared code, or another task)."""
    wrong = []
    for module, targets in graph.items():
        home = next((t for t in tasks if in_package(module, t)), None)
        for target in targets:
            owner = next((t for t in tasks if in_package(target, t)), None)
            if owner is not None and owner != home:
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


# ------------------------------------------------------------------ the checks, seen failing


def test_the_reader_finds_lazy_imports_and_skips_type_checking_ones() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import rayrelay_workloads.a\n"
        "if TYPE_CHECKING:\n"
        "    from rayrelay_workloads.b import X\n"
        "def f():\n"
        "    from rayrelay_workloads import c\n"
    )
    modules = {"rayrelay_workloads.a", "rayrelay_workloads.b", "rayrelay_workloads.c"}
    assert imports_of(source, "rayrelay_workloads.x", modules) == {
        "rayrelay_workloads.a",
        "rayrelay_workloads.c",
    }


def test_a_cycle_and_an_upward_arrow_are_found_in_a_made_up_graph() -> None:
    graph = {"p.pipeline": {"p.textgen.pipeline"}, "p.textgen.pipeline": {"p.pipeline"}, "p.train": set()}
    assert find_cycle(graph) == ["p.pipeline", "p.textgen.pipeline", "p.pipeline"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert upward_arrows(graph, {"p.textgen"}) == ["p.pipeline -> p.textgen.pipeline"]
    assert upward_arrows({"p.textgen.x": {"p.textgen.y", "p.train"}}, {"p.textgen"}) == []


# ------------------------------------------------------------------ the package itself


def test_the_workloads_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40, "the reader found too few modules to mean anything"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_shared_module_imports_a_task_folder() -> None:
    tasks = task_packages()
    assert {"rayrelay_workloads.classification", "rayrelay_workloads.textgen"} <= tasks
    assert upward_arrows(import_graph(), tasks) == []


@pytest.mark.parametrize("task", sorted(REGISTRY))
def test_every_registered_task_module_is_in_its_own_folder(task: str) -> None:
    module = REGISTRY[task].module
    assert module.startswith(f"{PACKAGE}.") and module.endswith(".task"), module
    assert (ROOT / Path(*module.split(".")[1:])).with_suffix(".py").is_file(), module
