"""A real Prometheus scrapes a real endpoint's /metrics and runs the chart's endpoint alerts.

The endpoint is a model application and the shared gateway on the suite's local Ray (the
``ray_cluster`` head, Serve behind its HTTP port), serving the training pipeline's
``tiny_run``, deployed the way the ``ray`` backend deploys (``test_serving.deploy``).
Prometheus 2.42 (hack/install_prometheus.py) scrapes ``/metrics`` on Serve's port every
second, as the chart's PodMonitor scrapes a RayService head (with the pod's ``namespace``),
and evaluates the PrometheusRule ``helm template`` renders, with ``latencyP99Seconds`` set
below any real request's latency.

After a request per protocol and a bad one (a series is born with its first request;
rate() needs a sample before the increase) and then a burst of good requests and a few bad ones (4xx), through Prometheus' HTTP API:
every endpoint series the alerts and the Serving panels of the dashboard select returns
data (a selector on values nobody sent at least finds its series
name with the labels it matches on), and every panel query and alert expression evaluates; ``RayrelayEndpointLatencyHigh``
goes pending for the model; ``RayrelayEndpointErrors`` stays silent (client errors are not
the endpoint's), while the model's 5xx series are there at 0 (the gateway creates them when
it sees the model, so that rate() sees a first 5xx). The cold-start series (``rayrelay_held_requests``,
``rayrelay_cold_start_*``) exist only once a model scaled to zero was woken, which this
model (minReplicas 1) never is: tests/unit/test_monitoring.py checks their names.
"""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_serving import app_status, deploy, undeploy, wait_for

import monitoring_checks as mc
from rayrelay_core.runs import read_manifest
from rayrelay_core.store import open_store

PROMETHEUS, _, MISSING = mc.prometheus_binaries()
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)
MODEL = "rr-prom-endpoint"
NAMESPACE = "ml"  # the label the PodMonitor gives: the ModelDeployment's namespace
ENDPOINT_SERIES = (
    "rayrelay_request",
    "rayrelay_replicas",
    "rayrelay_batch",
    "rayrelay_queue",
    "rayrelay_inference",
    "rayrelay_ongoing",
)
COLD_START_SERIES = ("rayrelay_held_requests", "rayrelay_cold_start")


