"""The operator's own series (operator/rayrelay_operator/metrics.py, issue 28).

Per-resource phase, progress, attempt and replicas follow the computed status and go with
the resource; the counters the alerts read with rate() exist (0) before the first error; and
``rayrelay_operator_leader`` follows kopf's peering engine, fed here the exact log records
kopf 1.45 emits when it pauses a replica for a peer of higher priority and when it resumes
(tests/cluster/test_operator_ha.py runs real peering; this checks the mapping alone).
"""

from __future__ import annotations

import logging

from prometheus_client import generate_latest

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
