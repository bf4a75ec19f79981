"""Benchmark: sentence embeddings through the endpoint against sentence-transformers' ``encode`` (issue 27).

The model: all-MiniLM-L6-v2 fine-tuned by the product's own pipeline on the shipped pairs
(``examples/data/embedding-*.jsonl``; task ``sentence-embedding``, one epoch), built once
into ``bench/.cache/embedding-run/`` (``python -m bench.embeddings --build``, its own Ray).
Every contender runs that model on the same texts (the validation pairs' anchors and
positives, then training anchors up to ``TEXTS``), in this order:

- **sentence-transformers** (``SentenceTransformer(<published hf/>)``, PyTorch fp32,
  ``THREADS`` torch threads, in this one process, before the endpoint starts):
  ``encode(texts, batch_size=32, normalize_embeddings=True)``, sentences/s over the whole
  list, and the p50/p99 of one 32-text batch; on a CPU with bf16 instructions the same
  again with the weights in bf16 (``torch_dtype`` bfloat16), the library's strongest CPU
  setting there (the ratios stay to fp32's ``encode``, the issue's baseline);
- **the kernel bound** (``kernel_figures``): each published variant (int8, fp32 in
  onnxruntime; bf16 in OpenVINO) in one session in this process with the replica's threads
  and tokenizer, batch 32, tokenizing included: what no server of these files can pass on
  this host;
- **infinity-emb** (``bench/peer_infinity.py``, from a venv of its own made by
  ``bench.peers``), serving the published ``hf/`` folder: a short sweep of its documented
  CPU engines (``INFINITY_SWEEP``: torch in fp32 and in bf16; optimum with optimum's own ONNX
  export, int8 and fp32), each at batch 32 with ``THREADS`` threads, then the winner (highest geometric mean
  of sentences/s over the client levels) at the endpoint's levels over its OpenAI
  ``POST /embeddings``, with the same load generator; before Ray starts;
- **the endpoint** (one ModelDeployment brought up the product's way, ``bench.serving``:
  1 replica, 1 CPU, ``THREADS`` onnxruntime threads, ``variant: auto``, batching 32 / 5 ms)
  through OpenAI ``POST /v1/embeddings``: c closed-loop clients of one text per request
  (c = 1, 8, 32), and one client sending 32 texts per request (the same batch as
  sentence-transformers'); sentences/s and p50/p99 per request. The client runs on this
  machine's cores too (a minimal asyncio HTTP client, ``bench.loadgen.read_response``).
  At 32 clients also the two one-hop routes of the same replicas: OIP infer and OpenAI's
  embeddings on the model's own base (``ONE_HOP_ROUTES``), neither through the gateway.
  Then the same again as ``SPLIT_REPLICAS`` replicas x 1 CPU x 1 thread on the same head
  (``split_figures``; ``--one-split`` skips it), the split the classification endpoint uses.

Agreement: the endpoint's and infinity's vectors of the validation texts against
sentence-transformers' (smallest cosine), recall@1 / MRR of both on the validation pairs, and the share of
anchors whose top-1 positive is the same. Printed side by side with the ratios, the
instruction set and the load average, and the winner at 32 clients named.
``python -m bench --only embeddings [--quick]`` or ``python -m bench.embeddings [--quick]
[--no-infinity]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
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
    free_port,
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
        # A set from before bf16 was measured for embeddings lists no bf16 variant: built again.
        if (
            doc.get("task") == "sentence-embedding"
            and "bf16" in doc["variants"]
            and all((manifest.parent / f["path"]).is_file() for f in doc["files"])
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


def st_figures(
    hf_dir: Path, texts: list[str], reps: int, dtype: str | None = None
) -> tuple[dict[str, Any], Any]:
    """sentence-transformers' ``encode`` in this process; ``dtype`` "bfloat16" loads the weights in
    bf16 (``model_kwargs={"torch_dtype": ...}``, its documented way; AMX runs it natively)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(THREADS)
    kwargs = {"model_kwargs": {"torch_dtype": getattr(torch, dtype)}} if dtype else {}
    model = SentenceTransformer(str(hf_dir), device="cpu", **kwargs)
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
        "dtype": dtype or "float32",
        "version": __import__("sentence_transformers").__version__,
    }, vectors


