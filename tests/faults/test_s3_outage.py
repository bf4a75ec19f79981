"""S3 down during training (issue 14, case 4): moto's real S3 server stopped, then back.

The whole pipeline (``run_pipeline``: what a TrainingJob's driver runs) trains
the tiny BERT on 2 Ray Train workers of the shared real Ray head, with its run
folder -- checkpoints (pyarrow), progress, step records, the published files and
the manifest -- in an S3 bucket of a dedicated moto server. Once training has
passed a checkpoint, the server is stopped for ``OUTAGE_S`` seconds and started
again on the same port. An attempt that fails anyway with a retryable reason is
followed by the next attempt of the same run, as the operator does (after its
backoff). What must hold: the run completes within its first attempt and worker
group (every storage call of Ray Train -- a worker's checkpoint upload, the
controller's checkpoint snapshot -- waits S3 out: ``holdfs.py``); its manifest is
there and every file it lists reads back with the listed sha256 (nothing
half-published). Figures: the outage, the attempts and worker groups it took (a
group restarted by ``FailureConfig`` shows as another step record), the wall time.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.runs import ProgressDoc, RunLayout, read_doc, read_manifest
from rayrelay_core.store import join, open_store
from tests.faults.results import record
from tests.faults.s3 import RestartableS3
from tests.pipeline_fixtures import tiny_job, tiny_spec

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
OUTAGE_S = 20.0


def held_in_ray_logs(temp_dir: str) -> dict[str, int]:
    """How many storage calls each Ray process held through the outage (holdfs / storewait warnings).

    Ray's worker processes log to ``session_latest/logs/worker-*.err``; an actor's file names
    it (``:actor_name:TrainController``, ``:actor_name:RayTrainWorker``).
    """
    counts: dict[str, int] = {}
    for path in (Path(temp_dir) / "session_latest" / "logs").glob("worker-*.err"):
        text = path.read_text(errors="replace")
        held = sum(
            1 for line in text.splitlines() if "[rayrelay] warning:" in line and "trying again" in line
        )
        if held:
            names = [
                ln.split(":actor_name:", 1)[1].strip() for ln in text.splitlines() if ":actor_name:" in ln
            ]
            role = names[-1] if names else "task"
            counts[role] = counts.get(role, 0) + held
    return counts


def test_training_survives_an_s3_outage_and_publishes_whole(
    ray_session: Any, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    import boto3

    from rayrelay_workloads.pipeline import run_pipeline

    s3 = RestartableS3()
    s3.start()
    try:
        boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket="outage")
        spec = tiny_spec(
            tiny_model, *tiny_data, hyperparameters={"epochs": 3}, checkpointing={"everyNSteps": 4},
            failurePolicy={"maxFailures": 3}, export={"quantize": "none"},
        )  # fmt: skip
        job = tiny_job(spec, "s3://outage/runs", name="s3-outage", endpoint_url=s3.endpoint)
        store = open_store(job.run_uri, s3.endpoint)
        outcome: dict[str, Any] = {}

        def run() -> None:
            from rayrelay_workloads.pipeline import PipelineError

            for attempt in (1, 2, 3):
                outcome["attempts"] = attempt
                try:
                    outcome["manifest"] = run_pipeline(
                        job.model_copy(update={"attempt": attempt}),
                        scratch_dir=str(tmp_path / f"scratch-{attempt}"),
                        bench_repeats=1,
                    )
                    return
                except PipelineError as exc:
                    outcome.setdefault("failures", []).append(f"{exc.reason}: {exc.message}")
                    if not exc.retryable:
                        outcome["error"] = exc
                        return
                    time.sleep(5)  # the operator's first backoff between attempts (base 5 s)
                except BaseException as exc:  # reported by the main thread
                    outcome["error"] = exc
                    return
            outcome["error"] = RuntimeError(f"3 attempts failed: {outcome.get('failures')}")

        t0 = time.monotonic()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 600
        while True:
            assert thread.is_alive(), f"the run ended before the outage: {outcome}"
            assert time.monotonic() < deadline, "training never passed a checkpoint"
            doc = read_doc(store, RunLayout(job.run_uri).progress, ProgressDoc)
            if doc is not None and doc.last_checkpoint is not None:
                break
            time.sleep(0.3)
        stage = doc.stage
        s3.stop()
        time.sleep(OUTAGE_S)  # the fault's length, not a synchronisation
        s3.start()
        thread.join(timeout=1200)
        wall_s = time.monotonic() - t0
        assert not thread.is_alive(), "the run did not finish after S3 came back"
        assert "error" not in outcome, f"the run failed: {outcome['error']!r} {outcome.get('failures')}"

        manifest, _digest = read_manifest(store, RunLayout(job.run_uri).manifest)
        for entry in manifest.files:
            data = store.read_bytes(join(job.run_uri, entry.path))
            assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.path
        groups = list(store.list(join(job.run_uri, "steps")))
        held = held_in_ray_logs(ray_session.temp_dir)
        # Ray Train's storage calls wait until S3 answers again (holdfs.py, up to
        # RAYRELAY_STORE_WAIT_SECONDS): the outage costs neither an attempt nor a worker-group restart.
        assert outcome["attempts"] == 1 and not outcome.get("failures"), outcome.get("failures")
        assert len(groups) == 1, groups
        record(
            "s3_outage",
            figures={
                "outage_seconds": OUTAGE_S,
                "outage_during": f"{stage} (after a checkpoint)",
                "run_completed": True,
                "attempts": outcome["attempts"],
                "failed_attempts_reasons": outcome.get("failures", []),
                "manifest_files_verified": len(manifest.files),
                "worker_groups": len(groups),
                "storage_calls_held_by_ray_process": held,
                "run_wall_seconds": round(wall_s, 1),
            },
            command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_s3_outage.py",
            notes="moto S3 server stopped (port refuses connections) then restarted on the same port; "
            "2 Ray Train workers, tiny BERT; an outage during publish and during a replica's start: "
            "the cases s3_outage_publish and s3_outage_replica.",
        )
    finally:
        s3.stop()
