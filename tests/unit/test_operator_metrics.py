"""The operator's own series (operator/rayrelay_operator/metrics.py, issue 28).

Per-resource phase, progress, attempt and replicas follow the computed status and go with
the resource; the counters the alerts read with rate() exist (0) before the first error; a
failed attempt scheduled to run again counts one retry with a bounded reason and its backoff; and
``rayrelay_operator_leader`` follows kopf's peering engine, fed here the exact log records
kopf 1.45 emits when it pauses a replica for a peer of higher priority and when it resumes
(tests/cluster/test_operator_ha.py runs real peering; this checks the mapping alone).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from reconcile_fakes import Clock, FakeBackend, artifacts_dir, make_ctx, tj_dict

from rayrelay_core.api import ModelDeploymentStatus, TrainingJobStatus
from rayrelay_operator import metrics


def value(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def exposition() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_per_resource_phase_follows_and_goes_with_the_resource() -> None:
    metrics.record_phase("ModelDeployment", "ml/m28", "Deploying")
    assert (
        value(
            "rayrelay_resource_phase",
            kind="ModelDeployment",
            resource_namespace="ml",
            resource_name="m28",
            phase="Deploying",
        )
        == 1
    )
    metrics.record_phase("ModelDeployment", "ml/m28", "Ready")
    lines = [x for x in exposition().splitlines() if 'resource_name="m28"' in x]
    assert len(lines) == 1 and 'phase="Ready"' in lines[0]  # one series per resource
    assert value("rayrelay_resources", kind="ModelDeployment", phase="Deploying") == 0
    metrics.record_status(
        "ModelDeployment",
        "ml/m28",
        ModelDeploymentStatus.model_validate(
            {"replicas": 3, "readyReplicas": 2, "scaling": {"targetReplicas": 4}}
        ),
    )
    got = {
        s: value("rayrelay_modeldeployment_replicas", resource_namespace="ml", resource_name="m28", state=s)
        for s in ("wanted", "existing", "ready")
    }
    assert got == {"wanted": 4, "existing": 3, "ready": 2}
    metrics.record_phase("ModelDeployment", "ml/m28", None)
    assert 'resource_name="m28"' not in exposition()


def test_phase_counts_move_with_each_resource() -> None:
    """rayrelay_resources{kind,phase} counts resources per phase as they move and go.

    The counts are kept incrementally (one step per change), so a pass costs the same at 10
    or 10,000 resources; this checks they still equal a recount through transitions,
    repeated passes in the same phase, and deletions.
    """
    kind = "TrainingJob"

    def counts() -> dict[str, float]:
        return {
            p: value("rayrelay_resources", kind=kind, phase=p) or 0.0
            for p in ("Pending", "Training", "Succeeded")
        }

    before = counts()
    for i in range(5):
        metrics.record_phase(kind, f"cnt/j{i}", "Pending")
    metrics.record_phase(kind, "cnt/j0", "Pending")  # the same phase again counts once
    for i in range(3):
        metrics.record_phase(kind, f"cnt/j{i}", "Training")
    metrics.record_phase(kind, "cnt/j0", "Succeeded")
    metrics.record_phase(kind, "cnt/j4", None)
    metrics.record_phase(kind, "cnt/gone", None)  # never seen: nothing moves
    after = counts()
    assert {p: after[p] - before[p] for p in after} == {"Pending": 1, "Training": 2, "Succeeded": 1}
    series = [
        x
        for x in exposition().splitlines()
        if "rayrelay_resource_phase{" in x and 'resource_namespace="cnt"' in x
    ]
    assert len(series) == 4 and any('resource_name="j0"' in x and 'phase="Succeeded"' in x for x in series)
    for i in range(4):
        metrics.record_phase(kind, f"cnt/j{i}", None)
    assert counts() == before


def test_training_progress_and_attempt() -> None:
    status = TrainingJobStatus.model_validate(
        {"phase": "Training", "attempt": 2, "progress": {"percent": 37.5}}
    )
    metrics.record_phase("TrainingJob", "ml/t28", "Training")
    metrics.record_status("TrainingJob", "ml/t28", status)
    assert value("rayrelay_trainingjob_progress_ratio", resource_namespace="ml", resource_name="t28") == 0.375
    assert value("rayrelay_trainingjob_attempt", resource_namespace="ml", resource_name="t28") == 2
    # Nothing known yet: no series rather than a made-up 0.
    metrics.record_status("TrainingJob", "ml/u28", TrainingJobStatus())
    assert 'resource_name="u28"' not in exposition()
    metrics.record_phase("TrainingJob", "ml/t28", None)
    assert 'resource_name="t28"' not in exposition()


def test_submit_delay_is_observed_once_when_the_first_attempt_is_submitted() -> None:
    def count() -> float:
        return value("rayrelay_trainingjob_submit_delay_seconds_count") or 0.0

    def bucket(le: str) -> float:
        return value("rayrelay_trainingjob_submit_delay_seconds_bucket", le=le) or 0.0

    created = "2026-12-07T00:00:00Z"
    body = {"metadata": {"name": "s28", "namespace": "ml", "creationTimestamp": created}, "status": {}}
    submitted = TrainingJobStatus.model_validate({"attempt": 1, "rayJob": {"jobId": "s28-1"}})
    before, under_5, under_2 = count(), bucket("5.0"), bucket("2.0")
    metrics.record_submit("TrainingJob", body, submitted, 1796601603.0)  # created + 3 s
    assert count() == before + 1
    assert bucket("5.0") == under_5 + 1 and bucket("2.0") == under_2
    # Later passes (the stored status has its Ray job), retries and the other kind: nothing.
    metrics.record_submit(
        "TrainingJob", {**body, "status": {"rayJob": {"jobId": "s28-1"}}}, submitted, 1796601700.0
    )
    retry = TrainingJobStatus.model_validate({"attempt": 2, "rayJob": {"jobId": "s28-2"}})
    metrics.record_submit("TrainingJob", body, retry, 1796601700.0)
    metrics.record_submit("TrainingJob", body, TrainingJobStatus(), 1796601700.0)
    metrics.record_submit("ModelDeployment", body, submitted, 1796601700.0)
    assert count() == before + 1


def test_alerted_counters_start_at_zero() -> None:
    for kind in ("TrainingJob", "ModelDeployment"):
        assert value("rayrelay_reconcile_errors_total", kind=kind, reason="StoreUnavailable") is not None
        assert value("rayrelay_reconciles_total", kind=kind, result="ok") is not None


def test_leader_follows_kopf_peering_pauses() -> None:
    metrics.track_leadership(peering=False)
    assert value("rayrelay_operator_leader") == 1  # standalone: it reconciles from the start
    metrics.track_leadership(peering=True)  # idempotent: one filter
    logger = logging.getLogger(metrics.PEERING_LOGGER)
    assert logger.filters.count(metrics._leadership) == 1
    assert value("rayrelay_operator_leader") == 0  # peering: paused until kopf resumes it
    logger.info("Resuming operations after the pause. Conflicting operators with the same priority are gone.")
    assert value("rayrelay_operator_leader") == 1
    logger.info("Pausing operations in favour of [Peer(identity='rayrelay-1', priority=10)].")
    assert value("rayrelay_operator_leader") == 0
    logger.info("Resuming operations after the pause. Conflicting operators with the same priority are gone.")
    assert value("rayrelay_operator_leader") == 1
    logger.warning("Pausing all operators, including self: []")
    assert value("rayrelay_operator_leader") == 0
    logger.info("Keep-alive in 'rayrelay' cluster-wide: ok.")  # anything else changes nothing
    assert value("rayrelay_operator_leader") == 0
    metrics.track_leadership(peering=False)


def test_a_retried_attempt_counts_its_reason_and_backoff(tmp_path: Path, monkeypatch: Any) -> None:
    """The kopf handler (``handlers._reconcile``) over the real TrainingJob state machine.

    ``reconcile_fakes.FakeBackend`` stands in for KubeRay (the test sets what the attempt's
    RayJob says) and a fake clock for the wall clock; ``kopf.event`` is replaced by a no-op
    (it needs a running operator). A failed attempt scheduled to run again counts one retry
    with the failure's reason and its backoff (base 5 s, doubling, +-20 %); the passes that
    wait it out and the one that resubmits count nothing; a reason outside the bounded set is
    ``Other``; a temporary error's delay goes to ``rayrelay_reconcile_retry_delay_seconds``.
    """
    import kopf

    from rayrelay_operator import handlers
    from rayrelay_operator.backends.base import BackendUnavailable
    from rayrelay_operator.work import TrainingObservation, WorkState

    backend, clock = FakeBackend(), Clock()
    ctx, _ = make_ctx(backend, clock, artifacts_dir(tmp_path))
    monkeypatch.setattr(handlers.kopf, "event", lambda body, **_: None)
    memo = kopf.Memo(ctx=ctx)
    raw = {**tj_dict("r28", failurePolicy={"backoffLimit": 3}), "status": {}}
    gate = handlers.ObjectGate()

    def tick() -> None:
        patch = kopf.Patch()
        try:
            handlers._reconcile("TrainingJob", kopf.Body(raw), patch, memo, timer=True, gate=gate)
        finally:  # applied as kopf applies it, a temporary error's included
            raw["status"] = {**raw["status"], **dict(patch.get("status") or {})}

    def retries(reason: str) -> float:
        return value("rayrelay_trainingjob_retries_total", reason=reason) or 0.0

    def backoff() -> tuple[float, float]:
        name = "rayrelay_trainingjob_retry_backoff_seconds"
        return value(f"{name}_count") or 0.0, value(f"{name}_sum") or 0.0

    def fail(reason: str) -> None:
        backend.training[raw["status"]["rayJob"]["jobId"]] = TrainingObservation(
            WorkState.FAILED, reason, "exit 1"
        )

    def wait_out() -> None:
        at = datetime.fromisoformat(raw["status"]["nextAttemptTime"].replace("Z", "+00:00"))
        clock.advance((at - clock()).total_seconds())

    tick()  # attempt 1 submitted
    assert raw["status"]["attempt"] == 1 and backend.verbs() == ["submit"]
    before = {r: retries(r) for r in ("DriverFailed", "Other")}
    (count, total) = backoff()
    fail("DriverFailed")
    tick()
    assert raw["status"]["nextAttemptTime"] and retries("DriverFailed") == before["DriverFailed"] + 1
    new_count, new_total = backoff()
    assert new_count == count + 1 and 3.0 <= new_total - total <= 6.0, new_total - total
    for _ in range(2):  # waiting out the backoff counts nothing
        clock.advance(1)
        tick()
    assert retries("DriverFailed") == before["DriverFailed"] + 1 and backoff()[0] == count + 1
    wait_out()
    tick()  # attempt 2 submitted: not a retry scheduled
    assert raw["status"]["attempt"] == 2 and backoff()[0] == count + 1
    fail("SomeBackendSaidSo")  # a reason outside RETRY_REASONS
    tick()
    assert retries("Other") == before["Other"] + 1 and retries("DriverFailed") == before["DriverFailed"] + 1
    assert "SomeBackendSaidSo" not in exposition()
    assert 7.0 <= backoff()[1] - new_total <= 12.0  # the second backoff doubles
    # The resubmission meets a temporary error: the pass's delay (base 5 s) is observed.
    delays = value("rayrelay_reconcile_retry_delay_seconds_count", kind="TrainingJob") or 0.0
    under_5 = value("rayrelay_reconcile_retry_delay_seconds_bucket", kind="TrainingJob", le="5.0") or 0.0
    backend.refuse["submit"] = BackendUnavailable("the Kubernetes API is not reachable")
    wait_out()
    with pytest.raises(kopf.TemporaryError):
        tick()
    assert value("rayrelay_reconcile_retry_delay_seconds_count", kind="TrainingJob") == delays + 1
    assert value("rayrelay_reconcile_retry_delay_seconds_bucket", kind="TrainingJob", le="5.0") == under_5 + 1
    assert backoff()[0] == count + 2


def test_retry_series_start_at_zero_with_a_bounded_reason() -> None:
    for reason in metrics.RETRY_REASONS:
        assert value("rayrelay_trainingjob_retries_total", reason=reason) is not None
    for kind in ("TrainingJob", "ModelDeployment"):
        assert value("rayrelay_reconcile_retry_delay_seconds_count", kind=kind) is not None
    assert value("rayrelay_trainingjob_retry_backoff_seconds_count") is not None
    assert metrics.retry_reason("DriverDied") == "DriverDied"
    assert metrics.retry_reason("a message: with anything in it") == "Other"
    assert metrics.retry_reason(None) == "Other"
