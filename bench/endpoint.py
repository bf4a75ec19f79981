"""Benchmark 2, endpoint: the rayrelay endpoint against a naive Flask + PyTorch server.

Contenders, both up for the whole run and serving the same fine-tuned model:

- ``rayrelay``: a ModelDeployment (int8 variant, 1 replica, ``@serve.batch``
  up to 32 texts / 5 ms, 2 onnxruntime threads) brought to Ready by the
  product's reconciler through the ``ray`` backend on a local Ray head
  (``bench.serving``); requests go through Serve's HTTP proxy and the shared
  gateway (KServe v2 ``/v2/models/{name}/infer``, one BYTES text per request).
- ``naive``: ``bench/naive_server.py``, one Flask process, one PyTorch eager
  fp32 forward per request, no batching, 2 torch threads.

Load: ``bench/loadgen.py`` in a separate process on loopback, closed loop, one
text per request, a fixed request count and a time bound per level, at
concurrency 1, 8 and 32. After a warm-up of each server, every repetition
runs each concurrency level against each contender in turn (interleaved), and
the table gives the medians over repetitions of throughput and of p50/p99.
The server, the load generator and Ray's own processes share the 2 cores:
the numbers are what this machine gives end to end, not the model alone.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    DATA,
    ROOT,
    THREADS,
    apply_env,
    bench_env,
    free_port,
    log,
    median,
    ratio,
    wait_until,
    write_result,
)

apply_env()

CONCURRENCY = (1, 8, 32)


def loadgen(url: str, protocol: str, concurrency: int, requests: int, duration_s: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = Path(tmp.name)
    cmd = [
        sys.executable, "-m", "bench.loadgen",
        "--url", url, "--protocol", protocol,
        "--concurrency", str(concurrency), "--requests", str(requests),
        "--duration-s", str(duration_s),
        "--texts", str(DATA / "validation.jsonl"), "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, env=bench_env(), check=True, timeout=duration_s + 120)
    result = dict(json.loads(out.read_text()))
    out.unlink(missing_ok=True)
    return result


def start_naive(hf_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.naive_server", "--model", str(hf_dir), "--port", str(port)]
        + ["--threads", str(THREADS)],
        cwd=ROOT,
        env=bench_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("the naive server exited during start-up")
        with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
            return bool(resp.status == 200)

    wait_until(up, 180, 0.5, "the naive Flask server")
    return proc, f"{base}/predict"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    requests, duration_s, reps = (60, 6.0, 1) if args.quick else (400, 15.0, 3)

    from bench.model import ensure_run
    from bench.serving import deploy, md_object, start_cluster, undeploy

    run = ensure_run()
    naive_proc, naive_url = start_naive(run / "hf")
    cluster = None
    obj: dict[str, Any] | None = None
    try:
        log("endpoint: starting a local Ray head and deploying the ModelDeployment (int8)")
        cluster = start_cluster()
        obj = md_object("bench-endpoint", f"file://{run / 'manifest.json'}", "int8")
        rollout = deploy(cluster, obj)
        rr_url = f"{cluster.url}/v2/models/bench-endpoint/infer"
        log(f"endpoint: Ready after {rollout.seconds:.1f}s at {rr_url}")
        contenders = {"rayrelay": (rr_url, "v2"), "naive": (naive_url, "naive")}
        for name, (url, proto) in contenders.items():
            warm = loadgen(url, proto, 8, 40 if args.quick else 100, 30.0)
            if warm["errors"]:
                raise RuntimeError(f"{name} warm-up had errors: {warm['error_kinds']}")
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {
            n: {c: [] for c in CONCURRENCY} for n in contenders
        }
        for rep in range(reps):
            for conc in CONCURRENCY:
                for name, (url, proto) in contenders.items():
                    res = loadgen(url, proto, conc, requests, duration_s)
                    runs[name][conc].append(res)
                    log(
                        f"endpoint: rep {rep + 1}/{reps} c{conc} {name}: {res['throughput_rps']:.1f} req/s, "
                        f"p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, errors {res['errors']}"
                    )
        status = dict(obj["status"])
    finally:
        if cluster is not None:
            if obj is not None:
                try:
                    undeploy(cluster, obj)
                except Exception as exc:  # teardown: the head goes anyway
                    log(f"endpoint: undeploy failed: {exc}")
            cluster.stop()
        naive_proc.send_signal(signal.SIGTERM)
        naive_proc.wait(timeout=30)

    table: list[dict[str, Any]] = []
    for conc in CONCURRENCY:
        row: dict[str, Any] = {"concurrency": conc}
        for name in contenders:
            items = runs[name][conc]
            row[name] = {
                "throughput_rps": median(r["throughput_rps"] for r in items),
                "p50_ms": median(r["p50_ms"] for r in items),
                "p99_ms": median(r["p99_ms"] for r in items),
                "errors": sum(r["errors"] for r in items),
                "requests_ok": sum(r["requests_ok"] for r in items),
            }
        row["throughput_ratio"] = ratio(row["rayrelay"]["throughput_rps"], row["naive"]["throughput_rps"])
        row["p99_ratio"] = ratio(row["rayrelay"]["p99_ms"], row["naive"]["p99_ms"])
        table.append(row)
    write_result(
        "endpoint",
        {
            "settings": {
                "concurrency": list(CONCURRENCY),
                "requests_per_level": requests,
                "time_bound_s": duration_s,
                "repetitions": reps,
                "texts": "examples/data/validation.jsonl, one text per request, in order",
                "rayrelay": {
                    "variant": "int8",
                    "replicas": 1,
                    "max_batch_size": 32,
                    "batch_wait_timeout_ms": 5,
                    "intra_op_threads": THREADS,
                    "protocol": "KServe v2 (OIP) JSON, via Serve proxy + rayrelay gateway",
                    "ready_after_s": rollout.seconds,
                },
                "naive": {
                    "server": "Flask dev server (threaded)",
                    "runtime": "PyTorch eager fp32",
                    "threads": THREADS,
                },
                "quick": args.quick,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "table": table,
            "runs": {n: {str(c): v for c, v in d.items()} for n, d in runs.items()},
            "deployment_status": status,
        },
    )


if __name__ == "__main__":
    main()
