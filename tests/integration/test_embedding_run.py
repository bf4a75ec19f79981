"""Sentence embeddings end to end through `rayrelay run` and the official OpenAI client (issue 27).

A file built like ``examples/embeddings.yaml`` (all-MiniLM-L6-v2 from its package, a
subset of the shipped pairs, one Ray Train worker, one short epoch) runs as a
subprocess, exactly as users run it, against the shared Ray head: it trains, exports
the encoder with pooling and normalisation in the graph, deploys it and answers the
smoke request. Then:

- ``client.embeddings.create`` of the official ``openai`` client (its default base64
  encoding and ``encoding_format="float"``) returns, for the validation texts, vectors
  within cosine 0.999 of sentence-transformers' ``encode`` of the published ``hf/``
  folder (the deployment serves ``variant: fp32``; int8's agreement is recorded in the
  manifest and checked there), and the same ranking of the validation pairs;
- ``client.models.list()`` names the model (``GET /v1/models`` lists every task's models
  served on OpenAI's routes, not only text generation's);
- the model's own OpenAI base, ``/v2/models/{name}/openai/v1`` (one hop, no gateway),
  answers the same vectors and refusals through the same client;
- OIP ``/v2/models/{name}/infer`` answers the same vectors as an FP32 ``[n, dim]`` tensor,
  and the replica answers the model's metadata and readiness;
- ``dimensions`` other than the model's, limits, an unknown model and hostile bodies get
  4xx (``BadRequestError`` / ``NotFoundError`` through the client), never 5xx;
- the manifest says ``task: sentence-embedding`` with the cosine and retrieval figures.

And, on the tiny BERT of the session fixtures through ``run_pipeline``: every worker raises
once before step 5 (the ``RAYRELAY_FAULT_AT_STEP`` hook), Ray Train restarts from the
step-4 checkpoint, and the run publishes with no step run twice or skipped.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from rayrelay_workloads.export import export_host_lacks_bf16

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DATA = REPO / "examples" / "data"
TRAIN_PAIRS = 160
BF16_MIN_COSINE = 0.99  # bf16 against PyTorch: looser than the example's gate (minBf16Cosine 0.995)


def manifest_file(folder: Path, name: str) -> Path:
    """examples/embeddings.yaml with the test's names, a subset of the pairs and a smaller run."""
    import yaml

    docs = list(yaml.safe_load_all((REPO / "examples" / "embeddings.yaml").read_text()))
    tj, md = docs
    tj["metadata"]["name"] = md["metadata"]["name"] = name
    train = folder / "train.jsonl"
    train.write_text(
        "\n".join((DATA / "embedding-train.jsonl").read_text().splitlines()[:TRAIN_PAIRS]) + "\n"
    )
    tj["spec"]["data"]["train"] = str(train)
    tj["spec"]["data"]["validation"] = str(DATA / "embedding-validation.jsonl")
    tj["spec"]["resources"]["numWorkers"] = 1
    # A quarter of the pairs on one worker: the gate asks for no less than the base model's figure.
    tj["spec"]["qualityGate"]["minRecallAt1"] = 0.75
    tj["spec"]["qualityGate"]["minMrr"] = 0.8
    md["spec"]["model"]["trainingJobRef"] = {"name": name, "variant": "fp32"}
    md["spec"]["resources"] = {"cpus": 0.5}
    md["spec"]["limits"] = {"maxTextsPerRequest": 100, "maxTextChars": 400}
    docs = [tj, md]
    if export_host_lacks_bf16() is None:
        # bf16 (OpenVINO on fp32's file) is measured here: a second deployment serves it.
        bf16 = copy.deepcopy(md)
        bf16["metadata"]["name"] = f"{name}-bf16"
        bf16["spec"]["model"]["trainingJobRef"] = {"name": name, "variant": "bf16"}
        docs.append(bf16)
    path = folder / "embeddings.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


@pytest.mark.slow
def test_embedding_run_serves_openai_and_oip_vectors_equal_to_sentence_transformers(
    ray_cluster: Any, tmp_path: Path
) -> None:
    name = f"emb-{uuid.uuid4().hex[:6]}"
    path = manifest_file(tmp_path, name)
    artifacts = tmp_path / "artifacts"
    env = dict(os.environ, RAYRELAY_SERVE_PORT=str(ray_cluster.serve_port), HF_HUB_OFFLINE="1")
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "rayrelay"), "run", "-f", str(path)]
            + ["--artifacts", str(artifacts), "--ray-address", ray_cluster.dashboard_url],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 900
        while "press Ctrl-C to stop" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "rayrelay run did not start serving"
            time.sleep(1)
        out = log_path.read_text()
        assert "smoke request (v2 infer)" in out, out[-4000:]
        check_serving(f"http://127.0.0.1:{ray_cluster.serve_port}", name, artifacts)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def validation_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / "embedding-validation.jsonl").read_text().splitlines()]


