"""The Helm chart on a real API server: install, upgrade, uninstall, and the RBAC it grants.

The real ``helm`` installs ``charts/rayrelay`` from the repository with no
network (the chart has no dependencies) into the control plane of this layer,
cluster-wide and namespaced (``watchNamespaces``); every object must be
accepted and found on the server. Then, with KubeRay's CRDs installed (as on
any cluster the kuberay backend runs on), ``kubectl auth can-i`` as the chart's
ServiceAccount checks every API call the operator's code makes
(``OPERATOR_CALLS``) -- and a few it must not be able to make.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.controlplane import REPO, ControlPlane

CHART = REPO / "charts" / "rayrelay"

# Every API call of the operator, as (verb, resource[/subresource]), with where it is made.
OPERATOR_CALLS: list[tuple[str, str, str]] = [
    # kopf watches both kinds, patches them (finalizer, progress annotations) and their status.
    ("get", "trainingjobs.rayrelay.dev", "kopf; handlers.py reads a ModelDeployment's TrainingJob"),
    ("list", "trainingjobs.rayrelay.dev", "kopf watch-stream"),
    ("watch", "trainingjobs.rayrelay.dev", "kopf watch-stream"),
    ("patch", "trainingjobs.rayrelay.dev", "kopf: finalizer and progress annotations"),
    ("patch", "trainingjobs.rayrelay.dev/status", "kopf: status of run_pass"),
    ("get", "modeldeployments.rayrelay.dev", "kopf"),
    ("list", "modeldeployments.rayrelay.dev", "kopf watch-stream"),
    ("watch", "modeldeployments.rayrelay.dev", "kopf watch-stream"),
    ("patch", "modeldeployments.rayrelay.dev", "kopf: finalizer and progress annotations"),
    ("patch", "modeldeployments.rayrelay.dev/status", "kopf: status of run_pass"),
    ("update", "trainingjobs.rayrelay.dev/finalizers", "ownerReferences with blockOwnerDeletion"),
    ("update", "modeldeployments.rayrelay.dev/finalizers", "ownerReferences with blockOwnerDeletion"),
    # backends/kuberay.py
    ("create", "rayjobs.ray.io", "submit_training"),
    ("get", "rayjobs.ray.io", "observe_training"),
    ("list", "rayjobs.ray.io", "delete_training (by label)"),
    ("delete", "rayjobs.ray.io", "stop_training / delete_training"),
    ("create", "rayservices.ray.io", "deploy_serving"),
    ("get", "rayservices.ray.io", "observe_serving / deploy_serving"),
    ("patch", "rayservices.ray.io", "deploy_serving (new serveConfigV2)"),
    ("delete", "rayservices.ray.io", "delete_serving"),
    ("list", "pods", "observe_training: the Ray pods' ImagePullBackOff / Unschedulable"),
    ("get", "jobs.batch", "observe_training: KubeRay's submitter Job"),
    # The NetworkPolicy of each Ray cluster (networkPolicy.enabled, the default; issue 26).
    ("create", "networkpolicies.networking.k8s.io", "submit_training / deploy_serving, before the child"),
    ("get", "networkpolicies.networking.k8s.io", "_ensure_network_policy after a 409"),
    ("patch", "networkpolicies.networking.k8s.io", "_ensure_network_policy: a spec that differs"),
    ("delete", "networkpolicies.networking.k8s.io", "stop_training / delete_training: an attempt's"),
    # kopf.event / kopf.info in handlers.py
    ("create", "events", "kopf.event"),
    # handlers.secret_labels_getter: the opt-in label of the one Secret a resource names
    # (a metadata-only request; issue 12, finding 1)
    ("get", "secrets", "policy: credentials Secret opt-in label"),
]
# Calls of kopf itself outside any namespace.
CLUSTER_CALLS: list[tuple[str, str]] = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]
CLUSTER_WIDE_ONLY: list[tuple[str, str]] = [
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
]
# Least privilege: what the operator never needs.
DENIED: list[tuple[str, str]] = [
    ("list", "secrets"),
    ("watch", "secrets"),
    ("create", "rayclusters.ray.io"),
    ("delete", "pods"),
    ("create", "pods"),
    ("create", "trainingjobs.rayrelay.dev"),
    ("delete", "trainingjobs.rayrelay.dev"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("update", "clusterroles.rbac.authorization.k8s.io"),
    ("list", "networkpolicies.networking.k8s.io"),
    ("update", "networkpolicies.networking.k8s.io"),
]


class Helm:
    """The real helm, against the control plane, with its own empty config (no repositories)."""

    def __init__(self, plane: ControlPlane, home: Path) -> None:
        self.plane = plane
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["helm", f"--kubeconfig={self.plane.kubeconfig}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def manifest(self, release: str, namespace: str) -> list[dict[str, Any]]:
        text = self("get", "manifest", release, "-n", namespace).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def helm(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(control_plane, tmp_path_factory.mktemp("helm"))


@pytest.fixture
def release_ns(control_plane: ControlPlane) -> Iterator[str]:
    """The release's namespace, enforcing the restricted Pod Security Standard."""
    name = f"rr-{uuid.uuid4().hex[:6]}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def ref(obj: dict[str, Any], default_ns: str) -> list[str]:
    """``kubectl get`` arguments naming ``obj``."""
    kind = obj["kind"].lower()
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    resource = f"{kind}.{group}" if group else kind
    args = [resource, obj["metadata"]["name"]]
    if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}:
        args += ["-n", obj["metadata"].get("namespace", default_ns)]
    return args


