"""The kopf operator with the ``ray`` backend: kmock's emulator, the real shared Ray, moto S3.

Nothing is played by the test here: the operator (``rayrelay_operator.handlers``
run by ``kopf.operator`` in the test's loop, as in ``test_operator_kuberay``)
submits the real training pipeline to the shared Ray head through the Job
Submission API, publishes into S3 on moto, deploys the real Serve apps through
Serve's REST API, and the endpoint answers a v2 inference request. Deleting
both resources removes the Ray jobs and the Serve application.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kmock as kmock_lib
import kopf
import pytest
import requests
from kubernetes import client as k8s

from rayrelay_core.api import Backend
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.handlers import build_registry, trainingjob_getter
from rayrelay_operator.reconcile import ReconcileContext
from rayrelay_operator.settings import Settings

NS = "ml"
pytestmark = pytest.mark.slow
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
RESOURCES: dict[str, dict[str, Any]] = {
    "rayrelay.dev/v1alpha1/trainingjobs": {"kind": "TrainingJob", "singular": "trainingjob"},
    "rayrelay.dev/v1alpha1/modeldeployments": {"kind": "ModelDeployment", "singular": "modeldeployment"},
    "v1/events": {"kind": "Event", "singular": "event"},
}


class Operator:
    """The operator running in this event loop against the emulator, with the ray backend."""

    def __init__(self, emulator: Any, settings: Settings, backend: RayBackend) -> None:
        self.url = str(emulator.url).rstrip("/")
        self.api_client = k8s.ApiClient(k8s.Configuration(host=self.url))
        self.custom = k8s.CustomObjectsApi(self.api_client)
        self.settings = settings
        self.backend = backend
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        registry = build_registry(self.settings)
        url = self.url

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True)

        @kopf.on.startup(registry=registry)
        def no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.scanning.disabled = True  # kmock 0.8 has no namespace list (NOTES.md)
            settings.watching.server_timeout = 10

        ctx = ReconcileContext(
            settings=self.settings,
            backends={"ray": self.backend},
            get_trainingjob=trainingjob_getter(self.api_client),
        )
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
        assert self._task is not None
        self._stop.set()
        await asyncio.wait_for(self._task, timeout=30)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def create(self, plural: str, body: dict[str, Any]) -> None:
        await self.call(
            self.custom.create_namespaced_custom_object, "rayrelay.dev", "v1alpha1", NS, plural, body
        )

    async def delete(self, plural: str, name: str) -> None:
        await self.call(
            self.custom.delete_namespaced_custom_object, "rayrelay.dev", "v1alpha1", NS, plural, name
        )

    async def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                await self.call(
                    self.custom.get_namespaced_custom_object, "rayrelay.dev", "v1alpha1", NS, plural, name
                )
            )
        except k8s.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict(((await self.get(plural, name)) or {}).get("status") or {})


async def wait(what: str, probe: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": kind,
        # The emulator keeps no resourceVersion; kopf's finalizer patch tests for one.
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": spec,
    }


@pytest.fixture
async def operator(kmock: Any, ray_cluster: Any, s3_bucket: str, s3_server: str) -> AsyncIterator[Operator]:
    for key, info in RESOURCES.items():
        kmock.resources[key] = kmock_lib.ResourceInfo(
            namespaced=True, verbs=VERBS, subresources={"status"}, **info
        )
    kmock.resources["v1/namespaces"] = kmock_lib.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=VERBS
    )
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock_lib.ResourceInfo(
        kind="CustomResourceDefinition", singular="customresourcedefinition", namespaced=False, verbs=VERBS
    )
    settings = Settings(
        default_backend=Backend.RAY,
        ray_address=ray_cluster.dashboard_url,
        artifacts_uri=f"{s3_bucket}/runs",
        s3_endpoint_url=s3_server,
        timer_interval_seconds=1.0,
        timer_idle_seconds=0.0,
        metrics_port=0,
        retry_base_delay_seconds=1.0,
        retry_max_delay_seconds=5.0,
    )
    backend = RayBackend(ray_cluster.dashboard_url, serve_host="127.0.0.1", serve_port=ray_cluster.serve_port)
    op = Operator(kmock, settings, backend)
    yield op
    if op._task is not None and not op._task.done():  # only a failed test leaves it running
        op._task.cancel()


async def test_trainingjob_to_endpoint_and_back_on_ray(
    operator: Operator, ray_cluster: Any, tiny_model: str, tiny_data: tuple[str, str]
) -> None:
    op = operator
    name = f"op-{uuid.uuid4().hex[:6]}"
    await op.start()
    spec = {
        "model": {"source": tiny_model},
        "data": {"train": tiny_data[0], "validation": tiny_data[1]},
        "hyperparameters": {"epochs": 1, "batchSize": 16, "learningRate": 3e-3, "maxSeqLength": 32},
        "resources": {"numWorkers": 2, "cpusPerWorker": 1},
    }
    await op.create("trainingjobs", body("TrainingJob", name, spec))

    seen: set[str] = set()
    steps: set[int] = set()

    async def succeeded() -> dict[str, Any] | None:
        status = await op.status("trainingjobs", name)
        seen.add(str(status.get("phase")))
        if (status.get("progress") or {}).get("step") is not None:
            steps.add(int(status["progress"]["step"]))
        failed = [
            c for c in status.get("conditions") or [] if c["type"] == "Failed" and c["status"] == "True"
        ]
        assert not failed, f"training failed: {failed}"
        return status if status.get("phase") == "Succeeded" else None

    tj = await wait("the TrainingJob to succeed", succeeded, timeout=300)
    assert tj["artifacts"]["manifestUri"].startswith("s3://"), tj
    assert tj["rayJob"]["jobId"] and tj["rayJob"]["dashboardUrl"] == ray_cluster.dashboard_url
    assert seen & {"Training", "Exporting", "Optimizing"}, f"no progress seen on the way: {seen}"
    assert steps, "status.progress never showed a step"

    md = {"model": {"trainingJobRef": {"name": name}}, "autoscaling": {"minReplicas": 1, "maxReplicas": 1}}
    md["resources"] = {"cpus": 0.5}
    await op.create("modeldeployments", body("ModelDeployment", name, md))

    async def ready() -> dict[str, Any] | None:
        status = await op.status("modeldeployments", name)
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Ready" else None

    status = await wait("the ModelDeployment to be Ready", ready, timeout=240)
    url = status["url"]
    assert url == f"http://127.0.0.1:{ray_cluster.serve_port}"
    answer = requests.post(
        f"{url}/v2/models/{name}/infer",
        json={
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["my card was charged twice"]}
            ]
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert {o["name"] for o in answer.json()["outputs"]} >= {"labels", "probabilities"}

    await op.delete("modeldeployments", name)
    await op.delete("trainingjobs", name)

    def ray_children() -> tuple[list[str], bool]:
        jobs = [
            j.submission_id
            for j in op.backend._jobs().list_jobs()
            if (j.metadata or {}).get("rayrelay.dev/name") == name
        ]
        return jobs, name in (op.backend.serve_instance().get("applications") or {})

    async def gone() -> bool:
        jobs, app = await asyncio.to_thread(ray_children)
        return (
            not jobs
            and not app
            and await op.get("trainingjobs", name) is None
            and await op.get("modeldeployments", name) is None
        )

    await wait("the Ray job and the Serve application to be gone", gone, timeout=120)
    await op.stop()
