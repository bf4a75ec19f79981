"""The Ray head stopped under a running TrainingJob (issue 14, case 2, the head half), ray backend.

A Ray head of the test's own (``LocalRay``, what ``rayrelay run`` starts) runs
one attempt of a TrainingJob whose Ray job is a driver that sleeps (the case is
about what the status says, not about training: the backend's ``python``
setting is the interpreter part of the entrypoint). The reconcile pass
(``run_pass``) runs on the real clock every half second. Once Ray reports the
job RUNNING, the head is stopped (``LocalRay.stop``: SIGTERM, and its process
group, the job's driver included, goes with it). What must hold: within a
stated time the status says so -- the ``Reconciled`` condition turns False with
reason ``RayUnavailable`` naming the dashboard's address -- while the phase and
the attempt stay what they were (the pass is retried with backoff; nothing is
failed or submitted while Ray does not answer). Figures: seconds from the stop
to the status, the reason, the phase kept, the attempts. Not covered here: a
head that comes back (a new attempt then resumes from the last registered
checkpoint, as after a killed driver: ``test_driver_killed.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import LocalStore
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.localray import LocalRay
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.settings import Settings
from tests.faults.results import record

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
NAME = "headless"
STATUS_WITHIN_S = 10.0


def job_status(dashboard: str) -> str:
    from ray.job_submission import JobSubmissionClient

    jobs = [
        j
        for j in JobSubmissionClient(dashboard).list_jobs()
        if (j.metadata or {}).get("rayrelay.dev/name") == NAME
    ]
    return str(getattr(jobs[0].status, "value", jobs[0].status)) if jobs else ""


def test_head_stopped_is_ray_unavailable_in_the_status(tmp_path: Path) -> None:
    head = LocalRay(num_cpus=1)
    dashboard = head.start()
    try:
        backend = RayBackend(dashboard, python="python -c 'import time; time.sleep(900)'")
        settings = Settings(artifacts_uri=f"file://{tmp_path}", retry_base_delay_seconds=2.0)
        ctx = ReconcileContext(
            settings=settings, backends={"ray": backend}, store_for=lambda u, e: LocalStore()
        )
        obj: dict[str, Any] = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": NAME, "namespace": "faults", "uid": "uid-headless", "generation": 1},
            "spec": {
                "backend": "ray",
                "model": {"source": "bert-base-uncased"},
                "data": {"train": "s3://nowhere/train.jsonl", "validation": "s3://nowhere/val.jsonl"},
            },
        }

        def step() -> dict[str, Any]:
            result = run_pass("TrainingJob", obj, ctx)
            if result.patch:
                obj["status"] = result.status.wire()
            return dict(obj.get("status") or {})

        deadline = time.monotonic() + 240
        while True:
            before = step()
            if before.get("attempt") and job_status(dashboard) == "RUNNING":
                break
            assert time.monotonic() < deadline, f"the attempt never ran: {before}"
            time.sleep(0.5)
        before = step()
        stopped = time.monotonic()
        head.stop()
        stop_s = time.monotonic() - stopped
        while True:
            status = step()
            conds = {c["type"]: c for c in status.get("conditions") or []}
            reconciled = conds.get("Reconciled") or {}
            if reconciled.get("status") == "False":
                break
            assert time.monotonic() - stopped < 120, f"the status never said so: {status}"
            time.sleep(0.5)
        told_s = time.monotonic() - stopped
        for _ in range(4):  # later passes keep it so, and fail or submit nothing
            time.sleep(0.5)
            status = step()
    finally:
        head.stop()
    conds = {c["type"]: c for c in status.get("conditions") or []}
    reconciled = conds["Reconciled"]
    figures = {
        "status_reason": reconciled["reason"],
        "stop_to_status_seconds": round(told_s, 1),
        "head_stop_seconds": round(stop_s, 1),
        "phase_before": before.get("phase"),
        "phase_after": status.get("phase"),
        "attempts": status.get("attempt"),
    }
    record(
        "head_lost",
        figures=figures,
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_head_lost.py",
        notes="ray backend, a head of the test's own (LocalRay, 1 CPU) stopped with SIGTERM; the job's "
        "driver sleeps (the status is the case, not training); passes every 0.5 s. The time counts from "
        "the start of the head's stop, which waits for the head to exit.",
    )
    assert reconciled["reason"] == "RayUnavailable", reconciled
    assert dashboard in reconciled["message"], reconciled
    assert told_s - stop_s <= STATUS_WITHIN_S, figures
    assert status.get("phase") == before.get("phase") and status.get("attempt") == before.get("attempt"), (
        status
    )