# ------------------------------------------------------------------ the kernel's ceiling


def kernel_figures(run: Path, manifest: dict[str, Any], texts: list[str], reps: int) -> dict[str, Any]:
    """The published ONNX sessions alone, in this process: the host's bound for the endpoint.

    Each published variant (int8, fp32) in an onnxruntime session with the replica's settings
    (``md_object``: ``THREADS`` intra-op threads, 1 inter-op, idle threads not spinning), bf16
    in the replica's OpenVINO session (``THREADS`` threads), fed
    the bench texts in batches of ``BATCH`` tokenized as a replica tokenizes them (the set's
    ``tokenizer.json`` through ``LightTokenizer``, padded to the batch's longest text,
    truncated at the manifest's sequence length). Tokenizing is inside the timing, as it is
    inside the endpoint's; no HTTP, no batcher, no other process.
    """
    from types import SimpleNamespace

    import onnxruntime as ort

    from rayrelay_workloads.serve.model import SPIN, light_tokenizer

    tokenizer = light_tokenizer(SimpleNamespace(tokenizer_dir=run / manifest["tokenizer"]["path"]))
    if tokenizer is None:
        raise RuntimeError("the published set has no tokenizer.json")
    max_len = int(manifest["tokenizer"]["maxSeqLength"])
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    out: dict[str, Any] = {}
    for variant, doc in manifest["variants"].items():
        if not doc.get("file") or not doc.get("accepted", True):
            continue
        if doc.get("runtime") == "openvino":  # bf16: OpenVINO on fp32's file, as a replica runs it
            from rayrelay_workloads.openvino_runtime import OpenVinoSession

            session: Any = OpenVinoSession(str(run / doc["file"]), THREADS, "bf16")
        else:
            options = ort.SessionOptions()
            options.intra_op_num_threads = THREADS
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
            session = ort.InferenceSession(
                str(run / doc["file"]), options, providers=["CPUExecutionProvider"]
            )
        names = [i.name for i in session.get_inputs()]
        walls, per_batch = [], []
        for rep in range(reps + 1):  # the first pass warms up
            t0 = time.perf_counter()
            for batch in batches:
                b0 = time.perf_counter()
                enc = tokenizer(batch, padding="longest", truncation=True, max_length=max_len)
                session.run(None, {n: enc[n] for n in names})
                if rep:
                    per_batch.append(time.perf_counter() - b0)
            if rep:
                walls.append(time.perf_counter() - t0)
        best = sorted(walls)[len(walls) // 2]
        out[variant] = {
            "sentences_per_s": len(texts) / best,
            "batch32_p50_ms": percentile(per_batch, 50) * 1000,
            "batch32_p99_ms": percentile(per_batch, 99) * 1000,
            "intra_op_threads": THREADS,
            "runtime": doc.get("runtime") or "onnxruntime",
        }
        log(f"embeddings: kernel {variant}: {out[variant]['sentences_per_s']:.1f} sentences/s")
    return out


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


def endpoint_figures(
    base_url: str, texts: list[str], quick: bool, route: str = "/v1/embeddings", oip: bool = True
) -> dict[str, Any]:
    """One text per request at each of ``LEVELS`` clients, then one client of 32 texts (and OIP infer)."""
    url = f"{base_url}{route}"
    batched = requests_bytes(
        url,
        [
            {"model": NAME, "input": texts[i : i + BATCH], "encoding_format": "float"}
            for i in range(0, len(texts) - BATCH + 1, BATCH)
        ],
    )
    duration = 8.0 if quick else 30.0
    warm = requests_bytes(url, [{"model": NAME, "input": t, "encoding_format": "float"} for t in texts])
    asyncio.run(closed_loop(url, warm, 4, 64, 20))  # warm-up: connections, batcher, proxy
    levels = one_text_levels(url, texts, duration, LEVELS)
    for clients, r in levels.items():
        log(
            f"embeddings: {url} c={clients}: {r['sentences_per_s']:.1f} sentences/s, p99 {r['p99_ms']:.1f} ms"
        )
    r = asyncio.run(closed_loop(url, batched, 1, 100_000, duration))
    r["sentences_per_s"] = r["requests_per_s"] * BATCH
    out = {"one_text_per_request": levels, "batch32_one_client": r}
    if oip:
        # The replicas' one-hop routes (their route prefix), beside /v1/embeddings through the gateway.
        bodies = {
            "oip_infer": [
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]} for t in texts
            ],
            "openai_one_hop": [{"model": NAME, "input": t, "encoding_format": "float"} for t in texts],
        }
        for key, path, *_ in ONE_HOP_ROUTES:
            one = f"{base_url}{path}"
            o = asyncio.run(closed_loop(one, requests_bytes(one, bodies[key]), LEVELS[-1], 100_000, duration))
            o["sentences_per_s"] = o["requests_per_s"]
            log(
                f"embeddings: {one} c={LEVELS[-1]}: {o['sentences_per_s']:.1f} sentences/s, p99 {o['p99_ms']:.1f} ms"
            )
            out[f"{key}_{LEVELS[-1]}_clients"] = o
    return out


