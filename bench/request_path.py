"""Benchmark 2b, request path: where a lone request's time goes on the one-hop route.

``python -m bench.request_path [--quick] [--requests N]``

A lone OIP v2 request (one text, concurrency 1) travels: load generator ->
HAProxy -> the model replica's HTTP server and Serve's request handling ->
``ModelServer.__call__`` (body read and parsed) -> the batcher -> tokenizer ->
onnxruntime -> softmax and arg-max -> the JSON response -> back. This
benchmark times the replica's own steps one by one, in this process, on the
product's own ``ModelServer`` class (the Serve deployment's class, built
directly as a unit use builds it: the same artifact set, verification,
tokenizer, session and thread rule as a replica of ``resources.cpus: 1``), by
calling the very functions the request path calls, each alone, many times:

- ``parse``: ``protocol.parse_v2_infer`` of the request body;
- ``tokenize``: the replica's tokenizer for one text (``_feeds``);
- ``onnxruntime``: ``session.run`` of those feeds;
- ``softmax + labels``: ``_predict_batch``'s work after the model;
- ``response JSON``: ``protocol.v2_response`` and the Starlette response body;
- ``batcher hop``: ``await predict([text])`` minus ``_predict_batch([text])``
  (the queue, the worker task and the thread the model runs in);
- ``whole __call__``: the handler with a Starlette request, as Serve hands it.

The end-to-end p50 at concurrency 1 of every contender comes from the
endpoint benchmark's result file of the same run (``bench/results/endpoint.json``,
measured through the real ingress); what the handler does not explain is the
route outside it: HAProxy, Serve's replica HTTP server and request wrapper, the
client. The peers run the same model code (``bench.peer_model``), so their p50
minus the same model steps is their framework's share, side by side.
Timers are bench-only: nothing here is added to the product's request path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import DATA, RESULTS, apply_env, log, median, percentile, write_result

apply_env()


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    """p50 / mean (ms) of ``n`` calls of ``fn``, after 20 untimed ones."""
    for _ in range(20):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": median(out), "mean_ms": sum(out) / len(out), "p90_ms": percentile(out, 90)}


async def timed_async(make: Callable[[], Any], n: int) -> dict[str, float]:
    """:func:`timed` of an awaitable (on the running loop: the replica's batcher lives on one)."""
    for _ in range(20):
        await make()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await make()
        out.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": median(out), "mean_ms": sum(out) / len(out), "p90_ms": percentile(out, 90)}


def request_for(path: str, body: bytes) -> Any:
    """A Starlette request as Serve's replica hands it to ``__call__`` (one body chunk)."""
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def replica_steps(run: Any, n: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    import numpy as np

    from bench.loadgen import payload
    from bench.serving import md_object
    from rayrelay_workloads.serve import ingress, protocol
    from rayrelay_workloads.serve.model import ModelServer, softmax

    obj = md_object("bench-endpoint", f"file://{run / 'manifest.json'}", "int8")
    spec = obj["spec"]
    spec["runtime"] = {}  # the product's thread rule for 1 CPU
    spec["resources"] = {"cpus": 1}
    cls = ModelServer.func_or_class
    server = cls(
        {
            "name": "bench-endpoint",
            "spec": spec,
            "manifestUri": spec["model"]["manifestUri"],
            "variant": "int8",
        }
    )
    lines = (DATA / "validation.jsonl").read_text().splitlines()
    text = json.loads(lines[0])["text"]
    body = json.dumps(payload("v2", text), separators=(",", ":")).encode()
    limits = server.spec.limits
    req = protocol.parse_v2_infer(body, limits)
    feeds = server._feeds([text])
    logits = server.session.run([server.output_name], feeds)[0]
    preds = server._predict_batch([text])
    path = "/v2/models/bench-endpoint/infer"

    def labels() -> Any:
        probs = softmax(np.asarray(logits, dtype=np.float32))
        ids = probs.argmax(axis=1).tolist()
        return [protocol.Prediction(i, row) for i, row in zip(ids, probs.tolist(), strict=True)]

    def response() -> bytes:
        doc = protocol.v2_response(server.name, server.version, req, preds, server.labels)
        return bytes(ingress.json_response(200, doc).body)

    steps = {
        "parse": timed(lambda: protocol.parse_v2_infer(body, limits), n),
        "tokenize": timed(lambda: server._feeds([text]), n),
        "onnxruntime": timed(lambda: server.session.run([server.output_name], feeds), n),
        "softmax + labels": timed(labels, n),
        "response JSON": timed(response, n),
    }
    direct = timed(lambda: server._predict_batch([text]), n)

    async def on_loop() -> tuple[dict[str, float], dict[str, float]]:
        through = await timed_async(lambda: server.predict([text]), n)
        whole = await timed_async(lambda: server(request_for(path, body)), n)
        server.batcher.stop()
        return through, whole

    through, whole = asyncio.run(on_loop())
    steps["batcher hop"] = {k: max(0.0, through[k] - direct[k]) for k in direct}
    steps["whole __call__"] = whole
    info = {"threads": list(server.threads), "variant": server.artifacts.variant, "text_chars": len(text)}
    return steps, info


def _parents() -> dict[int, int]:
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return out


def process_groups(head: int) -> dict[int, str]:
    """Every process on the machine by group: the parts of the route under this benchmark's Ray head
    (``head``: the ``ray start --block`` process; its descendants are GCS, raylet, dashboard,
    Serve's actors and HAProxy) by name, the load generator, and everything else as ``other``
    (another Ray cluster on a shared machine included)."""
    parents = _parents()
    ours = {head}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                grew = True
    groups: dict[int, str] = {}
    for pid in parents:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "bench.loadgen" in cmd:
            group = "load generator"
        elif pid not in ours:
            group = "other"
        elif "ServeReplica" in cmd and "ModelServer" in cmd:
            group = "model replicas"
        elif "ServeReplica" in cmd:
            group = "gateway replica"
        elif cmd.startswith("haproxy") or "/haproxy " in cmd:
            group = "HAProxy"
        else:
            group = "rest of Ray (controller, HAProxy manager, raylet, GCS, dashboard)"
        groups[pid] = group
    return groups


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_c1(run: Any, requests: int, profile: Path | None) -> dict[str, Any]:
    """A lone request at a time through HAProxy to a replica: CPU per request by process group.

    The endpoint benchmark's deployment (2 replicas x 1 CPU, the same Ray head); ``bench.loadgen``
    at concurrency 1. CPU = user + system seconds of each process over the load (``/proc``),
    divided by the requests answered; processes that are not part of the route (other work on
    a shared machine) are ``other`` and left out of the sum. With ``profile``, py-spy samples
    the model replicas during the load (a flame graph in SVG)."""
    from bench.endpoint import loadgen
    from bench.serving import md_object, start_and_deploy, undeploy

    obj = md_object("bench-endpoint", f"file://{run / 'manifest.json'}", "int8")
    obj["spec"].update(
        autoscaling={"minReplicas": 2, "maxReplicas": 2}, resources={"cpus": 1}, runtime={}, batching={}
    )
    cluster, _ = start_and_deploy(obj)
    try:
        url = f"{cluster.url}/v2/models/bench-endpoint/infer"
        warm = loadgen(url, "v2", 1, 100, 30.0)
        if warm["errors"]:
            raise RuntimeError(f"the warm-up had errors: {warm['error_kinds']}")
        head = cluster.ray._proc.pid  # LocalRay's `ray start --head --block`
        groups = process_groups(head)
        before = {pid: cpu_seconds(pid) for pid in groups}
        spy = None
        if profile is not None:
            pids = [str(p) for p, g in groups.items() if g == "model replicas"]
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "-o",
                    str(profile),
                    "-r",
                    "250",
                    "--nonblocking",
                    "--threads",
                ]
                + (["--format", "raw"] if profile.suffix == ".txt" else [])
                + [a for p in pids[:1] for a in ("--pid", p)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        res = loadgen(url, "v2", 1, requests, 60.0)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        after = {pid: cpu_seconds(pid) for pid in process_groups(head)}
    finally:
        try:
            undeploy(cluster, obj)
        finally:
            cluster.stop()
    n = max(1, res["requests_ok"])
    per_group: dict[str, float] = {}
    for pid, group in groups.items():
        if pid in after:
            per_group[group] = per_group.get(group, 0.0) + (after[pid] - before.get(pid, 0.0))
    cpu_ms = {g: 1000 * s / n for g, s in sorted(per_group.items())}
    cpu_ms["load generator"] = res["loadgen_cpu_ms_per_request"]
    return {
        "requests": res["requests_ok"],
        "errors": res["errors"],
        "error_kinds": res["error_kinds"],
        "p50_ms": res["p50_ms"],
        "p99_ms": res["p99_ms"],
        "throughput_rps": res["throughput_rps"],
        "cpu_ms_per_request": cpu_ms,
        "route_cpu_ms_per_request": sum(v for g, v in cpu_ms.items() if g != "other"),
    }


def record_lever(label: str, ray_env: list[str], live: dict[str, Any]) -> None:
    """One row of the request path's lever table: this live run, replacing an older row of the label."""
    from bench.common import rnd
    from bench.endpoint import instruction_set

    path = RESULTS / "request_path_levers.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    row = {
        "lever": label,
        "ray_env": ray_env,
        "p50_ms": live["p50_ms"],
        "p99_ms": live["p99_ms"],
        "requests": live["requests"],
        "errors": live["errors"],
        "cpu_ms_per_request": live["cpu_ms_per_request"],
        "route_cpu_ms_per_request": live["route_cpu_ms_per_request"],
        "instruction_set": instruction_set(),
        "load_average_at_end": list(os.getloadavg()),
        "command": " ".join(["python", "-m", "bench.request_path", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rows = [r for r in rows if r["lever"] != label] + [row]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rnd(rows), indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, help="timed calls per step (default 500, quick 100)")
    parser.add_argument("--no-live", action="store_true", help="leave out the live run through HAProxy")
    parser.add_argument("--no-steps", action="store_true", help="leave out the in-process steps")
    parser.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the Ray head of the live run (a lever to measure; repeatable)",
    )
    parser.add_argument("--name", default="request_path", help="result file name (bench/results/NAME.json)")
    parser.add_argument(
        "--lever",
        help="record the live run under this label in bench/results/request_path_levers.json (the page's lever table)",
    )
    parser.add_argument(
        "--live-requests", type=int, help="requests of the live run (default 1000, quick 200)"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy flame graph (SVG) of a model replica during the live run"
    )
    args = parser.parse_args()
    n = args.requests or (100 if args.quick else 500)

    from bench.endpoint import instruction_set
    from bench.model import ensure_run

    run = ensure_run()
    for item in args.ray_env:
        key, _, value = item.partition("=")
        os.environ[key] = value  # the local Ray head (LocalRay) and its workers inherit it
    steps, info = ({}, {}) if args.no_steps else replica_steps(run, n)
    live_n = args.live_requests or (200 if args.quick else 1000)
    live = None if args.no_live else live_c1(run, live_n, args.profile)
    if live is not None:
        log(f"request_path: live c1: {live}")
    model_ms = sum(steps[k]["p50_ms"] for k in ("tokenize", "onnxruntime", "softmax + labels") if k in steps)
    handler_ms = steps["whole __call__"]["p50_ms"] if steps else float("nan")
    endpoint_file = RESULTS / "endpoint.json"
    e2e: dict[str, float] = {}
    if endpoint_file.is_file():
        doc = json.loads(endpoint_file.read_text())
        c1 = next((r for r in doc.get("table", []) if r["concurrency"] == 1), None)
        if c1 is not None:
            e2e = {k: v["p50_ms"] for k, v in c1.items() if isinstance(v, dict) and "p50_ms" in v}
    outside = {
        name: p50 - (handler_ms if name.startswith("rayrelay") else model_ms) for name, p50 in e2e.items()
    }
    for name, ms in steps.items():
        log(f"request_path: {name}: p50 {ms['p50_ms']:.3f} ms, mean {ms['mean_ms']:.3f} ms")
    log(
        f"request_path: model steps {model_ms:.3f} ms, whole handler {handler_ms:.3f} ms, end to end c1 {e2e}"
    )
    if args.lever and live is not None:
        record_lever(args.lever, args.ray_env, live)
    write_result(
        args.name,
        {
            "settings": {
                "requests_per_step": n,
                "instruction_set": instruction_set(),
                "replica": info,
                "endpoint_result": str(endpoint_file.name) if e2e else None,
                "quick": args.quick,
                "ray_env": args.ray_env,
            },
            "steps": steps,
            "model_ms": model_ms,
            "handler_ms": handler_ms,
            "end_to_end_c1_p50_ms": e2e,
            # What the timed steps do not explain: for rayrelay the route outside ``__call__``
            # (HAProxy, Serve's replica server and wrapper, the client); for a peer its whole framework.
            "outside_ms": outside,
            "live_c1": live,
            # Each lever's own live run (``--lever``), for the page's lever table.
            "levers": json.loads(levers.read_text())
            if (levers := RESULTS / "request_path_levers.json").is_file()
            else [],
        },
    )


if __name__ == "__main__":
    main()
