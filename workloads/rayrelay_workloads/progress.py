"""The run's progress document (``progress.json``), written by the workloads.

Rank 0 of training (``train.py``) updates it at most every ``interval`` seconds
with step, epoch, loss, throughput, ETA and the latest checkpoint; the pipeline
(``pipeline.py``) writes the stage transitions (Pruning, Exporting, Optimizing,
Publishing, Succeeded, Failed). The operator and the CLI read it
(``rayrelay_core.runs.read_doc``) to fill ``status.progress``.

Progress is advisory: the manifest, written last, is what says a run is done.
So a store that does not answer never fails a training step or a stage: the
per-step updates back off (a failed write holds the next ones back, doubling up
to ``MAX_HOLD_S``, without blocking training), stage transitions and the final
records are retried with jittered exponential backoff (:func:`write_with_retry`)
and then given up with a warning on stderr. Each S3 write is already up to
``S3Settings.max_attempts`` boto3 attempts (about 4 s against a dead endpoint).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from rayrelay_core.runs import CheckpointInfo, ProgressDoc, RunLayout, read_doc
from rayrelay_core.store import Store, StoreError, open_store

# Blocking retries of a write that matters (a stage, a final record): tries and first delay.
RETRY_ATTEMPTS = 3
RETRY_BASE_S = 1.0
RETRY_MAX_S = 8.0
# After a failed per-step write, later ones wait 2 s, 4 s, ... up to this (training goes on).
MAX_HOLD_S = 30.0


def warn(message: str) -> None:
    print(f"[rayrelay] warning: {message}", file=sys.stderr, flush=True)


def backoff_s(failures: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """base * 2**(failures-1), capped, spread by +-20 % (so workers that failed together part)."""
    exact = min(cap, base * 2 ** max(0, failures - 1))
    return float(exact * (0.8 + 0.4 * rng()))


def write_with_retry(
    write: Callable[[], None],
    what: str,
    *,
    attempts: int = RETRY_ATTEMPTS,
    base: float = RETRY_BASE_S,
    cap: float = RETRY_MAX_S,
    sleep: Callable[[float], None] = time.sleep,
    required: bool = False,
) -> bool:
    """Call ``write``; on ``StoreError`` retry with backoff. False (and a warning) if it never worked.

    Never raises a StoreError (callers use it where the store is advisory, or while
    another error is on its way out that a store failure must not replace), unless
    ``required``: then the last attempt's StoreError propagates.
    """
    for attempt in range(1, attempts + 1):
        try:
            write()
            return True
        except StoreError as exc:
            if attempt == attempts and required:
                raise
            if attempt == attempts:
                warn(f"{what}: gave up after {attempts} attempts: {exc}")
                return False
            delay = backoff_s(attempt, base, cap)
            warn(f"{what}: {exc}; retrying in {delay:.1f}s ({attempt}/{attempts})")
            sleep(delay)
    return False


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProgressWriter:
    """Writes ProgressDoc to the run folder, throttled for the per-step updates."""

    def __init__(
        self,
        run_uri: str,
        endpoint_url: str | None,
        attempt: int = 1,
        interval: float = 2.0,
        store: Store | None = None,
    ) -> None:
        self.uri = RunLayout(run_uri).progress
        self.store = store or open_store(self.uri, endpoint_url)
        self.attempt = attempt
        self.interval = interval
        self._last_write = float("-inf")
        self._failures = 0  # per-step writes failed in a row
        self._hold_until = float("-inf")  # no per-step write before this (after failures)
        self.wrote_last = False
        self.failed_writes = 0  # in all, for tests and the fault suite
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
        now = time.monotonic()
        due = now - self._last_write >= self.interval and now >= self._hold_until
        self.wrote_last = force or due or step >= total_steps
        if self.wrote_last:
            try:
                self._write()
                self._failures, self._hold_until = 0, float("-inf")
            except StoreError as exc:
                # Progress is advisory: a store hiccup must not kill (or stall) training steps.
                self.wrote_last = False
                self.failed_writes += 1
                self._failures += 1
                hold = backoff_s(self._failures, 2.0, MAX_HOLD_S)
                self._hold_until = time.monotonic() + hold
                warn(f"progress not written ({exc}); next try in {hold:.0f}s")

    def stage(self, stage: str, message: str | None = None, required: bool = False) -> bool:
        """A stage transition of the pipeline, retried with backoff; False if never written.

        ``required``: the run's first write, which is also the check that the store answers
        at all: after the retries its StoreError propagates, so a run whose artifacts cannot
        be written stops at once with a StorageError instead of training for nothing.
        """

        def write() -> None:
            # Keep what training workers wrote (step, loss, last checkpoint): the driver's copy lacks it.
            current = read_doc(self.store, self.uri, ProgressDoc)
            if current is not None and self.doc.step is None:
                self.doc = current.model_copy(update={"attempt": self.attempt})
            self.doc.stage = stage
            self.doc.message = message
            self._write()

        written = write_with_retry(write, f"progress stage {stage}", required=required)
        if not written:
            self.failed_writes += 1
        return written
