"""A real Prometheus scrapes the shipped operator on a real API server and runs the chart's alerts.

The operator is ``rayrelay operator`` started as the installed chart runs it
(``chart_operator``); Prometheus 2.42 (Debian's package, hack/install_prometheus.py) scrapes
its ``/metrics`` on loopback every second with the target labels the chart's ServiceMonitor
gives (``namespace`` = the release's namespace, ``pod``) and evaluates the PrometheusRule that
``helm template`` renders for that release. Through Prometheus' HTTP API:

- every series an alert expression or an operator panel of the dashboard selects returns
  data, and every full expression evaluates without error;
- one TrainingJob is driven to Failed (its RayJob's status played to FAILED, backoffLimit 0,
  as tests/cluster/test_operator.py plays KubeRay) and ``RayrelayTrainingJobFailed`` fires
  for it, with its namespace and name; the operator leads (``rayrelay_operator_leader`` 1)
  and ``RayrelayOperatorNoLeader`` stays silent; once the operator is stopped it goes pending.

The endpoint's half (a real Serve endpoint scraped) is tests/integration/test_prometheus_endpoint.py.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import ProgressDoc, RunLayout, run_id_for
from rayrelay_core.store import S3Settings, S3Store
from tests.cluster.chart_operator import (
    FAST_TIMERS,
    Operators,
    assert_kept,
    create_s3_secret,
    install_chart,
    rayjobs_of,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import monitoring_checks as mc

PROMETHEUS, _, MISSING = mc.prometheus_binaries()
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)
# The operator's series: the panels whose queries read the operator (not the endpoints').
OPERATOR_SERIES = re.compile(
    r"rayrelay_(resources|resource_phase|trainingjob_\w+|reconcile\w*|operator_leader)\b"
)


def metrics_port(pid: int) -> int:
    """The operator process's RAYRELAY_METRICS_PORT, read from its real environment."""
    env = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item
    )
    return int(env["RAYRELAY_METRICS_PORT"])


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "prometheus"


