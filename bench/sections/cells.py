"""Cell formatting shared by the performance page's sections: numbers, ratios, Markdown tables."""

from __future__ import annotations

from typing import Any


def num(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def ratio(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]
