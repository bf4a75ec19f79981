"""Benchmark: sentence embeddings through the endpoint against sentence-transformers' ``encode`` (issue 27).

The model: all-MiniLM-L6-v2 fine-tuned by the product's own pipeline on the shipped pairs
(``examples/data/embedding-*.jsonl``; task ``sentence-embedding``, one epoch), built once
into ``bench/.cache/embedding-run/`` (``python -m bench.embeddings --build``, its own Ray).
Both contenders run that model on the same texts (the validation pairs' anchors and
positives, then training anchors up to ``TEXTS``):

- **sentence-transformers** (``SentenceTransformer(<published hf/>)``, PyTorch fp32,
  ``THREADS`` torch threads, in this one process, before the endpoint starts):
  ``encode(texts, batch_size=32, normalize_embeddings=True)``, sentences/s over the whole
  list, and the p50/p99 of one 32-text batch;
- **the endpoint** (one ModelDeployment brought up the product's way, ``bench.serving``:
  1 replica, 1 CPU, ``THREADS`` onnxruntime threads, ``variant: auto``, batching 32 / 5 ms)
  through OpenAI ``POST /v1/embeddings``: c closed-loop clients of one text per request
  (c = 1, 8, 32), and one client sending 32 texts per request (the same batch as
  sentence-transformers'); sentences/s and p50/p99 per request. The client runs on this
  machine's cores too (a minimal asyncio HTTP client, ``bench.loadgen.read_response``).

Agreement: the endpoint's vectors of the validation texts against sentence-transformers'
(smallest cosine), recall@1 / MRR of both on the validation pairs, and the share of
anchors whose top-1 positive is the same. Printed side by side with the ratios, the
instruction set and the load average. ``python -m bench --only embeddings [--quick]`` or
``python -m bench.embeddings [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import (
    BASE_MODEL,
    CACHE,
    DATA,
    ROOT,
    THREADS,
    apply_env,
    bench_env,
    load_average,
    log,
    percentile,
    write_result,
)

apply_env()

RUN_CACHE = CACHE / "embedding-run"
NAME = "embeddings"
TEXTS = 256
BATCH = 32
LEVELS = (1, 8, 32)


def bench_spec() -> dict[str, Any]:
    return {
        "model": {"source": BASE_MODEL, "task": "sentence-embedding"},
        "data": {
            "train": str(DATA / "embedding-train.jsonl"),
            "validation": str(DATA / "embedding-validation.jsonl"),
        },
        "hyperparameters": {
            "epochs": 1,
            "batchSize": 32,
            "learningRate": 3e-5,
            "maxSeqLength": 128,
            "seed": 42,
        },
        "resources": {"numWorkers": 2, "cpusPerWorker": 1},
        "checkpointing": {"everyNSteps": 0, "keep": 1, "resume": False},
        "export": {"opset": 17, "optimize": True, "quantize": "int8"},
    }


def complete_run() -> Path | None:
    for manifest in sorted(RUN_CACHE.glob("*/manifest.json")):
        doc = json.loads(manifest.read_text())
        if doc.get("task") == "sentence-embedding" and all(
            (manifest.parent / f["path"]).is_file() for f in doc["files"]
        ):
            return manifest.parent
    return None


def build() -> None:
    import ray

    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import JobDocument, run_id_for
    from rayrelay_workloads.pipeline import run_pipeline

    spec = TrainingJobSpec.model_validate(bench_spec())
    run_id = run_id_for(spec)
    run_dir = RUN_CACHE / run_id
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = JobDocument(namespace="bench", name="embeddings", run_id=run_id, run_uri=str(run_dir), spec=spec)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        manifest = run_pipeline(job, scratch_dir=str(CACHE / "embedding-scratch"))
    finally:
        ray.shutdown()
        shutil.rmtree(CACHE / "embedding-scratch", ignore_errors=True)
    log(f"embeddings: published {run_dir} ({manifest.recommended_variant}, {manifest.embedding})")


def ensure_run() -> Path:
    run = complete_run()
    if run is None:
        log("embeddings: fine-tuning MiniLM on the shipped pairs through rayrelay_workloads.pipeline")
        subprocess.run(
            [sys.executable, "-m", "bench.embeddings", "--build"], cwd=ROOT, env=bench_env(), check=True
        )
        run = complete_run()
    if run is None:
        raise RuntimeError(f"the pipeline finished but left no complete run under {RUN_CACHE}")
    return run


def bench_texts() -> tuple[list[str], int]:
    """(texts, number of validation pairs): validation anchors, their positives, then training anchors."""
    pairs = [json.loads(line) for line in (DATA / "embedding-validation.jsonl").read_text().splitlines()]
    train = [json.loads(line)["anchor"] for line in (DATA / "embedding-train.jsonl").read_text().splitlines()]
    texts = [p["anchor"] for p in pairs] + [p["positive"] for p in pairs]
    return texts + train[: max(0, TEXTS - len(texts))], len(pairs)


# ------------------------------------------------------------------ sentence-transformers


def st_figures(hf_dir: Path, texts: list[str], reps: int) -> tuple[dict[str, Any], Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    model = SentenceTransformer(str(hf_dir), device="cpu")
    vectors = model.encode(texts, batch_size=BATCH, normalize_embeddings=True)  # warm-up, and the reference
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model.encode(texts, batch_size=BATCH, normalize_embeddings=True)
        walls.append(time.perf_counter() - t0)
    batches = []
    for _ in range(reps):
        for i in range(0, len(texts) - BATCH + 1, BATCH):
            t0 = time.perf_counter()
            model.encode(texts[i : i + BATCH], batch_size=BATCH, normalize_embeddings=True)
            batches.append(time.perf_counter() - t0)
    best = sorted(walls)[len(walls) // 2]
    return {
        "sentences_per_s": len(texts) / best,
        "batch32_p50_ms": percentile(batches, 50) * 1000,
        "batch32_p99_ms": percentile(batches, 99) * 1000,
        "torch_threads": THREADS,
        "version": __import__("sentence_transformers").__version__,
    }, vectors


# ------------------------------------------------------------------ the endpoint


def requests_bytes(url: str, bodies: list[dict[str, Any]]) -> list[bytes]:
    parts = urlsplit(url)
    out = []
    for doc in bodies:
        body = json.dumps(doc, separators=(",", ":")).encode()
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def closed_loop(
    url: str, bodies: list[bytes], clients: int, total: int, duration_s: float
) -> dict[str, Any]:
    from bench.loadgen import read_response

    parts = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal issued, errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        while issued < total and time.perf_counter() < deadline:
            data = bodies[issued % len(bodies)]
            issued += 1
            t0 = time.perf_counter()
            writer.write(data)
            status, _ = await asyncio.wait_for(read_response(reader), 60)
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests_ok": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
    }


def endpoint_vectors(url: str, texts: list[str]) -> Any:
    import numpy as np
    import requests

    out = []
    for i in range(0, len(texts), BATCH):
        resp = requests.post(url, json={"model": NAME, "input": texts[i : i + BATCH]}, timeout=120)
        resp.raise_for_status()
        out += [d["embedding"] for d in resp.json()["data"]]
    return np.array(out, dtype=np.float32)


def endpoint_figures(cluster_url: str, texts: list[str], quick: bool) -> dict[str, Any]:
    url = f"{cluster_url}/v1/embeddings"
    single = requests_bytes(url, [{"model": NAME, "input": t, "encoding_format": "float"} for t in texts])
    batched = requests_bytes(
        url,
        [
            {"model": NAME, "input": texts[i : i + BATCH], "encoding_format": "float"}
            for i in range(0, len(texts) - BATCH + 1, BATCH)
        ],
    )
    duration = 8.0 if quick else 30.0
    asyncio.run(closed_loop(url, single, 4, 64, 20))  # warm-up: connections, batcher, proxy
    levels = {}
    for clients in LEVELS:
        r = asyncio.run(closed_loop(url, single, clients, 100_000, duration))
        r["sentences_per_s"] = r["requests_per_s"]
        levels[str(clients)] = r
        log(
            f"embeddings: endpoint c={clients}: {r['sentences_per_s']:.1f} sentences/s, p99 {r['p99_ms']:.1f} ms"
        )
    r = asyncio.run(closed_loop(url, batched, 1, 100_000, duration))
    r["sentences_per_s"] = r["requests_per_s"] * BATCH
    # OIP infer reaches the replica in one hop (its route prefix); /v1/embeddings passes the gateway.
    infer = f"{cluster_url}/v2/models/{NAME}/infer"
    oip = requests_bytes(
        infer, [{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]} for t in texts]
    )
    o = asyncio.run(closed_loop(infer, oip, LEVELS[-1], 100_000, duration))
    o["sentences_per_s"] = o["requests_per_s"]
    return {"one_text_per_request": levels, "batch32_one_client": r, f"oip_infer_{LEVELS[-1]}_clients": o}


# ------------------------------------------------------------------ agreement


def agreement(served: Any, reference: Any, pairs: int) -> dict[str, Any]:
    import numpy as np

    from rayrelay_workloads.embedding.objective import cosine_rows, retrieval

    n = pairs
    ours, theirs = retrieval(served[:n], served[n : 2 * n]), retrieval(reference[:n], reference[n : 2 * n])
    top_ours = (served[:n] @ served[n : 2 * n].T).argmax(axis=1)
    top_theirs = (reference[:n] @ reference[n : 2 * n].T).argmax(axis=1)
    return {
        "cosine_min": float(cosine_rows(served[: 2 * n], reference[: 2 * n]).min()),
        "recall_at_1": {"endpoint": ours.recall_at_1, "sentence_transformers": theirs.recall_at_1},
        "mrr": {"endpoint": ours.mrr, "sentence_transformers": theirs.mrr},
        "same_top1_share": float(np.mean(top_ours == top_theirs)),
        "pairs": n,
    }


def table(doc: dict[str, Any]) -> list[str]:
    st, ep = doc["sentence_transformers"], doc["endpoint"]
    base = st["sentences_per_s"]
    rows = [
        [
            "sentence-transformers encode, batch 32, 1 process",
            f"{base:.1f}",
            "1.00x",
            f"{st['batch32_p50_ms']:.1f}",
            f"{st['batch32_p99_ms']:.1f}",
            "per 32-text batch",
        ],
    ]
    for clients, r in ep["one_text_per_request"].items():
        rows.append(
            [
                f"endpoint /v1/embeddings, {clients} client(s), 1 text each",
                f"{r['sentences_per_s']:.1f}",
                f"{r['sentences_per_s'] / base:.2f}x",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                "per request",
            ]
        )
    b = ep["batch32_one_client"]
    rows.append(
        [
            "endpoint /v1/embeddings, 1 client, 32 texts each",
            f"{b['sentences_per_s']:.1f}",
            f"{b['sentences_per_s'] / base:.2f}x",
            f"{b['p50_ms']:.1f}",
            f"{b['p99_ms']:.1f}",
            "per request",
        ]
    )
    o = ep.get(f"oip_infer_{LEVELS[-1]}_clients")
    if o:
        rows.append(
            [
                f"endpoint OIP /v2/models/{{name}}/infer, {LEVELS[-1]} clients, 1 text each (no gateway hop)",
                f"{o['sentences_per_s']:.1f}",
                f"{o['sentences_per_s'] / base:.2f}x",
                f"{o['p50_ms']:.1f}",
                f"{o['p99_ms']:.1f}",
                "per request",
            ]
        )
    a = doc["agreement"]
    return [
        "## Sentence embeddings: endpoint vs sentence-transformers (issue 27)",
        "",
        f"Model: MiniLM fine-tuned on the shipped pairs; endpoint variant {doc['variant']} (auto), "
        f"{doc['texts']} texts. Instruction set **{doc['instruction_set']}**; "
        f"load average before {doc['load_average_before']}, after {doc['load_average_at_end']}. "
        f"Command: `{doc['command']}`.",
        "",
        "| contender | sentences/s | vs sentence-transformers | p50 ms | p99 ms | latency of |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        f"Agreement on the {a['pairs']} validation pairs: smallest cosine endpoint vs sentence-transformers "
        f"{a['cosine_min']:.5f}; recall@1 {a['recall_at_1']['endpoint']:.3f} vs {a['recall_at_1']['sentence_transformers']:.3f}, "
        f"MRR {a['mrr']['endpoint']:.3f} vs {a['mrr']['sentence_transformers']:.3f}; same top-1 for "
        f"{a['same_top1_share']:.1%} of the anchors.",
        "",
    ]


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``embeddings`` section of docs/performance.md (``bench.report``)."""
    return table(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads and fewer repetitions")
    parser.add_argument(
        "--build", action="store_true", help="only build the model (a subprocess of the benchmark)"
    )
    args = parser.parse_args(argv)
    if args.build:
        build()
        return 0
    from bench.serving import md_object, start_and_deploy, undeploy
    from rayrelay_workloads.hardware import instruction_set

    run = ensure_run()
    manifest = json.loads((run / "manifest.json").read_text())
    hf_dir = run / manifest["tokenizer"]["path"]
    texts, pairs = bench_texts()
    before = load_average()
    log(f"embeddings: sentence-transformers on {len(texts)} texts")
    st, reference = st_figures(hf_dir, texts, 2 if args.quick else 5)
    obj = md_object(NAME, f"file://{run / 'manifest.json'}", variant="auto")
    cluster, _ = start_and_deploy(obj)
    try:
        served = endpoint_vectors(f"{cluster.url}/v1/embeddings", texts[: 2 * pairs])
        ep = endpoint_figures(cluster.url, texts, args.quick)
        variant = str((obj.get("status") or {}).get("model", {}).get("variant") or "auto")
        undeploy(cluster, obj)
    finally:
        cluster.stop()
    doc = {
        "command": "python -m bench --only embeddings" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "instruction_set": instruction_set(),
        "load_average_before": before,
        "texts": len(texts),
        "variant": variant,
        "manifest_embedding": manifest.get("embedding"),
        "sentence_transformers": st,
        "endpoint": ep,
        "agreement": agreement(served, reference, pairs),
    }
    path = write_result("embeddings", doc)
    doc["load_average_at_end"] = load_average()
    print("\n".join(table(doc)))
    log(f"embeddings: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
