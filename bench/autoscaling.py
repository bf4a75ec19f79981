"""Benchmark 6, autoscaling: replicas under a step load, scale up/down times, cold starts from zero.

One ModelDeployment of the benchmark model (int8) with ``minReplicas: 0,
maxReplicas: 3``, brought up the product's way (``bench.serving``: a local Ray
head, the ``ray`` backend, the reconcile pass until Ready), artifacts on a moto
S3 server on loopback (a real S3 transfer), the replicas' node cache in a
folder of its own (``RAYRELAY_CACHE_DIR``). Then:

1. **Step load**: idle, then a closed-loop load of ``C`` concurrent clients
   (one-hop v2 infer, asyncio streams in this process) for ``T`` seconds, then
   idle again. Serve's REST API is sampled every 0.5 s: the autoscaler's target
   and the replicas by state. Time to scale up = load start to the second
   RUNNING replica (and to the most); time to scale down = load stop to the
   target back at one replica. Every request's status is counted (errors: non-2xx
   or connection errors).
2. **Cold start from zero**: wait until Serve released every replica
   (``scaleToZeroAfterSeconds``), send one request and time it to its answer.
   The first time with the node cache emptied (the replica downloads), then with
   the cache warm (nothing downloaded). The replica's own record
   (``ModelServer.info()["coldStart"]``, as its constructor logs it) splits the
   wait: Serve's part (decision, actor process, imports) up to the
   constructor's start, then manifest, download, digest check, tokenizer,
   session, warm-up, then the time from the replica ready to the answer
   (Serve marking it running, the proxy learning of it, the request itself).

``--cold-only [--cold-starts N]``: the cold starts alone (no step load), each with Serve's
part split step by step from the stamps the head's processes log (:func:`serve_timeline`;
docs/performance.md, section 6, "Serve's part, step by step"). The replica's record is read
from its log line, so this process joins the head as no Ray driver.

A full run then runs those cold starts again with ``--serve-default-intervals`` in a
process of its own (``bench.common.serve_defaults_baseline``; ``--no-baseline`` skips it),
so the page shows the scale-from-zero settings against Serve's own side by side.

``--preloaded`` (``python -m bench.autoscaling --preloaded``, then ``python -m
bench.report``) adds a second contender measured in the same run: the warm cold
starts again, on a second head whose idle Ray workers import Serve and the
serving code before they take work (Ray's ``RAY_preload_python_modules``), in a
process of its own.

The plot (replicas and load over time) is drawn by ``bench.report`` from the
timeline in the result file, with :func:`plot_png` (no plotting library is
installed here: the PNG is written with zlib and struct).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    add_baseline_args,
    apply_env,
    load_average,
    log,
    median,
    serve_defaults_baseline,
    use_serve_default_intervals,
    write_result,
)

apply_env()

NAME = "bench-autoscale"
NODE_CACHE = CACHE / "autoscaling-node-cache"
# What a Ray worker imports before it takes work, for the "preloaded" contender: Serve and the
# serving code with its heavy imports (a replica started from zero then skips them).
PRELOAD_ENV = "RAY_preload_python_modules"  # Ray's config preload_python_modules (the raylet)
PRELOAD = "ray.serve,rayrelay_workloads.serve.app,onnxruntime,tokenizers"
TEXT = "my parcel has not arrived and the tracking page shows nothing"


def spec_autoscaling(quick: bool) -> dict[str, Any]:
    return {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetOngoingRequests": 2,
        "upscaleDelaySeconds": 0,
        "downscaleDelaySeconds": 5,
        "scaleToZeroAfterSeconds": 5,
        "metricsWindowSeconds": 4,
    }


def serve_replicas(backend: Any) -> tuple[int | None, dict[str, int]]:
    """(target, replicas by state) of the model deployment, from Serve's REST API.

    Read through the product's client (``RayBackend.serve_instance``), which sends the head's
    token: `rayrelay run`'s head requires Ray's token authentication.
    """
    apps = backend.serve_instance().get("applications") or {}
    dep = ((apps.get(NAME) or {}).get("deployments") or {}).get("ModelServer") or {}
    states: dict[str, int] = {}
    for replica in dep.get("replicas") or []:
        states[replica.get("state", "?")] = states.get(replica.get("state", "?"), 0) + 1
    target = dep.get("target_num_replicas")
    return (int(target) if target is not None else None), states


# ------------------------------------------------------------------ load


class Load:
    """Closed-loop clients on keep-alive connections; counts answers per status."""

    def __init__(self, url: str) -> None:
        from bench.loadgen import encode_requests

        self.request = encode_requests(f"{url}/v2/models/{NAME}/infer", "v2", [TEXT])[0]
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.codes: dict[str, int] = {}
        self.in_flight = 0
        self.stop = asyncio.Event()

    def _count(self, key: str) -> None:
        self.codes[key] = self.codes.get(key, 0) + 1

    async def client(self) -> None:
        from bench.loadgen import read_response

        reader = writer = None
        while not self.stop.is_set():
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                assert reader is not None
                self.in_flight += 1
                try:
                    writer.write(self.request)
                    status, keep = await asyncio.wait_for(read_response(reader), 60)
                finally:
                    self.in_flight -= 1
                self._count(str(status))
                if not keep:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, Exception) as exc:
                self._count(type(exc).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()


async def step_load(
    url: str, backend: Any, concurrency: int, idle_s: float, load_s: float, after_s: float
) -> dict[str, Any]:
    load = Load(url)
    samples: list[dict[str, Any]] = []
    start = time.monotonic()
    phase = {"clients": 0}
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            try:
                target, states = serve_replicas(backend)
            except Exception as exc:  # a slow dashboard: a gap in the timeline, said so
                log(f"autoscaling: sample failed: {exc}")
                target, states = None, {}
            samples.append(
                {
                    "t": round(time.monotonic() - start, 2),
                    "clients": phase["clients"],
                    "target": target,
                    "running": states.get("RUNNING", 0),
                    "starting": states.get("STARTING", 0) + states.get("PENDING_MIGRATION", 0),
                    "stopping": states.get("STOPPING", 0),
                    "answered": sum(v for k, v in load.codes.items() if k == "200"),
                }
            )
            time.sleep(0.5)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    await asyncio.sleep(idle_s)
    load_start = time.monotonic() - start
    phase["clients"] = concurrency
    tasks = [asyncio.create_task(load.client()) for _ in range(concurrency)]
    await asyncio.sleep(load_s)
    load.stop.set()
    await asyncio.gather(*tasks)
    load_stop = time.monotonic() - start
    phase["clients"] = 0
    await asyncio.sleep(after_s)
    done.set()
    thread.join()
    return {
        "samples": samples,
        "load_start_s": round(load_start, 2),
        "load_stop_s": round(load_stop, 2),
        "codes": load.codes,
    }


def scaling_times(run: dict[str, Any]) -> dict[str, Any]:
    """Time to the 2nd running replica and to the most, and back to one target after the load."""
    samples, start, stop = run["samples"], run["load_start_s"], run["load_stop_s"]
    during = [s for s in samples if start <= s["t"] <= stop + 1]
    most = max((s["running"] for s in during), default=0)
    up2 = next((s["t"] - start for s in during if s["running"] >= 2), None)
    up_most = next((s["t"] - start for s in during if s["running"] >= most), None)
    after = [s for s in samples if s["t"] >= stop]
    down = next((s["t"] - stop for s in after if s["target"] is not None and s["target"] <= 1), None)
    down_running = next((s["t"] - stop for s in after if s["running"] <= 1 and not s["stopping"]), None)
    answered = sum(v for k, v in run["codes"].items() if k == "200")
    errors = sum(v for k, v in run["codes"].items() if k != "200")
    return {
        "max_running_replicas": most,
        "scale_up_to_2_s": round(up2, 1) if up2 is not None else None,
        "scale_up_to_max_s": round(up_most, 1) if up_most is not None else None,
        "scale_down_target_to_1_s": round(down, 1) if down is not None else None,
        "scale_down_running_to_1_s": round(down_running, 1) if down_running is not None else None,
        "requests": answered + errors,
        "errors": errors,
        "throughput_rps": round(answered / max(1e-9, stop - start), 1),
    }


# ------------------------------------------------------------------ cold starts


def wait_zero(backend: Any, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        target, states = serve_replicas(backend)
        if target == 0 and not states:
            return time.monotonic() - start
        time.sleep(0.25)
    raise TimeoutError("the deployment did not scale to zero")


def replica_record(logs: Path, sent: float, timeout: float = 30) -> dict[str, Any]:
    """The cold-start record of the replica that started after ``sent`` (``ModelServer``'s
    ``coldStart``, which its constructor logs: "NAME cold start: key value, ..."), read from the
    head's worker logs: no Ray driver needed (the head requires a token a driver must present)."""
    deadline = time.monotonic() + timeout
    while True:
        paths = [
            *logs.glob("worker-*.err"),
            *logs.glob("old/worker-*.err"),
            *logs.glob("serve/replica_*.log"),
        ]
        for path in paths:
            for line in path.read_text(errors="replace").splitlines():
                if f"{NAME} cold start: " not in line:
                    continue
                record: dict[str, Any] = {}
                for item in line.split(" cold start: ", 1)[1].split(", "):
                    key, _, value = item.partition(" ")
                    record[key] = float(value) if "." in value else int(value)
                if record.get("initStartedAt", 0) >= sent:
                    return record
        if time.monotonic() > deadline:
            found = [
                ln[-200:]
                for p in paths
                for ln in p.read_text(errors="replace").splitlines()
                if "cold start: " in ln
            ]
            raise TimeoutError(f"no cold-start record after {sent} in {logs}: {found}")
        time.sleep(0.2)


