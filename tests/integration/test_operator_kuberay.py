"""The kopf operator with the kuberay backend against kmock's Kubernetes emulator and moto S3.

The operator runs for real (``kopf.operator`` as a task in the test's event
loop, standalone, namespace-scoped) with the handlers of
``rayrelay_operator.handlers``, over HTTP to the emulator (NOTES.md: every
resource registered with its status subresource, scanning disabled, a login
handler for the emulator's URL). The test plays KubeRay: it writes RayJob and
RayService status and the workload's progress/manifest documents into S3, and
asserts what the operator created and the status it reports.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kmock as kmock_lib
import kopf
import pytest
from kubernetes import client as k8s

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import FailureDoc, ProgressDoc, RunLayout, run_id_for
from rayrelay_core.store import S3Settings, S3Store
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.handlers import build_registry, trainingjob_getter
from rayrelay_operator.reconcile import ReconcileContext
from rayrelay_operator.settings import Settings

NS = "ml"
RAY = "ray.io/v1"
pytestmark = pytest.mark.slow

RESOURCES: dict[str, dict[str, Any]] = {
    "rayrelay.dev/v1alpha1/trainingjobs": {"kind": "TrainingJob", "singular": "trainingjob"},
    "rayrelay.dev/v1alpha1/modeldeployments": {"kind": "ModelDeployment", "singular": "modeldeployment"},
    "ray.io/v1/rayjobs": {"kind": "RayJob", "singular": "rayjob"},
    "ray.io/v1/rayservices": {"kind": "RayService", "singular": "rayservice"},
    "v1/pods": {"kind": "Pod", "singular": "pod"},
    "v1/events": {"kind": "Event", "singular": "event"},
    "batch/v1/jobs": {"kind": "Job", "singular": "job"},
}
VERBS = ["get", "list", "watch", "create", "patch", "update", "delete"]


class Cluster:
    """The emulator, an API client to it, S3, and the operator runs."""

    def __init__(self, emulator: Any, s3_bucket: str, s3_server: str) -> None:
        self.k = emulator
        cfg = k8s.Configuration(host=str(emulator.url).rstrip("/"))
        self.api_client = k8s.ApiClient(cfg)
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.core = k8s.CoreV1Api(self.api_client)
        self.bucket = s3_bucket
        self.store = S3Store(S3Settings(endpoint_url=s3_server))
        self.settings = Settings(
            artifacts_uri=f"{s3_bucket}/runs",
            s3_endpoint_url=s3_server,
            timer_interval_seconds=0.5,
            timer_idle_seconds=0.0,
            metrics_port=0,
            stuck_initializing_seconds=300,
            retry_base_delay_seconds=0.5,
        )
        # The test's own threads for blocking client calls (kept apart from kopf's executor).
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-client")
        self._task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ operator

    async def start(self) -> None:
        registry = build_registry(self.settings)
        url = str(self.k.url).rstrip("/")

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        @kopf.on.startup(registry=registry)
        def no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.scanning.disabled = True
            settings.watching.server_timeout = 10

        # A fresh client per run: see stop().
        operator_client = k8s.ApiClient(k8s.Configuration(host=url))
        ctx = ReconcileContext(
            settings=self.settings,
            backends={"kuberay": KubeRayBackend(operator_client, self.settings)},
            get_trainingjob=trainingjob_getter(operator_client),
        )
        self._stop = asyncio.Event()
        ready = asyncio.Event()
        self._task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                standalone=True,
                namespaces=[NS],
                memo=kopf.Memo(settings=self.settings, ctx=ctx, metrics_port=0),
                stop_flag=self._stop,
                ready_flag=ready,
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=30)

    async def stop(self) -> None:
        assert self._stop is not None and self._task is not None
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=30)
        # On stopping, kopf cancels every task started after it, the emulator's per-connection
        # server tasks included: pooled keep-alive connections are dead now, drop them.
        self.api_client.rest_client.pool_manager.clear()

    # ------------------------------------------------------------------ helpers

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def create(self, plural: str, body: dict[str, Any]) -> None:
        await self.call(
            self.custom.create_namespaced_custom_object, "rayrelay.dev", "v1alpha1", NS, plural, body
        )

    async def get(self, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                await self.call(self.custom.get_namespaced_custom_object, group, version, NS, plural, name)
            )
        except k8s.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def status(self, plural: str, name: str) -> dict[str, Any]:
        obj = await self.get("rayrelay.dev", "v1alpha1", plural, name)
        return dict((obj or {}).get("status") or {})

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        await self.call(
            self.custom.patch_namespaced_custom_object_status,
            "ray.io",
            "v1",
            NS,
            plural,
            name,
            {"status": status},
        )

    async def wait(self, what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await probe()
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")

    async def wait_phase(self, plural: str, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = await self.status(plural, name)
            return status if status.get("phase") == phase else None

        try:
            return dict(await self.wait(f"{name} {phase}", probe, timeout))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status now: {await self.status(plural, name)}") from None

    def creates(self, plural: str) -> list[str]:
        """Names in every create request of ``plural`` (a repeated name was refused with 409)."""
        return [
            str((r.data or {}).get("metadata", {}).get("name"))
            for r in self.k
            if r.method == "POST"
            and r.resource is not None
            and r.resource.plural == plural
            and not r.subresource
        ]

    def layout(self, tj: dict[str, Any]) -> RunLayout:
        spec = TrainingJobSpec.model_validate(tj["spec"])
        return RunLayout.for_job(f"{self.bucket}/runs", NS, tj["metadata"]["name"], run_id_for(spec))

    async def write(self, uri: str, text: str) -> None:
        await self.call(self.store.write_bytes, uri, text.encode())


@pytest.fixture
async def cluster(kmock: Any, s3_bucket: str, s3_server: str) -> AsyncIterator[Cluster]:
    for key, info in RESOURCES.items():
        kmock.resources[key] = kmock_lib.ResourceInfo(
            namespaced=True, verbs=set(VERBS), subresources={"status"}, **info
        )
    # kopf waits for these two in discovery before it watches anything (scanning stays off).
    kmock.resources["v1/namespaces"] = kmock_lib.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=set(VERBS)
    )
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock_lib.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs=set(VERBS),
    )
    c = Cluster(kmock, s3_bucket, s3_server)
    yield c
    # Tests stop the operator themselves: on stopping, kopf cancels every task started after
    # it, and a fixture finalizer is one of those. Only a failed test leaves it running here.
    if c._task is not None and not c._task.done():
        c._task.cancel()


def tj_body(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "bert-base-uncased", "numLabels": 2},
        "data": {"train": "s3://data-bkt/train.jsonl", "validation": "s3://data-bkt/val.jsonl"},
        "resources": {"numWorkers": 2, "cpusPerWorker": 2, "memory": "4Gi"},
        "artifacts": {"credentialsSecret": "s3-creds"},
    }
    body.update(spec)
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        # The emulator keeps no resourceVersion; kopf's finalizer patch tests for one.
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": body,
    }


def progress(stage: str, step: int, total: int = 100) -> str:
    return ProgressDoc(stage=stage, step=step, total_steps=total, epoch=1.0, loss=0.3).to_json()


def manifest_json() -> str:
    # The unit tests' sample: a complete manifest as the workloads write it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from reconcile_fakes import sample_manifest

    return sample_manifest().to_json()


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return {}


async def rayjob(c: Cluster, name: str) -> dict[str, Any]:
    return dict(await c.wait(f"RayJob {name}", lambda: c.get("ray.io", "v1", "rayjobs", name)))


async def test_trainingjob_and_deployment_through_every_phase(cluster: Cluster) -> None:
    c = cluster
    await c.start()
    tj = tj_body("sst2")
    await c.create("trainingjobs", tj)

    rj = await rayjob(c, "sst2-g1-a1")
    assert rj["spec"]["jobId"] == "rayrelay-ml-sst2-g1-a1"
    assert rj["spec"]["entrypoint"].startswith("python -m rayrelay_workloads.train_job --job-json '")
    assert rj["metadata"]["labels"]["rayrelay.dev/trainingjob"] == "sst2"
    assert rj["metadata"]["ownerReferences"][0]["uid"] == "uid-sst2"
    workers = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 2
    env = workers["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "AWS_ACCESS_KEY_ID",
        "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}},
    } in env
    status = await c.wait_phase("trainingjobs", "sst2", "Pending")
    assert status["attempt"] == 1 and status["rayJob"]["jobId"] == "rayrelay-ml-sst2-g1-a1"

    # KubeRay: the cluster starts, its head pod cannot pull the image.
    await c.patch_status(
        "rayjobs", "sst2-g1-a1", {"jobDeploymentStatus": "Initializing", "rayClusterName": "sst2-rc"}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sst2-rc-head-x", "namespace": NS, "labels": {"ray.io/cluster": "sst2-rc"}},
        "status": {
            "containerStatuses": [
                {
                    "name": "ray-head",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "back-off pulling image"}},
                }
            ]
        },
    }
    await c.call(c.core.create_namespaced_pod, NS, pod, _preload_content=False)

    async def image_pull() -> bool:
        return cond(await c.status("trainingjobs", "sst2"), "Running").get("reason") == "ImagePullFailed"

    await c.wait("ImagePullFailed", image_pull)

    # The job runs; the workload reports progress into the store.
    layout = c.layout(tj)
    await c.patch_status("rayjobs", "sst2-g1-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
    await c.write(layout.progress, progress("Training", 40))
    status = await c.wait_phase("trainingjobs", "sst2", "Training")

    async def progressed() -> bool:
        return (await c.status("trainingjobs", "sst2")).get("progress", {}).get("percent") == 40.0

    await c.wait("progress 40%", progressed)
    await c.write(layout.progress, progress("Exporting", 100))
    await c.wait_phase("trainingjobs", "sst2", "Exporting")
    await c.write(layout.progress, progress("Optimizing", 100))
    await c.wait_phase("trainingjobs", "sst2", "Optimizing")
    await c.write(layout.manifest, manifest_json())
    await c.patch_status(
        "rayjobs", "sst2-g1-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    )
    status = await c.wait_phase("trainingjobs", "sst2", "Succeeded")
    assert status["artifacts"]["manifestUri"] == layout.manifest
    assert status["artifacts"]["digest"].startswith("sha256:")
    assert status["completionTime"] and status["observedGeneration"] == 1
    # The create handler and the timer may both ask (same name: 409); one RayJob was ever made.
    assert set(c.creates("rayjobs")) == {"sst2-g1-a1"}

    # A deployment of it.
    md = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": NS, "uid": "uid-md", "resourceVersion": "1"},
        "spec": {
            "model": {"trainingJobRef": {"name": "sst2"}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        },
    }
    await c.create("modeldeployments", md)
    rs = await c.wait("RayService", lambda: c.get("ray.io", "v1", "rayservices", "sentiment"))
    assert rs["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 3
    assert (
        "rayrelay-gateway" in rs["spec"]["serveConfigV2"] and layout.manifest in rs["spec"]["serveConfigV2"]
    )
    await c.wait_phase("modeldeployments", "sentiment", "Deploying")
    await c.patch_status(
        "rayservices",
        "sentiment",
        {
            "serviceStatus": "Running",
            "activeServiceStatus": {
                "applicationStatuses": {
                    "sentiment": {"status": "RUNNING"},
                    "rayrelay-gateway": {"status": "RUNNING"},
                },
                "rayClusterStatus": {"desiredWorkerReplicas": 1, "availableWorkerReplicas": 1},
            },
        },
    )
    status = await c.wait_phase("modeldeployments", "sentiment", "Ready")
    assert status["url"] == "http://sentiment-serve-svc.ml.svc:8000"
    assert status["model"]["variant"] == "int8" and status["model"]["manifestUri"] == layout.manifest
    assert status["readyReplicas"] == 1

    # Deleting both removes their children (the finalizer's work).
    await c.call(
        c.custom.delete_namespaced_custom_object,
        "rayrelay.dev",
        "v1alpha1",
        NS,
        "modeldeployments",
        "sentiment",
    )
    await c.call(
        c.custom.delete_namespaced_custom_object, "rayrelay.dev", "v1alpha1", NS, "trainingjobs", "sst2"
    )

    async def children_gone() -> bool:
        return (
            await c.get("ray.io", "v1", "rayservices", "sentiment") is None
            and await c.get("ray.io", "v1", "rayjobs", "sst2-g1-a1") is None
            and await c.get("rayrelay.dev", "v1alpha1", "trainingjobs", "sst2") is None
        )

    await c.wait("children deleted", children_gone)
    await c.stop()


async def test_failures_retry_then_stuck_initializing(cluster: Cluster) -> None:
    c = cluster
    await c.start()
    tj = tj_body("flaky", failurePolicy={"backoffLimit": 1})
    await c.create("trainingjobs", tj)
    await rayjob(c, "flaky-g1-a1")
    # The first attempt fails with a retryable reason written by the workload.
    await c.write(
        c.layout(tj).failure, FailureDoc(reason="WorkerLost", message="node gone", retryable=True).to_json()
    )
    await c.patch_status("rayjobs", "flaky-g1-a1", {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED"})
    await rayjob(c, "flaky-g1-a2")  # the retry, same run folder

    async def first_gone() -> bool:
        return await c.get("ray.io", "v1", "rayjobs", "flaky-g1-a1") is None

    await c.wait("failed attempt stopped", first_gone)
    status = await c.status("trainingjobs", "flaky")
    assert status["attempt"] == 2 and cond(status, "Running")["reason"] == "WorkerLost"
    job_doc = json.loads(
        (await c.get("ray.io", "v1", "rayjobs", "flaky-g1-a2"))["spec"]["entrypoint"]
        .split("--job-json ", 1)[1]
        .strip("'")
    )  # type: ignore[index]
    assert job_doc["attempt"] == 2 and job_doc["runUri"] == c.layout(tj).base

    # The second attempt never gets past Initializing: stuck, and the limit is spent.
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await c.patch_status(
        "rayjobs", "flaky-g1-a2", {"jobDeploymentStatus": "Initializing", "startTime": long_ago}
    )
    status = await c.wait_phase("trainingjobs", "flaky", "Failed")
    assert cond(status, "Failed")["reason"] == "StuckInitializing"
    assert "300s" in cond(status, "Failed")["message"]
    assert set(c.creates("rayjobs")) == {"flaky-g1-a1", "flaky-g1-a2"}
    await c.stop()


async def test_restart_mid_training_submits_nothing_twice(cluster: Cluster) -> None:
    c = cluster
    await c.start()
    tj = tj_body("resume")
    await c.create("trainingjobs", tj)
    await rayjob(c, "resume-g1-a1")
    await c.patch_status(
        "rayjobs", "resume-g1-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    )
    await c.write(c.layout(tj).progress, progress("Training", 10))
    await c.wait_phase("trainingjobs", "resume", "Training")
    await c.stop()
    before = len(c.creates("rayjobs"))

    await c.start()
    await c.write(c.layout(tj).progress, progress("Training", 70))

    async def resumed() -> bool:
        return (await c.status("trainingjobs", "resume")).get("progress", {}).get("step") == 70

    await c.wait("progress after restart", resumed)
    await c.write(c.layout(tj).manifest, manifest_json())
    await c.patch_status(
        "rayjobs", "resume-g1-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    )
    status = await c.wait_phase("trainingjobs", "resume", "Succeeded")
    assert status["attempt"] == 1
    # The restarted operator found its submission in the status: it asked for nothing.
    assert len(c.creates("rayjobs")) == before and set(c.creates("rayjobs")) == {"resume-g1-a1"}
    await c.stop()
