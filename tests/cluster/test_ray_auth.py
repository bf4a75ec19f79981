"""Ray's token authentication through KubeRay's ``authOptions``, on a real API server (issue 26).

The operator turns token authentication on in every Ray cluster it creates where
the *installed* RayJob / RayService CRDs have ``spec.<cluster spec>.authOptions``
(KubeRay >= 1.5.1), read from the API server, not guessed from a version.

- KubeRay 1.5.0's CRDs (``../shared/envtest``) lack the field: that branch runs
  through the shipped operator in ``test_operator.py`` (the RayJob is made without
  it, the log says so once, the TrainingJob's ``RayAuthenticated`` condition is
  False with ``NotSupportedByKubeRay``).
- ``test_children_carry_authoptions_where_the_installed_crds_have_it``: the other
  branch, the same CRDs given the field (as KubeRay 1.5.1's carry
  it), the kuberay backend creates the RayJob and the RayService with
  ``authOptions: {mode: token}`` under ``fieldValidation=Strict``, and the
  objects as the server stored them (their ``ADDED`` watch events) keep it. The
  CRDs are restored afterwards. Whether KubeRay >= 1.5.1 then makes the token
  Secret is KubeRay's part and not run here (its controller in the archive is 1.5.0).
- ``test_the_ray_backend_takes_the_token_from_the_charts_secret``: the chart's
  ``rayAuthTokenSecret`` on the ray backend, through the shipped operator (run as
  the chart runs it) against a real Ray head with token authentication (the one
  `rayrelay run` starts): with a wrong token in the Secret the TrainingJob says
  ``RayAuthenticationFailed`` and nothing reaches Ray; with the right one the
  attempt is submitted to that head's Job API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rayrelay_core.api import TrainingJob
from rayrelay_operator.backends.kuberay import (
    CLUSTER_SPEC_FIELD,
    RAY_GROUP,
    RAY_VERSION,
    KubeRayBackend,
    ray_auth_status,
)
from rayrelay_operator.localray import LocalRay
from rayrelay_operator.reconcile.training import training_work
from tests.cluster.chart_operator import (
    FAST_TIMERS,
    Operators,
    create_s3_secret,
    install_chart,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane
from tests.cluster.test_rayservice_upgrade_strategy import backend, work

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

AUTH_OPTIONS_SCHEMA = {
    "type": "object",
    "description": "AuthOptions (KubeRay >= 1.5.1), added by the test.",
    "properties": {"mode": {"type": "string", "enum": ["disabled", "token"]}},
}


def auth_field_patch(plane: ControlPlane, plural: str, op: str) -> list[dict[str, Any]]:
    crd = plane.get(f"crd/{plural}.{RAY_GROUP}")
    (index,) = [i for i, v in enumerate(crd["spec"]["versions"]) if v["name"] == RAY_VERSION]
    path = (
        f"/spec/versions/{index}/schema/openAPIV3Schema/properties/spec/properties/"
        f"{CLUSTER_SPEC_FIELD[plural]}/properties/authOptions"
    )
    return (
        [{"op": "add", "path": path, "value": AUTH_OPTIONS_SCHEMA}]
        if op == "add"
        else [{"op": "remove", "path": path}]
    )


@pytest.fixture
def crds_with_auth_options(kuberay_crds: ControlPlane) -> Iterator[ControlPlane]:
    plane = kuberay_crds
    patched = []
    try:
        for plural in CLUSTER_SPEC_FIELD:
            patch = auth_field_patch(plane, plural, "add")
            plane.kubectl("patch", f"crd/{plural}.{RAY_GROUP}", "--type=json", "-p", json.dumps(patch))
            patched.append(plural)
        yield plane
    finally:
        for plural in patched:
            patch = auth_field_patch(plane, plural, "remove")
            plane.kubectl("patch", f"crd/{plural}.{RAY_GROUP}", "--type=json", "-p", json.dumps(patch))


def created_object(
    ours: KubeRayBackend, namespace: str, plural: str, name: str, create: Any
) -> dict[str, Any]:
    """Run ``create``; return the object as the server stored it at creation (its ADDED event)."""
    from kubernetes import watch

    listed = ours.custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, namespace, plural)
    create()
    stream = watch.Watch().stream(
        ours.custom.list_namespaced_custom_object,
        RAY_GROUP,
        RAY_VERSION,
        namespace,
        plural,
        field_selector=f"metadata.name={name}",
        resource_version=listed["metadata"]["resourceVersion"],
        timeout_seconds=30,
    )
    for event in stream:
        if event["type"] == "ADDED":
            return dict(event["object"])
    raise AssertionError(f"no ADDED event for {plural} {namespace}/{name}")


def tj(namespace: str) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            # No uid: no owner reference, so the garbage collector leaves the RayJob alone.
            "metadata": {"name": "auth-tj", "namespace": namespace, "generation": 1},
            "spec": {
                "model": {"source": "bert-base-uncased"},
                "data": {"train": "s3://d-bkt/t.jsonl", "validation": "s3://d-bkt/v.jsonl"},
                "artifacts": {"uri": "s3://rr-art/runs"},
            },
        }
    )


def test_children_carry_authoptions_where_the_installed_crds_have_it(
    crds_with_auth_options: ControlPlane, namespace: str
) -> None:
    plane = crds_with_auth_options
    ours = backend(plane)
    # The CRD change reaches the server's schema a moment later; the backend reads the CRD itself.
    wait_for(
        "the operator to see authOptions in both CRDs",
        lambda: all(backend(plane)._ray_auth_wanted(p) for p in CLUSTER_SPEC_FIELD),
        30,
    )
    assert ours._ray_auth_wanted("rayjobs") and ours._ray_auth_wanted("rayservices")

    job = training_work(tj(namespace), ours.settings, 1, 1)
    stored = wait_for(
        "a Strict create of the RayJob with authOptions",
        lambda: created_object(ours, namespace, "rayjobs", job.child_name, lambda: ours.submit_training(job)),
        30,
    )
    assert stored["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    on = ray_auth_status(stored, "rayClusterSpec", wanted=True, installed=True, network_policy=True)
    assert (on.on, on.reason) == (True, "TokenAuthentication")

    served = work("auth-md", namespace, ours.settings)
    stored = created_object(
        ours, namespace, "rayservices", served.child_name, lambda: ours.deploy_serving(served)
    )
    assert stored["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}


def reconciled(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    status = (plane.get("trainingjob", name, "-n", namespace) or {}).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == "Reconciled"), {})


def test_the_ray_backend_takes_the_token_from_the_charts_secret(
    crds_installed: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    from ray.job_submission import JobSubmissionClient

    plane = crds_installed
    head = LocalRay(num_cpus=1)
    head.start()
    try:
        assert head.auth_token
        plane.kubectl(
            "create",
            "secret",
            "generic",
            "ray-token",
            "-n",
            release_namespace,
            "--from-literal=auth_token=wrong",
        )
        create_s3_secret(plane, release_namespace)
        create_s3_secret(plane, namespace)
        values = {
            **FAST_TIMERS,
            **s3_values(s3_server, f"{s3_bucket}/runs"),
            "rayAddress": head.dashboard_url,
            "rayAuthTokenSecret": "ray-token",
            "rayBackendNamespaces": [namespace],
        }
        release = install_chart(plane, release_namespace, values)
        op = operators.start(release)
        op.wait_ready()
        tj = trainingjob("auth-ray", gpus=0, workers=1)
        tj["spec"]["backend"] = "ray"
        plane.apply(tj, "-n", namespace)
        refused = wait_for(
            "RayAuthenticationFailed",
            lambda: (
                (c := reconciled(plane, namespace, "auth-ray")).get("reason") == "RayAuthenticationFailed"
                and c
            ),
            90,
        )
        assert "a token that it refused" in refused["message"] and "wrong" not in refused["message"], refused
        jobs = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers())
        assert jobs.list_jobs() == [], "nothing reached Ray without the right token"

        # The admin puts the cluster's token in the Secret; the restarted operator submits.
        plane.kubectl(
            "patch", "secret", "ray-token", "-n", release_namespace, "--type=merge", "-p",
            json.dumps({"stringData": {"auth_token": head.auth_token}}),
        )  # fmt: skip
        op.stop()
        op = operators.start(release, "b")
        op.wait_ready()
        submitted = wait_for(
            "the attempt on the Ray head",
            lambda: [
                j for j in jobs.list_jobs() if (j.metadata or {}).get("rayrelay.dev/name") == "auth-ray"
            ],
            120,
        )
        assert len(submitted) == 1, submitted
        assert head.auth_token not in op.log
    finally:
        head.stop()
