"""Benchmark 5, cold start: a ModelDeployment from created to Ready, and where the time goes.

The artifact set (the benchmark model, ``bench.model``) is uploaded to an S3
bucket on a moto server on loopback (``moto.server.ThreadedMotoServer``) and
served from ``s3://``, so the download is a real S3 transfer.

Two measurements, repeated with an emptied artifact cache each time:

1. **End to end** (``e2e``): the ModelDeployment (int8, 1 replica) is
   reconciled by the product's reconciler through the ``ray`` backend on a
   local Ray head (``bench.serving``) from creation until its phase is Ready
   (the replica verified every digest, built its session and passed a
   warm-up inference). The first repetition also starts Serve itself (its
   controller, HTTP proxy and the shared gateway application): that is the
   cold *cluster*; the later ones deploy next to a running gateway (a cold
   *model*).
2. **Breakdown** (``replica``): the same replica constructor,
   ``rayrelay_workloads.serve.model.ModelServer.__init__``, run in a fresh
   process with the product's own functions wrapped by timers: store client
   (``open_store``, a boto3 client for S3), manifest read (``read_manifest``), artifact download (``Store.download``), digest
   verification (``sha256_file`` inside ``artifacts``), tokenizer load,
   onnxruntime session creation (``InferenceSession``) and the warm-up
   inference (the first ``ModelServer._run``), plus the imports the replica
   process pays for. The end-to-end time minus the constructor is Ray/Serve
   orchestration (actor start, REST round trips, health checks, polling).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import CACHE, ROOT, apply_env, bench_env, log, median, write_result

apply_env()

BUCKET = "bench-cold-start"


def upload_run(run: Path, endpoint: str) -> str:
    """Copy the run folder to S3 with the product's store; returns the manifest URI."""
    import boto3

    from rayrelay_core.store import join, open_store

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    base = f"s3://{BUCKET}/bench/minilm/{run.name}"
    store = open_store(base, endpoint)
    manifest = json.loads((run / "manifest.json").read_text())
    for entry in manifest["files"]:
        store.upload(run / entry["path"], join(base, entry["path"]))
    store.upload(run / "manifest.json", join(base, "manifest.json"))
    return join(base, "manifest.json")


# ------------------------------------------------------------------ breakdown (child process)


def replica_breakdown(manifest_uri: str, endpoint: str, cache_dir: str) -> dict[str, float]:
    """Run ModelServer's constructor once, timing each of its steps (this process only)."""
    t0 = time.perf_counter()
    import onnxruntime as ort
    import transformers

    from rayrelay_core import store as store_mod
    from rayrelay_workloads.serve import artifacts
    from rayrelay_workloads.serve import model as model_mod

    times: dict[str, float] = defaultdict(float)
    times["imports"] = time.perf_counter() - t0

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[key] += time.perf_counter() - start

        return wrapper

    artifacts.open_store = timed("store_client", artifacts.open_store)  # type: ignore[assignment]
    artifacts.read_manifest = timed("manifest_read", artifacts.read_manifest)  # type: ignore[assignment]
    artifacts.sha256_file = timed("digest_verification", artifacts.sha256_file)  # type: ignore[assignment]
    for cls in (store_mod.S3Store, store_mod.LocalStore):
        cls.download = timed("artifact_download", cls.download)  # type: ignore[method-assign]
    ort.InferenceSession = timed("session_creation", ort.InferenceSession)  # type: ignore[misc]
    auto_tok = transformers.AutoTokenizer.from_pretrained
    transformers.AutoTokenizer.from_pretrained = timed("tokenizer_load", auto_tok)  # type: ignore[method-assign]
    server_cls: Any = model_mod.ModelServer.func_or_class
    original_run = server_cls._run
    warm: dict[str, float] = {}

    def first_run(self: Any, texts: list[str]) -> Any:
        start = time.perf_counter()
        out = original_run(self, texts)
        warm.setdefault("warmup_inference", time.perf_counter() - start)
        return out

    server_cls._run = first_run
    from bench.serving import md_object
    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_core.runs import serve_app_args

    spec = ModelDeploymentSpec.model_validate(md_object("cold", manifest_uri, "int8", endpoint)["spec"])
    args = serve_app_args("cold", "bench", manifest_uri, spec, endpoint)
    args["cacheDir"] = cache_dir
    start = time.perf_counter()
    server_cls(args)
    times["constructor_total"] = time.perf_counter() - start
    times.update(warm)
    accounted = sum(
        times[k]
        for k in (
            "store_client",
            "manifest_read",
            "artifact_download",
            "digest_verification",
            "tokenizer_load",
            "session_creation",
            "warmup_inference",
        )
    )
    times["other_in_constructor"] = times["constructor_total"] - accounted
    return dict(times)


