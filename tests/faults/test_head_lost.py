"""The Ray head stopped under a running TrainingJob, and back (issue 14, case 2, the head half), ray backend.

First case: a Ray head of the test's own (``LocalRay``, what ``rayrelay run``
starts) runs one attempt of a TrainingJob whose Ray job is a driver that sleeps
(the case is about what the status says, not about training: the backend's
``python`` setting is the interpreter part of the entrypoint). The reconcile pass
(``run_pass``) runs on the real clock every half second. Once Ray reports the
job RUNNING, the head is stopped (``LocalRay.stop``: SIGTERM, and its process
group, the job's driver included, goes with it). What must hold: within a
stated time the status says so -- the ``Reconciled`` condition turns False with
reason ``RayUnavailable`` naming the dashboard's address -- while the phase and
the attempt stay what they were (the pass is retried with backoff; nothing is
failed or submitted while Ray does not answer). Figures: seconds from the stop
to the status, the reason, the phase kept, the attempts.

Second case (``head_back``): the same with real training, the run in S3, and
the head started again on the same ports (``LocalRay.restart``), as a restarted
head behind its address comes back, with none of the old head's jobs. The
attempt's job is then gone, and the pass submits it again; its worker group
resumes from the newest whole checkpoint in the store (see the test).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import LocalStore
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.localray import LocalRay
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.settings import Settings
from tests.faults import procs
from tests.faults.results import record
from tests.pipeline_fixtures import DATA, write_subset

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
NAME = "headless"
STATUS_WITHIN_S = 10.0


def job_status(dashboard: str, headers: dict[str, str]) -> str:
    from ray.job_submission import JobSubmissionClient

    jobs = [
        j
        for j in JobSubmissionClient(dashboard, headers=headers).list_jobs()
        if (j.metadata or {}).get("rayrelay.dev/name") == NAME
    ]
    return str(getattr(jobs[0].status, "value", jobs[0].status)) if jobs else ""


def test_head_stopped_is_ray_unavailable_in_the_status(tmp_path: Path) -> None:
    head = LocalRay(num_cpus=1)
    dashboard = head.start()
    try:
        backend = RayBackend(
            dashboard, python="python -c 'import time; time.sleep(900)'", auth_token=head.auth_token
        )
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
            if before.get("attempt") and job_status(dashboard, head.auth_headers()) == "RUNNING":
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


def newest_whole_checkpoint(store: Any, checkpoints_uri: str) -> int:
    """The step of the newest checkpoint folder in the store whose upload is whole, or 0.

    What a new worker group resumes from (``train_state.resume_folder``): Ray Train's
    registered one, or a newer whole upload it had not registered yet.
    """
    from rayrelay_workloads.train_state import CHECKPOINT_DIR, fetch_whole_checkpoint

    prefix = checkpoints_uri.rstrip("/") + "/"
    names = {u[len(prefix) :].split("/", 1)[0] for u in store.list(prefix) if u.startswith(prefix)}
    for name in sorted((n for n in names if CHECKPOINT_DIR.match(n)), reverse=True):
        with tempfile.TemporaryDirectory(prefix="rr-whole-") as tmp:
            if fetch_whole_checkpoint(store, prefix + name, Path(tmp)):
                return int(name.removeprefix("step-"))
    return 0


def train_drivers(name: str) -> list[procs.Proc]:
    """Live driver processes of this TrainingJob's Ray jobs, whichever head started them."""
    return [
        p for p in procs.live(procs.all_procs())
        if p.name.startswith("python") and "rayrelay_workloads.train_job" in p.cmdline and name in p.cmdline
    ]  # fmt: skip


