"""The TrainingJob state machine (``rayrelay_operator.reconcile.training``), pass by pass.

Each test drives ``run_pass`` the way every driver does (the patch written
back, fed in as the previous status) against a recording fake backend and a
local-folder store where the test writes the workload's documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
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

from rayrelay_core.api import TrainingJobStatus
from rayrelay_core.conditions import find_condition
from rayrelay_core.store import StoreError
from rayrelay_operator import naming
from rayrelay_operator.backends.base import BackendRejected, BackendUnavailable
from rayrelay_operator.reconcile import PassResult, classify, permanent_failure, run_pass
from rayrelay_operator.work import TrainingObservation, WorkState


class Driver:
    """Plays the kopf handler: reconcile, write the status back only when it changed."""

    def __init__(self, tmp_path: Path, **spec: Any) -> None:
        self.backend = FakeBackend()
        self.clock = Clock()
        self.artifacts = artifacts_dir(tmp_path)
        self.ctx, self.events = make_ctx(self.backend, self.clock, self.artifacts)
        self.obj = tj_dict(**spec)
        self.writes = 0

    def run(self) -> PassResult:
        result = run_pass("TrainingJob", self.obj, self.ctx)
        if result.patch:
            self.writes += 1
            self.obj = with_status(self.obj, result.status)
        return result

    def step(self) -> TrainingJobStatus:
        status = self.run().status
        assert isinstance(status, TrainingJobStatus)
        return status

    @property
    def layout(self):
        return layout_of(self.obj, self.artifacts)

    def observe(self, state: WorkState, reason: str = "", message: str = "", **kw: Any) -> None:
        sid = self.obj["status"]["rayJob"]["jobId"]
        self.backend.training[sid] = TrainingObservation(state, reason, message, **kw)

    def change_spec(self, **spec: Any) -> None:
        self.obj["spec"].update(spec)
        self.obj["metadata"]["generation"] += 1

    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]

    def after_backoff(self) -> TrainingJobStatus:
        """Advance the clock to the recorded next attempt time and pass (the retry's submission)."""
        from rayrelay_core.conditions import rfc3339

        at = self.obj["status"]["nextAttemptTime"]
        while rfc3339(self.clock()) < at:
            self.clock.advance(1)
        return self.step()


def cond(status: TrainingJobStatus, type_: str) -> tuple[str, str]:
    c = find_condition(status.conditions, type_)
    assert c is not None, f"no {type_} condition in {status.conditions}"
    return str(c.status), c.reason


def test_happy_path_through_every_phase(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    s = d.step()
    assert s.phase == "Pending" and s.attempt == 1 and s.observed_generation == 1
    assert d.backend.calls == [("submit", "rayrelay-ml-sst2-74f1c81c-g1-a1")]
    assert s.ray_job is not None and s.ray_job.name == "sst2-g1-a1"
    assert cond(s, "Running") == ("False", "WaitingForResources")
    assert s.start_time == "2026-01-01T12:00:00Z"
    work = d.backend.submitted[0]
    assert work.job.run_uri == d.layout.base and work.job.attempt == 1 and work.job.generation == 1

    d.observe(WorkState.RUNNING)
    write_progress(d.layout, "Training", step=25, total=100)
    s = d.step()
    assert s.phase == "Training" and cond(s, "Running") == ("True", "Training")
    assert s.progress is not None and s.progress.percent == 25.0 and s.progress.loss == 0.42

    for stage, phase in (
        ("Exporting", "Exporting"),
        ("Optimizing", "Optimizing"),
        ("Publishing", "Optimizing"),
    ):
        write_progress(d.layout, stage, step=100, total=100)
        assert d.step().phase == phase

    d.clock.advance(60)
    write_manifest(d.layout.manifest)
    d.observe(WorkState.SUCCEEDED)
    s = d.step()
    assert s.phase == "Succeeded" and s.completion_time == "2026-01-01T12:01:00Z"
    assert cond(s, "Succeeded") == ("True", "Succeeded") and cond(s, "Failed")[0] == "False"
    assert s.artifacts is not None and s.artifacts.manifest_uri == d.layout.manifest
    assert s.artifacts.digest and s.artifacts.digest.startswith("sha256:")
    assert s.artifacts.recommended_variant == "int8"
    assert set(s.artifacts.models) == {"fp32", "int8"}
    assert s.metrics["eval_accuracy"] == 0.91 and s.metrics["accuracy_int8"] == 0.90
    assert d.reasons() == ["Submitted", "Training", "Exporting", "Optimizing", "Succeeded"]
    # Submitted exactly once over the whole run.
    assert d.backend.verbs().count("submit") == 1


def test_status_written_only_when_changed(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.RUNNING)
    write_progress(d.layout, "Training", step=5)
    d.step()
    writes = d.writes
    d.clock.advance(30)  # time passes, nothing else changes
    d.step()
    d.step()
    assert d.writes == writes
    write_progress(d.layout, "Training", step=6)
    d.step()
    assert d.writes == writes + 1


def test_condition_transition_time_moves_only_on_status_change(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    s = d.step()
    first = find_condition(s.conditions, "Running")
    d.clock.advance(10)
    d.observe(WorkState.WAITING, "Unschedulable", "0/3 nodes: insufficient cpu")
    s = d.step()
    again = find_condition(s.conditions, "Running")
    assert again and first and again.reason == "Unschedulable"
    assert again.last_transition_time == first.last_transition_time  # still False
    d.clock.advance(10)
    d.observe(WorkState.RUNNING)
    s = d.step()
    running = find_condition(s.conditions, "Running")
    assert running and running.last_transition_time == "2026-01-01T12:00:20Z"
    assert running.observed_generation == 1


@pytest.mark.parametrize("reason", ["ImagePullFailed", "Unschedulable"])
def test_pod_problems_surface_as_reasons(tmp_path: Path, reason: str) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.WAITING, reason, "head pod: something")
    s = d.step()
    assert s.phase == "Pending" and cond(s, "Running") == ("False", reason)
    assert reason in d.reasons()


def test_retry_resumes_same_run_and_gives_up_after_backoff_limit(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 1})
    d.step()
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1")
    s = d.step()
    assert s.attempt == 1 and s.phase == "Pending" and s.next_attempt_time is not None
    assert cond(s, "Running") == ("False", "DriverFailed")
    assert d.backend.calls[-1] == ("stop", "rayrelay-ml-sst2-74f1c81c-g1-a1")
    s = d.after_backoff()
    assert s.attempt == 2 and s.phase == "Pending" and s.next_attempt_time is None
    running = find_condition(s.conditions, "Running")
    assert running is not None and running.reason == "DriverFailed", running
    assert running.message == "attempt 2 submitted; attempt 1 failed: exit 1", running.message
    assert d.backend.calls[-1] == ("submit", "rayrelay-ml-sst2-74f1c81c-g1-a2")
    # Same run folder: the second attempt resumes from the first one's checkpoints.
    assert d.backend.submitted[1].job.run_uri == d.backend.submitted[0].job.run_uri
    assert d.backend.submitted[1].job.attempt == 2
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1 again")
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "DriverFailed")
    assert "backoffLimit 1" in (find_condition(s.conditions, "Failed").message or "")  # type: ignore[union-attr]
    assert d.backend.verbs().count("submit") == 2
    # Terminal: nothing more happens.
    calls = list(d.backend.calls)
    d.step()
    assert d.backend.calls == calls


