"""Checks shared by the monitoring tests: what the code exports, what the chart's alerts and
dashboard query, and where the real prometheus / promtool binaries are.

``exported_metrics`` reads the metric families from the registries the code builds (the
operator's, the gateway's ``EndpointMetrics``, a model replica's ``ReplicaMetrics``, a
text-generation replica's ``GenerationMetrics``), with
the names Prometheus sees (``_total`` for counters, ``_bucket`` / ``_count`` / ``_sum`` for
histograms) and their label names. ``reference_errors`` finds, in a PromQL expression, every
``rayrelay_*`` series that nobody exports and every label that the series cannot carry: a
panel or alert that would stay empty for a wrong name. It is a scan for selectors and
``by (...)`` / ``without (...)`` clauses, enough for the expressions the chart ships (they
use no ``on``/``ignoring`` and no label_replace).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "rayrelay"
NAMESPACE = "rayrelay-system"
# Labels Prometheus adds when it scrapes a target (ServiceMonitor / PodMonitor, or the
# static configs of the tests), which any expression may use besides the metric's own.
TARGET_LABELS = frozenset(
    {"namespace", "pod", "instance", "job", "container", "endpoint", "service", "ray_cluster"}
)
_SELECTOR = re.compile(r"\b(rayrelay_[a-zA-Z0-9_]+)\s*(\{([^}]*)\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exported_metrics() -> dict[str, frozenset[str]]:
    """Every series name the code exports -> its label names."""
    from rayrelay_operator import metrics as operator_metrics
    from rayrelay_workloads.serve.metrics import EndpointMetrics, GenerationMetrics, ReplicaMetrics

    collectors: list[Any] = []
    for registry in (
        operator_metrics.REGISTRY,
        EndpointMetrics().registry,
        ReplicaMetrics("m", "r").registry,
        GenerationMetrics("m", "r").registry,
    ):
        collectors += list(dict.fromkeys(registry._collector_to_names))
    out: dict[str, frozenset[str]] = {}
    for c in collectors:
        name, kind, labels = c._name, c._type, frozenset(c._labelnames)
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_count"] = labels
            out[f"{name}_sum"] = labels
        else:
            out[name] = labels
    return out


def reference_errors(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """What in ``expr`` names a series or a label that the code does not export."""
    errors: list[str] = []
    names: list[str] = []
    for m in _SELECTOR.finditer(expr):
        name = m.group(1)
        names.append(name)
        if name not in exported:
            errors.append(f"{name}: no such series is exported")
            continue
        for label in _MATCHER.findall(m.group(3) or ""):
            if label[0] not in exported[name] | TARGET_LABELS:
                errors.append(f"{name}: has no label {label[0]!r}")
    if not names:
        errors.append(f"no rayrelay_* series in {expr!r}")
    known = set(TARGET_LABELS)
    for name in names:
        known |= exported.get(name, frozenset())
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if label and label not in known:
                errors.append(f"grouping by {label!r}, which none of {sorted(set(names))} carries")
    return errors


def helm_binary() -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("helm", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


def render(values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    """The chart rendered by the real helm (with ``values`` and ``--set`` args)."""
    return render_for(NAMESPACE, values, *extra)


def render_for(namespace: str, values: Path | None = None, *extra: str) -> list[dict[str, Any]]:
    """The chart rendered for a release in ``namespace``."""
    helm = helm_binary()
    assert helm is not None
    args = [helm, "template", "rr", str(CHART), "--namespace", namespace]
    if values is not None:
        args += ["-f", str(values)]
    proc = subprocess.run([*args, *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def rule_groups(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def dashboard(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    dash: dict[str, Any] = json.loads(cm["data"]["rayrelay.json"])
    return dash


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, the template variables set to "all"."""
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$\{?(namespace|operator_namespace)\}?", ".*", target["expr"])
            out.append((panel["title"], expr))
    return out


def prometheus_binaries() -> tuple[str | None, str | None, str]:
    """(prometheus, promtool, why missing): hack/install_prometheus.py puts them in the venv."""
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join([str(venv_bin), os.environ.get("PATH", "")])
    prom, tool = shutil.which("prometheus", path=path), shutil.which("promtool", path=path)
    note = venv_bin.parent / ".prometheus-missing"
    why = note.read_text().strip() if note.exists() else "run `make prometheus` (hack/install_prometheus.py)"
    return prom, tool, f"prometheus/promtool not installed: {why}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Prometheus:
    """A real Prometheus server on loopback, queried through its HTTP API."""

    def __init__(self, workdir: Path, targets: list[dict[str, Any]], rules: list[dict[str, Any]]) -> None:
        binary = prometheus_binaries()[0]
        assert binary is not None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": rules}, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": targets,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = workdir / "prometheus.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        _wait("Prometheus ready", self._ready, 60)

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"][
            "alerts"
        ]
        return out

    def targets_up(self) -> bool:
        active = requests.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def selectors(expr: str) -> list[str]:
    """The vector selectors of an expression, as queries of their own."""
    return [m.group(0) for m in re.finditer(r"\brayrelay_[a-zA-Z0-9_]+\s*(\{[^}]*\})?", expr)]
