"""The task seam: what one task (classification, text generation, ...) gives the shared run.

A TrainingJob's run is the same for every task (``pipeline.run_pipeline``):
progress stages, the Ray Train driver (``train.fit_best_checkpoint``: storage,
checkpoints, resume, failure handling), failure records (``failures.py``),
storage and publication helpers (``publish.py``, ``storewait.py``). What differs
is said by one object per task, a :class:`Task`, in the task's own folder
(``classification/task.py``, ``textgen/task.py``), found once from
``spec.model.task`` by ``tasks.task_for``. The run calls it in this order::

    prepared = task.prepare(run)                    # data -> model source, checks that fail early
    trained  = fit_best_checkpoint(job, task.train_loop(), task.loop_config(run, prepared),
                                   task.metric, task.order, scratch)   # loss/evaluation: the loop's
    task.check_trained(run, prepared, trained)      # the gate on the best checkpoint
    exported = task.export(run, prepared, trained)  # ONNX (and its stages), parity and checks
    manifest, uri = task.publish(run, prepared, trained, exported)   # gate decisions, upload, manifest

and a ModelDeployment of the published set gets ``task.replica()`` (``serve.app``).

How a new task plugs in:

1. a folder ``rayrelay_workloads/<task>/`` holding its data reader, its Ray Train
   per-worker loop (built on ``train_worker``'s shared pieces: ``RankZeroLog``,
   ``wait_for_store``, ``train_state``'s position, checkpoint and resume), its
   export and its Serve replica;
2. ``<task>/task.py`` with ``TASK``, an object that satisfies :class:`Task`;
3. one line in ``tasks.REGISTRY`` (``"<spec.model.task>": Entry("rayrelay_workloads.<task>.task")``,
   with ``gateway_paths`` when it answers routes that name no model).

Shared modules never import a task's folder (``tests/unit/test_workloads_imports.py``):
the registry names each task's module as a string and imports it on use, so the
replica of one task does not load another's code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from rayrelay_core.runs import JobDocument, Manifest
from rayrelay_workloads.failures import Reason
from rayrelay_workloads.progress import ProgressWriter
from rayrelay_workloads.train import TrainResult


@dataclass
class Run:
    """One run as the shared pipeline hands it to a task's steps."""

    job: JobDocument
    scratch: Path  # this run's local work folder
    progress: ProgressWriter  # progress.json: a task names its own stages (Pruning, Optimizing, ...)
    say: Callable[[str], None]  # one line to the driver's log
    bench_repeats: int = 10  # timing repeats of the export's speed figures


@dataclass
class Prepared:
    """What ``Task.prepare`` read and resolved once on the driver."""

    job: JobDocument  # the job, as the task completed it (e.g. a resolved distillation teacher)
    data: Any  # the task's loaded training and validation data
    tokenizer_source: str  # a local folder holding the base model and its tokenizer


class Task(Protocol):
    """One task's steps; every method runs on the driver except ``train_loop``'s function."""

    name: str  # spec.model.task, and the manifest's ``task``
    metric: str  # the checkpoint metric the best checkpoint is chosen by
    order: Literal["max", "min"]
    failure_reasons: Sequence[Reason]  # checked before failures.FAILURE_REASONS

    def prepare(self, run: Run) -> Prepared:
        """Read and validate the data, resolve the model source; fail before training what would
        fail after it (unsupported spec fields, a model the export cannot take)."""
        ...

    def train_loop(self) -> Callable[[dict[str, Any]], None]:
        """Ray Train's ``train_loop_per_worker``: the model, the loss, the evaluation at checkpoints."""
        ...

    def loop_config(self, run: Run, prepared: Prepared) -> dict[str, Any]:
        """The loop's plain config: ``train.base_loop_config(job)`` plus what this task's loop reads."""
        ...

    def check_trained(self, run: Run, prepared: Prepared, trained: TrainResult) -> None:
        """The quality gate on the best checkpoint's metrics (raises ``QualityGateError``)."""
        ...

    def export(self, run: Run, prepared: Prepared, trained: TrainResult) -> Any:
        """The ``Exporting`` stage (and any before it): ONNX variants, their parity and checks."""
        ...

    def publish(
        self, run: Run, prepared: Prepared, trained: TrainResult, exported: Any
    ) -> tuple[Manifest, str]:
        """Gate the variants, upload the artifact set, write manifest.json last: (manifest, its URI)."""
        ...

    def replica(self) -> Any:
        """The Serve deployment (a ``@serve.deployment`` class) that serves this task's artifact set."""
        ...