# The replicas' one-hop routes, measured at the top client level: (result key, path, the
# table's label, the winner line's label). OpenAI's embeddings on the model's own base URL
# (``/v2/models/{name}/openai/v1``) take the same body as /v1/embeddings.
ONE_HOP_ROUTES = (
    (
        "oip_infer",
        f"/v2/models/{NAME}/infer",
        "OIP /v2/models/{name}/infer",
        "no gateway hop",
        "rayrelay OIP infer",
    ),
    (
        "openai_one_hop",
        f"/v2/models/{NAME}/openai/v1/embeddings",
        "OpenAI /v2/models/{name}/openai/v1/embeddings",
        "the model's own base: no gateway hop",
        "rayrelay OpenAI embeddings",
    ),
)

# The other split of the 2 cores (docs/performance.md, section 2): replicas of 1 CPU with one
# onnxruntime thread each, as the classification endpoint is benchmarked, on the same head.
SPLIT_REPLICAS = 2


def split_figures(cluster: Any, run: Path, texts: list[str], quick: bool) -> dict[str, Any]:
    """The endpoint again as ``SPLIT_REPLICAS`` replicas x 1 CPU x 1 intra-op thread."""
    from bench.serving import deploy, md_object, undeploy

    obj = md_object(NAME, f"file://{run / 'manifest.json'}", variant="auto")
    obj["spec"]["autoscaling"] = {"minReplicas": SPLIT_REPLICAS, "maxReplicas": SPLIT_REPLICAS}
    obj["spec"]["runtime"] = {"intraOpThreads": 1, "interOpThreads": 1}
    deploy(cluster, obj)
    log(f"embeddings: the endpoint as {SPLIT_REPLICAS} replicas x 1 CPU, 1 thread each")
    figures = endpoint_figures(cluster.url, texts, quick)
    undeploy(cluster, obj)
    return {"replicas": SPLIT_REPLICAS, "cpus": 1, "intra_op_threads": 1, **figures}


# ------------------------------------------------------------------ infinity-emb


INFINITY = "infinity"
INFINITY_SERVER = "infinity-emb 0.0.78 (bench/peer_infinity.py, its own venv)"
# infinity's documented CPU choices, each at --batch-size 32 (its default, and this bench's
# batch): PyTorch through sentence-transformers, or ONNX through optimum, where on CPU it
# prefers a quantized file (--onnx-do-not-prefer-quantized: the fp32 one).
AGREEMENT_FLOOR = 0.95  # smallest cosine to sentence-transformers of a setting that may win (int8: ~0.985)
INFINITY_SWEEP: tuple[tuple[str, dict[str, Any]], ...] = (
    ("engine torch (fp32)", {"engine": "torch"}),
    ("engine optimum, ONNX int8 (model_quantized.onnx)", {"engine": "optimum"}),
    ("engine optimum, ONNX fp32", {"engine": "optimum", "prefer_quantized": False}),
    # --dtype bfloat16: PyTorch with bf16 weights (AMX runs it natively; elsewhere it is emulated).
    ("engine torch, --dtype bfloat16", {"engine": "torch", "dtype": "bfloat16"}),
)


