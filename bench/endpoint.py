"""Benchmark 2, endpoint: the rayrelay endpoint against KServe, MLServer and a naive Flask server.

Contenders, all up for the whole timed run and serving the same fine-tuned model:

- ``rayrelay``: a ModelDeployment (int8 variant, 2 replicas of 1 CPU each, so
  1 onnxruntime thread each by the product's rule; batching up to 32 texts /
  5 ms) brought to Ready by the product's reconciler through the ``ray``
  backend on a local Ray head started as ``rayrelay run`` starts it
  (``bench.serving``: Serve's HAProxy ingress on, ``localray.haproxy_env``);
  requests go from HAProxy straight to a model replica's own HTTP server on
  the model's route (KServe v2 ``/v2/models/{name}/infer``, one BYTES text per
  request). ``--no-haproxy`` measures Serve's Python proxy instead.
- ``kserve`` and ``mlserver`` (``bench.peers``): KServe's Python
  ``ModelServer`` and Seldon MLServer, what a team would run instead, each in
  a venv of its own made by the bench, serving the same published ONNX file
  (``--variant``) with the same tokenizer and onnxruntime threads, over the
  same OIP v2 request. Each peer first runs a small sweep of its own
  documented settings (``bench.peers.SWEEPS``: three levels, shorter loads)
  and takes part with the one that won (the highest geometric mean of req/s
  over the levels). Before any timing every peer setting must give the same
  answers as rayrelay for the same texts (labels equal, probabilities within
  ``ANSWER_TOLERANCE``). ``--peers`` picks them (``--peers`` alone: none).
- ``naive``: ``bench/naive_server.py``, one Flask process, one PyTorch eager
  fp32 forward per request, no batching, 2 torch threads (the seed's baseline).

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
import math
import os
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
    RESULTS,
    ROOT,
    THREADS,
    apply_env,
    bench_env,
    free_port,
    log,
    median,
    ratio,
    rnd,
    wait_until,
    write_result,
)

apply_env()
# On a loaded 2-core machine the Ray head's dashboard modules can take longer than Ray's 30 s to
# start, and then the head exits; give them longer (the Ray head inherits this environment).
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "240")
os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
# Ray starts its workers (Serve's proxy and replicas) 15 nice levels below the raylet; the naive
# server runs at the benchmark's own priority. On a shared machine that hands rayrelay's CPU to
# anything else running: both contenders get the same priority.
os.environ.setdefault("RAY_worker_niceness", "0")

CONCURRENCY = (1, 8, 32)
ANSWER_TEXTS = 24  # validation texts each contender must answer as rayrelay does
ANSWER_TOLERANCE = 1e-4  # largest difference of a probability allowed between contenders
PEER_SERVERS = {
    "kserve": "KServe Python ModelServer (kserve 0.21.0), a kserve.Model subclass (bench/peer_kserve.py)",
    "mlserver": "Seldon MLServer 1.7.1, a custom MLModel runtime (bench/peer_mlserver.py)",
}


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


def texts(n: int) -> list[str]:
    lines = (DATA / "validation.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line.strip()][:n]


def answers(url: str, items: list[str]) -> list[tuple[list[int], list[float]]]:
    """(label ids, probabilities) of one OIP v2 request per text, sent one after the other."""
    from bench.loadgen import payload
    from bench.peer_model import v2_answer

    out = []
    for text in items:
        req = urllib.request.Request(
            url, json.dumps(payload("v2", text)).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            out.append(v2_answer(json.loads(resp.read())))
    return out


def compare_answers(
    reference: list[tuple[list[int], list[float]]], other: list[tuple[list[int], list[float]]]
) -> dict[str, Any]:
    """How far ``other`` is from ``reference``: labels that differ, largest probability difference."""
    if len(other) != len(reference):
        raise ValueError(f"{len(other)} answers for {len(reference)} texts")
    labels_differ = sum(a[0] != b[0] for a, b in zip(reference, other, strict=True))
    diff = 0.0
    for a, b in zip(reference, other, strict=True):
        if len(a[1]) != len(b[1]):
            diff = float("inf")  # a different number of probabilities: not the same model
            break
        diff = max([diff, *(abs(x - y) for x, y in zip(a[1], b[1], strict=True))])
    return {"texts": len(reference), "labels_differ": labels_differ, "max_abs_probability_diff": diff}


def same_answers(check: dict[str, Any]) -> bool:
    return bool(check["labels_differ"] == 0 and check["max_abs_probability_diff"] <= ANSWER_TOLERANCE)


def geomean(values: list[float]) -> float:
    vals = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if len(vals) == len(values) and vals else 0.0


def sweep_peer(
    peer: str,
    model: Any,
    reference: list[tuple[list[int], list[float]]],
    requests: int,
    duration_s: float,
    scratch: Path,
) -> tuple[Any, list[dict[str, Any]]]:
    """Each of the peer's sweep settings in turn: answers checked, then a short load per level.

    Returns the winning setting (highest geometric mean of req/s over the levels) and every row."""
    from bench import peers

    rows: list[dict[str, Any]] = []
    best: tuple[float, Any] | None = None
    for setting in peers.SWEEPS[peer]:
        running = peers.start(setting, model, scratch)
        try:
            check = compare_answers(reference, answers(running.url, texts(len(reference))))
            if not same_answers(check):
                raise RuntimeError(f"{peer} ({setting.label}) answers differ from rayrelay's: {check}")
            loadgen(running.url, "v2", 8, 40, 30.0)  # warm-up
            levels = {c: loadgen(running.url, "v2", c, requests, duration_s) for c in CONCURRENCY}
        finally:
            running.stop()
        score = geomean([r["throughput_rps"] for r in levels.values()])
        rows.append(
            {
                "peer": peer,
                "setting": setting.label,
                "workers": setting.workers,
                "threads_per_worker": setting.threads,
                "options": setting.options,
                "answers": check,
                "geomean_rps": score,
                "levels": {
                    str(c): {k: r[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "errors")}
                    for c, r in levels.items()
                },
            }
        )
        log(
            f"endpoint: sweep {peer} ({setting.label}): "
            + ", ".join(
                f"c{c} {r['throughput_rps']:.0f} req/s p50 {r['p50_ms']:.1f} p99 {r['p99_ms']:.1f}"
                for c, r in levels.items()
            )
            + f", errors {sum(r['errors'] for r in levels.values())}"
        )
        if best is None or score > best[0]:
            best = (score, setting)
    assert best is not None
    return best[1], rows


def print_table(table: list[dict[str, Any]], names: list[str], winners: dict[str, Any]) -> None:
    """The side-by-side table on stdout (the page gets it from the result file)."""
    print(f"\nendpoint, CPU: {', '.join(instruction_set())}; load average {os.getloadavg()}")
    for name, setting in winners.items():
        print(f"  {name}: {setting.label}")
    head = ["c"] + [f"{n} req/s (p50/p99 ms)" for n in names] + ["rayrelay / best peer"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in table:
        cells = [str(r["concurrency"])]
        for n in names:
            x = r[n]
            cells.append(f"{x['throughput_rps']:.0f} ({x['p50_ms']:.1f} / {x['p99_ms']:.1f}) e{x['errors']}")
        cells.append(f"{r['peer_throughput_ratio']:.2f}x" if "peer_throughput_ratio" in r else "-")
        print("| " + " | ".join(cells) + " |")
    sys.stdout.flush()


def instruction_set() -> list[str]:
    """The CPU's vector instruction sets that int8 and fp32 kernels depend on (from /proc/cpuinfo)."""
    from rayrelay_workloads.hardware import cpu_flags

    return cpu_flags()


