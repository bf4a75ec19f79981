"""Smoke test of the control-plane benchmark: ``python -m bench.control_plane --quick`` for real.

50 TrainingJobs through a real kube-apiserver (its own, with an audit log), the
shipped operator as the chart runs it, and moto's S3 -- the very code that
writes ``bench/results/control_plane.json`` -- into a temporary results folder.
It checks what must hold at any load: every TrainingJob got exactly one RayJob
and one ``submit`` (the operator's creates, counted in the audit log), every
one was reconciled, the requests were counted, and the operator stayed under
the memory goal; the store's own log saw one read per TrainingJob (its manifest);
no TrainingJob got a metadata PATCH (no finalizer) and the namespace one NetworkPolicy;
once every RayJob runs and nothing changes, the operator writes nothing and reads at
most one store document per TrainingJob per minute (audit log, store log); and the
operator started on 50 TrainingJobs that existed already reconciled each with one
RayJob. Latencies are reported by the benchmark, not asserted: this
machine is shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.conftest import NO_ASSETS, assets_dir
from tests.cluster.controlplane import REPO


def test_quick_control_plane_benchmark(tmp_path: Path) -> None:
    assets = assets_dir()
    if assets is None:
        pytest.skip(NO_ASSETS)
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path), "KUBEBUILDER_ASSETS": str(assets)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.control_plane", "--quick", "--timeout", "240"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads((tmp_path / "control_plane.json").read_text())
    (res,) = doc["results"]
    assert res["resources"] == 50
    assert res["rayjobs_seen"] == 50 and res["reconciled"] == 50, res
    assert res["submit_calls"] == 50 and res["submit_calls_by_code"] == {"201": 50}, res
    assert res["rayjobs_per_tj_max"] == 1
    assert res["create_to_rayjob_p50_s"] > 0 and res["all_reconciled_s"] is not None
    # Counted from the audit log: at least the RayJob create and the status patch of each.
    assert res["api_requests_by_kind"].get("create rayjobs") == 50, res["api_requests_by_kind"]
    assert 2 <= res["api_requests_per_tj"] < 20, res["api_requests_by_kind"]
    # No finalizer or other metadata PATCH on a kuberay TrainingJob, and one NetworkPolicy for the
    # namespace, not one per RayJob (issue 24).
    assert "patch trainingjobs" not in res["api_requests_by_kind"], res["api_requests_by_kind"]
    assert res["api_requests_by_kind"].get("create networkpolicies", 0) <= 1, res["api_requests_by_kind"]
    # Running and nothing changing: no API write, at most one store request per TrainingJob a minute.
    running = res["running_steady"]
    assert running["training"] == 50 and running["api_writes"] == 0, running
    assert running["store_requests_per_tj_per_minute"] <= 1.0, running
    assert res["operator_peak_rss_mib"] <= 250, res
    # KubeRay's own controller, alone on the same API server: the same 50 RayJobs into RayClusters.
    kuberay = res["kuberay"]
    assert kuberay is not None and kuberay["rayjobs"] == 50, kuberay
    assert kuberay["rayclusters_seen"] == 50 and kuberay["all_rayclusters_s"] > 0, kuberay
    assert kuberay["floor_create_s"] > 0 and res["all_reconciled_vs_kuberay"] > 0, res
    # The store's own request log: the first pass of each reads its run's manifest, nothing more.
    assert res["store_requests_by_method"] == {"GET": 50}, res["store_requests_by_method"]
    # The operator's ceiling: started on 50 TrainingJobs that exist already, one RayJob each.
    ceiling = res["ceiling"]
    assert ceiling["reconciled"] == 50 and ceiling["all_reconciled_s"] > 0, ceiling
    assert ceiling["submit_calls_per_tj"] == 1.0 and ceiling["rayjobs_per_tj_max"] == 1, ceiling
    assert res["ceiling_vs_floor"] > 0, res
