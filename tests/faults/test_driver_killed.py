"""The job's driver SIGKILLed mid-training (issue 14, case 2, the driver half), ray backend.

A TrainingJob runs for real on the shared Ray head: the reconcile pass
(``run_pass``, what the kopf handlers and ``rayrelay run`` call) on the real
clock every half second with the real ``ray`` backend, the real pipeline as the
Ray job, a ``file://`` store. Once Ray Train has registered a checkpoint (its
checkpoint manager's snapshot names one), the job's driver process (its pid from
Ray's job details) gets SIGKILL. (Killed after rank 0 reported a checkpoint but
before the controller registered it, the next attempt starts from scratch: seen
here once, not measured as a rate.) What must hold: the
status says the attempt failed and why (the Running condition's reason) within
a stated time; the next attempt waits its backoff, then resumes from the
checkpoint (its step record starts there, not at 0); at no pass do two Ray jobs
of the TrainingJob run side by side; the job ends Succeeded with a manifest.
Figures: seconds from the kill to the status saying so, the reason, the
checkpoint resumed from, the attempts, the longest overlap (0).

The other half of the case -- the Ray head itself stopped (``RayUnavailable``),
and back on its address -- is ``tests/faults/test_head_lost.py``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.conditions import find_condition
from rayrelay_core.runs import ProgressDoc, RunLayout, read_doc
from rayrelay_core.store import LocalStore, join
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.settings import Settings
from tests.faults import procs
from tests.faults.results import record
from tests.pipeline_fixtures import DATA, write_subset

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
NS = "faults"


def registered_checkpoint(layout: RunLayout) -> int:
    """The step of the latest checkpoint Ray Train has registered (its manager's snapshot), or 0.

    Rank 0 reports a checkpoint; Train V2's controller registers it when it next polls the
    workers and then writes this snapshot, which is what a new attempt restores from. A
    driver killed between the two takes the reported one with it.
    """
    path = Path(layout.checkpoints.removeprefix("file://")) / "train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(path.read_text()).get("latest_checkpoint_result") or {}
    except (OSError, ValueError):
        return 0
    return int((latest.get("metrics") or {}).get("step") or 0)


def test_driver_sigkilled_fails_the_attempt_and_the_next_resumes(
    ray_cluster: Any, tiny_model: str, tmp_path: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    name = f"driver-{int(time.time()) % 100000}"
    train = write_subset(DATA / "train.jsonl", tmp_path / "train.jsonl", 600)
    validation = write_subset(DATA / "validation.jsonl", tmp_path / "validation.jsonl", 64)
    backend = RayBackend(ray_cluster.dashboard_url, serve_host="127.0.0.1", serve_port=ray_cluster.serve_port)
    settings = Settings(artifacts_uri=f"file://{tmp_path}/artifacts", retry_base_delay_seconds=2.0)
    ctx = ReconcileContext(settings=settings, backends={"ray": backend}, store_for=lambda u, e: LocalStore())
    obj: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NS, "uid": "uid-driver", "generation": 1},
        "spec": {
            "backend": "ray",
            "model": {"source": tiny_model},
            "data": {"train": str(train), "validation": str(validation)},
            "hyperparameters": {"epochs": 2, "batchSize": 16, "learningRate": 0.003, "maxSeqLength": 32},
            "resources": {"numWorkers": 2, "cpusPerWorker": 1},
            "checkpointing": {"everyNSteps": 5},
            "export": {"quantize": "none"},
            "failurePolicy": {"backoffLimit": 2},
        },
    }

    def ours() -> list[Any]:
        return [j for j in client.list_jobs() if (j.metadata or {}).get("rayrelay.dev/name") == name]

    killed_at: float | None = None
    said_at: float | None = None
    reason = ""
    checkpoint_step = 0
    reported_step = 0
    most_running = 0
    deadline = time.monotonic() + 1200
    while True:
        result = run_pass("TrainingJob", obj, ctx)
        if result.patch:
            obj["status"] = result.status.wire()
        status = obj.get("status") or {}
        running = [j for j in ours() if str(getattr(j.status, "value", j.status)) in ("PENDING", "RUNNING")]
        most_running = max(most_running, len(running))
        assert len(running) <= 1, [j.submission_id for j in running]
        layout = RunLayout.for_job(settings.artifacts_uri or "", NS, name, status["runId"])
        if killed_at is None and status.get("phase") == "Training":
            doc = read_doc(LocalStore(), layout.progress, ProgressDoc)
            registered = registered_checkpoint(layout)
            if doc is not None and doc.last_checkpoint is not None:
                reported_step = doc.last_checkpoint.step
            if registered:
                checkpoint_step = registered
                info = client.get_job_info(status["rayJob"]["jobId"])
                pid = info.driver_info.pid if info.driver_info else None
                if not pid:  # not registered with Ray yet: the entrypoint's process itself
                    (driver,) = [
                        p for p in procs.live(procs.all_procs())
                        if p.name.startswith("python") and "rayrelay_workloads.train_job" in p.cmdline
                        and name in p.cmdline
                    ]  # fmt: skip
                    pid = driver.pid
                os.kill(int(pid), signal.SIGKILL)
                killed_at = time.monotonic()
        if killed_at is not None and said_at is None and status.get("nextAttemptTime"):
            said_at = time.monotonic()
            cond = find_condition(result.status.conditions, "Running")
            assert cond is not None and cond.status == "False", cond
            reason = cond.reason
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        assert time.monotonic() < deadline, f"not finished after 1200 s: {status}"
        time.sleep(0.5)

    assert killed_at is not None, "the run finished before a checkpoint was seen"
    assert status["phase"] == "Succeeded", status
    assert said_at is not None and status["attempt"] >= 2, status
    store = LocalStore()
    records = sorted(
        (json.loads(store.read_bytes(u)) for u in store.list(join(layout.base, "steps"))),
        key=lambda r: r["startTime"],
    )
    second = [r for r in records if r["attempt"] == 2]
    assert second and second[0]["startedAtStep"] >= checkpoint_step > 0, records
    record(
        "driver_lost",
        figures={
            "kill_to_status_seconds": round(said_at - killed_at, 1),
            "status_reason": reason,
            "checkpoint_registered_at_kill": checkpoint_step,
            "checkpoint_reported_at_kill": reported_step,
            "attempt_2_started_at_step": second[0]["startedAtStep"],
            "attempts": status["attempt"],
            "most_ray_jobs_running_at_once": most_running,
        },
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_driver_killed.py",
        notes="ray backend, shared Ray head, passes every 0.5 s, retry base 2 s. The head itself stopped "
        "and back: cases head_lost and head_back.",
    )
