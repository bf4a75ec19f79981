"""The kopf operator with the kuberay backend against kmock's Kubernetes emulator and moto S3.

The operator runs for real (``kopf.operator`` as a task in the test's event
loop, standalone, namespace-scoped) with the handlers of
``rayrelay_operator.handlers``, over HTTP to the emulator (every resource
registered with its status subresource, scanning disabled, a login handler for
the emulator's URL: ``kopf_harness``). The test plays KubeRay: it writes RayJob and
RayService status and the workload's progress/manifest documents into S3, and
asserts what the operator created and the status it reports.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import FailureDoc, ProgressDoc, RunLayout, run_id_for
from rayrelay_core.store import S3Settings, S3Store
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.settings import Settings
from tests.integration.kopf_harness import OperatorHarness, register_resources, wait_until

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
    # The NetworkPolicy created with each RayJob / RayService (issue 26).
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "singular": "networkpolicy"},
}


class Cluster(OperatorHarness):
    """The emulator, an API client to it, S3, and the operator runs (kuberay backend)."""

    def __init__(self, emulator: Any, s3_bucket: str, s3_server: str) -> None:
        self.k = emulator
        self.bucket = s3_bucket
        self.store = S3Store(S3Settings(endpoint_url=s3_server))
        settings = Settings(
            artifacts_uri=f"{s3_bucket}/runs",
            s3_endpoint_url=s3_server,
            timer_interval_seconds=0.5,
            timer_idle_seconds=0.0,
            store_poll_seconds=0.0,  # a running job's progress on every tick (tests/unit: the pacing)
            metrics_port=0,
            stuck_initializing_seconds=300,
            retry_base_delay_seconds=0.5,
        )
        super().__init__(
            str(emulator.url),
            settings,
            lambda client: {"kuberay": KubeRayBackend(client, settings)},
            NS,
        )

    # ------------------------------------------------------------------ helpers

    async def patch_status(self, plural: str, name: str, status: dict[str, Any]) -> None:
        """Write a KubeRay resource's status (the test plays KubeRay)."""
        await self.call(
            self.custom.patch_namespaced_custom_object_status,
            "ray.io",
            "v1",
            NS,
            plural,
            name,
            {"status": status},
        )

    async def ray(self, plural: str, name: str) -> dict[str, Any] | None:
        return await self.get(plural, name, group="ray.io", version="v1")

    async def wait(self, what: str, probe: Callable[[], Awaitable[Any]], timeout: float = 30) -> Any:
        return await wait_until(what, probe, timeout, interval=0.2)

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
    register_resources(kmock, RESOURCES)
    c = Cluster(kmock, s3_bucket, s3_server)
    yield c
    c.cancel()


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
    return dict(await c.wait(f"RayJob {name}", lambda: c.ray("rayjobs", name)))


async def test_trainingjob_and_deployment_through_every_phase(cluster: Cluster) -> None:
    c = cluster
    await c.start()
    tj = tj_body("sst2")
    await c.create("trainingjobs", tj)

    rj = await rayjob(c, "sst2-g1-a1")
    assert rj["spec"]["jobId"] == "rayrelay-ml-sst2-74f1c81c-g1-a1"
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
    assert status["attempt"] == 1 and status["rayJob"]["jobId"] == "rayrelay-ml-sst2-74f1c81c-g1-a1"

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
    rs = await c.wait("RayService", lambda: c.ray("rayservices", "sentiment"))
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

    # Deleting both. The ModelDeployment's finalizer removes its RayService. A kuberay TrainingJob
    # carries no finalizer: its RayJob is owned by it, and Kubernetes' garbage collector deletes it
    # with it (the emulator has none; tests/cluster/test_operator.py sees it on a real one).
    stored = await c.get("trainingjobs", "sst2")
    assert stored is not None and not stored["metadata"].get("finalizers"), stored["metadata"]
    md_stored = await c.get("modeldeployments", "sentiment")
    assert md_stored is not None and md_stored["metadata"].get("finalizers") == ["rayrelay.dev/finalizer"]
    owned = await c.ray("rayjobs", "sst2-g1-a1")
    assert owned is not None and [o["uid"] for o in owned["metadata"]["ownerReferences"]] == ["uid-sst2"]
    await c.delete("modeldeployments", "sentiment")
    await c.delete("trainingjobs", "sst2")

    async def children_gone() -> bool:
        return await c.ray("rayservices", "sentiment") is None and await c.get("trainingjobs", "sst2") is None

    await c.wait("children deleted", children_gone)
    await c.stop()


async def test_deleting_a_waiting_trainingjob_stops_its_timer(cluster: Cluster) -> None:
    """No finalizer on a kuberay TrainingJob, so kopf does not stop its timer on deletion by
    itself: the DELETED event must. A tick on the gone body would find its RayJob absent (the
    garbage collector's work, done here by the test) and submit it again."""
    c = cluster
    await c.start()
    await c.create("trainingjobs", tj_body("gone"))
    await rayjob(c, "gone-g1-a1")
    await c.wait_phase("trainingjobs", "gone", "Pending")  # waiting for its cluster: the timer ticks
    stored = await c.get("trainingjobs", "gone")
    assert stored is not None and not stored["metadata"].get("finalizers"), stored["metadata"]
    await c.delete("trainingjobs", "gone")

    async def tj_gone() -> bool:
        return await c.get("trainingjobs", "gone") is None

    await c.wait("the TrainingJob gone", tj_gone)
    await c.delete("rayjobs", "gone-g1-a1", group="ray.io", version="v1")
    creates = len(c.creates("rayjobs"))
    await asyncio.sleep(6 * 0.5)  # six timer intervals; what is checked is that nothing happens
    # (The emulator can replay a pre-patch event, so the create itself may have been sent twice,
    # 409 the second time; what matters here is that none comes after the deletion.)
    assert len(c.creates("rayjobs")) == creates and await c.ray("rayjobs", "gone-g1-a1") is None
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
        return await c.ray("rayjobs", "flaky-g1-a1") is None

    await c.wait("failed attempt stopped", first_gone)
    status = await c.status("trainingjobs", "flaky")
    assert status["attempt"] == 2 and cond(status, "Running")["reason"] == "WorkerLost"
    entrypoint = (await rayjob(c, "flaky-g1-a2"))["spec"]["entrypoint"]
    job_doc = json.loads(entrypoint.split("--job-json ", 1)[1].strip("'"))
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