def assert_all_on_server(plane: ControlPlane, objs: list[dict[str, Any]], namespace: str) -> None:
    missing = [f"{o['kind']}/{o['metadata']['name']}" for o in objs if plane.get(*ref(o, namespace)) is None]
    assert not missing, f"helm reported success but these are not on the server: {missing}"


def can_i(plane: ControlPlane, sa: str, verb: str, resource: str, namespace: str | None) -> bool:
    args = ["auth", "can-i", verb]
    if "/" in resource:
        resource, sub = resource.split("/")
        args += [resource, f"--subresource={sub}"]
    else:
        args.append(resource)
    args += [f"--as={sa}"]
    args += ["-n", namespace] if namespace else []
    proc = plane.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def wait_for_pods(plane: ControlPlane, namespace: str, release: str, count: int) -> list[dict[str, Any]]:
    """The release's pods once ``count`` exist (kube-controller-manager creates them)."""
    deadline = time.monotonic() + 60
    while True:
        pods = plane.get("pods", "-n", namespace, "-l", f"app.kubernetes.io/instance={release}")["items"]
        if len(pods) >= count:
            return list(pods)
        if time.monotonic() > deadline:
            events = plane.kubectl("get", "events", "-n", namespace, check=False).stdout
            raise AssertionError(f"{len(pods)} of {count} pods after 60 s; events:\n{events}")
        time.sleep(0.5)


def service_account(objs: list[dict[str, Any]], namespace: str) -> str:
    # The operator's (the Ray pods' token-less rayrelay-workload accounts live elsewhere).
    (sa,) = [o for o in objs if o["kind"] == "ServiceAccount" and o["metadata"].get("namespace") == namespace]
    return f"system:serviceaccount:{namespace}:{sa['metadata']['name']}"


def test_chart_has_no_dependency_to_fetch(helm: Helm) -> None:
    """`helm lint` of the repository's chart works offline (a subchart would need a fetch)."""
    assert "dependencies" not in yaml.safe_load((CHART / "Chart.yaml").read_text())
    helm("lint", "--strict", str(CHART))


def test_install_upgrade_uninstall_cluster_wide(
    control_plane: ControlPlane, kuberay_crds: ControlPlane, helm: Helm, release_ns: str, namespace: str
) -> None:
    release = f"rayrelay-{release_ns}"
    out = helm("install", release, str(CHART), "-n", release_ns).stdout
    assert "STATUS: deployed" in out
    assert "helm install kuberay-operator kuberay/kuberay-operator" in out  # the NOTES say how
    objs = helm.manifest(release, release_ns)
    kinds = {o["kind"] for o in objs}
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"} <= kinds
    assert_all_on_server(control_plane, objs, release_ns)
    for crd in (
        "trainingjobs.rayrelay.dev",
        "modeldeployments.rayrelay.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ):
        assert control_plane.get("crd", crd) is not None, crd
    # The operator's pod passes the restricted Pod Security admission: kube-controller-manager
    # creates it from the Deployment (it stays Pending: there is no kubelet here).
    if control_plane.has_controller_manager:  # the official envtest archive has none
        pods = wait_for_pods(control_plane, release_ns, release, 1)
        assert pods[0]["spec"]["serviceAccountName"] == service_account(objs, release_ns).rsplit(":", 1)[1]
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]},
    }
    refused = control_plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        release_ns,
        "-f",
        "-",
        input=yaml.safe_dump(privileged),
        check=False,
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr

    # The chart's CRD files themselves are accepted (also when they exist already).
    crds = helm("show", "crds", str(CHART)).stdout
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", input=crds
    )

    # RBAC: every call of the operator is allowed, in any namespace; nothing more.
    sa = service_account(objs, release_ns)
    for verb, resource, where in OPERATOR_CALLS:
        assert can_i(control_plane, sa, verb, resource, namespace), f"{verb} {resource} ({where}) denied"
    for verb, resource in CLUSTER_CALLS + CLUSTER_WIDE_ONLY:
        assert can_i(control_plane, sa, verb, resource, None), f"{verb} {resource} denied"
    for verb, resource in DENIED:
        assert not can_i(control_plane, sa, verb, resource, namespace), f"{verb} {resource} granted"

    # Upgrade to two replicas with leader election: PDB and ClusterKopfPeering are accepted too.
    peering = f"rr-{release_ns}"
    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        release_ns,
        "--set",
        "replicaCount=2",
        "--set",
        f"leaderElection.peeringName={peering}",
    )
    upgraded = helm.manifest(release, release_ns)
    assert {"PodDisruptionBudget", "ClusterKopfPeering"} <= {o["kind"] for o in upgraded}
    assert_all_on_server(control_plane, upgraded, release_ns)
    deployment = control_plane.get(
        "deployment", "-n", release_ns, "-l", f"app.kubernetes.io/instance={release}"
    )
    (dep,) = deployment["items"]
    assert dep["spec"]["replicas"] == 2
    assert peering in " ".join(dep["spec"]["template"]["spec"]["containers"][0]["args"])

    helm("uninstall", release, "-n", release_ns)
    left = [
        f"{o['kind']}/{o['metadata']['name']}" for o in upgraded if control_plane.get(*ref(o, release_ns))
    ]
    assert left == [], f"left after helm uninstall: {left}"
    # CRDs (and so users' resources) stay, as docs/install.md says.
    assert control_plane.get("crd", "trainingjobs.rayrelay.dev") is not None