def infinity_args(options: dict[str, Any], port: int) -> list[str]:
    """``infinity_emb v2`` arguments of one sweep setting, run inside the model folder.

    ``--model-id .``: see ``bench.peer_infinity`` (how infinity and optimum find the ONNX file).
    The vector cache off: every text is new work, as for the other contenders."""
    args = [
        "--model-id", ".", "--served-model-name", NAME, "--engine", str(options["engine"]),
        "--device", "cpu", "--batch-size", str(BATCH), "--no-vector-disk-cache",
        # the model's own pooling (1_Pooling: mean); infinity's optimum engine reads "auto" as CLS
        "--pooling-method", "mean",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    if options.get("prefer_quantized") is False:
        args.append("--onnx-do-not-prefer-quantized")
    if options.get("dtype"):
        args += ["--dtype", str(options["dtype"])]
    return args


def openai_vectors(doc: dict[str, Any], expected: int) -> list[list[float]]:
    """The float vectors of an OpenAI embeddings response, in input order (``data[].index``)."""
    data = doc.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise ValueError(f"expected {expected} embeddings, got {doc!r:.300}")
    rows = sorted(data, key=lambda d: int(d["index"]))
    if [int(d["index"]) for d in rows] != list(range(expected)):
        raise ValueError(f"embedding indexes are not 0..{expected - 1}")
    out = []
    for d in rows:
        vec = d["embedding"]
        if not isinstance(vec, list) or not vec:
            raise ValueError(f"embedding {d['index']} is not a list of floats (encoding_format float?)")
        out.append([float(x) for x in vec])
    return out


def infinity_folder(run: Path, hf_dir: Path) -> Path:
    """The folder infinity serves: ``hf/`` plus optimum's ONNX files, made once per run and venv."""
    from bench import peers

    python = peers.ensure_venv(INFINITY)
    recipe = hashlib.sha256((ROOT / "bench" / "peer_infinity.py").read_bytes()).hexdigest()[:8]
    # Per publication (hf/ is linked, not copied: a rebuilt run is a new attempt folder).
    folder = peers.VENVS / f"{python.parent.parent.name}-model-{run.name}-{hf_dir.parent.name}-{recipe}"
    if not (folder / "done").is_file():
        log(f"embeddings: preparing {folder} (optimum ONNX export + int8) for infinity")
        shutil.rmtree(folder, ignore_errors=True)
        env = bench_env()
        env["PYTHONPATH"] = str(ROOT)
        env["OMP_NUM_THREADS"] = str(THREADS)
        log_path = folder.with_suffix(".prepare.log")
        with log_path.open("wb") as out:
            done = subprocess.run(
                [str(python), "-m", "bench.peer_infinity", "prepare", str(hf_dir), str(folder)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
        if done.returncode:
            raise RuntimeError(f"preparing infinity's model folder failed: see {log_path}")
    return folder


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def start_infinity(folder: Path, label: str, options: dict[str, Any], scratch: Path) -> Any:
    """infinity with one sweep setting, up once its model answers (``GET /models``)."""
    from bench import peers

    python = peers.ensure_venv(INFINITY)
    port = free_port()
    env = bench_env()
    env.update(
        PYTHONPATH=str(ROOT),
        OMP_NUM_THREADS=str(THREADS),  # torch's intra-op threads; onnxruntime's: --threads
        MKL_NUM_THREADS=str(THREADS),
        HF_HOME=str(scratch / "hf-home"),
        DO_NOT_TRACK="1",
        INFINITY_ANONYMOUS_USAGE_STATS="0",
    )
    scratch.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(python), "-m", "bench.peer_infinity", "serve", "--threads", str(THREADS), "--",
        *infinity_args(options, port),
    ]  # fmt: skip
    log_path = scratch / f"infinity-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=out, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    running = peers.Running(peers.Setting(INFINITY, label, 1, options), proc, f"{base}/embeddings", log_path)

    deadline = time.monotonic() + 300
    try:
        while not _answers(f"{base}/models"):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"infinity ({label}) exited during start-up:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"infinity ({label}) not up after 300 s: see {log_path}")
            time.sleep(0.5)
    except BaseException:
        running.stop()
        raise
    return running


def peer_vectors(url: str, texts: list[str]) -> Any:
    import numpy as np
    import requests

    out: list[list[float]] = []
    for i in range(0, len(texts), BATCH):
        chunk = texts[i : i + BATCH]
        body = {"model": NAME, "input": chunk, "encoding_format": "float"}
        resp = requests.post(url, json=body, timeout=120)
        resp.raise_for_status()
        out += openai_vectors(resp.json(), len(chunk))
    return np.array(out, dtype=np.float32)


def one_text_levels(url: str, texts: list[str], duration: float, levels: tuple[int, ...]) -> dict[str, Any]:
    single = requests_bytes(url, [{"model": NAME, "input": t, "encoding_format": "float"} for t in texts])
    out = {}
    for clients in levels:
        r = asyncio.run(closed_loop(url, single, clients, 100_000, duration))
        r["sentences_per_s"] = r["requests_per_s"]
        out[str(clients)] = r
    return out


def infinity_figures(
    run: Path, hf_dir: Path, texts: list[str], reference: Any, pairs: int, quick: bool, scratch: Path
) -> dict[str, Any]:
    """infinity's sweep (short loads), then its winner at every level, as the endpoint is measured."""
    from bench import peers

    folder = infinity_folder(run, hf_dir)
    sweep_s, duration = (4.0, 8.0) if quick else (6.0, 30.0)
    sweep: list[dict[str, Any]] = []
    for label, options in INFINITY_SWEEP:
        running = start_infinity(folder, label, options, scratch)
        try:
            check = agreement(peer_vectors(running.url, texts[: 2 * pairs]), reference, pairs, INFINITY)
            one_text_levels(running.url, texts, sweep_s, (4,))  # warm-up
            levels = one_text_levels(running.url, texts, sweep_s, LEVELS)
        finally:
            running.stop()
        # Every level counts (a level with no answer scores as almost nothing, not as an error here).
        score = statistics.geometric_mean([max(r["sentences_per_s"], 1e-6) for r in levels.values()])
        kept = ("sentences_per_s", "p50_ms", "p99_ms", "errors")
        sweep.append(
            {
                "setting": label,
                "options": options,
                "geomean_sentences_per_s": score,
                "agreement": check,
                "levels": {c: {k: r[k] for k in kept} for c, r in levels.items()},
            }
        )
        log(
            f"embeddings: sweep infinity ({label}): {score:.1f} sentences/s (geomean), cosine {check['cosine_min']:.4f}"
        )
    valid = [s for s in sweep if s["agreement"]["cosine_min"] >= AGREEMENT_FLOOR]
    if not valid:
        raise RuntimeError(
            f"no infinity setting gives the model's vectors (cosine >= {AGREEMENT_FLOOR}): {sweep}"
        )
    best = max(valid, key=lambda s: s["geomean_sentences_per_s"])
    running = start_infinity(folder, best["setting"], best["options"], scratch)
    try:
        served = peer_vectors(running.url, texts[: 2 * pairs])
        base = running.url.removesuffix("/embeddings")
        ep = endpoint_figures(base, texts, quick, route="/embeddings", oip=False)
    finally:
        running.stop()
    return {
        "server": INFINITY_SERVER,
        "pins": list(peers.pins(INFINITY)),
        "setting": best["setting"],
        "options": best["options"],
        "threads": THREADS,
        "sweep": sweep,
        "agreement": agreement(served, reference, pairs, INFINITY),
        **ep,
        "duration_s": duration,
    }


# ------------------------------------------------------------------ agreement


def agreement(served: Any, reference: Any, pairs: int, name: str = "endpoint") -> dict[str, Any]:
    import numpy as np

    from rayrelay_workloads.embedding.objective import cosine_rows, retrieval

    n = pairs
    ours, theirs = retrieval(served[:n], served[n : 2 * n]), retrieval(reference[:n], reference[n : 2 * n])
    top_ours = (served[:n] @ served[n : 2 * n].T).argmax(axis=1)
    top_theirs = (reference[:n] @ reference[n : 2 * n].T).argmax(axis=1)
    return {
        "cosine_min": float(cosine_rows(served[: 2 * n], reference[: 2 * n]).min()),
        "recall_at_1": {name: ours.recall_at_1, "sentence_transformers": theirs.recall_at_1},
        "mrr": {name: ours.mrr, "sentence_transformers": theirs.mrr},
        "same_top1_share": float(np.mean(top_ours == top_theirs)),
        "pairs": n,
    }


def _row(name: str, r: dict[str, Any], base: float, p50: str, p99: str, of: str) -> list[str]:
    rate = r["sentences_per_s"]
    return [name, f"{rate:.1f}", f"{rate / base:.2f}x", f"{r[p50]:.1f}", f"{r[p99]:.1f}", of]


def _server_rows(label: str, route: str, doc: dict[str, Any], base: float) -> list[list[str]]:
    rows = [
        _row(f"{label} {route}, {c} client(s), 1 text each", r, base, "p50_ms", "p99_ms", "per request")
        for c, r in doc["one_text_per_request"].items()
    ]
    rows.append(
        _row(
            f"{label} {route}, 1 client, 32 texts each",
            doc["batch32_one_client"],
            base,
            "p50_ms",
            "p99_ms",
            "per request",
        )
    )
    return rows


# The first endpoint's split (``md_object``'s: 1 replica, 1 CPU, THREADS intra-op threads).
ONE_REPLICA = f"endpoint, 1 replica x 1 CPU ({THREADS} threads)"


def split_label(split: dict[str, Any] | None) -> str:
    if not split:
        return ""
    return f"endpoint, {split['replicas']} replicas x {split['cpus']} CPU ({split['intra_op_threads']} thread each)"


def _agreement_line(a: dict[str, Any], name: str, what: str) -> str:
    return (
        f"Agreement of {what} on the {a['pairs']} validation pairs: smallest cosine to sentence-transformers "
        f"{a['cosine_min']:.5f}; recall@1 {a['recall_at_1'][name]:.3f} vs {a['recall_at_1']['sentence_transformers']:.3f}, "
        f"MRR {a['mrr'][name]:.3f} vs {a['mrr']['sentence_transformers']:.3f}; same top-1 for "
        f"{a['same_top1_share']:.1%} of the anchors."
    )


def winner_at(doc: dict[str, Any], clients: int) -> list[tuple[str, float]]:
    """The servers at ``clients`` clients of one text each, fastest first (sentences/s)."""
    split = doc.get("endpoint_split")
    first = f"rayrelay /v1/embeddings ({ONE_REPLICA})" if split else "rayrelay /v1/embeddings"
    out = [(first, doc["endpoint"]["one_text_per_request"][str(clients)]["sentences_per_s"])]
    if split:
        out.append(
            (
                f"rayrelay /v1/embeddings ({split_label(split)})",
                split["one_text_per_request"][str(clients)]["sentences_per_s"],
            )
        )
    # The one-hop routes (measured at the top level only) are the same replicas' other routes.
    for label, e in ((ONE_REPLICA if split else "endpoint", doc["endpoint"]), (split_label(split), split)):
        for key, _, _, _, name in ONE_HOP_ROUTES:
            o = (e or {}).get(f"{key}_{clients}_clients")
            if o:
                out.append((f"{name}, one hop ({label})", o["sentences_per_s"]))
    inf = doc.get("infinity")
    if inf:
        out.append(
            (f"infinity-emb ({inf['setting']})", inf["one_text_per_request"][str(clients)]["sentences_per_s"])
        )
    return sorted(out, key=lambda x: -x[1])


def _sweep_cell(s: dict[str, Any]) -> str:
    cos = s["agreement"]["cosine_min"]
    note = "" if cos >= AGREEMENT_FLOOR else f", below {AGREEMENT_FLOOR}: not eligible"
    return f"{s['setting']} {s['geomean_sentences_per_s']:.1f} (cosine {cos:.4f}{note})"


def table(doc: dict[str, Any]) -> list[str]:
    st, ep = doc["sentence_transformers"], doc["endpoint"]
    base = st["sentences_per_s"]
    rows = [
        _row(
            "sentence-transformers encode, batch 32, 1 process",
            st,
            base,
            "batch32_p50_ms",
            "batch32_p99_ms",
            "per 32-text batch",
        ),
    ]
    st_bf16 = doc.get("sentence_transformers_bf16")
    if st_bf16:
        rows.append(
            _row(
                "sentence-transformers encode, bf16 weights (torch_dtype bfloat16), batch 32, 1 process",
                st_bf16, base, "batch32_p50_ms", "batch32_p99_ms", "per 32-text batch",
            )
        )  # fmt: skip
    for variant, k in (doc.get("kernel") or {}).items():
        rows.append(
            _row(
                f"kernel bound: published {variant} ONNX, {k.get('runtime', 'onnxruntime')} session alone, "
                f"batch 32, {k['intra_op_threads']} threads",
                k, base, "batch32_p50_ms", "batch32_p99_ms", "per 32-text batch",
            )
        )  # fmt: skip
    split = doc.get("endpoint_split")
    for label, e in ((ONE_REPLICA if split else "endpoint", ep), (split_label(split), split)):
        if not e:
            continue
        rows += _server_rows(label, "/v1/embeddings", e, base)
        for key, _, route, note, _ in ONE_HOP_ROUTES:
            o = e.get(f"{key}_{LEVELS[-1]}_clients")
            if o:
                name = f"{label} {route}, {LEVELS[-1]} clients, 1 text each ({note})"
                rows.append(_row(name, o, base, "p50_ms", "p99_ms", "per request"))
    inf = doc.get("infinity")
    if inf:
        rows += _server_rows(f"infinity-emb ({inf['setting']})", "/embeddings", inf, base)
    a = doc["agreement"]
    lines = [
        "## Sentence embeddings: endpoint vs sentence-transformers (issue 27)",
        "",
        f"Model: MiniLM fine-tuned on the shipped pairs; endpoint variant {doc['variant']} (auto); "
        f"*endpoint*: 1 replica of 1 CPU with {THREADS} onnxruntime threads"
        + (
            f", then as {split['replicas']} replicas of {split['cpus']} CPU with "
            f"{split['intra_op_threads']} thread each on the same head"
            if split
            else ""
        )
        + f"; {doc['texts']} texts. Instruction set **{doc['instruction_set']}**; "
        f"load average before {doc['load_average_before']}, after {doc['load_average_at_end']}. "
        f"Command: `{doc['command']}`.",
        "",
        "| contender | sentences/s | vs sentence-transformers | p50 ms | p99 ms | latency of |",
        "|---|---|---|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
        _agreement_line(a, "endpoint", "the endpoint"),
        "",
    ]
    if doc.get("kernel"):
        lines += [
            "Kernel bound: each published variant in one session in the bench's process (int8 and fp32 in "
            "onnxruntime, bf16 in OpenVINO on fp32's file, as a replica runs them; the replica's threads, the "
            "replica's tokenizer, tokenizing included), no HTTP and no batcher: the most a server of these files "
            "can approach on this host, measured in the same run (the same load).",
            "",
        ]
    if inf:
        ranked = winner_at(doc, LEVELS[-1])
        # Against the best of the other side: rayrelay's routes against the peer, not each other.
        first, rate = ranked[0]
        ours = first.startswith("rayrelay")
        second, other = next((n, r) for n, r in ranked[1:] if n.startswith("rayrelay") != ours)
        lines += [
            f"At {LEVELS[-1]} clients of one text each, {first} wins: {rate:.1f} sentences/s against "
            f"{other:.1f} for {second} ({rate / other:.2f}x). All of them, fastest first: "
            + "; ".join(f"{n} {r:.1f}" for n, r in ranked)
            + ".",
            "",
            f"infinity-emb: {inf['server']}; pins {', '.join(inf['pins'])}; {inf['threads']} threads "
            "(torch: OMP_NUM_THREADS; onnxruntime: intra-op), vector cache off. Its sweep "
            "(short loads, geometric mean of sentences/s over the client levels): "
            + "; ".join(_sweep_cell(s) for s in inf["sweep"])
            + f"; it takes part with {inf['setting']}.",
            "",
            _agreement_line(inf["agreement"], INFINITY, "infinity-emb"),
            "",
        ]
    return lines


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``embeddings`` section of docs/performance.md (``bench.report``)."""
    return table(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loads and fewer repetitions")
    parser.add_argument(
        "--build", action="store_true", help="only build the model (a subprocess of the benchmark)"
    )
    parser.add_argument(
        "--no-infinity", action="store_true", help="leave infinity-emb out (its venv needs the package index)"
    )
    parser.add_argument(
        "--one-split",
        action="store_true",
        help="measure the endpoint as 1 replica with 2 threads only (not also as 2 replicas x 1 thread)",
    )
    args = parser.parse_args(argv)
    if args.build:
        build()
        return 0
    from bench.serving import md_object, start_and_deploy, undeploy
    from rayrelay_workloads.embedding.objective import cosine_rows
    from rayrelay_workloads.export import export_host_lacks_bf16
    from rayrelay_workloads.hardware import instruction_set

    run = ensure_run()
    manifest = json.loads((run / "manifest.json").read_text())
    hf_dir = run / manifest["tokenizer"]["path"]
    texts, pairs = bench_texts()
    before = load_average()
    log(f"embeddings: sentence-transformers on {len(texts)} texts")
    st, reference = st_figures(hf_dir, texts, 2 if args.quick else 5)
    st_bf16 = None
    if export_host_lacks_bf16() is None:  # bf16 runs natively here: the library's strongest setting
        st_bf16, bf16_vectors = st_figures(hf_dir, texts, 2 if args.quick else 5, "bfloat16")
        st_bf16["cosine_min_to_fp32"] = float(cosine_rows(bf16_vectors, reference).min())
    log("embeddings: the published ONNX files alone (the kernel bound)")
    kernel = kernel_figures(run, manifest, texts, 2 if args.quick else 5)
    infinity = None
    if not args.no_infinity:  # before Ray starts: no idle Ray process beside it
        with tempfile.TemporaryDirectory(prefix="bench-infinity-") as scratch:
            infinity = infinity_figures(run, hf_dir, texts, reference, pairs, args.quick, Path(scratch))
    obj = md_object(NAME, f"file://{run / 'manifest.json'}", variant="auto")
    cluster, _ = start_and_deploy(obj)
    split: dict[str, Any] | None = None
    try:
        served = endpoint_vectors(f"{cluster.url}/v1/embeddings", texts[: 2 * pairs])
        ep = endpoint_figures(cluster.url, texts, args.quick)
        variant = str((obj.get("status") or {}).get("model", {}).get("variant") or "auto")
        undeploy(cluster, obj)
        if not args.one_split:
            split = split_figures(cluster, run, texts, args.quick)
    finally:
        cluster.stop()
    doc = {
        "command": "python -m bench --only embeddings"
        + (" --quick" if args.quick else "")
        + (" --no-infinity" if args.no_infinity else ""),
        "quick": args.quick,
        "instruction_set": instruction_set(),
        "load_average_before": before,
        "texts": len(texts),
        "variant": variant,
        "manifest_embedding": manifest.get("embedding"),
        "sentence_transformers": st,
        "kernel": kernel,
        "endpoint": ep,
        "agreement": agreement(served, reference, pairs),
    }
    if infinity:
        doc["infinity"] = infinity
    if st_bf16:
        doc["sentence_transformers_bf16"] = st_bf16
    if split:
        doc["endpoint_split"] = split
    path = write_result("embeddings", doc)
    doc["load_average_at_end"] = load_average()
    print("\n".join(table(doc)))
    log(f"embeddings: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
