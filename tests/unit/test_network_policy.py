"""The NetworkPolicy of each Ray cluster the kuberay backend creates (issue 26, section 1).

Builders (``build_rayjob_network_policy`` / ``build_rayservice_network_policy``)
with literal expected values, validated against Kubernetes' strict schema
offline; the ``rayrelay.dev/ray-cluster`` label on every pod template the
builders write (what the policy selects); the settings that feed them; and the
backend's calls against fake Kubernetes APIs: the policy before the child,
``fieldValidation=Strict``, 409 -> patch only a different spec, 403 ->
``MissingPermission``, a RayJob's policy deleted with it (scope ``cluster``), none at
all when switched off; with the default scope ``namespace``, one policy per namespace
made before its first RayJob and re-checked only after a while (a fake clock).
tests/cluster/test_network_policy.py runs the same on a real API server with
KubeRay's controller.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconcile_fakes import NoRayAuthCRD

import k8s_checks
from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_operator.backends.base import MissingPermission
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.builders.kuberay import (
    PolicyPeers,
    build_rayjob,
    build_rayjob_network_policy,
    build_rayservice,
    build_rayservice_network_policy,
    build_training_network_policy,
)
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingWork, TrainingWork

OPERATOR_LABELS = "app.kubernetes.io/name=rayrelay,app.kubernetes.io/instance=rr"
SETTINGS = Settings(
    artifacts_uri="s3://rr-art/runs",
    network_policy_operator_namespace="rayrelay-system",
    network_policy_operator_labels=OPERATOR_LABELS,
)
PEERS = PolicyPeers(
    operator_namespace="rayrelay-system",
    operator_labels={"app.kubernetes.io/name": "rayrelay", "app.kubernetes.io/instance": "rr"},
)
PER_CLUSTER = dataclasses.replace(SETTINGS, network_policy_scope="cluster")
MANIFEST = "s3://rr-art/runs/ml/sst2/run-x/manifest.json"


def tjob(settings: Settings = SETTINGS) -> TrainingWork:
    tj = TrainingJob.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "sst2", "namespace": "ml", "uid": "u-1", "generation": 2},
            "spec": {
                "model": {"source": "bert-base-uncased"},
                "data": {"train": "s3://d-bkt/t.jsonl", "validation": "s3://d-bkt/v.jsonl"},
                "resources": {"numWorkers": 2},
            },
        }
    )
    return training_work(tj, settings, generation=2, attempt=3)


def swork(settings: Settings = SETTINGS) -> ServingWork:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u-2"},
            "spec": {"model": {"manifestUri": MANIFEST}, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}},
        }
    )
    return serving_work(md, DesiredModel(MANIFEST, "sha256:abc", "int8"), settings)


CONTROL = {
    "from": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "rayrelay-system"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "rayrelay", "app.kubernetes.io/instance": "rr"}
            },
        },
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
        },
    ],
    "ports": [
        {"port": 8265, "protocol": "TCP"},
        {"port": 6379, "protocol": "TCP"},
        {"port": 10001, "protocol": "TCP"},
    ],
}


def test_rayjob_policy_literal() -> None:
    assert build_rayjob_network_policy(tjob(), PEERS) == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "sst2-g2-a3",
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/managed-by": "rayrelay",
                "app.kubernetes.io/part-of": "rayrelay",
                "app.kubernetes.io/component": "training",
                "rayrelay.dev/trainingjob": "sst2",
                "rayrelay.dev/generation": "2",
                "rayrelay.dev/attempt": "3",
            },
            "ownerReferences": [
                {
                    "apiVersion": "rayrelay.dev/v1alpha1",
                    "kind": "TrainingJob",
                    "name": "sst2",
                    "uid": "u-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "podSelector": {"matchLabels": {"rayrelay.dev/ray-cluster": "sst2-g2-a3"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                # Ray's own traffic: only the pods of this very cluster (no other resource's).
                {"from": [{"podSelector": {"matchLabels": {"rayrelay.dev/ray-cluster": "sst2-g2-a3"}}}]},
                CONTROL,
                # No Serve port: a RayJob serves nothing.
            ],
        },
    }


def test_rayservice_policy_literal() -> None:
    pol = build_rayservice_network_policy(swork(), PEERS)
    assert pol["metadata"]["name"] == "sentiment" and pol["metadata"]["namespace"] == "ml"
    assert pol["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "sentiment",
            "uid": "u-2",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pol["metadata"]["labels"]["rayrelay.dev/modeldeployment"] == "sentiment"
    assert pol["spec"] == {
        "podSelector": {"matchLabels": {"rayrelay.dev/ray-cluster": "sentiment"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"rayrelay.dev/ray-cluster": "sentiment"}}}]},
            CONTROL,
            {"ports": [{"port": 8000, "protocol": "TCP"}]},  # the endpoint, open to every client
        ],
    }


def test_policy_without_the_operator_peer_and_valid() -> None:
    """An operator outside the cluster (no namespace/labels set): KubeRay is the only peer."""
    pol = build_rayjob_network_policy(tjob(), PolicyPeers(kuberay_namespace="ray", kuberay_name="kr"))
    assert pol["spec"]["ingress"][1]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kr"}},
        }
    ]
    for policy in (pol, build_rayservice_network_policy(swork(), PEERS)):
        assert k8s_checks.schema_errors(policy) == []  # Kubernetes' strict schema: no unknown field


def pod_templates(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]
    if "submitterPodTemplate" in spec:
        out["submitter"] = spec["submitterPodTemplate"]
    return out


def test_every_pod_template_carries_the_label_the_policy_selects() -> None:
    job = build_rayjob(tjob(), image="i", endpoint_url=None, credentials_secret=None)
    service = build_rayservice(swork(), image="i", endpoint_url=None, credentials_secret=None)
    for obj, policy, names in (
        (job, build_rayjob_network_policy(tjob(), PEERS), {"head", "workers", "submitter"}),
        (service, build_rayservice_network_policy(swork(), PEERS), {"head", "serve"}),
    ):
        templates = pod_templates(obj)
        assert set(templates) == names
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector == {"rayrelay.dev/ray-cluster": obj["metadata"]["name"]}
        for where, template in templates.items():
            labels = template["metadata"]["labels"]
            assert {k: labels.get(k) for k in selector} == selector, where
        # The child object itself does not carry it: only its pods are selected.
        assert "rayrelay.dev/ray-cluster" not in obj["metadata"]["labels"]


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "RAYRELAY_NETWORK_POLICY_OPERATOR_NAMESPACE": "ops",
            "RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS": " a=1 , b.io/c=x ",
            "RAYRELAY_NETWORK_POLICY_KUBERAY_NAMESPACE": "ray-system",
            "RAYRELAY_NETWORK_POLICY_KUBERAY_NAME": "ray-op",
        }
    )
    assert s.network_policy is True  # on by default
    assert s.network_policy_operator_namespace == "ops"
    assert s.operator_pod_labels() == {"a": "1", "b.io/c": "x"}
    assert (s.network_policy_kuberay_namespace, s.network_policy_kuberay_name) == ("ray-system", "ray-op")
    assert Settings.from_env({"RAYRELAY_NETWORK_POLICY": "false"}).network_policy is False
    assert Settings().operator_pod_labels() == {}
    with pytest.raises(ValueError, match="RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS"):
        Settings.from_env({"RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS": "a=1,oops"})


# ------------------------------------------------------------------ the backend's calls


def api_error(status: int) -> Exception:
    from kubernetes.client.exceptions import ApiException

    return ApiException(status=status, reason="x")


class Response:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj).encode()


class FakeNetworking:
    """NetworkingV1Api's NetworkPolicy calls, recorded; one stored policy per name."""

    def __init__(self, calls: list[tuple[Any, ...]], refuse: int | None = None) -> None:
        self.calls = calls
        self.refuse = refuse
        self.stored: dict[str, dict[str, Any]] = {}

    def create_namespaced_network_policy(self, ns: str, body: dict[str, Any], **kw: Any) -> None:
        self.calls.append(("create", "networkpolicy", body["metadata"]["name"], kw))
        if self.refuse:
            raise api_error(self.refuse)
        if body["metadata"]["name"] in self.stored:
            raise api_error(409)
        self.stored[body["metadata"]["name"]] = json.loads(json.dumps(body))

    def read_namespaced_network_policy(self, name: str, ns: str, **kw: Any) -> Response:
        self.calls.append(("get", "networkpolicy", name))
        return Response(self.stored[name])

    def patch_namespaced_network_policy(self, name: str, ns: str, body: Any, **kw: Any) -> None:
        self.calls.append(("patch", "networkpolicy", name, body, kw))
        (op,) = body
        self.stored[name]["spec"] = op["value"]

    def delete_namespaced_network_policy(self, name: str, ns: str, **kw: Any) -> None:
        self.calls.append(("delete", "networkpolicy", name))
        if self.stored.pop(name, None) is None:
            raise api_error(404)