def test_install_namespaced(
    control_plane: ControlPlane, kuberay_crds: ControlPlane, helm: Helm, release_ns: str
) -> None:
    watched = [f"{release_ns}-a", f"{release_ns}-b"]
    other = f"{release_ns}-c"
    for ns in [*watched, other]:
        control_plane.kubectl("create", "namespace", ns)
    release = f"rayrelay-{release_ns}"
    try:
        helm(
            "install",
            release,
            str(CHART),
            "-n",
            release_ns,
            "--set",
            f"watchNamespaces={{{','.join(watched)}}}",
        )
        objs = helm.manifest(release, release_ns)
        assert_all_on_server(control_plane, objs, release_ns)
        roles = sorted(o["metadata"]["namespace"] for o in objs if o["kind"] == "Role")
        assert roles == watched
        # Issue 12: a token-less workload ServiceAccount in each watched namespace. No
        # NetworkPolicy from the chart: the operator creates one per Ray cluster (issue 26,
        # tests/cluster/test_network_policy.py).
        for ns in watched:
            wsa = control_plane.get("serviceaccount", "rayrelay-workload", "-n", ns)
            assert wsa["automountServiceAccountToken"] is False
        assert not [o for o in objs if o["kind"] == "NetworkPolicy"]

        sa = service_account(objs, release_ns)
        for ns in watched:
            for verb, resource, where in OPERATOR_CALLS:
                assert can_i(control_plane, sa, verb, resource, ns), f"{verb} {resource} ({where}) in {ns}"
            assert can_i(control_plane, sa, "patch", "kopfpeerings.kopf.dev", ns)
        for verb, resource in CLUSTER_CALLS:
            assert can_i(control_plane, sa, verb, resource, None), f"{verb} {resource} denied"
        # Nothing outside the watched namespaces, nothing cluster-wide beyond reading CRDs.
        for verb, resource, _ in OPERATOR_CALLS:
            assert not can_i(control_plane, sa, verb, resource, other), f"{verb} {resource} in {other}"
        for verb, resource in CLUSTER_WIDE_ONLY:
            assert not can_i(control_plane, sa, verb, resource, None), f"{verb} {resource} granted"
        for verb, resource in DENIED:
            assert not can_i(control_plane, sa, verb, resource, watched[0]), f"{verb} {resource} granted"

        # The operator is started for exactly those namespaces.
        (dep,) = [o for o in objs if o["kind"] == "Deployment"]
        args = " ".join(dep["spec"]["template"]["spec"]["containers"][0]["args"])
        assert all(ns in args for ns in watched) and other not in args and "--all-namespaces" not in args

        helm("upgrade", release, str(CHART), "-n", release_ns, "--reuse-values", "--set", "logFormat=text")
        helm("uninstall", release, "-n", release_ns)
        assert [o for o in objs if control_plane.get(*ref(o, release_ns))] == []
    finally:
        helm("uninstall", release, "-n", release_ns, check=False)
        for ns in [*watched, other]:
            control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)
