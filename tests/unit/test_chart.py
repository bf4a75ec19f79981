"""The Helm chart (charts/rayrelay), checked with the real helm binary.

`helm lint --strict` and `helm template` run with the default values and with
the realistic values files in tests/data/chart-values/; the rendered objects
are validated against Kubernetes' JSON schemas (kubernetes-validate, offline)
and checked for the restricted Pod Security Standard, resources on every
container and RBAC without wildcards (tests/k8s_checks.py). Values files named
bad-*.yaml must be rejected with the schema's message.

The tests render the repository's chart itself, as users do, offline: the
chart has no dependencies (KubeRay is installed with its own chart; a declared
dependency would make helm refuse to lint, render or install the chart until
`helm dependency build` had fetched it over the network).
tests/cluster/test_chart_install.py installs it on a real API server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import k8s_checks

SYNC = Path(__file__).resolve().parents[2] / "hack" / "sync_chart_crds.py"

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "rayrelay"
VALUES_DIR = ROOT / "tests" / "data" / "chart-values"
NAMESPACE = "rayrelay-system"
GOOD_VALUES = ["default", "namespaced", "ha", "ray-backend", "servicemonitor", "monitoring", "e2e"]
# bad values file -> text the schema's error must contain
BAD_VALUES = {
    "bad-type": "at '/replicaCount': got string, want integer",
    "bad-unknown-key": "additional properties 'watchNamespace' not allowed",
    "bad-enum": "at '/backend': value must be one of 'kuberay', 'ray'",
    "bad-ray-without-address": "at '/rayAddress'",
}
# Kinds that are custom resources: no built-in schema, checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterKopfPeering", "KopfPeering"}


def _helm_binary() -> str | None:
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which("helm", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


HELM = _helm_binary()
pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed (make venv installs it)")


@pytest.fixture(scope="module")
def chart() -> Path:
    """The chart in the repository, unchanged: it needs nothing fetched."""
    return CHART


def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *map(str, args)], capture_output=True, text=True, timeout=120)


def values_args(name: str) -> list[str | Path]:
    if name == "default":
        return []
    if name == "e2e":  # the values hack/kind-e2e.sh installs with
        return ["-f", ROOT / "tests" / "e2e" / "manifests" / "rayrelay-values.yaml"]
    return ["-f", VALUES_DIR / f"{name}.yaml"]


def render(chart: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    proc = helm(
        "template", "rr", chart, "--namespace", NAMESPACE, "--include-crds", *values_args(name), *extra
    )
    assert proc.returncode == 0, proc.stderr
    return k8s_checks.load_manifests(proc.stdout)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(objs, "Deployment")
    return dep


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = deployment(objs)["spec"]["template"]["spec"]["containers"]
    return c


def env(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objs)["env"]}


# ------------------------------------------------------------------ chart metadata


def test_chart_metadata_and_no_dependencies() -> None:
    """No subchart: helm installs the chart from a fresh clone without network."""
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == "0.1.0"
    assert "dependencies" not in meta
    assert not (CHART / "charts").exists() and not (CHART / "Chart.lock").exists()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert not {"kuberay", "kuberay-operator"} & set(values)


def test_notes_tell_how_to_install_kuberay(chart: Path) -> None:
    proc = helm("install", "rr", chart, "--dry-run=client", "--namespace", NAMESPACE)
    assert proc.returncode == 0, proc.stderr
    assert "helm install kuberay-operator kuberay/kuberay-operator" in proc.stdout


def test_every_value_is_commented() -> None:
    """Every key of values.yaml has a comment on the line(s) above it (or is a parent of commented keys)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("-") or ":" not in stripped:
            continue
        if stripped.endswith(":"):  # a parent mapping: its children carry the comments
            continue
        if not lines[i - 1].strip().startswith("#"):
            bare.append(stripped)
    assert not bare, f"values without a comment: {bare}"


