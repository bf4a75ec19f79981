"""The run's progress document (``progress.json``), written by the workloads.

Rank 0 of training (``train.py``) updates it at most every ``interval`` seconds
with step, epoch, loss, throughput, ETA and the latest checkpoint; the pipeline
(``pipeline.py``) writes the stage transitions (Exporting, Optimizing,
Publishing, Succeeded, Failed). The operator and the CLI read it
(``rayrelay_core.runs.read_doc``) to fill ``status.progress``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from rayrelay_core.runs import CheckpointInfo, ProgressDoc, RunLayout, read_doc
from rayrelay_core.store import StoreError, open_store


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressWriter:
    """Writes ProgressDoc to the run folder, throttled for the per-step updates."""

    def __init__(
        self, run_uri: str, endpoint_url: str | None, attempt: int = 1, interval: float = 2.0
    ) -> None:
        self.uri = RunLayout(run_uri).progress
        self.store = open_store(self.uri, endpoint_url)
        self.attempt = attempt
        self.interval = interval
        self._last_write = float("-inf")
        self.wrote_last = False
        self.doc = ProgressDoc(stage="Training", attempt=attempt)

    def _write(self) -> None:
        self.doc.update_time = now_rfc3339()
        self.store.write_bytes(self.uri, self.doc.to_json().encode())
        self._last_write = time.monotonic()

    def training(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        loss: float | None = None,
        samples_per_second: float | None = None,
        eta_seconds: float | None = None,
        last_checkpoint: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Record a training step; written when ``interval`` has passed (or forced)."""
        self.doc.stage = "Training"
        self.doc.step, self.doc.total_steps, self.doc.epoch = step, total_steps, round(epoch, 4)
        if loss is not None and loss == loss:  # skip NaN: JSON readers choke on it
            self.doc.loss = round(loss, 6)
        if samples_per_second is not None:
            self.doc.samples_per_second = round(samples_per_second, 2)
        if eta_seconds is not None:
            self.doc.eta_seconds = round(eta_seconds, 1)
        if step >= total_steps:
            self.doc.eta_seconds = 0.0
        if last_checkpoint:
            self.doc.last_checkpoint = CheckpointInfo.model_validate(last_checkpoint)
        self.wrote_last = force or time.monotonic() - self._last_write >= self.interval or step >= total_steps
        if self.wrote_last:
            try:
                self._write()
            except StoreError:
                # Progress is advisory: a store hiccup must not kill a training step.
                self.wrote_last = False

    def stage(self, stage: str, message: str | None = None) -> None:
        """A stage transition of the pipeline; always written."""
        # Keep what training workers wrote (step, loss, last checkpoint): the driver's copy lacks it.
        current = read_doc(self.store, self.uri, ProgressDoc)
        if current is not None and self.doc.step is None:
            self.doc = current.model_copy(update={"attempt": self.attempt})
        self.doc.stage = stage
        self.doc.message = message
        self._write()
