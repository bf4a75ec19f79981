"""Retries that wait (issue 14, item 7) on the real ray backend and the shared Ray head.

Every attempt's Ray job really fails (its driver exits 1: the backend's python is
``python -c 'sys.exit(1)'``). The reconcile pass (``run_pass``, what the kopf
handlers and ``rayrelay run`` call) is driven on the real clock every half
second, its patch written back as a driver does. What must hold: the pass that
sees an attempt fail submits nothing; the next attempt is submitted only once
``status.nextAttemptTime`` has passed, which the Running condition also states;
the waits grow (base, 2 x base); Ray holds exactly one job per attempt; the limit
spent, the TrainingJob is Failed. Figures: the waits between a failure seen and
the next submission, against the schedule.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.conditions import find_condition
from rayrelay_core.store import LocalStore
from rayrelay_operator.backends.base import BackendUnavailable
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.settings import Settings
from tests.conftest import wait_until
from tests.faults.results import record

pytestmark = pytest.mark.slow
BASE_S = 3.0
LIMIT = 2


def test_failed_attempts_wait_their_backoff_on_real_ray(ray_cluster: Any, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    name = f"flaky-{int(time.time()) % 100000}"
    backend = RayBackend(
        ray_cluster.dashboard_url,
        serve_host="127.0.0.1",
        serve_port=ray_cluster.serve_port,
        python="python -c 'import sys; sys.exit(1)'",
    )
    settings = Settings(artifacts_uri=f"file://{tmp_path}", retry_base_delay_seconds=BASE_S)
    ctx = ReconcileContext(settings=settings, backends={"ray": backend}, store_for=lambda u, e: LocalStore())
    obj: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "faults", "uid": "uid-flaky", "generation": 1},
        "spec": {
            "backend": "ray",
            "model": {"source": "bert-base-uncased"},
            "data": {"train": "s3://nowhere/train.jsonl", "validation": "s3://nowhere/val.jsonl"},
            "failurePolicy": {"backoffLimit": LIMIT},
        },
    }
    submitted: dict[int, float] = {}  # attempt -> when its submission was first recorded
    failed_seen: dict[int, tuple[float, str]] = {}  # attempt -> (when, nextAttemptTime)
    deadline = time.monotonic() + 300
    while True:
        before = dict(obj.get("status") or {})
        result = run_pass("TrainingJob", obj, ctx)
        now = time.monotonic()
        if result.patch:
            obj["status"] = result.status.wire()
        status = obj.get("status") or {}
        attempt = int(status.get("attempt") or 0)
        if attempt and attempt not in submitted:
            submitted[attempt] = now
            if attempt > 1:
                assert attempt - 1 in failed_seen, "submitted without a failure seen first"
                assert before.get("nextAttemptTime"), "resubmitted in the pass that saw the failure"
        nxt = status.get("nextAttemptTime")
        if nxt and attempt not in failed_seen:
            failed_seen[attempt] = (now, nxt)
            running = find_condition(result.status.conditions, "Running")
            assert running is not None and f"attempt {attempt + 1} at {nxt}" in (running.message or "")
        if status.get("phase") == "Failed":
            break
        assert now < deadline, f"not Failed after 300 s: {status}"
        time.sleep(0.5)

    failed = find_condition(result.status.conditions, "Failed")
    assert failed is not None and (failed.message or "").startswith(f"backoffLimit {LIMIT} reached"), failed
    assert sorted(submitted) == [1, 2, 3]
    waits = []
    for attempt in (1, 2):
        seen, at = failed_seen[attempt]
        waits.append(round(submitted[attempt + 1] - seen, 2))
        scheduled = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
        # Submitted no earlier than the recorded time (1 s: RFC 3339 has whole seconds).
        assert time.time() - (time.monotonic() - submitted[attempt + 1]) >= scheduled - 1.0
    exact = [BASE_S, 2 * BASE_S]
    assert waits[0] >= 0.8 * exact[0] - 1 and waits[1] >= 0.8 * exact[1] - 1, waits
    jobs = [
        j
        for j in JobSubmissionClient(ray_cluster.dashboard_url).list_jobs()
        if (j.metadata or {}).get("rayrelay.dev/name") == name
    ]
    ids = sorted(j.submission_id for j in jobs)
    assert len(ids) == 3 and len(set(ids)) == 3, ids
    record(
        "retry_backoff",
        figures={
            "attempts": 3,
            "ray_jobs": len(ids),
            "waits_seconds": waits,
            "schedule_seconds": exact,
            "same_pass_resubmissions": 0,
        },
        command="pytest tests/faults/test_retry_backoff.py",
        notes=f"retry base {BASE_S:.0f} s (RAYRELAY_RETRY_BASE_DELAY_SECONDS), jitter +-20 %, passes every 0.5 s.",
    )
    # Ray deletes ended jobs only a few seconds after they end: call again until it is done.
    wait_until(lambda: _deleted(backend, name), 60, interval=1, what="the attempts' Ray jobs deleted")


def _deleted(backend: RayBackend, name: str) -> bool:
    try:
        backend.delete_training("faults", name)
    except BackendUnavailable:
        return False
    return True