def cold_start(url: str, logs: Path) -> dict[str, Any]:
    """One first request after scale-to-zero, timed; split by the replica's record and Serve's
    part step by step (:func:`serve_timeline`), both from the head's ``logs``."""
    import requests

    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}
    sent = time.time()
    t0 = time.perf_counter()
    resp = requests.post(f"{url}/v2/models/{NAME}/infer", json=body, timeout=120)
    total = time.perf_counter() - t0
    answered = sent + total
    try:
        cs = replica_record(logs, sent)
    except TimeoutError as exc:  # said so in the result: Serve's steps still come from the logs
        log(f"autoscaling: {exc}")
        cs = {}

    def rel(at: float | None, since: float | None) -> float | None:
        return round(at - since, 3) if at is not None and since is not None else None

    timeline = serve_timeline(logs, sent, cs, answered)
    return {
        "serve_steps": timeline["steps"],
        "new_worker_process": timeline["new_worker_process"],
        "status": resp.status_code,
        "total_s": round(total, 3),
        "serve_start_s": rel(cs.get("initStartedAt"), sent),  # decision, actor process, imports
        "manifest_s": cs.get("manifestS"),
        "download_s": cs.get("downloadS"),
        "verify_s": cs.get("verifyS"),
        "tokenizer_s": cs.get("tokenizerS"),
        "session_s": cs.get("sessionS"),
        "warmup_s": cs.get("warmupS"),
        "init_s": cs.get("initS"),
        "ready_to_answer_s": rel(answered, cs.get("readyAt")),
        "downloaded_bytes": cs.get("downloadedBytes"),
        "cached_files": cs.get("cachedFiles"),
    }