def check_serving(url: str, name: str, artifacts: Path) -> None:
    import openai
    from sentence_transformers import SentenceTransformer

    from rayrelay_workloads.embedding.objective import cosine_rows, retrieval

    manifest_path = next(artifacts.rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["task"] == "sentence-embedding"
    figures = manifest["embedding"]
    assert figures["cosineMin"]["fp32"] >= 0.999
    assert 0 < figures["cosineMin"]["int8"] <= 1 and "int8" in manifest["variants"]
    assert 0 < figures["recallAt1"]["pytorch"] <= 1 and figures["validationPairs"] == len(validation_pairs())
    # bf16 (export.bf16 unset): measured through OpenVINO where this host has bf16 instructions,
    # with no file of its own; elsewhere listed as not measured, refused.
    bf16 = manifest["variants"]["bf16"]
    if export_host_lacks_bf16() is None:
        assert bf16["file"] == manifest["variants"]["fp32"]["file"] and bf16["runtime"] == "openvino"
        assert bf16["accepted"] and bf16["measured"].startswith("openvino ")
        assert BF16_MIN_COSINE <= figures["cosineMin"]["bf16"] <= 1
    else:
        assert bf16.get("file") is None and not bf16["accepted"] and "export.bf16" in bf16["reason"]
    hf_dir = manifest_path.parent / next(
        f["path"] for f in manifest["files"] if f["path"].endswith("hf/config.json")
    )

    pairs = validation_pairs()
    texts = [p["anchor"] for p in pairs] + [p["positive"] for p in pairs]
    reference = SentenceTransformer(str(hf_dir.parent), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True
    )
    dim = reference.shape[1]
    assert dim == figures["dimension"] == 384

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    models = client.models.list().data
    assert name in [m.id for m in models] and all(m.owned_by == "rayrelay" for m in models)
    got = []
    for i in range(0, len(texts), 50):  # the client's default encoding: base64
        got += [d.embedding for d in client.embeddings.create(model=name, input=texts[i : i + 50]).data]
    vectors = np.array(got, dtype=np.float32)
    cosine = cosine_rows(vectors, reference)
    assert cosine.min() >= 0.999, cosine.min()
    n = len(pairs)
    served, theirs = retrieval(vectors[:n], vectors[n:]), retrieval(reference[:n], reference[n:])
    # The same ranking of the validation pairs; a near tie may flip one pair (cosine 0.999, not 1).
    one_pair = 1.01 / n
    assert served.recall_at_1 == pytest.approx(theirs.recall_at_1, abs=one_pair)
    assert served.mrr == pytest.approx(theirs.mrr, abs=one_pair)
    assert served.recall_at_1 == pytest.approx(figures["recallAt1"]["fp32"], abs=one_pair)
    top_served = (vectors[:n] @ vectors[n:].T).argmax(axis=1)
    top_theirs = (reference[:n] @ reference[n:].T).argmax(axis=1)
    assert (top_served == top_theirs).mean() >= 1 - one_pair

    one = client.embeddings.create(model=name, input=texts[0], encoding_format="float")
    assert one.model == name and len(one.data) == 1 and one.usage.prompt_tokens > 0
    assert float(np.dot(one.data[0].embedding, reference[0])) >= 0.999

    resp = requests.post(
        f"{url}/v2/models/{name}/infer",
        json={"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts[:2]}]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    (output,) = resp.json()["outputs"]
    assert output["name"] == "embedding" and output["datatype"] == "FP32" and output["shape"] == [2, dim]
    oip = np.array(output["data"], dtype=np.float32).reshape(2, dim)
    assert cosine_rows(oip, reference[:2]).min() >= 0.999

    with pytest.raises(openai.BadRequestError, match="dimensions 128 is not supported"):
        client.embeddings.create(model=name, input="a", dimensions=128)
    with pytest.raises(openai.BadRequestError, match="input has 101 texts; the limit is 100"):
        client.embeddings.create(model=name, input=["a"] * 101)
    with pytest.raises(openai.BadRequestError, match=r"input\[1\] has 401 characters"):
        client.embeddings.create(model=name, input=["a", "x" * 401])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="a")

    # The model's own OpenAI base: the same client, one hop (no gateway), the same answers.
    own = openai.OpenAI(
        base_url=f"{url}/v2/models/{name}/openai/v1", api_key="unused", max_retries=0, timeout=120
    )
    direct = own.embeddings.create(model=name, input=texts[:50])
    assert direct.model == name and direct.usage.prompt_tokens > 0
    direct_vectors = np.array([d.embedding for d in direct.data], dtype=np.float32)
    assert cosine_rows(direct_vectors, vectors[:50]).min() >= 0.9999
    with pytest.raises(openai.BadRequestError, match="input has 101 texts; the limit is 100"):
        own.embeddings.create(model=name, input=["a"] * 101)
    with pytest.raises(openai.NotFoundError, match=f"this route serves '{name}'"):
        own.embeddings.create(model="no-such-model", input="a")
    # Metadata and readiness of the model come from its replica (the whole /v2/models/{name}).
    meta = requests.get(f"{url}/v2/models/{name}", timeout=30)
    assert meta.status_code == 200 and meta.json()["outputs"][0]["shape"] == [-1, dim], meta.text
    assert requests.get(f"{url}/v2/models/{name}/ready", timeout=30).json() == {"name": name, "ready": True}
    check_hostile_bodies(url, name)
    if export_host_lacks_bf16() is None:
        check_bf16(url, f"{name}-bf16", texts, reference)


def check_bf16(url: str, name: str, texts: list[str], reference: np.ndarray) -> None:
    """The deployment that serves bf16: OpenVINO's vectors, close to sentence-transformers'."""
    from rayrelay_workloads.embedding.objective import cosine_rows

    resp = requests.post(
        f"{url}/v2/models/{name}/infer",
        json={"inputs": [{"name": "text", "shape": [8], "datatype": "BYTES", "data": texts[:8]}]},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    (output,) = resp.json()["outputs"]
    vectors = np.array(output["data"], dtype=np.float32).reshape(8, -1)
    assert cosine_rows(vectors, reference[:8]).min() >= BF16_MIN_COSINE
    served = requests.get(f"{url}/metrics", timeout=30).text
    assert any(
        f'model="{name}"' in line and 'runtime="openvino"' in line and 'precision="bf16"' in line
        for line in served.splitlines()
    ), [line for line in served.splitlines() if name in line][:10]


def check_hostile_bodies(url: str, name: str) -> None:
    deep = "[" * 20_000 + '"a"' + "]" * 20_000
    head = '{"model": "' + name + '", '
    bodies = [
        b"",
        b"[1, 2]",
        (head + '"input": ').encode(),
        (head + '"input": ' + deep + "}").encode(),
        (head + '"input": "a", "dimensions": ' + "9" * 5000 + "}").encode(),
        (head + '"input": ["\\ud800"]}').encode(),
        (head + '"input": "a", "encoding_format": "int8"}').encode(),
        (head + '"input": [[1, 2, 3]]}').encode(),
    ]
    infer = f"{url}/v2/models/{name}/infer"
    for body in bodies:
        for target in (f"{url}/v1/embeddings", f"{url}/v2/models/{name}/openai/v1/embeddings", infer):
            resp = requests.post(target, data=body, headers={"Content-Type": "application/json"}, timeout=60)
            assert 400 <= resp.status_code < 500, (target, body[:80], resp.status_code, resp.text[:300])
            error = resp.json()["error"]  # OpenAI's shape on the OpenAI routes, OIP's on infer
            assert 0 < len(error["message"] if isinstance(error, dict) else error) < 300
    bad_output = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
        "outputs": [{"name": "labels"}],
    }
    assert requests.post(infer, json=bad_output, timeout=60).status_code == 422
    assert requests.get(f"{url}/v1/embeddings", timeout=30).status_code == 405
    assert requests.get(f"{url}/v2/models/{name}/openai/v1/embeddings", timeout=30).status_code == 405


@pytest.mark.slow
def test_embedding_training_resumes_after_a_worker_fault(
    ray_session: Any, tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker raises once before step 5; Ray Train restarts the group from the step-4
    checkpoint, and the run finishes and publishes: no step ran twice, none was skipped."""
    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import JobDocument, RunLayout, run_id_for
    from rayrelay_workloads.pipeline import run_pipeline

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join((DATA / "embedding-train.jsonl").read_text().splitlines()[:96]) + "\n")
    spec = TrainingJobSpec.model_validate(
        {
            "model": {"source": tiny_model, "task": "sentence-embedding"},
            "data": {"train": str(train), "validation": str(DATA / "embedding-validation.jsonl")},
            "hyperparameters": {"epochs": 1, "batchSize": 16, "learningRate": 1e-3, "maxSeqLength": 32},
            "resources": {"numWorkers": 1, "cpusPerWorker": 1},
            "checkpointing": {"everyNSteps": 2},
            "failurePolicy": {"maxFailures": 1},
            "export": {"optimize": False},
            "qualityGate": {"minRecallAt1": 0.01},
        }
    )
    run_id = run_id_for(spec)
    base = RunLayout.for_job(f"file://{tmp_path}/store", "default", "emb-resume", run_id).base
    job = JobDocument(namespace="default", name="emb-resume", run_id=run_id, run_uri=base, spec=spec)
    monkeypatch.setenv("RAYRELAY_FAULT_AT_STEP", "5")
    manifest = run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), bench_repeats=1)
    assert manifest.task == "sentence-embedding" and manifest.embedding is not None
    assert manifest.embedding["cosineMin"]["fp32"] >= 0.999
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "store").rglob("steps/*.json"))]
    steps = [s for r in records for s in r["steps"]]
    assert sorted(steps) == list(range(1, 7)), records
    assert any(r["resumedFrom"] == "restart:step-0000004" and r["startedAtStep"] == 4 for r in records), (
        records
    )
    progress = json.loads(next((tmp_path / "store").rglob("progress.json")).read_text())
    assert progress["stage"] == "Succeeded"
