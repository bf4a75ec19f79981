"""Progress of every resource of a run: live bars on a terminal, one line per change otherwise.

What it shows comes from the statuses alone (which the passes fill from the
run's ``progress.json``), so the display needs nothing the operator lacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from rayrelay_core.api import DeploymentPhase, TrainingPhase
from rayrelay_operator.local.objects import MD, TJ, Tracked, condition_message


class Display:
    """Progress of every resource: live bars on a terminal, one line per change otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._lines: dict[str, str] = {}
        self._tasks: dict[str, TaskID] = {}
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )

    @contextmanager
    def running(self) -> Iterator[Display]:
        if self.live:
            with self.progress:
                yield self
        else:
            yield self

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True, highlight=False)

    def update(self, t: Tracked) -> None:
        description, completed, total, detail = describe(t)
        if self.live:
            task = self._tasks.get(t.label)
            if task is None:
                task = self._tasks[t.label] = self.progress.add_task(description, total=total, detail="")
            self.progress.update(
                task, description=description, completed=completed, total=total, detail=detail
            )
            return
        line = f"{description} {detail}".rstrip()
        # Without a terminal, print a line on each change of phase or each 10% of progress.
        key = f"{description}|{int(100 * completed / total) // 10 if total else ''}"
        if t.kind == MD:
            key += f"|{detail}"  # replica counts and Serve's messages are the news here
        if self._lines.get(t.label) != key:
            self._lines[t.label] = key
            self.note(line)


def describe(t: Tracked) -> tuple[str, float, float | None, str]:
    """(description, completed, total or None, detail) of one resource's progress bar."""
    if t.error:
        return f"{t.label}: Failed", 0, None, t.error
    if t.kind == TJ:
        return _describe_training(t)
    status = t.status
    phase = str(status.get("phase") or "Pending")
    replicas = f"replicas {status.get('readyReplicas') or 0}/{status.get('replicas') or 0}"
    if phase == DeploymentPhase.READY:
        return f"{t.label}: Ready", 1, 1, str(status.get("url") or "")
    message = _problem(status) or condition_message(status, "Ready")
    return f"{t.label}: {phase}", 0, None, f"{replicas} {message}".strip()


def _describe_training(t: Tracked) -> tuple[str, float, float | None, str]:
    status = t.status
    phase = str(status.get("phase") or "Pending")
    if phase == TrainingPhase.SUCCEEDED:
        return f"{t.label}: Succeeded", 1, 1, ""
    progress = status.get("progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    details = []
    if step is not None and total:
        details.append(f"step {step}/{total}")
    if progress.get("loss") is not None:
        details.append(f"loss {progress['loss']:.4f}")
    if progress.get("valPerplexity") is not None:  # text-generation (issue 16)
        details.append(f"val ppl {progress['valPerplexity']:.2f}")
    if phase == TrainingPhase.TRAINING and progress.get("etaSeconds") is not None:
        details.append(f"ETA {_duration(progress['etaSeconds'])}")
    if phase in (TrainingPhase.EXPORTING, TrainingPhase.OPTIMIZING):
        details = [{"Exporting": "ONNX export", "Optimizing": "fusion, int8, parity, publish"}[phase]]
    if phase in (TrainingPhase.PENDING, TrainingPhase.FAILED):
        type_ = "Running" if phase == TrainingPhase.PENDING else "Failed"
        details = [_problem(status) or condition_message(status, type_)]
    if phase == TrainingPhase.TRAINING and step is not None and total:
        return f"{t.label}: {phase}", float(step), float(total), " ".join(details)
    return f"{t.label}: {phase}", 0, None, " ".join(d for d in details if d)


def _problem(status: dict[str, Any]) -> str:
    """The temporary problem a pass reported (``Reconciled`` False), if any."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Reconciled" and cond.get("status") == "False":
            return f"{cond.get('reason')}: {str(cond.get('message') or '')[:160]}"
    return ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