def test_failure_document_reason_and_quality_gate_is_not_retried(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 3})
    d.step()
    write_failure(d.layout, "QualityGateFailed", "eval accuracy 0.55 < minEvalAccuracy 0.8", retryable=False)
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1")
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "QualityGateFailed")
    assert s.attempt == 1 and d.backend.verbs().count("submit") == 1
    assert d.events[-1].type == "Warning" and d.events[-1].reason == "QualityGateFailed"


def test_failure_document_of_an_earlier_attempt_is_not_this_attempts_reason(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 3})
    d.step()
    write_failure(d.layout, "StorageError", "S3 throttled", retryable=True, attempt=1)
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1")
    s = d.step()
    assert s.attempt == 1 and cond(s, "Running") == ("False", "StorageError")
    assert d.after_backoff().attempt == 2
    # Attempt 2 fails without writing a document: the stale one must not explain it.
    d.observe(WorkState.FAILED)
    s = d.step()
    assert s.attempt == 2 and cond(s, "Running") == ("False", "TrainingFailed")
    assert d.after_backoff().attempt == 3


def test_driver_died_while_job_says_running_is_a_failed_attempt(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.RUNNING, "DriverDied", "jobStatus RUNNING but the submitter Job failed")
    s = d.step()
    assert s.next_attempt_time is not None and cond(s, "Running") == ("False", "DriverDied")
    assert ("stop", "rayrelay-ml-sst2-74f1c81c-g1-a1") in d.backend.calls
    assert d.after_backoff().attempt == 2


