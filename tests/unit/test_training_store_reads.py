"""How many store requests a TrainingJob pass makes, by what the backend sees of its attempt.

A real local folder store (``LocalStore``) behind a recorder of every read, the fake
backend of ``reconcile_fakes`` (it stands in for KubeRay or Ray: it says what state the
attempt is in). The first pass reads the manifest only (a published run is never trained
again); a pass over an attempt that waits for its cluster reads nothing; a running attempt's
pass reads its progress only, and only once per ``store_poll_seconds`` (60) unless what the
backend sees changed (a fake clock); an ended attempt's pass reads progress, failure and
manifest, and still sees what they say.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reconcile_fakes import (
    Clock,
    FakeBackend,
    artifacts_dir,
    layout_of,
    make_ctx,
    tj_dict,
    with_status,
    write_failure,
    write_manifest,
    write_progress,
)

from rayrelay_core.store import LocalStore, StoreError
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.reconcile.training import store_reads_for
from rayrelay_operator.work import TrainingObservation, WorkState


class RecordingStore(LocalStore):
    """A local folder store that records the URI of every read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.fail = False  # True: every read raises StoreError (the store does not answer)

    def read_bytes(self, uri: str, *args: Any, **kwargs: Any) -> bytes:
        self.reads.append(uri.rsplit("/", 1)[-1])
        if self.fail:
            raise StoreError(f"{uri}: connection refused")
        return super().read_bytes(uri, *args, **kwargs)


def setup(tmp_path: Path) -> tuple[Any, FakeBackend, RecordingStore, str]:
    backend, store = FakeBackend(), RecordingStore()
    artifacts = artifacts_dir(tmp_path)
    ctx, _ = make_ctx(backend, Clock(), artifacts)
    ctx.store_for = lambda uri, endpoint: store
    ctx.settings = dataclasses.replace(ctx.settings, store_poll_seconds=60)  # the operator's default
    return ctx, backend, store, artifacts


def test_store_reads_follow_the_attempt_state() -> None:
    assert store_reads_for(None) == "manifest"
    assert store_reads_for(TrainingObservation(WorkState.ABSENT)) == "manifest"
    assert store_reads_for(TrainingObservation(WorkState.WAITING)) == "none"
    assert store_reads_for(TrainingObservation(WorkState.RUNNING)) == "progress"
    for state in (WorkState.SUCCEEDED, WorkState.FAILED, WorkState.STOPPED):
        assert store_reads_for(TrainingObservation(state)) == "all"


def test_first_pass_reads_the_manifest_only_then_waiting_reads_nothing(tmp_path: Path) -> None:
    ctx, backend, store, _ = setup(tmp_path)
    obj = tj_dict()
    result = run_pass("TrainingJob", obj, ctx)
    assert backend.calls == [("submit", backend.submitted[0].submission_id)]
    assert store.reads == ["manifest.json"]
    sid = backend.submitted[0].submission_id

    store.reads.clear()
    backend.training[sid] = TrainingObservation(WorkState.WAITING, "WaitingForResources", "starting")
    result = run_pass("TrainingJob", with_status(obj, result.status), ctx)
    assert result.error is None and result.status.phase == "Pending"
    assert store.reads == []


def test_running_attempt_reads_its_progress_once_a_minute(tmp_path: Path) -> None:
    ctx, backend, store, artifacts = setup(tmp_path)
    clock = ctx.now
    obj = tj_dict()
    obj = with_status(obj, run_pass("TrainingJob", obj, ctx).status)
    sid = backend.submitted[0].submission_id
    layout = layout_of(obj, artifacts)
    write_progress(layout, "Exporting", step=40, total=100)
    store.reads.clear()
    backend.training[sid] = TrainingObservation(WorkState.RUNNING, "Running", "")
    result = run_pass("TrainingJob", obj, ctx)
    assert store.reads == ["progress.json"]
    assert result.status.phase == "Exporting"
    assert result.status.progress is not None and result.status.progress.percent == 40.0
    obj = with_status(obj, result.status)

    # Timer ticks within store_poll_seconds while the backend's view stays the same: no read,
    # and the status stays as the last read left it (nothing to write).
    write_progress(layout, "Exporting", step=60, total=100)
    for _ in range(5):
        clock.advance(10)  # type: ignore[attr-defined]
        store.reads.clear()
        result = run_pass("TrainingJob", obj, ctx)
        assert store.reads == [] and result.patch == {} and result.status.phase == "Exporting"
    clock.advance(10)  # type: ignore[attr-defined]  # 60 s since the last read
    result = run_pass("TrainingJob", obj, ctx)
    assert store.reads == ["progress.json"] and result.status.progress.percent == 60.0  # type: ignore[union-attr]
    obj = with_status(obj, result.status)

    # What the backend sees changes: read at once.
    store.reads.clear()
    clock.advance(10)  # type: ignore[attr-defined]
    backend.training[sid] = TrainingObservation(WorkState.RUNNING, "DriverDied", "the head pod failed")
    run_pass("TrainingJob", obj, ctx)
    assert store.reads == ["progress.json"]


def test_a_failed_progress_read_is_tried_again_at_the_next_pass(tmp_path: Path) -> None:
    ctx, backend, store, artifacts = setup(tmp_path)
    obj = tj_dict()
    obj = with_status(obj, run_pass("TrainingJob", obj, ctx).status)
    sid = backend.submitted[0].submission_id
    backend.training[sid] = TrainingObservation(WorkState.RUNNING, "Running", "")
    store.fail = True
    assert run_pass("TrainingJob", obj, ctx).temporary
    store.fail, store.reads = False, []
    write_progress(layout_of(obj, artifacts), "Training", step=20, total=100)
    result = run_pass("TrainingJob", obj, ctx)
    assert store.reads == ["progress.json"] and result.status.progress.percent == 20.0  # type: ignore[union-attr]


def test_ended_attempt_sees_its_failure_document(tmp_path: Path) -> None:
    ctx, backend, store, artifacts = setup(tmp_path)
    obj = tj_dict()
    obj = with_status(obj, run_pass("TrainingJob", obj, ctx).status)
    sid = backend.submitted[0].submission_id
    write_failure(layout_of(obj, artifacts), "OutOfMemory", "worker 1 OOM", retryable=False, attempt=1)
    backend.training[sid] = TrainingObservation(WorkState.FAILED, "TrainingFailed", "")
    result = run_pass("TrainingJob", obj, ctx)
    assert result.status.phase == "Failed"
    failed = next(c for c in result.status.conditions if c.type == "Failed")
    assert failed.reason == "OutOfMemory" and "worker 1 OOM" in failed.message


def test_a_published_run_is_done_on_the_first_pass(tmp_path: Path) -> None:
    ctx, backend, store, artifacts = setup(tmp_path)
    obj = tj_dict()
    write_manifest(layout_of(obj, artifacts).manifest)
    write_progress(layout_of(obj, artifacts), "Publishing", step=100, total=100)
    result = run_pass("TrainingJob", obj, ctx)
    assert backend.calls == [] and result.status.phase == "Succeeded"
    assert sorted(store.reads) == ["failure.json", "manifest.json", "progress.json"]
