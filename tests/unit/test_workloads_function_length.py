"""No function in ``rayrelay_workloads`` is longer than 60 lines (issue 27).

Long functions were where the workloads mixed steps (export, publication, a
replica's start); the bound keeps each step a function of its own. Measured with
``ast`` from the ``def`` line to the last line of the body, decorators and the
docstring included, so a long docstring counts too. Methods and nested functions
are measured like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "workloads" / "rayrelay_workloads"
LIMIT = 60


def long_functions(source: str, limit: int = LIMIT) -> list[tuple[str, int, int]]:
    """(name, first line, length) of every function in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            if length > limit:
                found.append((node.name, first, length))
    return found


def test_the_measure_counts_every_line_of_a_function_and_its_decorators() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    source = f"@decorated\ndef long():\n{body}\n\nclass C:\n    async def short(self):\n        return 1\n"
    assert long_functions(source) == [("long", 1, 61)]
    assert long_functions(source, limit=61) == []
    assert long_functions("def f():\n    pass\n", limit=1) == [("f", 1, 2)]


def test_no_workloads_function_is_longer_than_60_lines() -> None:
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 40
    too_long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
        for path in files
        for name, line, length in long_functions(path.read_text())
    ]
    assert too_long == [], f"functions over {LIMIT} lines: {too_long}"