def record_lever(label: str, table: list[dict[str, Any]]) -> None:
    """One row of the lever table (docs/performance.md): this run's ratios, replacing an older row."""
    path = RESULTS / "endpoint_levers.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    by_c = {r["concurrency"]: r for r in table}
    row = {
        "lever": label,
        "throughput_ratio": {str(c): r["throughput_ratio"] for c, r in by_c.items()},
        "p99_ratio": {str(c): r["p99_ratio"] for c, r in by_c.items()},
        "p50_delta_ms_c1": by_c[1]["p50_delta_ms"] if 1 in by_c else None,
        "gateway_path_throughput_ratio": {
            str(c): r["gateway_path_throughput_ratio"]
            for c, r in by_c.items()
            if "gateway_path_throughput_ratio" in r
        },
        "rayrelay_rps": {str(c): r["rayrelay"]["throughput_rps"] for c, r in by_c.items()},
        "naive_rps": {str(c): r["naive"]["throughput_rps"] for c, r in by_c.items()},
        "loadgen_cpu_s_per_level": {
            str(c): [r["rayrelay"]["loadgen_cpu_s"], r["naive"]["loadgen_cpu_s"]] for c, r in by_c.items()
        },
        "errors": sum(r["rayrelay"]["errors"] + r["naive"]["errors"] for r in table),
        "instruction_set": instruction_set(),
        "load_average_at_end": list(os.getloadavg()),
        "command": " ".join(["python", "-m", "bench.endpoint", *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    rows = [r for r in rows if r["lever"] != label] + [row]
    path.write_text(json.dumps(rnd(rows), indent=2) + "\n")


def configure(obj: dict[str, Any], args: argparse.Namespace) -> None:
    """Apply the command line's replica settings to the ModelDeployment (None = the product's default).

    ``--product-defaults``: none at all (no batching, autoscaling, resources or runtime in the
    spec), the deployment a user who writes none of them gets."""
    spec = obj["spec"]
    if args.product_defaults:
        for key in ("batching", "autoscaling", "resources", "runtime"):
            spec.pop(key, None)
        return
    spec["batching"] = {"maxBatchSize": args.max_batch, "batchWaitTimeoutMs": args.wait_ms}
    spec["autoscaling"] = {"minReplicas": args.replicas, "maxReplicas": args.replicas}
    spec["resources"] = {"cpus": args.cpus}
    runtime: dict[str, Any] = {}
    if args.threads is not None:
        runtime["intraOpThreads"] = args.threads
    if args.inter_threads is not None:
        runtime["interOpThreads"] = args.inter_threads
    spec["runtime"] = runtime


def deployed_settings(spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Replicas, CPUs and batching as deployed (the API's defaults with ``--product-defaults``)."""
    from rayrelay_core.api import ModelDeploymentSpec

    parsed = ModelDeploymentSpec.model_validate(spec)
    scaling = parsed.autoscaling
    replicas: Any = scaling.min_replicas
    if scaling.max_replicas != scaling.min_replicas:
        replicas = f"{scaling.min_replicas}-{scaling.max_replicas} (autoscaling)"
    return {
        "product_defaults": args.product_defaults,
        "replicas": replicas,
        "cpus_per_replica": parsed.resources.cpus,
        "max_batch_size": parsed.batching.max_batch_size,
        "batch_wait_timeout_ms": parsed.batching.batch_wait_timeout_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--wait-ms", type=float, default=5)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--product-defaults",
        action="store_true",
        help="rayrelay as a user gets it who writes no batching/autoscaling/resources/runtime (overrides those flags)",
    )
    parser.add_argument("--cpus", type=float, default=1, help="resources.cpus of each replica")
    parser.add_argument(
        "--no-haproxy",
        action="store_true",
        help="Serve's Python proxy as the ingress (RAYRELAY_SERVE_HAPROXY=0), not HAProxy",
    )
    parser.add_argument("--threads", type=int, help="runtime.intraOpThreads (default: the product's rule)")
    parser.add_argument("--inter-threads", type=int, help="runtime.interOpThreads")
    parser.add_argument(
        "--gateway-path",
        action="store_true",
        help="also measure the two-hop path (proxy -> gateway -> model) of the same deployment",
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=["kserve", "mlserver"],
        choices=["kserve", "mlserver"],
        help="the peer servers to compare with (default both; the flag alone: none)",
    )
    parser.add_argument(
        "--variant", default="int8", choices=["int8", "fp32"], help="the ONNX file every contender serves"
    )
    parser.add_argument("--name", default="endpoint", help="result file name (bench/results/NAME.json)")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the page (repeatable)")
    parser.add_argument(
        "--lever",
        help="record this run's ratios under this label in bench/results/endpoint_levers.json",
    )
    args = parser.parse_args()
    requests, duration_s, reps = (60, 6.0, 1) if args.quick else (400, 15.0, 3)
    reps = args.reps or reps

    from bench import peers
    from bench.model import ensure_run, hf_dir
    from bench.serving import md_object, start_and_deploy, undeploy

    if args.no_haproxy:
        os.environ["RAYRELAY_SERVE_HAPROXY"] = "0"  # read by LocalRay when it starts the head
    run = ensure_run()
    for peer in args.peers:  # made (once) before anything is timed
        peers.ensure_venv(peer)
    naive_proc, naive_url = start_naive(hf_dir(run))
    cluster = None
    obj: dict[str, Any] | None = None
    scratch = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    running: list[Any] = []
    sweeps: list[dict[str, Any]] = []
    checks: dict[str, dict[str, Any]] = {}
    winners: dict[str, Any] = {}
    try:
        log(f"endpoint: starting a local Ray head and deploying the ModelDeployment ({args.variant})")
        obj = md_object("bench-endpoint", f"file://{run / 'manifest.json'}", args.variant)
        configure(obj, args)
        cluster, rollout = start_and_deploy(obj)  # a loaded machine starts Ray slowly
        rr_url = f"{cluster.url}/v2/models/bench-endpoint/infer"
        ingress = "HAProxy" if cluster.ray.haproxy else "Serve's Python proxy"
        log(f"endpoint: Ready after {rollout.seconds:.1f}s at {rr_url} (ingress: {ingress})")
        contenders = {"rayrelay": (rr_url, "v2")}
        reference = answers(rr_url, texts(ANSWER_TEXTS))
        if args.peers:
            model = peers.Model.from_run("bench-endpoint", run, args.variant)
            for peer in args.peers:
                winners[peer], rows = sweep_peer(
                    peer, model, reference, max(20, requests // 2), duration_s / 2, scratch
                )
                sweeps += rows
                log(f"endpoint: {peer} takes part with {winners[peer].label}")
            for peer in args.peers:
                started = peers.start(winners[peer], model, scratch)
                running.append(started)
                checks[peer] = compare_answers(reference, answers(started.url, texts(ANSWER_TEXTS)))
                if not same_answers(checks[peer]):
                    raise RuntimeError(f"{peer} answers differ from rayrelay's: {checks[peer]}")
                contenders[peer] = (started.url, "v2")
        contenders["naive"] = (naive_url, "naive")
        if args.gateway_path:
            # The versioned OIP path is not the model's own route: Serve sends it to the gateway,
            # which calls the model by handle (the two-hop path every request took before).
            contenders["rayrelay-gateway"] = (
                f"{cluster.url}/v2/models/bench-endpoint/versions/1/infer",
                "v2",
            )
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
                        f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.0f} ms, errors {res['errors']}, "
                        f"loadgen {res['loadgen_cpu_s']:.2f} CPU s / {res['elapsed_s']:.1f} s"
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
        for started in running:
            started.stop()
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
                "loadgen_cpu_s": median(r["loadgen_cpu_s"] for r in items),
                "loadgen_elapsed_s": median(r["elapsed_s"] for r in items),
            }
        row["throughput_ratio"] = ratio(row["rayrelay"]["throughput_rps"], row["naive"]["throughput_rps"])
        row["p99_ratio"] = ratio(row["rayrelay"]["p99_ms"], row["naive"]["p99_ms"])
        row["p50_delta_ms"] = row["rayrelay"]["p50_ms"] - row["naive"]["p50_ms"]
        if args.peers:
            best = max(args.peers, key=lambda p: row[p]["throughput_rps"])
            row["best_peer"] = best
            row["peer_throughput_ratio"] = ratio(
                row["rayrelay"]["throughput_rps"], row[best]["throughput_rps"]
            )
            row["peer_p50_delta_ms"] = row["rayrelay"]["p50_ms"] - min(row[p]["p50_ms"] for p in args.peers)
            row["peer_p99_ratio"] = ratio(
                row["rayrelay"]["p99_ms"], min(row[p]["p99_ms"] for p in args.peers)
            )
        if "rayrelay-gateway" in row:
            row["gateway_path_throughput_ratio"] = ratio(
                row["rayrelay-gateway"]["throughput_rps"], row["naive"]["throughput_rps"]
            )
        table.append(row)
    spec = obj["spec"]
    if args.lever:
        record_lever(args.lever, table)
    levers_file = RESULTS / "endpoint_levers.json"
    levers = json.loads(levers_file.read_text()) if levers_file.is_file() else []
    print_table(table, list(contenders), winners)
    write_result(
        args.name,
        {
            "settings": {
                "concurrency": list(CONCURRENCY),
                "requests_per_level": requests,
                "time_bound_s": duration_s,
                "repetitions": reps,
                "texts": "examples/data/validation.jsonl, one text per request, in order",
                "instruction_set": instruction_set(),
                "command": " ".join(["python", "-m", "bench.endpoint", *sys.argv[1:]]),
                "rayrelay": {
                    "variant": args.variant,
                    **deployed_settings(spec, args),
                    "intra_op_threads": args.threads if args.threads is not None else "default rule",
                    "runtime": spec.get("runtime", {}),
                    "protocol": "KServe v2 (OIP) JSON on the model's own route",
                    "ingress": ingress,
                    "ready_after_s": rollout.seconds,
                },
                "naive": {
                    "server": "Flask dev server (threaded)",
                    "runtime": "PyTorch eager fp32",
                    "threads": THREADS,
                },
                "peers": {
                    peer: {
                        "server": PEER_SERVERS[peer],
                        "pins": list(peers.pins(peer)),
                        "setting": winners[peer].label,
                        "workers": winners[peer].workers,
                        "threads_per_worker": winners[peer].threads,
                        "options": winners[peer].options,
                        "answers": checks[peer],
                    }
                    for peer in args.peers
                },
                "answer_tolerance": ANSWER_TOLERANCE,
                "loadgen": "bench/loadgen.py: asyncio streams, pre-encoded HTTP/1.1 requests, keep-alive",
                "quick": args.quick,
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "notes": args.note,
            "table": table,
            "peer_sweep": sweeps,
            # Each lever's own run (``--lever``), for the lever table of docs/performance.md.
            "levers": levers,
            "runs": {n: {str(c): v for c, v in d.items()} for n, d in runs.items()},
            "deployment_status": status,
        },
    )


if __name__ == "__main__":
    main()