def test_prometheus_scrapes_the_operator_and_alerts_on_a_failed_trainingjob(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
    prometheus_dir: Path,
) -> None:
    plane = crds_installed
    store_uri = f"{s3_bucket}/runs"
    create_s3_secret(plane, release_namespace)
    release = install_chart(plane, release_namespace, {**FAST_TIMERS, **s3_values(s3_server, store_uri)})
    op = operators.start(release)
    op.wait_ready()
    assert op.proc is not None
    port = metrics_port(op.proc.pid)

    # The rules exactly as the chart renders them for this release (noLeaderMinutes and
    # notReadyMinutes 1, the least: those alerts go pending within the test).
    values = prometheus_dir.parent / "monitoring-values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "metrics": {
                    "prometheusRule": {"enabled": True, "noLeaderMinutes": 1, "notReadyMinutes": 1},
                    "dashboard": {"enabled": True},
                }
            }
        )
    )
    rendered = mc.render_for(release_namespace, values)
    rules, dash = mc.rule_groups(rendered), mc.dashboard(rendered)
    target = {
        "job_name": "rayrelay-operator",
        "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": release_namespace, "pod": op.pod_name}}
        ],
    }
    prom = mc.Prometheus(prometheus_dir, [target], rules)
    try:
        wait_for("the operator target up", prom.targets_up, 30)

        # A TrainingJob that fails at its first attempt, with some progress before.
        name = "fails"
        tj = trainingjob(name, gpus=0, workers=1)
        tj["spec"]["failurePolicy"] = {"maxFailures": 0, "backoffLimit": 0}
        plane.apply(tj, "-n", namespace)
        (rj,) = wait_for("its RayJob", lambda: rayjobs_of(plane, namespace, name), 90)
        stored = plane.get("trainingjob", name, "-n", namespace)
        run_id = run_id_for(TrainingJobSpec.model_validate(stored["spec"]))
        layout = RunLayout.for_job(store_uri, namespace, name, run_id)
        store = S3Store(S3Settings(endpoint_url=s3_server))
        store.write_bytes(
            layout.progress,
            ProgressDoc(stage="Training", step=25, total_steps=100, epoch=1.0, loss=0.5).to_json().encode(),
        )
        status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}

        def set_rayjob_status(status: dict[str, Any]) -> None:  # what KubeRay would write
            plane.kubectl(
                "patch",
                "rayjob",
                rj["metadata"]["name"],
                "-n",
                namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": status}),
            )

        set_rayjob_status(status)
        wait_for(
            "progress 0.25 in Prometheus",
            lambda: prom.query(f'rayrelay_trainingjob_progress_ratio{{resource_name="{name}"}} == 0.25'),
            90,
        )
        failed = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "message": "driver exited with 1"}
        set_rayjob_status(failed)

        def firing() -> dict[str, Any] | None:
            for a in prom.alerts():
                if a["labels"]["alertname"] == "RayrelayTrainingJobFailed" and a["state"] == "firing":
                    return a
            return None

        alert = wait_for("RayrelayTrainingJobFailed firing", firing, 120)
        assert (alert["labels"]["resource_namespace"], alert["labels"]["resource_name"]) == (namespace, name)
        assert name in alert["annotations"]["summary"]

        # A ModelDeployment of that failed job never gets a model: not Ready, and its alert
        # goes pending (firing after notReadyMinutes).
        md = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "waits"},
            "spec": {"model": {"trainingJobRef": {"name": name}}},
        }
        plane.apply(md, "-n", namespace)

        def not_ready() -> dict[str, Any] | None:
            for a in prom.alerts():
                if a["labels"]["alertname"] == "RayrelayModelDeploymentNotReady":
                    return a
            return None

        alert = wait_for("RayrelayModelDeploymentNotReady pending", not_ready, 90)
        assert alert["labels"]["resource_name"] == "waits" and alert["state"] in ("pending", "firing")

        # Every series the alerts and the operator's panels select is there, and every full
        # expression evaluates (most return nothing while all is well; that is their point).
        exprs = [r["expr"] for g in rules for r in g["rules"]]
        panels = [q for _, q in mc.dashboard_queries(dash) if OPERATOR_SERIES.search(q)]
        assert len(panels) >= 7
        empty = []
        for expr in exprs + panels:
            prom.query(expr)
            for sel in mc.selectors(expr):
                if sel.startswith(
                    (
                        "rayrelay_request",
                        "rayrelay_replicas",
                        "rayrelay_cold",
                        "rayrelay_held",
                        "rayrelay_batch",
                        "rayrelay_queue",
                        "rayrelay_modeldeployment",
                    )
                ):
                    continue  # the endpoint's and the ModelDeployments' series: the endpoint test
                if not prom.query(sel):
                    empty.append(sel)
        assert empty == []
        for q in panels:
            if "histogram_quantile" not in q:
                assert prom.query(q), q
        leader = prom.query(f'rayrelay_operator_leader{{namespace="{release_namespace}"}}')
        assert [s["value"][1] for s in leader] == ["1"]
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "RayrelayOperatorNoLeader"]

        # The operator gone: no leader, and the alert goes pending (firing after noLeaderMinutes).
        op.stop()

        def no_leader() -> dict[str, Any] | None:
            for a in prom.alerts():
                if a["labels"]["alertname"] == "RayrelayOperatorNoLeader":
                    return a
            return None

        started = time.monotonic()
        alert = wait_for("RayrelayOperatorNoLeader pending", no_leader, 60)
        assert alert["state"] in ("pending", "firing"), alert
        assert time.monotonic() - started < 60
    finally:
        prom.stop()


MONITORING_CRDS = mc.ROOT / "tests" / "data" / "prometheus-operator-crds"