class FakeCustom:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls
        self.items: list[dict[str, Any]] = []

    def create_namespaced_custom_object(
        self, g: str, v: str, ns: str, plural: str, body: Any, **kw: Any
    ) -> None:
        self.calls.append(("create", plural, body["metadata"]["name"], kw))
        self.items.append(body)

    def delete_namespaced_custom_object(
        self, g: str, v: str, ns: str, plural: str, name: str, **kw: Any
    ) -> None:
        self.calls.append(("delete", plural, name))

    def list_namespaced_custom_object(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return {"items": self.items}


def backend(
    settings: Settings = SETTINGS, refuse: int | None = None
) -> tuple[KubeRayBackend, FakeNetworking]:
    calls: list[tuple[Any, ...]] = []
    b = KubeRayBackend(None, settings)
    b.custom = FakeCustom(calls)
    b.networking = FakeNetworking(calls, refuse)
    # The children's bodies are the builders' (their own tests); here only the calls count.
    bare = {"image": "i", "endpoint_url": None, "credentials_secret": None}
    b._rayjob_body = lambda work, ray_auth=False: build_rayjob(work, **bare)  # type: ignore[method-assign]
    b._rayservice_body = lambda work, ray_auth=False: build_rayservice(work, **bare)  # type: ignore[method-assign]
    b.extensions = NoRayAuthCRD()
    return b, b.networking


STRICT = {"field_validation": "Strict"}


def test_policy_created_strictly_before_the_rayjob_and_deleted_with_it() -> None:
    b, net = backend(PER_CLUSTER)
    work = tjob()
    b.submit_training(work)
    assert [c[:3] for c in net.calls] == [
        ("create", "networkpolicy", "sst2-g2-a3"),
        ("create", "rayjobs", "sst2-g2-a3"),
    ]
    # The RayJob's echo is read undecoded (_preload_content=False): nothing reads it.
    assert net.calls[0][3] == STRICT and net.calls[1][3] == {**STRICT, "_preload_content": False}
    assert net.stored["sst2-g2-a3"] == build_rayjob_network_policy(work, PEERS)
    # Submitted again (a restarted operator): 409, the same spec -> no patch.
    net.calls.clear()
    b.submit_training(work)
    assert [c[:2] for c in net.calls] == [
        ("create", "networkpolicy"),
        ("get", "networkpolicy"),
        ("create", "rayjobs"),
    ]
    # An attempt that is over: its RayJob and then its policy go (one per attempt must not pile up).
    net.calls.clear()
    b.stop_training(work)
    assert net.calls == [("delete", "rayjobs", "sst2-g2-a3"), ("delete", "networkpolicy", "sst2-g2-a3")]
    b.stop_training(work)  # already gone: a 404 is fine
    # The ttl cleanup / deletion of the TrainingJob: every listed RayJob's policy too.
    b.submit_training(work)
    b.custom.items = [{"metadata": {"name": "sst2-g2-a3", "labels": {"rayrelay.dev/trainingjob": "sst2"}}}]
    net.calls.clear()
    b.delete_training("ml", "sst2")
    assert net.calls == [("delete", "rayjobs", "sst2-g2-a3"), ("delete", "networkpolicy", "sst2-g2-a3")]


def test_a_different_spec_is_patched_whole() -> None:
    b, net = backend()
    work = swork()
    stale = build_rayservice_network_policy(work, PolicyPeers(kuberay_namespace="old"))
    stale["spec"]["podSelector"]["matchLabels"]["stale"] = "x"
    net.stored["sentiment"] = stale
    b.deploy_serving(work)
    patch = next(c for c in net.calls if c[0] == "patch")
    want = build_rayservice_network_policy(work, PEERS)["spec"]
    # A JSON patch replacing the spec: no stale selector key survives (a merge patch would keep it).
    assert patch[3] == [{"op": "replace", "path": "/spec", "value": want}] and patch[4] == STRICT
    assert net.stored["sentiment"]["spec"] == want
    assert [c[:2] for c in net.calls][-1] == ("create", "rayservices")
    # The RayService's policy (one per deployment) stays when the RayService goes (suspend).
    net.calls.clear()
    b.delete_serving(work)
    assert net.calls == [("delete", "rayservices", "sentiment")]


def test_forbidden_is_missing_permission_and_nothing_runs_unprotected() -> None:
    b, net = backend(refuse=403)
    with pytest.raises(MissingPermission, match="create on networkpolicies.networking.k8s.io"):
        b.submit_training(tjob())
    with pytest.raises(MissingPermission):
        b.deploy_serving(swork())
    assert [c[:2] for c in net.calls] == [("create", "networkpolicy")] * 2  # no RayJob, no RayService


def test_switched_off_no_policy_calls() -> None:
    off = Settings(artifacts_uri="s3://rr-art/runs", network_policy=False)
    b, net = backend(off, refuse=403)  # any policy call would fail
    b.submit_training(tjob(off))
    b.deploy_serving(swork(off))
    b.stop_training(tjob(off))
    assert [c[1] for c in net.calls] == ["rayjobs", "rayservices", "rayjobs"]


# ------------------------------------------------------------------ scope "namespace" (the default)


def test_training_policy_literal_and_valid() -> None:
    training = {
        "matchExpressions": [
            {"key": "rayrelay.dev/trainingjob", "operator": "Exists"},
            {"key": "rayrelay.dev/ray-cluster", "operator": "Exists"},
        ]
    }
    pol = build_training_network_policy("ml", PEERS)
    assert pol == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "rayrelay-training",
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/managed-by": "rayrelay",
                "app.kubernetes.io/part-of": "rayrelay",
                "app.kubernetes.io/component": "training",
            },
            "ownerReferences": [],
        },
        "spec": {
            "podSelector": training,
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": training}]}, CONTROL],
        },
    }
    assert k8s_checks.schema_errors(pol) == []  # Kubernetes' strict schema: no unknown field
    # Beyond Ray's own traffic, it admits what a cluster's own policy admits.
    assert pol["spec"]["ingress"][1:] == build_rayjob_network_policy(tjob(), PEERS)["spec"]["ingress"][1:]
    # Every pod template of a RayJob carries both labels; no RayService pod carries the first.
    job = build_rayjob(tjob(), image="i", endpoint_url=None, credentials_secret=None)
    service = build_rayservice(swork(), image="i", endpoint_url=None, credentials_secret=None)
    cluster = job["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"], job["spec"]["submitterPodTemplate"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]:
        assert {"rayrelay.dev/trainingjob", "rayrelay.dev/ray-cluster"} <= set(template["metadata"]["labels"])
    serving = service["spec"]["rayClusterConfig"]
    for template in [serving["headGroupSpec"]["template"]] + [
        g["template"] for g in serving["workerGroupSpecs"]
    ]:
        assert "rayrelay.dev/trainingjob" not in template["metadata"]["labels"]


