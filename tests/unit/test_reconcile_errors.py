"""Errors reach the status: ``run_pass`` on refusals, unreachable stores and missing permissions.

The refusals go through the real backends' translation of what their APIs
answer (``backends/kuberay.py``'s Kubernetes 4xx, ``backends/ray.py``'s Job
Submission and Serve REST refusals) with only the transport faked; the store
that does not answer is a local store that raises like ``S3Store`` does while
"down". The clock and the backoff's jitter are fixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from reconcile_fakes import (
    Clock,
    FakeBackend,
    NoRayAuthCRD,
    artifacts_dir,
    layout_of,
    make_ctx,
    sample_manifest,
    tj_dict,
    with_status,
    write_manifest,
)

from rayrelay_core.conditions import find_condition
from rayrelay_core.store import LocalStore, StoreError
from rayrelay_operator.backends import ray as ray_backend
from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.reconcile import PassResult, ReconcileContext, backoff_delay, run_pass
from rayrelay_operator.settings import Settings


def cond_of(result: PassResult, type_: str) -> Any:
    c = find_condition(result.status.conditions, type_)
    assert c is not None, f"no {type_} condition in {result.status.conditions}"
    return c


class Resource:
    """A resource dict driven by ``run_pass`` the way every driver does (the patch written back)."""

    def __init__(self, obj: dict[str, Any], ctx: ReconcileContext) -> None:
        self.obj, self.ctx = obj, ctx
        self.results: list[PassResult] = []

    def run(self) -> PassResult:
        result = run_pass(self.obj["kind"], self.obj, self.ctx)
        if result.patch:
            self.obj = with_status(self.obj, result.status)
        self.results.append(result)
        return result


def md_dict(manifest_uri: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"manifestUri": manifest_uri}, "backend": backend},
    }


# ------------------------------------------------------------------ refusals on apply


def test_refused_submit_fails_the_job_with_the_backends_words(tmp_path: Path) -> None:
    backend = FakeBackend(refuse={"submit": BackendRejected("RayJob sst2-g1-a1: spec.entrypoint: too long")})
    ctx, events = make_ctx(backend, Clock(), artifacts_dir(tmp_path))
    r = Resource(tj_dict(), ctx).run()
    assert r.status.phase == "Failed" and r.permanent and r.error and r.error.reason == "BackendRejected"
    failed = cond_of(r, "Failed")
    assert (failed.status, failed.reason) == ("True", "BackendRejected")
    assert "spec.entrypoint: too long" in failed.message
    assert r.problem and r.problem.startswith("BackendRejected: ") and "too long" in r.problem
    assert r.patch["phase"] == "Failed"  # the driver writes it before it stops retrying
    assert [e.reason for e in events] == ["BackendRejected"]  # not "Submitted": it was not


class FakeCustomObjects:
    """``CustomObjectsApi`` answering what an API server that refuses the object answers."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        self.created: list[str] = []

    def _refuse(self) -> None:
        exc = ApiException(status=self.status, reason="Unprocessable Entity")
        exc.body = json.dumps({"kind": "Status", "message": self.message})
        raise exc

    def create_namespaced_custom_object(
        self, group: str, version: str, ns: str, plural: str, body: Any, **_: Any
    ) -> None:
        self.created.append(plural)
        self._refuse()

    def get_namespaced_custom_object(self, *args: Any) -> None:
        raise ApiException(status=404, reason="Not Found")


class AcceptingNetworking:
    """NetworkingV1Api: the cluster's NetworkPolicy is created (the refusal tested is the child's)."""

    def create_namespaced_network_policy(self, *args: Any, **kwargs: Any) -> None:
        pass


def kuberay_backend(settings: Settings, custom: Any) -> KubeRayBackend:
    backend = KubeRayBackend(k8s.ApiClient(k8s.Configuration(host="http://127.0.0.1:1")), settings)
    backend.custom = custom
    backend.networking = AcceptingNetworking()
    backend.extensions = NoRayAuthCRD()
    return backend


def test_kuberay_refusal_of_the_rayjob_fails_the_trainingjob(tmp_path: Path) -> None:
    words = 'RayJob.ray.io "sst2-g1-a1" is invalid: spec.rayClusterSpec.workerGroupSpecs[0].replicas: Invalid'
    ctx, _events = make_ctx(FakeBackend(), Clock(), artifacts_dir(tmp_path))
    ctx.backends = {"kuberay": kuberay_backend(ctx.settings, FakeCustomObjects(422, words))}
    r = Resource(tj_dict(), ctx).run()
    failed = cond_of(r, "Failed")
    assert r.status.phase == "Failed" and failed.reason == "BackendRejected"
    assert "422" in failed.message and "replicas: Invalid" in failed.message


def test_kuberay_refusal_of_the_rayservice_fails_the_deployment_once(tmp_path: Path) -> None:
    uri = str(tmp_path / "run" / "manifest.json")
    write_manifest(uri, sample_manifest("run"))
    ctx, _events = make_ctx(FakeBackend(), Clock(), str(tmp_path))
    custom = FakeCustomObjects(422, "spec.serveConfigV2: Invalid value")
    ctx.backends = {"kuberay": kuberay_backend(ctx.settings, custom)}
    res = Resource(md_dict(uri, "kuberay"), ctx)
    r = res.run()
    ready = cond_of(r, "Ready")
    assert r.status.phase == "Failed" and (ready.status, ready.reason) == ("False", "BackendRejected")
    assert "serveConfigV2: Invalid value" in ready.message and r.permanent
    # Until the spec changes, asking again is pointless: no second create (timers keep passing).
    assert res.run().status.phase == "Failed" and custom.created == ["rayservices"]