def test_a_failed_attempt_waits_its_backoff_and_says_when(tmp_path: Path) -> None:
    """Issue 14, item 7: no resubmission in the pass that saw the failure; exponential waits."""
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 3})
    d.step()
    waits = []
    for attempt in (1, 2, 3):
        d.observe(WorkState.FAILED, "DriverFailed", f"exit 1 (attempt {attempt})")
        submits = d.backend.verbs().count("submit")
        s = d.step()
        assert d.backend.verbs().count("submit") == submits, "resubmitted in the same pass"
        at = s.next_attempt_time
        assert at is not None and s.phase == "Pending" and s.attempt == attempt
        message = find_condition(s.conditions, "Running").message  # type: ignore[union-attr]
        assert message.startswith(f"attempt {attempt + 1} at {at}"), message
        assert any(e.reason == "DriverFailed" and at in e.message for e in d.events)
        # Passes before that time submit nothing and do not observe the failed work again.
        calls = list(d.backend.calls)
        for _ in range(3):
            d.clock.advance(1)
            assert d.step().next_attempt_time == at
        assert d.backend.calls == calls
        start = d.clock()
        s = d.after_backoff()
        waits.append((d.clock() - start).total_seconds() + 3)
        assert s.attempt == attempt + 1 and s.next_attempt_time is None
        assert d.backend.calls[-1][0] == "submit" and d.backend.calls[-1][1].endswith(f"-a{attempt + 1}")
    # base 5 s, doubling, +-20 % jitter (the settings' defaults)
    assert 4 <= waits[0] <= 7 and 8 <= waits[1] <= 13 and 16 <= waits[2] <= 25, waits
    assert waits[0] < waits[1] < waits[2]


def test_suspending_during_a_backoff_resumes_with_the_next_attempt(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 2})
    d.step()
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1")
    assert d.step().next_attempt_time is not None
    d.change_spec(suspend=True)
    s = d.step()
    assert s.phase == "Suspended" and s.next_attempt_time is None and s.attempt == 2
    d.change_spec(suspend=False)
    s = d.step()
    assert s.attempt == 2 and d.backend.calls[-1] == ("submit", "rayrelay-ml-sst2-74f1c81c-g3-a2")


def test_the_deadline_ends_a_backoff(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 2, "activeDeadlineSeconds": 3})
    d.step()
    d.observe(WorkState.FAILED, "DriverFailed", "exit 1")
    assert d.step().next_attempt_time is not None
    d.clock.advance(3)
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "DeadlineExceeded")
    assert s.next_attempt_time is None and d.backend.verbs().count("submit") == 1


def test_stuck_initializing_after_threshold(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"backoffLimit": 0})
    d.step()
    d.observe(
        WorkState.WAITING, "ImagePullFailed", "ErrImagePull: repo/x:1", started_at="2026-01-01T12:00:00Z"
    )
    d.clock.advance(599)
    assert d.step().phase == "Pending"
    d.clock.advance(2)
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "StuckInitializing")
    message = find_condition(s.conditions, "Failed").message  # type: ignore[union-attr]
    assert "ImagePullFailed" in message and "600s" in message


def test_deadline_exceeded_stops_the_work(tmp_path: Path) -> None:
    d = Driver(tmp_path, failurePolicy={"activeDeadlineSeconds": 100})
    d.step()
    d.observe(WorkState.RUNNING)
    d.clock.advance(99)
    assert d.step().phase == "Training"
    d.clock.advance(1)
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "DeadlineExceeded")
    assert d.backend.calls[-1] == ("stop", "rayrelay-ml-sst2-74f1c81c-g1-a1")


def test_suspend_and_resume_from_checkpoint(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.RUNNING)
    d.step()
    d.change_spec(suspend=True)
    s = d.step()
    assert s.phase == "Suspended" and cond(s, "Suspended") == ("True", "Suspended")
    assert d.backend.calls[-1] == ("stop", "rayrelay-ml-sst2-74f1c81c-g1-a1")
    calls = list(d.backend.calls)
    d.step()
    assert d.backend.calls == calls  # stays suspended, nothing more
    d.clock.advance(30)
    d.change_spec(suspend=False)
    s = d.step()
    # New generation, same attempt (a suspension is not a failure), same run folder.
    assert s.phase == "Pending" and s.attempt == 1 and cond(s, "Suspended") == ("False", "Resumed")
    assert d.backend.calls[-1] == ("submit", "rayrelay-ml-sst2-74f1c81c-g3-a1")
    assert d.backend.submitted[-1].job.run_uri == d.backend.submitted[0].job.run_uri
    assert s.start_time == "2026-01-01T12:00:30Z"  # the deadline counts from resumption


def test_non_result_spec_change_does_not_resubmit(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.RUNNING)
    d.step()
    d.change_spec(ttlSecondsAfterFinished=60)
    s = d.step()
    assert s.observed_generation == 2 and s.phase == "Training"
    assert d.backend.verbs().count("submit") == 1


