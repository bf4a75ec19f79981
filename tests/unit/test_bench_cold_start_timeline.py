"""``bench.autoscaling.serve_timeline`` / ``replica_record``: Serve's part of a cold start from
the head's own logs. The log lines here are copied in form from a real head's session logs
(Ray 2.58: serve/controller_*.log, raylet.out, python-core-worker-*.log, the replica's record
line); they stand in for a head, which the benchmark itself starts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import rayrelay_core.serveconfig as serveconfig
from bench.autoscaling import NAME, replica_record, serve_timeline
from bench.common import use_serve_default_intervals
from rayrelay_core.api import ModelDeploymentSpec


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f",{int(round(at % 1 * 1000)):03d}"


def head_logs(tmp_path: Path, sent: float, old_worker_log: bool = False) -> Path:
    logs = tmp_path / "logs"
    (logs / "serve").mkdir(parents=True)
    (logs / "old").mkdir()
    app = f"deployment='ModelServer', app='{NAME}'"
    (logs / "serve" / "controller_7.log").write_text(
        "\n".join(
            [
                f"INFO {stamp(sent - 30)} controller 7 -- Starting Replica(id='aaaa', {app}).",
                f"INFO {stamp(sent + 0.5)} controller 7 -- Upscaling Deployment(name='ModelServer', "
                f"app='{NAME}') from 0 to 1 replicas. Current ongoing requests: 1.00",
                f"INFO {stamp(sent + 0.6)} controller 7 -- Starting Replica(id='bbbb', {app}).",
                f"INFO {stamp(sent + 3.0)} controller 7 -- Replica(id='bbbb', {app}) started successfully "
                "on node 'n' after 2.4s (PID: 4242). Replica constructor took 0.5s.",
            ]
        )
        + "\n"
    )
    (logs / "raylet.out").write_text(
        f"[{stamp(sent - 30)} I 1 1] (raylet) worker_pool.cc:531: Started worker process with pid 4241 worker_id=x\n"
        f"[{stamp(sent + 0.7)} I 1 1] (raylet) worker_pool.cc:531: Started worker process with pid 4242 worker_id=y\n"
    )
    worker = logs / ("old" if old_worker_log else ".") / "python-core-worker-y_4242.log"
    worker.write_text(
        f"[{stamp(sent + 1.2)} I 4242 4242] core_worker_process.cc:868: Constructing CoreWorkerProcess. pid: 4242\n"
        f"[{stamp(sent + 1.3)} I 4242 4242] core_worker.cc:3112: Creating actor actor_id=z\n"
    )
    (logs / "worker-y-01000000-4242.err").write_text(
        f"INFO {stamp(sent + 2.5)} {NAME}_ModelServer bbbb -- {NAME} cold start: moduleImportedAt 1.000, "
        f"initStartedAt {sent + 2.0:.3f}, manifestS 0.200, initS 0.5000, downloadedBytes 0, readyAt {sent + 2.5:.3f}\n"
    )
    return logs


@pytest.mark.parametrize("old_worker_log", [False, True])
def test_each_step_from_the_processes_own_stamps(tmp_path: Path, old_worker_log: bool) -> None:
    sent = time.time() - 60
    logs = head_logs(tmp_path, sent, old_worker_log)
    record = replica_record(logs, sent, timeout=1)
    assert record["initStartedAt"] == pytest.approx(sent + 2.0, abs=1e-3) and record["downloadedBytes"] == 0
    timeline = serve_timeline(logs, sent, record, answered=sent + 3.2)
    assert timeline["new_worker_process"] is True
    expected = {
        "sent->decision": 0.5,
        "decision->replica_started": 0.1,
        "replica_started->worker_spawned": 0.1,
        "worker_spawned->core_worker_up": 0.5,
        "core_worker_up->actor_task_started": 0.1,
        "actor_task_started->constructor_started": 0.7,
        "constructor_started->constructor_done": 0.5,
        "constructor_done->controller_saw_running": 0.5,
        "controller_saw_running->answered": 0.2,
    }
    assert timeline["steps"].keys() == expected.keys()
    for key, value in expected.items():
        assert timeline["steps"][key] == pytest.approx(value, abs=0.003), key


def test_a_replica_that_started_before_the_request_is_not_this_cold_start(tmp_path: Path) -> None:
    sent = time.time() - 60
    logs = head_logs(tmp_path, sent)
    with pytest.raises(TimeoutError):
        replica_record(logs, sent + 10, timeout=0.1)


def test_the_baseline_process_runs_with_serves_own_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--serve-default-intervals`` (``bench.common.use_serve_default_intervals``): the head
    this process starts inherits Serve's record factor, and a scale-to-zero deployment's
    Serve config pushes every quarter window, as before rayrelay's settings."""
    for key in serveconfig.SERVE_AUTOSCALING_ENV:
        monkeypatch.setenv(key, serveconfig.SERVE_AUTOSCALING_ENV[key])  # undone after the test
    monkeypatch.setattr(serveconfig, "metrics_push_interval", serveconfig.metrics_push_interval)
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"manifestUri": "s3://bucket/m/manifest.json"},
            "autoscaling": {"minReplicas": 0, "metricsWindowSeconds": 8},
        }
    )
    assert (
        serveconfig.autoscaling_config(spec)["metrics_interval_s"]
        == serveconfig.SCALE_FROM_ZERO_PUSH_INTERVAL_S
    )
    use_serve_default_intervals()
    assert all(os.environ[key] == "0.2" for key in serveconfig.SERVE_AUTOSCALING_ENV)
    assert serveconfig.autoscaling_config(spec)["metrics_interval_s"] == 2.0
