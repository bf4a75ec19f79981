"""A ModelDeployment brought up the product's way, for ``bench.endpoint`` and ``bench.cold_start``.

The same path ``rayrelay run`` takes, with nothing re-implemented:

- a local Ray head (``rayrelay_operator.localray.LocalRay``: ``ray start
  --head`` on free ports, torn down by SIGTERM, never ``ray stop``);
- the ``ray`` backend (``rayrelay_operator.backends.ray.RayBackend``), which
  deploys through Serve's REST API (the shared gateway application + one model
  application, ``rayrelay_core.serveconfig``);
- the ModelDeployment reconciler (``rayrelay_operator.reconcile.reconcile_modeldeployment``),
  called in a loop on the resource (a plain dict whose status is written back
  after each pass, as the operator and ``rayrelay run`` do) until the phase is
  Ready, i.e. the replica has verified the artifact digests, created its
  onnxruntime session and passed a warm-up inference.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import THREADS, free_port


def md_object(
    name: str, manifest_uri: str, variant: str = "int8", endpoint_url: str | None = None
) -> dict[str, Any]:
    """The ModelDeployment of the benchmarks: 1 replica, batching on, 2 onnxruntime threads."""
    spec: dict[str, Any] = {
        "model": {"manifestUri": manifest_uri, "variant": variant},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        "resources": {"cpus": 1},
        "batching": {"maxBatchSize": 32, "batchWaitTimeoutMs": 5},
        "runtime": {"intraOpThreads": THREADS, "interOpThreads": 1},
        "backend": "ray",
    }
    if endpoint_url:
        spec["artifacts"] = {"endpointUrl": endpoint_url}
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


@dataclass
class Cluster:
    ray: Any  # LocalRay
    backend: Any  # RayBackend
    serve_port: int
    settings: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.serve_port}"

    def stop(self) -> None:
        self.ray.stop()


def start_cluster(num_cpus: int = 4, s3_endpoint: str | None = None) -> Cluster:
    from rayrelay_operator.backends.ray import RayBackend
    from rayrelay_operator.localray import LocalRay
    from rayrelay_operator.settings import Settings

    ray = LocalRay(num_cpus=num_cpus)
    dashboard = ray.start()
    port = free_port()
    backend = RayBackend(dashboard, serve_host="127.0.0.1", serve_port=port, python=os.sys.executable)
    settings = Settings(default_backend="ray", ray_address=dashboard, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]
    return Cluster(ray, backend, port, settings)


@dataclass
class Rollout:
    seconds: float
    phases: list[tuple[float, str]] = field(default_factory=list)  # (seconds since create, phase)
    status: dict[str, Any] = field(default_factory=dict)
    temporary_errors: int = 0


def deploy(cluster: Cluster, obj: dict[str, Any], timeout: float = 600, interval: float = 0.25) -> Rollout:
    """Reconcile ``obj`` until Ready (or Failed: raises); returns the time it took."""
    from rayrelay_operator.reconcile import (
        ReconcileContext,
        classify,
        reconcile_modeldeployment,
        status_changed,
    )

    ctx = ReconcileContext(settings=cluster.settings, backends={"ray": cluster.backend})
    start = time.perf_counter()
    phases: list[tuple[float, str]] = []
    retries = 0
    while True:
        try:
            status = reconcile_modeldeployment(obj, ctx)
        except Exception as exc:
            # As the drivers do: temporary errors (the dashboard busy, Serve starting) are retried.
            if classify(exc).permanent or time.perf_counter() - start > timeout:
                raise
            retries += 1
            time.sleep(min(2.0, interval * 2**retries))
            continue
        if status_changed(obj.get("status"), status):
            obj["status"] = status.wire()
        phase = str(obj["status"].get("phase"))
        if not phases or phases[-1][1] != phase:
            phases.append((time.perf_counter() - start, phase))
        if phase == "Ready":
            return Rollout(time.perf_counter() - start, phases, dict(obj["status"]), retries)
        if phase == "Failed":
            raise RuntimeError(f"ModelDeployment {obj['metadata']['name']} failed: {obj['status']}")
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"ModelDeployment not Ready after {timeout}s: {obj['status']}")
        time.sleep(interval)


def undeploy(cluster: Cluster, obj: dict[str, Any]) -> None:
    from rayrelay_operator.reconcile import ReconcileContext, delete_modeldeployment

    delete_modeldeployment(
        obj, ReconcileContext(settings=cluster.settings, backends={"ray": cluster.backend})
    )