def test_result_spec_change_starts_a_new_run(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.observe(WorkState.RUNNING)
    old_run = d.step().run_id
    d.change_spec(hyperparameters={"epochs": 5})
    s = d.step()
    assert s.run_id != old_run and s.attempt == 1
    assert d.backend.calls[-2:] == [
        ("stop", "rayrelay-ml-sst2-74f1c81c-g1-a1"),
        ("submit", "rayrelay-ml-sst2-74f1c81c-g2-a1"),
    ]
    assert "NewRun" in d.reasons()


def test_ttl_deletes_children_once(tmp_path: Path) -> None:
    d = Driver(tmp_path, ttlSecondsAfterFinished=30)
    d.step()
    write_manifest(d.layout.manifest)
    d.observe(WorkState.SUCCEEDED)
    assert d.step().phase == "Succeeded"
    d.clock.advance(29)
    d.step()
    assert "delete" not in d.backend.verbs()
    d.clock.advance(1)
    s = d.step()
    assert d.backend.calls[-1] == ("delete", "ml/sst2") and cond(s, "ChildrenDeleted")[0] == "True"
    d.clock.advance(100)
    d.step()
    assert d.backend.verbs().count("delete") == 1


def test_restart_recomputes_same_names(tmp_path: Path) -> None:
    # The status write after a submit was lost (operator crashed): the next pass submits
    # the very same names, which an idempotent backend turns into a no-op.
    d = Driver(tmp_path)
    run_pass("TrainingJob", d.obj, d.ctx)
    run_pass("TrainingJob", d.obj, d.ctx)
    assert d.backend.calls == [("submit", "rayrelay-ml-sst2-74f1c81c-g1-a1")] * 2


def test_absent_work_is_resubmitted_under_the_same_names(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.step()
    d.backend.training.clear()
    s = d.step()
    assert d.backend.calls[-1] == ("submit", "rayrelay-ml-sst2-74f1c81c-g1-a1") and s.attempt == 1


def test_finished_run_found_in_store_is_reused(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    write_manifest(d.layout.manifest)
    s = d.step()
    assert s.phase == "Succeeded" and d.backend.calls == []


def test_invalid_spec_is_permanent_with_condition_first(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.obj["spec"]["resources"] = {"numWorkers": 0}
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Failed") == ("True", "InvalidSpec")
    message = permanent_failure(s)
    assert message and "spec.resources.numWorkers" in message
    assert d.backend.calls == []
    d.step()
    assert [e.reason for e in d.events] == ["InvalidSpec"]  # not re-announced every pass


def test_unconfigured_backend_is_invalid(tmp_path: Path) -> None:
    d = Driver(tmp_path, backend="ray")
    s = d.step()
    assert cond(s, "Failed") == ("True", "InvalidSpec") and "'ray' is not configured" in (
        permanent_failure(s) or ""
    )


class _ApiError(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@pytest.mark.parametrize(
    ("exc", "permanent", "reason"),
    [
        (BackendRejected("no"), True, "BackendRejected"),
        (BackendUnavailable("later"), False, "BackendUnavailable"),
        (StoreError("SlowDown"), False, "StoreUnavailable"),
        (_ApiError(429), False, "ApiError429"),
        (_ApiError(503), False, "ApiError503"),
        (_ApiError(422), True, "ApiError422"),
        (_ApiError(403), False, "MissingPermission"),
        (ConnectionRefusedError(), False, "ConnectionError"),
    ],
)
def test_classify(exc: BaseException, permanent: bool, reason: str) -> None:
    got = classify(exc, retry=2)
    assert (got.permanent, got.reason) == (permanent, reason)
    assert (got.delay == 0) == permanent


def test_backoff_grows_and_is_capped() -> None:
    delays = [classify(BackendUnavailable(), retry=r).delay for r in range(10)]
    assert delays[:3] == [5.0, 10.0, 20.0] and delays[-1] == 300.0
    assert classify(_ApiError(429), retry=0).delay > classify(_ApiError(503), retry=0).delay


def test_names_are_dns_safe_and_bounded() -> None:
    long = "a" * 60
    sid = naming.training_submission_id("namespace-" + "x" * 40, long, 12, 3)
    child = naming.training_child_name(long, 12, 3)
    assert len(sid) <= 63 and len(child) <= naming.CHILD_NAME_MAX
    assert naming.training_child_name(long, 12, 3) == child  # deterministic
    assert naming.training_child_name(long, 12, 4) != child
    assert naming.dns_name("Foo_Bar.baz") == "foo-bar-baz"
