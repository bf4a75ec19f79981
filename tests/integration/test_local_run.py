"""`rayrelay run --once` end to end on the shared Ray head (``rayrelay_operator.local``).

A tiny quickstart-like file (the training fixtures' tiny BERT and data subset, 2
workers, one short epoch, one serving replica) runs as a subprocess, exactly as
users run it, against ``ray_cluster``'s dashboard. The first run trains, deploys,
prints the endpoint and a smoke answer; the second run of the same file reuses
the finished run: it says so and submits no Ray job.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.run_files import BIN, model_deployment_yaml, rayrelay_run, training_job_yaml


def write_file(folder: Path, name: str, model: str, train: str, validation: str) -> Path:
    path = folder / "tiny-quickstart.yaml"
    path.write_text(training_job_yaml(name, model, train, validation) + "---\n" + model_deployment_yaml(name))
    return path


def jobs_of(cluster, name: str) -> list:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    return [j for j in client.list_jobs() if (j.metadata or {}).get("rayrelay.dev/name") == name]


@pytest.mark.slow
def test_run_once_trains_serves_answers_then_reuses(
    ray_cluster, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    name = f"lr-{uuid.uuid4().hex[:6]}"
    path = write_file(tmp_path, name, tiny_model, *tiny_data)
    artifacts = tmp_path / "artifacts"

    first = rayrelay_run(path, artifacts, ray_cluster)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    url = f"http://127.0.0.1:{ray_cluster.serve_port}"
    assert f"{url}/v2/models/{name}/infer" in out
    assert f"{name}:predict" in out and "curl -s -X POST" in out
    assert "smoke request (v2 infer)" in out and "->" in out
    assert "manifest: file://" in out and "int8" in out
    assert "reusing" not in out
    assert len(jobs_of(ray_cluster, name)) == 1, "the first run submits exactly one training job"
    assert list(artifacts.rglob("manifest.json")), "the run published into --artifacts"

    started = time.time() * 1000
    second = rayrelay_run(path, artifacts, ray_cluster)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert f"TrainingJob/{name}: reusing the finished run" in out
    assert "smoke request (v2 infer)" in out
    new_jobs = [j for j in jobs_of(ray_cluster, name) if (j.start_time or 0) >= started]
    assert new_jobs == [], "a reused run must not submit a training job"


def test_invalid_file_prints_kind_name_path_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: rayrelay.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: t}\n"
        "spec: {model: {source: x}, data: {train: a, validation: b}, resources: {numWorkers: 0}}\n"
        "---\napiVersion: rayrelay.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec: {model: {trainingJobRef: {name: elsewhere}}}\n"
    )
    result = subprocess.run(
        [str(BIN / "rayrelay"), "run", "-f", str(bad), "--once"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "TrainingJob/t: spec.resources.numWorkers: must be at least 1" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    missing = subprocess.run(
        [str(BIN / "rayrelay"), "run", "-f", str(tmp_path / "nope.yaml")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "cannot read" in missing.stdout + missing.stderr