# ------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST_URI", "ENDPOINT", "CACHE_DIR"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(replica_breakdown(*args.child)))
        return
    reps = 1 if args.quick else 3

    from moto.server import ThreadedMotoServer

    from bench.model import ensure_run
    from bench.serving import deploy, md_object, start_cluster, undeploy

    run = ensure_run()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    work = CACHE / "cold-start"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    serve_cache = work / "serve-cache"
    try:
        manifest_uri = upload_run(run, endpoint)
        log(f"cold start: artifact set uploaded to {manifest_uri}")
        sizes = json.loads((run / "manifest.json").read_text())["files"]
        int8_mib = next(f["size"] for f in sizes if f["path"].endswith("model.int8.onnx")) / 2**20

        # ---- breakdown: a fresh process per repetition, an empty cache each time
        breakdown: list[dict[str, float]] = []
        for rep in range(reps):
            cache = work / f"replica-cache-{rep}"
            out = subprocess.run(
                [sys.executable, "-m", "bench.cold_start", "--child", manifest_uri, endpoint, str(cache)],
                cwd=ROOT,
                env=bench_env(),
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            breakdown.append(json.loads(out.stdout.strip().splitlines()[-1]))
            log(f"cold start: replica constructor {breakdown[-1]['constructor_total']:.2f}s")

        # ---- end to end through the reconciler, Ray and Serve
        os.environ["RAYRELAY_CACHE_DIR"] = str(serve_cache)  # the Ray head (and its replicas) inherit it
        os.environ["RAYRELAY_S3_ENDPOINT_URL"] = endpoint
        cluster = start_cluster(s3_endpoint=endpoint)
        e2e: list[dict[str, Any]] = []
        try:
            for rep in range(reps + 1 if not args.quick else 2):
                shutil.rmtree(serve_cache, ignore_errors=True)
                obj = md_object(f"cold-{rep}", manifest_uri, "int8", endpoint)
                rollout = deploy(cluster, obj)
                e2e.append(
                    {
                        "seconds": rollout.seconds,
                        "phases": rollout.phases,
                        "temporary_errors": rollout.temporary_errors,
                        "first_on_cluster": rep == 0,
                    }
                )
                log(f"cold start: rep {rep} created -> Ready in {rollout.seconds:.1f}s ({rollout.phases})")
                undeploy(cluster, obj)
                time.sleep(2)  # let Serve tear the replica down before the next cold start
        finally:
            cluster.stop()
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)

    keys = sorted({k for b in breakdown for k in b})
    parts = {k: median(b.get(k, 0.0) for b in breakdown) for k in keys}
    later = [r["seconds"] for r in e2e if not r["first_on_cluster"]]
    model_cold = median(later)
    write_result(
        "cold_start",
        {
            "settings": {
                "repetitions": reps,
                "store": "moto S3 server on loopback (s3://)",
                "variant": "int8",
                "int8_model_mib": int8_mib,
                "files_fetched": "int8 ONNX + tokenizer files (hf/ without weights)",
                "quick": args.quick,
            },
            "e2e": e2e,
            "e2e_first_on_cluster_s": e2e[0]["seconds"],
            "e2e_model_cold_s": model_cold,
            "replica_breakdown_median_s": parts,
            "replica_breakdown_runs": breakdown,
            "orchestration_s": model_cold - parts.get("constructor_total", 0.0),
        },
    )


if __name__ == "__main__":
    main()
