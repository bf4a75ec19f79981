"""The RayService's upgrade strategy on a real API server with KubeRay 1.5's real controller (issue 14).

The kuberay backend creates the RayService (``KubeRayBackend.deploy_serving``,
``fieldValidation=Strict``) with ``spec.upgradeStrategy.type: NewCluster``.
What must hold: the API server (KubeRay's CRD) keeps the field as built, and
KubeRay's controller accepts the spec -- it validates the strategy
(``ValidateRayServiceSpec`` takes ``NewCluster`` and ``None`` only) and, for a
valid RayService, starts a RayCluster for it. The same RayService with a type
KubeRay does not know (stored, since the CRD has no enum) gets no cluster and
a Warning event instead, which shows that the acceptance is KubeRay's.

Not covered here: the upgrade itself (a new cluster, the serve Service switched
once it serves). There is no kubelet, so no Ray pod ever runs and no cluster
becomes ready.
"""

from __future__ import annotations

from typing import Any

import pytest

from rayrelay_core.api import ModelDeployment
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.settings import Settings
from tests.cluster.chart_operator import assert_kept, wait_for
from tests.cluster.controlplane import ControlPlane

MANIFEST = "s3://rr-art/runs/ml/sst2/run-x/manifest.json"
# The envtest API server's certificate is self-signed (the kubeconfig skips verification).
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


def backend(plane: ControlPlane) -> KubeRayBackend:
    from kubernetes import config

    settings = Settings(artifacts_uri="s3://rr-art/runs", s3_endpoint_url="http://minio:9000")
    return KubeRayBackend(config.new_client_from_config(config_file=str(plane.kubeconfig)), settings)


def work(name: str, namespace: str, settings: Settings) -> Any:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            # No uid: no owner reference, so nothing garbage-collects the RayService.
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"manifestUri": MANIFEST}},
        }
    )
    return serving_work(md, DesiredModel(MANIFEST, "sha256:abc", "int8"), settings)


def cluster_of(plane: ControlPlane, namespace: str, name: str) -> str | None:
    status = (plane.get("rayservice", name, "-n", namespace) or {}).get("status") or {}
    return (status.get("pendingServiceStatus") or {}).get("rayClusterName") or (
        status.get("activeServiceStatus") or {}
    ).get("rayClusterName")


def warnings_of(plane: ControlPlane, namespace: str, name: str) -> list[str]:
    events = plane.get("events", "-n", namespace, f"--field-selector=involvedObject.name={name}") or {}
    return [
        f"{e.get('reason')}: {e.get('message')}"
        for e in events.get("items") or []
        if e.get("type") == "Warning"
    ]


def test_kuberay_accepts_the_rayservice_with_its_upgrade_strategy(
    kuberay_crds: ControlPlane, namespace: str
) -> None:
    plane = kuberay_crds
    if not plane.has_kuberay:
        pytest.skip("no kuberay-operator binary among the envtest assets (../shared/envtest)")
    ours = backend(plane)
    good = work("upgrade-new-cluster", namespace, ours.settings)
    ours.deploy_serving(good)
    built = ours._rayservice_body(good)
    assert built["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    stored = plane.get("rayservice", good.child_name, "-n", namespace)
    assert_kept(built["spec"], stored["spec"], ".spec")

    # The same RayService with a strategy KubeRay does not know: stored, then refused by KubeRay.
    bad = dict(built, metadata={"name": "upgrade-bogus", "namespace": namespace})
    bad["spec"] = dict(built["spec"], upgradeStrategy={"type": "Bogus"})
    plane.apply(bad, "--validate=strict")

    plane.start_kuberay()
    try:
        wait_for(
            "KubeRay to start the RayService's cluster",
            lambda: cluster_of(plane, namespace, good.child_name),
            90,
        )
        refused = wait_for(
            "KubeRay to refuse the unknown strategy",
            lambda: warnings_of(plane, namespace, "upgrade-bogus"),
            90,
        )
        assert any("Bogus" in w for w in refused), refused
        assert cluster_of(plane, namespace, "upgrade-bogus") is None
        assert not [w for w in warnings_of(plane, namespace, good.child_name) if "UpgradeStrategy" in w]
    finally:
        plane.stop_kuberay()