def test_head_back_resubmits_and_resumes_from_the_newest_checkpoint(
    tmp_path: Path, tiny_model: str, s3_server: str, s3_bucket: str
) -> None:
    """The head stopped mid-training comes back on the same address (``LocalRay.restart``).

    The TrainingJob trains for real (the tiny model, 1 worker) with its run in S3
    (moto). Once a whole checkpoint is in the store, the head is stopped (its process
    group, the driver and the worker included, goes with it); a few passes later a
    new head starts on the same ports, with none of the old one's jobs. What must
    hold: the next pass that reaches Ray finds the attempt's job gone and submits it
    again (``Resubmitted``, same attempt, same submission id); the resubmitted job's
    worker group starts at the newest whole checkpoint in the store (its step
    record), not at 0; at no pass do two drivers of the TrainingJob run (by the
    process table, which sees both heads, and by the new head's job list); the job
    ends Succeeded with a manifest.
    """
    from ray.job_submission import JobSubmissionClient

    from rayrelay_core.runs import RunLayout
    from rayrelay_core.store import join, open_store

    name = f"headback-{int(time.time()) % 100000}"
    train = write_subset(DATA / "train.jsonl", tmp_path / "train.jsonl", 600)
    validation = write_subset(DATA / "validation.jsonl", tmp_path / "validation.jsonl", 64)
    head = LocalRay(num_cpus=2)
    dashboard = head.start()
    store = open_store(s3_bucket, s3_server)
    try:
        backend = RayBackend(dashboard, auth_token=head.auth_token)  # restart() keeps the token
        settings = Settings(
            artifacts_uri=f"{s3_bucket}/runs", s3_endpoint_url=s3_server, retry_base_delay_seconds=2.0
        )
        ctx = ReconcileContext(settings=settings, backends={"ray": backend}, store_for=lambda u, e: store)
        obj: dict[str, Any] = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": "faults", "uid": "uid-headback", "generation": 1},
            "spec": {
                "backend": "ray",
                "model": {"source": tiny_model},
                "data": {"train": str(train), "validation": str(validation)},
                "hyperparameters": {"epochs": 2, "batchSize": 16, "learningRate": 0.003, "maxSeqLength": 32},
                "resources": {"numWorkers": 1, "cpusPerWorker": 1},
                "checkpointing": {"everyNSteps": 5},
                "export": {"quantize": "none"},
                "failurePolicy": {"backoffLimit": 2},
            },
        }

        def ours() -> list[str]:
            try:
                jobs = JobSubmissionClient(dashboard, headers=head.auth_headers()).list_jobs()
            except Exception:  # the head is down or still starting
                return []
            return [
                j.submission_id or ""
                for j in jobs
                if (j.metadata or {}).get("rayrelay.dev/name") == name
                and str(getattr(j.status, "value", j.status)) in ("PENDING", "RUNNING")
            ]

        most_running = 0
        submission_before = ""
        stopped_at = back_at = resubmitted_at = resumed_at = None
        stopped_at_wall = 0.0
        refused_after_back: list[str] = []
        checkpoint_at_stop = checkpoint_at_back = 0
        unavailable_reason = ""
        layout: RunLayout | None = None
        deadline = time.monotonic() + 900
        while True:
            result = run_pass("TrainingJob", obj, ctx)
            if result.patch:
                obj["status"] = result.status.wire()
            status = obj.get("status") or {}
            running = ours()
            drivers = train_drivers(name)
            most_running = max(most_running, len(running), len(drivers))
            assert len(running) <= 1 and len(drivers) <= 1, (running, drivers)
            conds = {c["type"]: c for c in status.get("conditions") or []}
            if status.get("runId"):
                layout = RunLayout.for_job(settings.artifacts_uri or "", "faults", name, status["runId"])
            checkpoints = join(layout.checkpoints, "train") if layout else ""
            now = time.monotonic()
            if stopped_at is None and status.get("phase") == "Training" and layout is not None:
                checkpoint_at_stop = newest_whole_checkpoint(store, checkpoints)
                if checkpoint_at_stop:
                    submission_before = status["rayJob"]["jobId"]
                    stopped_at, stopped_at_wall = time.monotonic(), time.time()
                    head.stop()
                    continue
            elif stopped_at is not None and back_at is None:
                reconciled = conds.get("Reconciled") or {}
                if reconciled.get("status") == "False":
                    unavailable_reason = reconciled.get("reason", "")
                if now - stopped_at > 10 and unavailable_reason:
                    # Nothing more is written by the old head's run: what the new one must start at.
                    checkpoint_at_back = newest_whole_checkpoint(store, checkpoints)
                    head.restart()
                    assert head.dashboard_url == dashboard, (head.dashboard_url, dashboard)
                    back_at = time.monotonic()
            elif back_at is not None and resubmitted_at is None:
                if (conds.get("Running") or {}).get("reason") == "Resubmitted":
                    resubmitted_at = now
                elif result.problem:  # a pass the new head answered with an error
                    refused_after_back.append(result.problem[:200])
            if (
                resubmitted_at is not None
                and resumed_at is None
                and layout is not None
                and any(r["startTime"] > stopped_at_wall for r in step_records(store, layout))
            ):
                resumed_at = now
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            assert now < deadline, f"not finished after 900 s: {status}"
            time.sleep(0.5)
    finally:
        head.stop()
    assert stopped_at is not None, "the run finished before a whole checkpoint was seen"
    assert back_at is not None and resubmitted_at is not None, status
    assert layout is not None
    records = step_records(store, layout)
    after = [r for r in records if r["startTime"] > stopped_at_wall]
    figures = {
        "status_while_down": unavailable_reason,
        "checkpoint_in_store_at_stop": checkpoint_at_stop,
        "checkpoint_in_store_at_back": checkpoint_at_back,
        "resubmitted_started_at_step": after[0]["startedAtStep"] if after else None,
        "resumed_from": after[0]["resumedFrom"] if after else None,
        "head_down_seconds": round(back_at - stopped_at, 1),
        "head_back_to_resubmitted_seconds": round(resubmitted_at - back_at, 1),
        "passes_refused_after_back": len(refused_after_back),
        "first_refusal_after_back": refused_after_back[0] if refused_after_back else "",
        "head_back_to_first_step_record_seconds": round(resumed_at - back_at, 1) if resumed_at else None,
        "attempts": status.get("attempt"),
        "same_submission_id": status["rayJob"]["jobId"] == submission_before,
        "most_ray_jobs_running_at_once": most_running,
        "phase": status.get("phase"),
    }
    record(
        "head_back",
        figures=figures,
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_head_lost.py -k head_back",
        notes="ray backend, a head of the test's own (LocalRay, 2 CPUs) stopped with SIGTERM once a whole "
        "checkpoint was in the store, restarted on the same ports (LocalRay.restart) after 10 s of passes "
        "saying RayUnavailable; the tiny model, 1 worker, a checkpoint every 5 steps, the run in moto S3; "
        "passes every 0.5 s. The first step record counts from the pass that sees it (the worker group "
        "writes it after its restore).",
    )
    assert status["phase"] == "Succeeded", status
    assert unavailable_reason == "RayUnavailable", figures
    assert after and after[0]["startedAtStep"] == checkpoint_at_back >= checkpoint_at_stop > 0, (
        figures,
        records,
    )
    assert most_running == 1, figures


def step_records(store: Any, layout: Any) -> list[dict[str, Any]]:
    from rayrelay_core.store import join

    return sorted(
        (json.loads(store.read_bytes(u)) for u in store.list(join(layout.base, "steps"))),
        key=lambda r: r["startTime"],
    )
