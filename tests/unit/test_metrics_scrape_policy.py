"""Ray's metrics port in the Ray clusters' NetworkPolicies (issue 28).

The per-cluster policy (tests/unit/test_network_policy.py) admits Serve's port from anyone,
so rayrelay's serving metrics (/metrics on that port, what the chart's PodMonitor scrapes
by default) need nothing. Ray's own metrics port (8080, the ray_* series; the PodMonitor's
``rayMetrics``) takes only the cluster's own pods unless a scraper is named: then one more
rule admits that namespace's pods (those with the labels given) to that port alone. The
settings come from the environment the chart sets (``networkPolicy.metricsScraper``);
tests/unit/test_monitoring.py checks the chart's side.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_network_policy import CONTROL, PEERS, backend, swork, tjob

import k8s_checks
from rayrelay_operator.builders.kuberay import (
    PolicyPeers,
    build_rayjob_network_policy,
    build_rayservice_network_policy,
)
from rayrelay_operator.settings import Settings

SCRAPER = PolicyPeers(
    operator_namespace=PEERS.operator_namespace,
    operator_labels=PEERS.operator_labels,
    metrics_namespace="monitoring",
    metrics_labels={"app.kubernetes.io/name": "prometheus"},
)
METRICS_RULE = {
    "from": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ],
    "ports": [{"port": 8080, "protocol": "TCP"}],
}


def test_rayservice_policy_admits_the_scraper_to_rays_metrics_port_only() -> None:
    pol = build_rayservice_network_policy(swork(), SCRAPER)
    assert pol["spec"]["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"rayrelay.dev/ray-cluster": "sentiment"}}}]},
        CONTROL,  # the control ports: still the operator and KubeRay only
        {"ports": [{"port": 8000, "protocol": "TCP"}]},
        METRICS_RULE,
    ]
    assert k8s_checks.schema_errors(pol) == []


def test_rayjob_policy_too_and_any_pod_of_the_namespace_without_labels() -> None:
    pol = build_rayjob_network_policy(tjob(), SCRAPER)
    assert pol["spec"]["ingress"][-1] == METRICS_RULE
    anyone = PolicyPeers(metrics_namespace="monitoring")
    assert build_rayjob_network_policy(tjob(), anyone)["spec"]["ingress"][-1] == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"port": 8080, "protocol": "TCP"}],
    }


def test_no_scraper_no_rule() -> None:
    for pol in (build_rayjob_network_policy(tjob(), PEERS), build_rayservice_network_policy(swork(), PEERS)):
        assert all(8080 not in [p["port"] for p in rule.get("ports", [])] for rule in pol["spec"]["ingress"])


def test_settings_from_env_reach_the_backends_peers() -> None:
    s = Settings.from_env(
        {
            "RAYRELAY_ARTIFACTS_URI": "s3://rr-art/runs",
            "RAYRELAY_NETWORK_POLICY_METRICS_NAMESPACE": "monitoring",
            "RAYRELAY_NETWORK_POLICY_METRICS_LABELS": "app.kubernetes.io/name=prometheus",
        }
    )
    assert s.metrics_scraper_labels() == {"app.kubernetes.io/name": "prometheus"}
    b, _ = backend(s)
    peers = b._peers()
    assert (peers.metrics_namespace, peers.metrics_labels) == (
        "monitoring",
        {"app.kubernetes.io/name": "prometheus"},
    )
    assert Settings().network_policy_metrics_namespace is None
    with pytest.raises(ValueError, match="RAYRELAY_NETWORK_POLICY_METRICS_LABELS"):
        Settings.from_env({"RAYRELAY_NETWORK_POLICY_METRICS_LABELS": "oops"})
