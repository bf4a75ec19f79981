"""A ModelDeployment brought up the product's way, for ``bench.endpoint`` and ``bench.cold_start``.

The same path ``rayrelay run`` takes, with nothing re-implemented:

- a local Ray head (``rayrelay_operator.localray.LocalRay``: ``ray start
  --head`` on free ports, torn down by SIGTERM, never ``ray stop``);
- the ``ray`` backend (``rayrelay_operator.backends.ray.RayBackend``), which
  deploys through Serve's REST API (the shared gateway application + one model
  application, ``rayrelay_core.serveconfig``);
- the one reconcile pass (``rayrelay_operator.reconcile.run_pass``), called in
  a loop on the resource (a plain dict whose status patch is written back after
  each pass, as the operator and ``rayrelay run`` do, waiting the pass's delay
  after a temporary error) until the phase is Ready, i.e. the replica has
  verified the artifact digests, created its onnxruntime session and passed a
  warm-up inference.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import THREADS, free_port, log


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


def start_cluster(num_cpus: int = 4, s3_endpoint: str | None = None, start_timeout: float = 120.0) -> Cluster:
    from rayrelay_operator.backends.ray import RayBackend
    from rayrelay_operator.localray import LocalRay
    from rayrelay_operator.settings import Settings

    ray = LocalRay(num_cpus=num_cpus)
    dashboard = ray.start(timeout=start_timeout)
    port = free_port()
    backend = RayBackend(
        dashboard,
        serve_host="127.0.0.1",
        serve_port=port,
        python=os.sys.executable,
        auth_token=ray.auth_token,
    )
    settings = Settings(default_backend="ray", ray_address=dashboard, s3_endpoint_url=s3_endpoint)  # type: ignore[arg-type]
    return Cluster(ray, backend, port, settings)


@dataclass
class Rollout:
    seconds: float
    phases: list[tuple[float, str]] = field(default_factory=list)  # (seconds since create, phase)
    status: dict[str, Any] = field(default_factory=dict)
    temporary_errors: int = 0


def deploy(
    cluster: Cluster,
    obj: dict[str, Any],
    timeout: float = 600,
    interval: float = 0.25,
    *,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    ctx: Any = None,
) -> Rollout:
    """Pass over ``obj`` until Ready (or Failed: raises); returns the time it took.

    Each pass is ``reconcile.run_pass``, as in the operator and ``rayrelay run``:
    a temporary error (the dashboard busy, Serve starting) waits the pass's delay.
    """
    from rayrelay_operator.reconcile import MODELDEPLOYMENT, ReconcileContext, run_pass

    ctx = ctx or ReconcileContext(settings=cluster.settings, backends={"ray": cluster.backend})
    start = clock()
    phases: list[tuple[float, str]] = []
    retries = 0
    while True:
        result = run_pass(MODELDEPLOYMENT, obj, ctx)
        if result.patch:
            obj["status"] = result.status.wire()
        phase = str(obj["status"].get("phase"))
        if not phases or phases[-1][1] != phase:
            phases.append((clock() - start, phase))
        if phase == "Ready":
            return Rollout(clock() - start, phases, dict(obj["status"]), retries)
        if result.permanent or phase == "Failed":
            raise RuntimeError(
                f"ModelDeployment {obj['metadata']['name']} failed: {result.problem or obj['status']}"
            )
        if clock() - start > timeout:
            raise TimeoutError(f"ModelDeployment not Ready after {timeout}s: {obj['status']}")
        head = getattr(cluster.ray, "_proc", None)  # LocalRay's `ray start --head --block`
        if head is not None and head.poll() is not None:
            # On a loaded machine a head component can time out and `ray start` stops them all;
            # the passes would only see temporary errors until the timeout.
            raise HeadExited(f"the local Ray head exited (code {head.returncode})")
        retries += int(result.temporary)
        sleep(result.delay if result.temporary and result.delay is not None else interval)


class HeadExited(RuntimeError):
    """The local Ray head stopped while a deployment was rolling out (see :func:`deploy`)."""


def start_and_deploy(
    obj: dict[str, Any], tries: int = 3, start_timeout: float = 600
) -> tuple[Cluster, Rollout]:
    """:func:`start_cluster` and :func:`deploy`, on a fresh head again when the head exited meanwhile.

    On a loaded machine one of a head's components can time out at start (the Ray client
    server waiting for its node) and ``ray start --block`` then stops them all; a benchmark
    starts over on a new head rather than fail the run."""
    for attempt in range(1, tries + 1):
        cluster = start_cluster(start_timeout=start_timeout)
        try:
            return cluster, deploy(cluster, obj)
        except HeadExited as exc:
            cluster.stop()
            obj.pop("status", None)
            if attempt == tries:
                raise
            log(f"serving: {exc}; starting a new head (attempt {attempt + 1} of {tries})")
        except BaseException:
            cluster.stop()
            raise
    raise AssertionError("unreachable")


def undeploy(cluster: Cluster, obj: dict[str, Any]) -> None:
    from rayrelay_operator.reconcile import MODELDEPLOYMENT, ReconcileContext, delete_pass

    delete_pass(
        MODELDEPLOYMENT, obj, ReconcileContext(settings=cluster.settings, backends={"ray": cluster.backend})
    )