@pytest.fixture(scope="module")
def endpoint(ray_cluster: Any, tiny_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    dashboard, port = ray_cluster.dashboard_url, ray_cluster.serve_port
    uri = tiny_run.manifest_uri
    deploy(
        dashboard,
        port,
        MODEL,
        uri,
        tmp_path_factory.mktemp("prom-serve-cache"),
        digest=read_manifest(open_store(uri), uri)[1],
        model={"manifestUri": uri, "variant": "fp32"},
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
        batching={"maxBatchSize": 8, "batchWaitTimeoutMs": 10},
    )
    try:

        def running() -> bool:
            app = app_status(dashboard, MODEL)
            assert app.get("status") != "DEPLOY_FAILED", str(app)[-2000:]
            gateway = app_status(dashboard, "rayrelay-gateway").get("status")
            return app.get("status") == "RUNNING" and gateway == "RUNNING"

        wait_for(running, 240, f"{MODEL} RUNNING")
        yield port
    finally:
        undeploy(dashboard, port, MODEL)


def test_prometheus_scrapes_the_endpoint_and_alerts_on_latency(endpoint: int, tmp_path: Path) -> None:
    port = endpoint
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "metrics": {
                    "prometheusRule": {"enabled": True, "latencyP99Seconds": 0.0001},
                    "dashboard": {"enabled": True},
                }
            }
        )
    )
    rendered = mc.render(values)
    rules, dash = mc.rule_groups(rendered), mc.dashboard(rendered)
    target = {
        "job_name": "rayrelay-endpoint",
        "metrics_path": "/metrics",
        "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": NAMESPACE, "pod": "head"}}
        ],
    }
    prom = mc.Prometheus(tmp_path / "prometheus", [target], rules)
    try:
        wait_for(prom.targets_up, 60, "the endpoint target up")
        base = f"http://127.0.0.1:{port}"
        infer = f"{base}/v2/models/{MODEL}/infer"
        body = {
            "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["my invoice is wrong"]}]
        }

        def one(i: int) -> int:
            if i % 10 == 9:  # a bad request: 4xx, the client's error
                return requests.post(infer, json={"inputs": []}, timeout=60).status_code
            if i % 2:
                v1 = {"instances": ["the app crashes on start"]}
                return requests.post(f"{base}/v1/models/{MODEL}:predict", json=v1, timeout=60).status_code
            return requests.post(infer, json=body, timeout=60).status_code

        # A series is born with its first request, and rate() needs a sample before the burst:
        # one request of each kind first, seen by Prometheus, then the burst.
        first = [one(i) for i in (0, 1, 9)]
        assert first[:2] == [200, 200] and 400 <= first[2] < 500, first
        for selector, count in (
            (f'rayrelay_request_latency_seconds_count{{model="{MODEL}"}}', 2),
            (f'rayrelay_request_errors_total{{model="{MODEL}", code=~"4.."}}', 1),
        ):
            seen = f"count_over_time({selector}[5m]) >= 2"
            wait_for(lambda q=seen, n=count: len(prom.query(q)) == n, 60, f"two samples of {selector}")
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(one, range(80)))
        assert codes.count(200) == 72 and all(400 <= c < 500 for c in codes if c != 200), codes

        def latency_pending() -> dict[str, Any] | None:
            for a in prom.alerts():
                if (
                    a["labels"]["alertname"] == "RayrelayEndpointLatencyHigh"
                    and a["labels"].get("model") == MODEL
                ):
                    return a
            return None

        try:
            alert = wait_for(latency_pending, 60, "RayrelayEndpointLatencyHigh pending")
        except AssertionError:
            rule = [r for g in rules for r in g["rules"] if r["alert"] == "RayrelayEndpointLatencyHigh"][0]
            seen = {
                "expr": rule["expr"],
                "value": prom.query(rule["expr"].rsplit(">", 1)[0]),
                "buckets": prom.query(f'rayrelay_request_latency_seconds_bucket{{model="{MODEL}"}}'),
                "requests": prom.query("rayrelay_requests_total"),
                "rules": requests.get(f"{prom.url}/api/v1/rules", timeout=10).json(),
            }
            raise AssertionError(f"no latency alert; Prometheus saw {seen}"[:6000]) from None
        assert alert["state"] in ("pending", "firing") and alert["labels"]["namespace"] == NAMESPACE

        exprs = [r["expr"] for g in rules for r in g["rules"]]
        panels = [q for _, q in mc.dashboard_queries(dash) if any(s in q for s in ENDPOINT_SERIES)]
        assert len(panels) >= 6
        empty = []
        for expr in exprs + panels:
            prom.query(expr)  # evaluates (an error fails the query)
            for sel in mc.selectors(expr):
                if not sel.startswith(ENDPOINT_SERIES) or sel.startswith(COLD_START_SERIES):
                    continue
                if prom.query(sel):
                    continue
                # No series matches the values asked for (no 5xx from a healthy endpoint): the
                # name must still be scraped, with every label the selector matches on.
                labels = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", sel))
                series = prom.query(sel.split("{")[0])
                if not any(labels <= set(s["metric"]) for s in series):
                    empty.append(sel)
        assert empty == []
        for q in panels:
            assert prom.query(q), q
        errors = prom.query(f'sum by (code) (rayrelay_request_errors_total{{model="{MODEL}"}})')
        by_code = {s["metric"]["code"]: float(s["value"][1]) for s in errors}
        assert {c for c, v in by_code.items() if v > 0} <= {"400", "422"} and any(by_code.values())
        # The model's 5xx series are there before any 5xx, at 0: rate() will see the first one.
        assert {c: by_code.get(c) for c in ("500", "503", "504")} == {"500": 0.0, "503": 0.0, "504": 0.0}
        assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "RayrelayEndpointErrors"]
    finally:
        prom.stop()