def _leaves(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_install_doc_lists_every_value() -> None:
    """docs/install.md's values table has a row per value of values.yaml, with its default."""
    doc = (ROOT / "docs" / "install.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = yaml.safe_load(cells[1].strip("`"))
    values = _leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert sorted(rows) == sorted(values)
    assert {k: rows[k] for k in values} == values


# ------------------------------------------------------------------ lint and schema


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_helm_lint_strict(chart: Path, name: str) -> None:
    proc = helm("lint", "--strict", chart, "--namespace", NAMESPACE, *values_args(name))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_bad_values_rejected_by_schema(chart: Path, name: str) -> None:
    for cmd in (["template", "rr"], ["lint", "--strict"]):
        proc = helm(*cmd, chart, *values_args(name))
        assert proc.returncode != 0, f"helm {cmd[0]} accepted {name}.yaml"
        out = proc.stdout + proc.stderr
        assert "values don't meet the specifications of the schema" in out, out
        assert BAD_VALUES[name] in out, out


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_rendered_objects_match_kubernetes_schemas(chart: Path, name: str) -> None:
    objs = render(chart, name)
    errors = []
    for obj in objs:
        errors += k8s_checks.schema_errors(obj, allow_unknown_kind=obj["kind"] in CUSTOM_KINDS)
    assert not errors, "\n".join(errors)
    crds = {o["metadata"]["name"] for o in by_kind(objs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_restricted_pod_security_and_resources(chart: Path, name: str) -> None:
    objs = render(chart, name)
    assert k8s_checks.restricted_pss_errors(objs) == []
    assert k8s_checks.resources_errors(objs) == []
    pod = deployment(objs)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container(objs)["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])


@pytest.mark.parametrize("name", GOOD_VALUES)
def test_rbac_has_no_wildcards(chart: Path, name: str) -> None:
    assert k8s_checks.rbac_wildcard_errors(render(chart, name)) == []


def test_checks_catch_violations() -> None:
    """The checks themselves: a privileged, root, resource-less pod and a wildcard role fail."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bad"},
        "spec": {
            "hostNetwork": True,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}],
        },
    }
    pss = "\n".join(k8s_checks.restricted_pss_errors([pod]))
    for text in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsNonRoot",
                 "seccompProfile", "drop must include ALL", "readOnlyRootFilesystem"):  # fmt: skip
        assert text in pss
    assert len(k8s_checks.resources_errors([pod])) == 2
    role = {
        "kind": "ClusterRole",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}],
    }
    assert k8s_checks.rbac_wildcard_errors([role]) == [
        "ClusterRole/r: rules[0].resources has a wildcard: ['*']"
    ]
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s"},
        "spec": {"ports": "x", "bogus": 1},
    }
    assert k8s_checks.schema_errors(bad)


# ------------------------------------------------------------------ what the chart renders

NAMESPACED_RULES = {
    ("rayrelay.dev", "trainingjobs"): {"get", "list", "watch", "patch", "update"},
    ("rayrelay.dev", "modeldeployments"): {"get", "list", "watch", "patch", "update"},
    ("rayrelay.dev", "trainingjobs/status"): {"get", "patch", "update"},
    ("rayrelay.dev", "modeldeployments/status"): {"get", "patch", "update"},
    ("rayrelay.dev", "trainingjobs/finalizers"): {"update", "patch"},
    ("rayrelay.dev", "modeldeployments/finalizers"): {"update", "patch"},
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("batch", "jobs"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    # get only: the metadata of the one Secret a resource names (its opt-in label).
    ("", "secrets"): {"get"},
    # The NetworkPolicy of each Ray cluster (issue 26): no list/watch, no update.
    ("networking.k8s.io", "networkpolicies"): {"create", "get", "patch", "delete"},
}
CRD_READ = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def test_cluster_wide_mode(chart: Path) -> None:
    objs = render(chart, "default")
    assert not by_kind(objs, "Role") and not by_kind(objs, "RoleBinding")
    (role,) = by_kind(objs, "ClusterRole")
    assert k8s_checks.rbac_grants([role]) == {
        **NAMESPACED_RULES,
        **CRD_READ,
        ("", "namespaces"): {"get", "list", "watch"},
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    }
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    (sa,) = by_kind(objs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    args = container(objs)["args"]
    assert args == ["operator", "--all-namespaces", "--standalone", "--liveness=http://0.0.0.0:8081/healthz"]
    dep = deployment(objs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(objs, "ClusterKopfPeering") and not by_kind(objs, "PodDisruptionBudget")
    assert container(objs)["image"] == "rayrelay-operator:0.1.0"
    e = env(objs)
    assert e["RAYRELAY_DEFAULT_BACKEND"] == "kuberay"
    assert e["RAYRELAY_WORKLOAD_IMAGE"] == "rayrelay-workloads:0.1.0"
    assert e["RAYRELAY_METRICS_PORT"] == "8080"
    assert e["RAYRELAY_LOG_FORMAT"] == "json"
    assert "RAYRELAY_ARTIFACTS_SECRET" not in e and "AWS_ACCESS_KEY_ID" not in e


def test_namespaced_mode(chart: Path) -> None:
    objs = render(chart, "namespaced")
    roles = by_kind(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert k8s_checks.rbac_grants([role]) == {
            **NAMESPACED_RULES,
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }
    bindings = by_kind(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert all(b["subjects"][0]["namespace"] == NAMESPACE for b in bindings)
    # Only CRD discovery is cluster-wide (no Role can grant a cluster-scoped resource).
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert k8s_checks.rbac_grants([cluster_role]) == CRD_READ
    args = container(objs)["args"]
    assert args[:3] == ["operator", "--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in args
    e = env(objs)
    assert e["RAYRELAY_ARTIFACTS_URI"] == "s3://ml-artifacts/rayrelay"
    # The operator's own credentials are never a default for workload pods (issue 12, finding 1).
    assert "RAYRELAY_ARTIFACTS_SECRET" not in e
    assert e["AWS_DEFAULT_REGION"] == "eu-west-1"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert e[key] == {"secretKeyRef": {"name": "rayrelay-s3", "key": key}}


def test_ha_mode_elects_a_leader(chart: Path) -> None:
    objs = render(chart, "ha")
    dep = deployment(objs)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    args = container(objs)["args"]
    assert "--peering=rayrelay" in args and "--standalone" not in args
    (peering,) = by_kind(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "rayrelay"
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert "podAntiAffinity" in dep["spec"]["template"]["spec"]["affinity"]
    assert container(objs)["image"] == "registry.example.com/rayrelay/operator:0.1.0"
    assert env(objs)["RAYRELAY_WORKLOAD_IMAGE"] == "registry.example.com/rayrelay/workloads:0.1.0-gpu"
    assert env(objs)["RAYRELAY_S3_ENDPOINT_URL"] == "http://minio.storage.svc:9000"


def test_ha_namespaced_creates_a_peering_per_namespace(chart: Path) -> None:
    objs = render(chart, "namespaced", "--set", "replicaCount=2")
    peerings = by_kind(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert not by_kind(objs, "ClusterKopfPeering")


def test_ray_backend(chart: Path) -> None:
    objs = render(chart, "ray-backend")
    e = env(objs)
    assert e["RAYRELAY_DEFAULT_BACKEND"] == "ray"
    assert e["RAYRELAY_RAY_ADDRESS"] == "http://raycluster-head-svc.ray.svc:8265"
    assert e["RAYRELAY_LOG_FORMAT"] == "text"
    assert e["RAYRELAY_EXTRA_DEBUG"] == "1"


def test_metrics_service_and_servicemonitor(chart: Path) -> None:
    assert not by_kind(render(chart, "default"), "ServiceMonitor")
    objs = render(chart, "servicemonitor")
    (svc,) = by_kind(objs, "Service")
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "5s"}
    ]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ports = {p["name"]: p["containerPort"] for p in container(objs)["ports"]}
    assert ports == {"metrics": 9090, "health": 8081}
    assert env(objs)["RAYRELAY_METRICS_PORT"] == "9090"
    # The Service selects the operator pods.
    pod_labels = deployment(objs)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())


def test_probes_use_kopf_liveness_endpoint(chart: Path) -> None:
    c = container(render(chart, "default"))
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_chart_crds_are_the_generated_ones() -> None:
    """The chart carries crds/*.yaml byte for byte (make chart / hack/sync_chart_crds.py)."""
    generated = sorted((ROOT / "crds").glob("*.yaml"))
    if not generated:
        pytest.skip("crds/ is empty: run `make crds` first")
    for src in generated:
        copy = CHART / "crds" / src.name
        assert copy.exists(), f"{copy} missing: run `make chart`"
        assert copy.read_bytes() == src.read_bytes(), f"{copy} differs from {src}: run `make chart`"


# ------------------------------------------------------------------ hack/sync_chart_crds.py


def _sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SYNC), "--root", str(root), *args], capture_output=True, text=True, timeout=60
    )


def test_sync_chart_crds(tmp_path: Path) -> None:
    (tmp_path / "crds").mkdir()
    chart_crds = tmp_path / "charts" / "rayrelay" / "crds"
    chart_crds.mkdir(parents=True)
    (tmp_path / "crds" / "a.rayrelay.dev.yaml").write_bytes(b"kind: A\n")
    (tmp_path / "crds" / "b.rayrelay.dev.yaml").write_bytes(b"kind: B\n")
    (chart_crds / "a.rayrelay.dev.yaml").write_bytes(b"kind: A-old\n")
    (chart_crds / "gone.rayrelay.dev.yaml").write_bytes(b"kind: Gone\n")
    (chart_crds / "kopf.dev_kopfpeerings.yaml").write_bytes(b"kind: Kopf\n")

    check = _sync(tmp_path, "--check")
    assert check.returncode == 1
    assert "charts/rayrelay/crds/a.rayrelay.dev.yaml: differs from crds/a.rayrelay.dev.yaml" in check.stderr
    assert "charts/rayrelay/crds/b.rayrelay.dev.yaml: missing" in check.stderr
    assert "charts/rayrelay/crds/gone.rayrelay.dev.yaml: not in crds/" in check.stderr
    assert "kopf.dev" not in check.stderr

    assert _sync(tmp_path).returncode == 0
    assert (chart_crds / "a.rayrelay.dev.yaml").read_bytes() == b"kind: A\n"
    assert (chart_crds / "b.rayrelay.dev.yaml").read_bytes() == b"kind: B\n"
    assert not (chart_crds / "gone.rayrelay.dev.yaml").exists()
    assert (chart_crds / "kopf.dev_kopfpeerings.yaml").exists()  # not ours: kept
    ok = _sync(tmp_path, "--check")
    assert ok.returncode == 0, ok.stderr


def test_sync_chart_crds_without_sources_fails(tmp_path: Path) -> None:
    (tmp_path / "crds").mkdir()
    proc = _sync(tmp_path, "--check")
    assert proc.returncode == 1 and "no CRDs" in proc.stderr


def test_workload_service_account_and_tenant_policy(chart: Path) -> None:
    """Issue 12, findings 1-3: a token-less ServiceAccount per namespace, the policy knobs."""
    objs = render(chart, "namespaced")
    workload = [sa for sa in by_kind(objs, "ServiceAccount") if sa["metadata"]["name"] == "rayrelay-workload"]
    assert sorted(sa["metadata"]["namespace"] for sa in workload) == ["team-a", "team-b"]
    assert all(sa["automountServiceAccountToken"] is False for sa in workload)
    # No RBAC is bound to it.
    for binding in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert all(sub["name"] != "rayrelay-workload" for sub in binding["subjects"])
    e = env(objs)
    assert e["RAYRELAY_WORKLOAD_SERVICE_ACCOUNT"] == "rayrelay-workload"
    assert e["RAYRELAY_STORE_MAX_ATTEMPTS"] == "2"
    assert e["RAYRELAY_STORE_CONNECT_TIMEOUT_SECONDS"] == "3"
    assert e["RAYRELAY_STORE_READ_TIMEOUT_SECONDS"] == "10"
    # Empty lists: the operator's defaults (the workload image only; no other endpoint; no ray).
    for key in (
        "RAYRELAY_ALLOWED_IMAGES",
        "RAYRELAY_ALLOWED_S3_ENDPOINTS",
        "RAYRELAY_RAY_BACKEND_NAMESPACES",
    ):
        assert key not in e
    objs = render(
        chart,
        "namespaced",
        "--set",
        "allowedImages={reg.example/team/,reg.example/rr:1}",
        "--set",
        "artifacts.allowedEndpoints={http://minio.a:9000}",
        "--set",
        "rayBackendNamespaces={team-a}",
    )
    e = env(objs)
    assert e["RAYRELAY_ALLOWED_IMAGES"] == "reg.example/team/,reg.example/rr:1"
    # Cluster-wide with nothing listed: no account is created, so none is named.
    assert "RAYRELAY_WORKLOAD_SERVICE_ACCOUNT" not in env(render(chart, "default"))
    assert e["RAYRELAY_ALLOWED_S3_ENDPOINTS"] == "http://minio.a:9000"
    assert e["RAYRELAY_RAY_BACKEND_NAMESPACES"] == "team-a"


def test_network_policy_settings_and_rbac(chart: Path) -> None:
    """Issue 26: the chart renders no NetworkPolicy itself; it switches the operator's per-cluster
    policies on (by default, in every mode), names their peers, and grants the RBAC they need --
    and with networkPolicy.enabled=false neither the setting nor the RBAC."""
    selector = (
        "app.kubernetes.io/component=operator,app.kubernetes.io/instance=rr,app.kubernetes.io/name=rayrelay"
    )
    for name in ("default", "namespaced"):
        objs = render(chart, name)
        assert not by_kind(objs, "NetworkPolicy")
        e = env(objs)
        assert e["RAYRELAY_NETWORK_POLICY"] == "true"
        assert e["RAYRELAY_NETWORK_POLICY_OPERATOR_NAMESPACE"] == NAMESPACE
        assert e["RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS"] == selector
        assert e["RAYRELAY_NETWORK_POLICY_KUBERAY_NAMESPACE"] == "kuberay-system"
        assert e["RAYRELAY_NETWORK_POLICY_KUBERAY_NAME"] == "kuberay-operator"
        assert e["RAYRELAY_NETWORK_POLICY_SCOPE"] == "namespace"  # issue 24: one per namespace
        # The labels named are the operator pods' own (what the Deployment selects on).
        labels = deployment(objs)["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in (p.split("=") for p in selector.split(",")))
        roles = by_kind(objs, "Role") or by_kind(objs, "ClusterRole")
        for role in roles:
            grants = k8s_checks.rbac_grants([role])
            if ("rayrelay.dev", "trainingjobs") in grants:
                assert grants[("networking.k8s.io", "networkpolicies")] == {
                    "create",
                    "get",
                    "patch",
                    "delete",
                }

        off = render(chart, name, "--set", "networkPolicy.enabled=false")
        assert env(off)["RAYRELAY_NETWORK_POLICY"] == "false"
        assert not [k for k in env(off) if k.startswith("RAYRELAY_NETWORK_POLICY_")]
        for role in by_kind(off, "Role") + by_kind(off, "ClusterRole"):
            assert ("networking.k8s.io", "networkpolicies") not in k8s_checks.rbac_grants([role])
    custom = env(
        render(
            chart,
            "default",
            "--set",
            "networkPolicy.kuberay.namespace=ray-system",
            "--set",
            "networkPolicy.kuberay.name=ray-op",
            "--set",
            "networkPolicy.scope=cluster",
        )
    )
    assert custom["RAYRELAY_NETWORK_POLICY_SCOPE"] == "cluster"
    proc = helm("template", "rr", chart, "--set", "networkPolicy.scope=pod")
    assert proc.returncode != 0 and "/networkPolicy/scope" in proc.stderr, proc.stderr
    assert (
        custom["RAYRELAY_NETWORK_POLICY_KUBERAY_NAMESPACE"],
        custom["RAYRELAY_NETWORK_POLICY_KUBERAY_NAME"],
    ) == (
        "ray-system",
        "ray-op",
    )
    # The per-namespace policies' values are gone; the schema says so instead of ignoring them.
    for gone in ("networkPolicy.namespaces={ml}", "networkPolicy.servePort=8000"):
        proc = helm("template", "rr", chart, "--set", gone)
        assert proc.returncode != 0 and "additional properties" in proc.stderr, proc.stderr
    # The settings the operator parses from that environment.
    from rayrelay_operator.settings import Settings

    settings = Settings.from_env(
        {k: v for k, v in env(render(chart, "default")).items() if isinstance(v, str)}
    )
    assert settings.network_policy is True and settings.network_policy_operator_namespace == NAMESPACE
    assert settings.operator_pod_labels() == {
        "app.kubernetes.io/component": "operator",
        "app.kubernetes.io/instance": "rr",
        "app.kubernetes.io/name": "rayrelay",
    }
    assert Settings.from_env({"RAYRELAY_NETWORK_POLICY": "false"}).network_policy is False


def test_images_can_be_pinned_by_digest(chart: Path) -> None:
    """Issue 12: image.digest / workloadImage.digest pin the images; a malformed one is refused."""
    op, wl = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    objs = render(chart, "default", "--set", f"image.digest={op}", "--set", f"workloadImage.digest={wl}")
    assert container(objs)["image"] == f"rayrelay-operator@{op}"
    assert env(objs)["RAYRELAY_WORKLOAD_IMAGE"] == f"rayrelay-workloads@{wl}"
    tagged = render(chart, "default", "--set", "image.tag=1.2.3")
    assert container(tagged)["image"] == "rayrelay-operator:1.2.3"
    bad = helm("template", "rr", chart, "--set", "image.digest=latest")
    assert bad.returncode != 0 and "digest" in bad.stderr