def test_monitoring_objects_accepted_by_prometheus_operators_crds(
    control_plane: ControlPlane, release_namespace: str
) -> None:
    """The chart's ServiceMonitor, PodMonitor and PrometheusRule (tests/data/chart-values/
    monitoring.yaml) applied with kubectl to the real API server with prometheus-operator
    v0.93.0's CRDs installed: accepted (kubectl's strict field validation refuses a field
    the CRDs do not know) and stored with every field the chart wrote (nothing pruned or changed). Needs no Prometheus."""
    plane = control_plane
    plane.kubectl("apply", "--server-side", "-f", str(MONITORING_CRDS))
    plane.wait_crds_established(
        [
            "servicemonitors.monitoring.coreos.com",
            "podmonitors.monitoring.coreos.com",
            "prometheusrules.monitoring.coreos.com",
        ]
    )
    rendered = mc.render_for(
        release_namespace, mc.ROOT / "tests" / "data" / "chart-values" / "monitoring.yaml"
    )
    objs = [o for o in rendered if o["kind"] in ("ServiceMonitor", "PodMonitor", "PrometheusRule")]
    assert sorted(o["kind"] for o in objs) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    plane.apply(objs)
    for obj in objs:
        stored = plane.get(obj["kind"].lower(), obj["metadata"]["name"], "-n", release_namespace)
        assert_kept(obj["spec"], stored["spec"], obj["kind"])  # the CRDs' defaults may add, not drop
    # The check can fail: a field PodMonitor does not have is refused.
    (pm,) = [o for o in objs if o["kind"] == "PodMonitor"]
    bad = {**pm, "spec": {**pm["spec"], "podMetricsEndpoint": []}}
    proc = plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(bad), check=False)
    assert proc.returncode != 0 and "podMetricsEndpoint" in proc.stderr, proc.stderr


def test_leader_metric_follows_real_peering(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
    prometheus_dir: Path,
) -> None:
    """Two replicas as the chart runs them (``replicaCount: 2``, kopf peering), both scraped:
    exactly one reports ``rayrelay_operator_leader 1`` (the one kopf resumes; the other starts
    paused and stays so), ``sum`` is 1 so neither leadership alert holds; the leader
    SIGKILLed, the standby reports 1 once kopf resumes it (after the peering lifetime)."""
    plane = crds_installed
    create_s3_secret(plane, release_namespace)
    values = {
        **s3_values(s3_server, f"{s3_bucket}/runs"),
        **FAST_TIMERS,
        "replicaCount": 2,
        # A peering object of its own: the ClusterKopfPeering is cluster-scoped and owned by
        # the release that made it, and tests/cluster/test_operator_ha.py's release (same
        # control plane) keeps the chart's default name.
        "leaderElection": {"peeringName": f"rayrelay-{release_namespace[-6:]}"},
    }
    release = install_chart(plane, release_namespace, values)
    first, second = operators.start(release, "7c9d4"), operators.start(release, "x2k8q")
    first.wait_ready()
    second.wait_ready()
    assert first.proc is not None and second.proc is not None
    pods = {first.pod_name: first, second.pod_name: second}
    targets = [
        {
            "job_name": f"op-{i}",
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{metrics_port(op.proc.pid)}"],  # type: ignore[union-attr]
                    "labels": {"namespace": release_namespace, "pod": op.pod_name},
                }
            ],
        }
        for i, op in enumerate((first, second))
    ]
    prom = mc.Prometheus(prometheus_dir, targets, [])
    selector = f'rayrelay_operator_leader{{namespace="{release_namespace}"}}'

    def leaders() -> dict[str, str] | None:
        series = prom.query(selector)
        got = {s["metric"]["pod"]: s["value"][1] for s in series}
        return got if len(got) == 2 and sorted(got.values()) == ["0", "1"] else None

    try:
        wait_for("both targets up", prom.targets_up, 30)
        state = wait_for("one leader and one standby", leaders, 90)
        leader = pods[next(p for p, v in state.items() if v == "1")]
        standby = pods[next(p for p, v in state.items() if v == "0")]
        assert [s["value"][1] for s in prom.query(f"sum({selector})")] == ["1"]
        leader.kill()

        def standby_leads() -> bool:
            series = prom.query(f'{selector[:-1]}, pod="{standby.pod_name}"}} == 1')
            return bool(series)

        wait_for("the standby to report itself leader", standby_leads, 60)
    finally:
        prom.stop()