def test_one_policy_per_namespace_before_its_first_rayjob() -> None:
    b, net = backend()
    now = [100.0]
    b.clock = lambda: now[0]
    b.submit_training(tjob())
    assert [c[:3] for c in net.calls] == [
        ("create", "networkpolicy", "rayrelay-training"),
        ("create", "rayjobs", "sst2-g2-a3"),
    ]
    assert net.calls[0][3] == STRICT
    assert net.stored["rayrelay-training"] == build_training_network_policy("ml", PEERS)
    # More RayJobs in the namespace: no policy request.
    net.calls.clear()
    for _ in range(3):
        b.submit_training(tjob())
    assert [c[:2] for c in net.calls] == [("create", "rayjobs")] * 3
    # An attempt that is over: its RayJob goes, the namespace's policy stays.
    net.calls.clear()
    b.stop_training(tjob())
    assert net.calls == [("delete", "rayjobs", "sst2-g2-a3")] and "rayrelay-training" in net.stored
    # Later it is made sure of again: someone deleted it -> created again before the RayJob.
    del net.stored["rayrelay-training"]
    now[0] += 301
    net.calls.clear()
    b.submit_training(tjob())
    assert [c[:3] for c in net.calls] == [
        ("create", "networkpolicy", "rayrelay-training"),
        ("create", "rayjobs", "sst2-g2-a3"),
    ]


def test_namespace_policy_refused_is_not_remembered() -> None:
    b, net = backend(refuse=403)
    for _ in range(2):
        with pytest.raises(MissingPermission, match="rayrelay-training"):
            b.submit_training(tjob())
    assert [c[:2] for c in net.calls] == [("create", "networkpolicy")] * 2  # asked again; no RayJob


def test_scope_setting() -> None:
    assert Settings().network_policy_scope == "namespace"
    assert Settings.from_env({"RAYRELAY_NETWORK_POLICY_SCOPE": "cluster"}).network_policy_scope == "cluster"
    with pytest.raises(ValueError, match="RAYRELAY_NETWORK_POLICY_SCOPE"):
        Settings.from_env({"RAYRELAY_NETWORK_POLICY_SCOPE": "pod"})
