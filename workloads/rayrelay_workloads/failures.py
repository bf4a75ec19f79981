"""How a failed run is named and recorded: the condition reason, retryable or not, ``failure.json``.

Every task's run (``pipeline.run_pipeline``) ends a failure here: :func:`classify`
maps the exception to a CamelCase reason and whether another attempt could help
(the shared reasons of :data:`FAILURE_REASONS`, after the task's own, see
``tasks.base.Task.failure_reasons``), :func:`record_failure` writes
``failure.json`` (``rayrelay_core.runs.FailureDoc``) and the ``Failed`` stage,
and :class:`PipelineError` carries the reason to ``train_job.py``. A lower
floor than the pipeline and the tasks: it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rayrelay_core.runs import FailureDoc, JobDocument, RunLayout
from rayrelay_core.store import StoreError, open_store
from rayrelay_workloads.data import DataError
from rayrelay_workloads.envelope import EnvelopeError
from rayrelay_workloads.export_checks import ParityError
from rayrelay_workloads.modeling import ModelSourceError
from rayrelay_workloads.progress import ProgressWriter
from rayrelay_workloads.quality import QualityGateError
from rayrelay_workloads.train_state import TrainingError

Reason = tuple[type[BaseException], str, bool]  # (exception type, condition reason, worth retrying)


class UnsupportedSpec(ValueError):
    """A spec field this task does not support yet (reason ``InvalidSpec``)."""


# The reasons every task shares; a task's own come first (first match wins).
FAILURE_REASONS: list[Reason] = [
    (DataError, "InvalidData", False),
    (EnvelopeError, "EncryptionKeyInvalid", False),
    (ModelSourceError, "InvalidModel", False),
    (ParityError, "ParityFailed", False),
    (QualityGateError, "QualityGateFailed", False),
    (UnsupportedSpec, "InvalidSpec", False),
    (StoreError, "StorageError", True),
    (TrainingError, "TrainingFailed", True),
]


class PipelineError(RuntimeError):
    """A run failed; ``reason`` is the condition reason also written to failure.json."""

    def __init__(self, reason: str, message: str, retryable: bool) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retryable = retryable


def classify(exc: BaseException, task_reasons: Sequence[Reason] = ()) -> tuple[str, bool]:
    """(reason, retryable) of ``exc``: the task's reasons, then the shared ones; else TrainingFailed."""
    for kind, reason, retryable in (*task_reasons, *FAILURE_REASONS):
        if isinstance(exc, kind):
            return reason, retryable
    return "TrainingFailed", True


def first_line(exc: BaseException) -> str:
    """The message a condition and failure.json carry: the first line, or the type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def record_failure(
    layout: RunLayout,
    job: JobDocument,
    progress: ProgressWriter | None,
    reason: str,
    message: str,
    retryable: bool,
    say: Callable[[str], None],
) -> None:
    """Write failure.json and the ``Failed`` stage; a store that fails this only gets logged."""
    try:
        store = open_store(layout.base, job.endpoint_url)
        store.write_bytes(
            layout.failure,
            FailureDoc(reason=reason, message=message, retryable=retryable, attempt=job.attempt)
            .to_json()
            .encode(),
        )
        if progress is not None:
            progress.stage("Failed", f"{reason}: {message}")
    except StoreError as exc:
        # The store itself may be what failed; the exit message still carries the reason.
        say(f"could not write failure.json: {exc}")