def preloaded_cold_starts(reps: int, manifest_uri: str, endpoint: str, out: Path) -> None:
    """Warm cold starts on a head started with ``RAY_preload_python_modules`` (set by the caller)."""
    from bench.serving import deploy, md_object, start_cluster, undeploy

    cluster = start_cluster(num_cpus=4, s3_endpoint=endpoint, start_timeout=300)
    try:
        obj = md_object(NAME, manifest_uri, "int8", endpoint_url=endpoint)
        obj["spec"]["autoscaling"] = spec_autoscaling(False)
        obj["spec"]["runtime"] = {"intraOpThreads": 1, "interOpThreads": 1}
        deploy(cluster, obj, timeout=600)
        logs = Path(cluster.ray.temp_dir) / "session_latest" / "logs"
        colds = []
        for i in range(reps):
            idle = wait_zero(cluster.backend)
            time.sleep(0.5)
            cold = cold_start(cluster.url, logs)
            cold["node_cache"] = "warm"
            cold["waited_for_zero_s"] = round(idle, 1)
            log(f"autoscaling: cold start with preloaded workers {i}: {cold}")
            colds.append(cold)
        undeploy(cluster, obj)
        out.write_text(json.dumps(colds))
    finally:
        cluster.stop()


def warm_step_medians(colds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median of each step of Serve's part over the warm cold starts (:func:`serve_timeline`)."""
    warm = [c["serve_steps"] for c in colds if c["node_cache"] == "warm" and c.get("serve_steps")]
    keys = list(warm[0]) if warm else []
    return {
        k: round(median([w[k] for w in warm if w.get(k) is not None]), 3)
        if any(w.get(k) is not None for w in warm)
        else None
        for k in keys
    }


def warm_medians(colds: list[dict[str, Any]]) -> dict[str, float]:
    warm = [c for c in colds if c["node_cache"] == "warm"]
    keys = [
        k
        for k, v in warm[0].items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "status"
    ]
    return {k: round(median([c[k] for c in warm if c.get(k) is not None]), 3) for k in keys}


# ------------------------------------------------------------------ Serve's part, from the processes' own logs

_LOG_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")


def _stamp(line: str) -> float | None:
    """Seconds since the epoch of a Ray or Serve log line (both write local time, ms)."""
    match = _LOG_STAMP.search(line)
    if not match:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000


def _first(lines: list[str], after: float, *needles: str) -> tuple[float, str] | None:
    """The first line at or after ``after`` that holds every needle: (its stamp, the line)."""
    for line in lines:
        if all(needle in line for needle in needles):
            at = _stamp(line)
            if at is not None and at >= after:
                return at, line
    return None


def serve_timeline(logs: Path, sent: float, cs: dict[str, Any], answered: float) -> dict[str, Any]:
    """Serve's part of one cold start, step by step, from the stamps the processes log themselves.

    ``logs`` is the head's ``session_latest/logs``. The controller logs its decision
    ("Upscaling ... from 0") and the replica's start; the raylet logs the worker process it
    starts ("Started worker process with pid P": a new process, not an idle one reused); the
    core worker of P logs when it is up ("Constructing CoreWorkerProcess", after the
    interpreter and ``import ray``) and when the actor's creation task starts and ends (Serve's
    ``ReplicaActor``: ``import ray.serve``, the deployment's module, the user class); the
    replica's own record gives its constructor; the controller logs the replica running.
    Every step is seconds from the previous one; None where a line was not found.
    """

    def lines(path: Path) -> list[str]:
        try:
            return path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    controller = [ln for p in sorted((logs / "serve").glob("controller_*.log")) for ln in lines(p)]
    raylet = lines(logs / "raylet.out")
    decision = _first(controller, sent - 0.5, f"app='{NAME}') from 0 to")
    start = _first(controller, decision[0] if decision else sent, "Starting Replica(id=", f"app='{NAME}'")
    replica_id = re.search(r"id='([^']+)'", start[1]).group(1) if start else None
    running = (
        _first(controller, start[0], f"Replica(id='{replica_id}'", "started successfully")
        if replica_id
        else None
    )
    pid = re.search(r"PID: (\d+)", running[1]) if running else None
    spawned = _first(raylet, sent, f"Started worker process with pid {pid.group(1)} ") if pid else None
    worker: list[str] = []
    if pid:
        for path in [
            *logs.glob(f"python-core-worker-*_{pid.group(1)}.log"),
            *logs.glob(f"old/python-core-worker-*_{pid.group(1)}.log"),
        ]:
            worker = lines(path)
    core_up = _first(worker, sent, "Constructing CoreWorkerProcess")
    actor_task = _first(worker, sent, "Creating actor")
    stamps = {
        "sent": sent,
        "decision": decision[0] if decision else None,
        "replica_started": start[0] if start else None,
        "worker_spawned": spawned[0] if spawned else None,
        "core_worker_up": core_up[0] if core_up else None,
        "actor_task_started": actor_task[0] if actor_task else None,
        "constructor_started": cs.get("initStartedAt"),
        "constructor_done": cs.get("readyAt"),
        "controller_saw_running": running[0] if running else None,
        "answered": answered,
    }
    steps: dict[str, float | None] = {}
    prev_key, prev = "sent", sent
    for key, at in list(stamps.items())[1:]:
        steps[f"{prev_key}->{key}"] = round(at - prev, 3) if at is not None and prev is not None else None
        if at is not None:
            prev_key, prev = key, at
    return {"new_worker_process": spawned is not None, "steps": steps}


# ------------------------------------------------------------------ plot


def plot_png(
    samples: list[dict[str, Any]], path: Path, load_window: tuple[float, float], max_replicas: int
) -> Path:
    """Replicas over time as a small PNG: grey band = load on, blue = running replicas, orange =
    the autoscaler's target; grid every 10 s and every replica. Written with zlib + struct."""
    width, height, pad = 640, 200, 20
    t_end = max((s["t"] for s in samples), default=1.0) or 1.0
    ymax = max(max_replicas, 1)
    px = bytearray([255] * (width * height * 3))

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            px[i : i + 3] = bytes(rgb)

    def sx(t: float) -> int:
        return pad + int((width - 2 * pad) * t / t_end)

    def sy(v: float) -> int:
        return height - pad - int((height - 2 * pad) * v / ymax)

    for x in range(sx(load_window[0]), sx(load_window[1]) + 1):  # load band
        for y in range(pad, height - pad):
            put(x, y, (225, 225, 225))
    for t in range(0, int(t_end) + 1, 10):  # grid
        for y in range(pad, height - pad):
            put(sx(t), y, (200, 200, 200))
    for v in range(ymax + 1):
        for x in range(pad, width - pad):
            put(x, sy(v), (170, 170, 170) if v else (0, 0, 0))
    for y in range(pad, height - pad + 1):
        put(pad, y, (0, 0, 0))

    def line(key: str, rgb: tuple[int, int, int], offset: int) -> None:
        prev: tuple[int, int] | None = None
        for s in samples:
            value = s.get(key)
            if value is None:
                continue
            x, y = sx(s["t"]), sy(value) + offset
            if prev is not None:  # a step: along, then up or down
                for xx in range(prev[0], x + 1):
                    for w in (0, 1):
                        put(xx, prev[1] + w, rgb)
                for yy in range(min(prev[1], y), max(prev[1], y) + 1):
                    for w in (0, 1):
                        put(x + w, yy, rgb)
            prev = (x, y)

    line("target", (230, 130, 20), -2)
    line("running", (30, 90, 200), 1)
    raw = b"".join(b"\x00" + bytes(px[y * width * 3 : (y + 1) * width * 3]) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaling")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--cold-only",
        action="store_true",
        help="only the cold starts from zero (no step load): Serve's part step by step",
    )
    parser.add_argument("--cold-starts", type=int, default=0, help="warm cold starts (default 3, 1 quick)")
    add_baseline_args(
        parser, "the baseline cold starts with Serve's own intervals (run after this run's by default)"
    )
    parser.add_argument(
        "--preloaded",
        action="store_true",
        help="also measure cold starts on a second head whose idle workers preload the serving code",
    )
    # The second contender's own process (see below): N warm cold starts on a preloading head.
    parser.add_argument("--preloaded-cold-starts", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.preloaded_cold_starts:
        preloaded_cold_starts(args.preloaded_cold_starts, args.manifest, args.endpoint, Path(args.out))
        return

    from moto.server import ThreadedMotoServer

    from bench.cold_start import upload_run
    from bench.model import ensure_run
    from bench.serving import deploy, md_object, start_cluster, undeploy

    concurrency, load_s, reps = (8, 15.0, 1) if args.quick else (16, 30.0, 3)
    reps = args.cold_starts or reps
    if args.serve_default_intervals:
        use_serve_default_intervals()
    shutil.rmtree(NODE_CACHE, ignore_errors=True)
    os.environ["RAYRELAY_CACHE_DIR"] = str(NODE_CACHE)  # the head (and so every replica) inherits it
    run = ensure_run()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    cluster = start_cluster(num_cpus=4, s3_endpoint=endpoint, start_timeout=300)
    try:
        manifest_uri = upload_run(run, endpoint)
        obj = md_object(NAME, manifest_uri, "int8", endpoint_url=endpoint)
        obj["spec"]["autoscaling"] = spec_autoscaling(args.quick)
        obj["spec"]["runtime"] = {"intraOpThreads": 1, "interOpThreads": 1}
        rollout = deploy(cluster, obj, timeout=600)
        log(f"autoscaling: Ready in {rollout.seconds:.1f}s")
        url = cluster.url
        scaling = obj["spec"]["autoscaling"]
        after_s = scaling["downscaleDelaySeconds"] + scaling["metricsWindowSeconds"] + 15
        timeline: dict[str, Any] = {"samples": [], "load_start_s": 0.0, "load_stop_s": 0.0, "codes": {}}
        times: dict[str, Any] = {}
        if not args.cold_only:
            timeline = asyncio.run(step_load(url, cluster.backend, concurrency, 5.0, load_s, after_s))
            times = scaling_times(timeline)
            log(f"autoscaling: {times}")
        logs = Path(cluster.ray.temp_dir) / "session_latest" / "logs"
        colds: list[dict[str, Any]] = []
        for i in range(1 + reps):
            idle = wait_zero(cluster.backend)
            if i == 0:
                shutil.rmtree(NODE_CACHE, ignore_errors=True)  # the first one downloads
            time.sleep(0.5)
            cold = cold_start(url, logs)
            cold["node_cache"] = "empty" if i == 0 else "warm"
            cold["waited_for_zero_s"] = round(idle, 1)
            log(f"autoscaling: cold start {i}: {cold}")
            colds.append(cold)
        warm_median = warm_medians(colds)
        steps_median = warm_step_medians(colds)
        log(f"autoscaling: warm cold start medians {warm_median}, Serve's part by step {steps_median}")
        undeploy(cluster, obj)
        cluster.stop()
        # The same cold starts on a second head whose idle workers import the serving code
        # ahead of time (RAY_preload_python_modules), measured in this run, side by side. In a
        # process of its own (a head's environment is this process's).
        preloaded: list[dict[str, Any]] = []
        if args.preloaded:
            out = CACHE / "autoscaling-preloaded.json"
            out.unlink(missing_ok=True)
            env = {**os.environ, PRELOAD_ENV: PRELOAD}
            cmd = [sys.executable, "-m", "bench.autoscaling", "--preloaded-cold-starts", str(reps)]
            cmd += ["--manifest", manifest_uri, "--endpoint", endpoint, "--out", str(out)]
            subprocess.run(cmd, env=env, check=True, timeout=900)
            preloaded = json.loads(out.read_text())
    finally:
        cluster.stop()
        moto.stop()
    baseline: dict[str, Any] = {}
    if not (args.quick or args.serve_default_intervals or args.no_baseline):
        b = serve_defaults_baseline("bench.autoscaling", ["--cold-only", "--cold-starts", str(reps)])
        baseline = {
            "command": f"python -m bench.autoscaling --cold-only --cold-starts {reps} --serve-default-intervals",
            "cold_start_warm_median": b["cold_start_warm_median"],
            "cold_start_serve_steps_warm_median": b["cold_start_serve_steps_warm_median"],
            "totals_s": [c.get("total_s") for c in b["cold_starts"]],
            "load_average_end": b.get("load_average_end"),
        }
        log(f"autoscaling: baseline (Serve's own intervals) warm median {b['cold_start_warm_median']}")
    write_result(
        "autoscaling",
        {
            "quick": args.quick,
            "serve_default_intervals": args.serve_default_intervals,
            "model": f"{run.name} int8 (bench model), artifacts on moto S3 (loopback)",
            "spec_autoscaling": scaling,
            "resources": {"cpusPerReplica": obj["spec"]["resources"]["cpus"], "ray_num_cpus": 4},
            "step_load": {"concurrency": concurrency, "load_s": load_s, **times},
            "timeline": timeline,
            "cold_starts": colds,
            "cold_start_warm_median": warm_median,
            "cold_start_serve_steps_warm_median": steps_median,
            "serve_defaults_baseline": baseline,
            "serve_env": {
                k: v for k, v in sorted(os.environ.items()) if k.startswith(("RAY_SERVE_", "RAY_worker"))
            },
            **(
                {
                    "preload_modules": PRELOAD,
                    "cold_starts_preloaded": preloaded,
                    "cold_start_warm_median_preloaded": warm_medians(preloaded),
                }
                if preloaded
                else {}
            ),
            "cold_start_errors": sum(1 for c in colds + preloaded if c["status"] != 200),
            "ready_s": round(rollout.seconds, 1),
            "load_average_end": load_average(),
        },
    )
    log(f"autoscaling: load average at the end {load_average()}")


if __name__ == "__main__":
    main()