class RefusingJobClient:
    """Ray's ``JobSubmissionClient`` as a cluster that refuses the job answers."""

    def submit_job(self, **kwargs: Any) -> str:
        raise RuntimeError("Request failed with status code 400: runtime_env: pip is not allowed here")


def test_ray_refusal_of_the_job_fails_the_trainingjob(tmp_path: Path) -> None:
    ctx, _events = make_ctx(FakeBackend(), Clock(), artifacts_dir(tmp_path))
    backend = RayBackend("http://ray:8265", client_factory=lambda url: RefusingJobClient(), environ={})
    ctx.backends = {"ray": backend}
    r = Resource(tj_dict(backend="ray"), ctx).run()
    failed = cond_of(r, "Failed")
    assert r.status.phase == "Failed" and failed.reason == "BackendRejected"
    assert "pip is not allowed here" in failed.message


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self.text = body if isinstance(body, str) else json.dumps(body)
        self._body = body

    def json(self) -> Any:
        return self._body


def test_ray_serve_refusal_fails_the_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def request(method: str, url: str, **_: Any) -> FakeResponse:
        if method == "GET":
            return FakeResponse(200, {"applications": {}})
        return FakeResponse(400, "Invalid Serve config: route_prefix '/v2' is used by two applications")

    monkeypatch.setattr(ray_backend.requests, "request", request)
    uri = str(tmp_path / "run" / "manifest.json")
    write_manifest(uri, sample_manifest("run"))
    ctx, _events = make_ctx(FakeBackend(), Clock(), str(tmp_path))
    ctx.backends = {"ray": RayBackend("http://ray:8265")}
    r = Resource(md_dict(uri, "ray"), ctx).run()
    ready = cond_of(r, "Ready")
    assert r.status.phase == "Failed" and ready.reason == "BackendRejected"
    assert "used by two applications" in ready.message


# ------------------------------------------------------------------ temporary problems


class FlakyStore(LocalStore):
    """A local folder store that fails like S3 without credentials while ``down``."""

    def __init__(self) -> None:
        self.down = True

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        if self.down:
            raise StoreError(f"{uri}: cannot reach the S3 store: Unable to locate credentials")
        return super().read_bytes(uri, max_bytes)


def test_store_unavailable_is_in_the_status_with_growing_backoff(tmp_path: Path) -> None:
    backend, clock, store = FakeBackend(), Clock(), FlakyStore()
    ctx, events = make_ctx(backend, clock, artifacts_dir(tmp_path))
    ctx.store_for = lambda uri, endpoint: store
    res = Resource(tj_dict(), ctx)
    delays = []
    for _ in range(9):
        r = res.run()
        assert r.temporary and r.delay is not None
        delays.append(r.delay)
        clock.advance(r.delay)
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]
    reconciled = cond_of(r, "Reconciled")
    assert (reconciled.status, reconciled.reason) == ("False", "StoreUnavailable")
    assert layout_of(res.obj, ctx.settings.artifacts_uri or "").base in reconciled.message
    assert "Unable to locate credentials" in reconciled.message and "retrying in 300s" in reconciled.message
    assert reconciled.last_transition_time == "2026-01-01T12:00:00Z"  # when the problem began
    assert [(e.type, e.reason) for e in events] == [("Warning", "StoreUnavailable")]  # once, not per retry
    assert backend.calls == [] and r.status.phase == "Pending"
    # The store answers again: the job is submitted, and the status says it recovered.
    store.down = False
    r = res.run()
    assert r.error is None and backend.calls == [("submit", "rayrelay-ml-sst2-74f1c81c-g1-a1")]
    assert cond_of(r, "Reconciled").status == "True" and cond_of(r, "Running").reason == "WaitingForResources"
    assert r.status.attempt == 1 and [e.reason for e in events] == ["StoreUnavailable", "Submitted"]


def test_backoff_is_jittered_and_capped() -> None:
    s = Settings(retry_base_delay_seconds=5, retry_max_delay_seconds=300, retry_jitter=0.2)
    assert backoff_delay(0, s, jitter=0.0) == pytest.approx(4.0)
    assert backoff_delay(0, s, jitter=0.999) == pytest.approx(6.0, abs=0.01)
    assert backoff_delay(2, s, jitter=0.5) == 20.0
    assert backoff_delay(40, s, jitter=0.999) == 300.0  # the cap holds after the spread


class FakeBatch:
    def read_namespaced_job(self, name: str, ns: str, **_: Any) -> Any:
        raise ApiException(status=403, reason="Forbidden")


class RunningRayJob(FakeCustomObjects):
    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        return {
            "metadata": {"name": name},
            "status": {"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"},
        }


def test_forbidden_submitter_job_is_reported_not_hidden(tmp_path: Path) -> None:
    ctx, events = make_ctx(FakeBackend(), Clock(), artifacts_dir(tmp_path))
    res = Resource(tj_dict(), ctx)
    res.run()  # submitted (fake backend)
    assert res.obj["status"]["rayJob"]["name"] == "sst2-g1-a1"
    kuberay = kuberay_backend(ctx.settings, RunningRayJob(422, ""))
    kuberay.batch = FakeBatch()
    ctx.backends = {"kuberay": kuberay}
    r = res.run()
    reconciled = cond_of(r, "Reconciled")
    assert r.temporary and (reconciled.status, reconciled.reason) == ("False", "MissingPermission")
    assert "jobs.batch" in reconciled.message and "403" in reconciled.message
    assert r.status.phase == "Pending"  # not "Training": we could not tell whether the driver lives
