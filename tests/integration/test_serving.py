"""Serving on a real local Ray: the gateway and a model application deployed declaratively.

The applications go through the same path the ``ray`` backend uses: the entries
of ``rayrelay_core.serveconfig.application_configs`` merged into Serve's
current config and PUT to ``/api/serve/applications/`` (so this also confirms
that a model application whose route prefix is its own ``/v2/models/{name}/infer``
answers v2 inference directly while every other route, v1 included, still
reaches it through the gateway). The artifact set is the training pipeline's
``tiny_run`` fixture (``tests/pipeline_fixtures.py``).

Tests here: both protocols agree with direct onnxruntime output, a stock OIP v2
client (tritonclient) works unchanged, every bad request gets its 4xx, an
altered artifact never becomes Ready and says which file, and batching is
observed from the replica's batch-size records (and the variant the replica reports on
/metrics, as the operator reads it into status.model). Artifact verification and
variant choice are also tested without Ray at the top of the module.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_core.runs import (
    Manifest,
    read_manifest,
    serve_app_args,
)
from rayrelay_core.serveconfig import application_configs
from rayrelay_core.store import open_store, sha256_file
from rayrelay_workloads.serve.artifacts import ArtifactError, prepare

MODEL = "rr-serve-test"
CORRUPT = "rr-serve-corrupt"
OTHER_DIGEST = "rr-serve-digest"
TEXTS = ["my invoice is wrong", "the app crashes on start", "how do I reset my password", "thanks!", "x"]
LIMITS = {"maxTextsPerRequest": 8, "maxTextChars": 200, "maxBodyBytes": 4096}


# ----------------------------------------------------------------- artifact set


@pytest.fixture(scope="module")
def run(tiny_run: Any) -> tuple[str, list[str]]:
    """(manifest URI, labels) of the training pipeline's tiny_run: a real artifact set."""
    return tiny_run.manifest_uri, list(tiny_run.labels)


def local_copy(manifest_uri: str, dest: Path) -> Path:
    """Every file of an artifact set (any store) copied into a local folder."""
    store = open_store(manifest_uri)
    base = manifest_uri[: -len("manifest.json")].rstrip("/")
    manifest = Manifest.model_validate_json(store.read_bytes(manifest_uri))
    for entry in manifest.files:
        store.download(f"{base}/{entry.path}", dest / entry.path)
    (dest / "manifest.json").write_bytes(store.read_bytes(manifest_uri))
    return dest


# ----------------------------------------------------------------- no Ray: artifacts


def test_artifacts_verified_cached_and_variant_chosen(run: tuple[str, list[str]], tmp_path: Path) -> None:
    uri, _ = run
    cache = tmp_path / "cache"
    auto = prepare(uri, "auto", cache_dir=str(cache))
    manifest = auto.manifest
    assert auto.variant == manifest.recommended_variant
    assert auto.model_path.read_bytes()[:2]  # fetched
    assert (auto.tokenizer_dir / "tokenizer_config.json").exists()
    # A cached copy that no longer matches is fetched again, not trusted.
    auto.model_path.write_bytes(b"tampered")
    again = prepare(uri, "auto", cache_dir=str(cache))
    assert sha256_file(again.model_path) == manifest.file(manifest.variants[auto.variant].file or "").sha256
    with pytest.raises(ArtifactError, match="not in this artifact set"):
        prepare(uri, "fp16", cache_dir=str(cache))


def test_altered_or_rejected_artifacts_refused(run: tuple[str, list[str]], tmp_path: Path) -> None:
    root = local_copy(run[0], tmp_path / "copy")
    manifest = Manifest.model_validate_json((root / "manifest.json").read_text())
    model_file = manifest.variants["fp32"].file or ""
    with open(root / model_file, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError) as info:
        prepare(str(root / "manifest.json"), "fp32", cache_dir=str(tmp_path / "c"))
    message = str(info.value)
    assert model_file in message and manifest.file(model_file).sha256 in message
    assert sha256_file(root / model_file) in message
    # A variant its quality gate rejected is never served, even when forced.
    manifest.variants["int8"].accepted = False
    manifest.variants["int8"].reason = "accuracy drop 0.2 > 0.01"
    (root / "manifest.json").write_text(manifest.to_json())
    with pytest.raises(ArtifactError, match="rejected by the quality gate"):
        prepare(str(root / "manifest.json"), "int8", cache_dir=str(tmp_path / "c"))


# ----------------------------------------------------------------- Ray Serve


def _serve_instance(dashboard: str) -> dict[str, Any]:
    resp = requests.get(f"{dashboard}/api/serve/applications/", timeout=30)
    resp.raise_for_status()
    return dict(resp.json())


def _put(dashboard: str, serve_port: int, update: Any) -> None:
    from rayrelay_operator.backends.ray import current_applications, deploy_body

    instance = _serve_instance(dashboard)
    apps = update(current_applications(instance))
    resp = requests.put(
        f"{dashboard}/api/serve/applications/",
        json=deploy_body(instance, apps, "127.0.0.1", serve_port),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text


def deploy(
    dashboard: str,
    serve_port: int,
    name: str,
    manifest_uri: str,
    cache: Path,
    digest: str | None = None,
    **spec: Any,
) -> None:
    from rayrelay_operator.backends.ray import merge_applications

    md = ModelDeploymentSpec.model_validate({"model": {"manifestUri": manifest_uri}, **spec})
    args = serve_app_args(name, "default", manifest_uri, md, None, digest=digest)
    args["cacheDir"] = str(cache)
    entries = application_configs(args)
    _put(dashboard, serve_port, lambda current: merge_applications(current, entries))


def undeploy(dashboard: str, serve_port: int, name: str) -> None:
    from rayrelay_operator.backends.ray import remove_application

    _put(dashboard, serve_port, lambda current: remove_application(current, name))
    # Until it is gone Serve lists it without a config, which a later PUT must not meet.
    wait_for(lambda: not app_status(dashboard, name), 120, f"{name} deleted")


def app_status(dashboard: str, name: str) -> dict[str, Any]:
    return dict(_serve_instance(dashboard).get("applications", {}).get(name) or {})


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def endpoint(ray_cluster: Any, run: tuple[str, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    dashboard, port = ray_cluster.dashboard_url, ray_cluster.serve_port
    deploy(
        dashboard,
        port,
        MODEL,
        run[0],
        tmp_path_factory.mktemp("serve-cache"),
        digest=read_manifest(open_store(run[0]), run[0])[1],  # as the operator resolves it
        model={"manifestUri": run[0], "variant": "fp32"},
        autoscaling={"minReplicas": 1, "maxReplicas": 1},
        batching={"maxBatchSize": 16, "batchWaitTimeoutMs": 20},
        limits=LIMITS,
    )
    try:

        def running() -> bool:
            app = app_status(dashboard, MODEL)
            status = app.get("status")
            assert status != "DEPLOY_FAILED", json.dumps(app, indent=1)[-3000:]
            return (
                status == "RUNNING" and app_status(dashboard, "rayrelay-gateway").get("status") == "RUNNING"
            )

        wait_for(running, 240, f"{MODEL} RUNNING")
        yield f"http://127.0.0.1:{port}"
    finally:
        undeploy(dashboard, port, MODEL)


def direct_probabilities(manifest_uri: str, texts: list[str], cache: Path) -> np.ndarray:
    """What onnxruntime itself says for each text (one at a time: no padding at all)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    art = prepare(manifest_uri, "fp32", cache_dir=str(cache))
    tok = AutoTokenizer.from_pretrained(str(art.tokenizer_dir))
    session = ort.InferenceSession(str(art.model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rows = []
    for text in texts:
        enc = tok(
            [text], truncation=True, max_length=art.manifest.tokenizer.max_seq_length, return_tensors="np"
        )
        logits = session.run(None, {n: enc[n].astype(np.int64) for n in names})[0][0]
        exp = np.exp(logits - logits.max())
        rows.append(exp / exp.sum())
    return np.array(rows)


@pytest.mark.slow
def test_both_protocols_match_onnxruntime(endpoint: str, run: tuple[str, list[str]], tmp_path: Path) -> None:
    expected = direct_probabilities(run[0], TEXTS, tmp_path)
    labels = run[1]
    body = {
        "id": "req-7",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}],
    }
    v2 = requests.post(f"{endpoint}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert v2.status_code == 200, v2.text
    doc = v2.json()
    assert doc["id"] == "req-7" and doc["model_name"] == MODEL
    outs = {o["name"]: o for o in doc["outputs"]}
    probs = np.array(outs["probabilities"]["data"]).reshape(outs["probabilities"]["shape"])
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert outs["label_ids"]["data"] == expected.argmax(axis=1).tolist()
    assert outs["labels"]["data"] == [labels[i] for i in expected.argmax(axis=1)]

    v1 = requests.post(f"{endpoint}/v1/models/{MODEL}:predict", json={"instances": TEXTS[:2]}, timeout=60)
    assert v1.status_code == 200, v1.text
    preds = v1.json()["predictions"]
    for pred, row in zip(preds, expected[:2], strict=True):
        assert pred["labelId"] == int(row.argmax()) and pred["label"] == labels[int(row.argmax())]
        np.testing.assert_allclose([pred["probabilities"][label] for label in labels], row, atol=1e-4)
    objs = requests.post(
        f"{endpoint}/v1/models/{MODEL}:predict", json={"instances": [{"text": TEXTS[0]}]}, timeout=60
    )
    assert objs.json()["predictions"][0]["labelId"] == int(expected[0].argmax())

    only = dict(body, outputs=[{"name": "labels"}])
    filtered = requests.post(f"{endpoint}/v2/models/{MODEL}/infer", json=only, timeout=60).json()
    assert [o["name"] for o in filtered["outputs"]] == ["labels"]


@pytest.mark.slow
def test_stock_oip_client(endpoint: str, run: tuple[str, list[str]]) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=endpoint.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_model_ready(MODEL)
    wait_for(client.is_server_ready, 60, "server ready")
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {
        "label_ids": "INT64",
        "labels": "BYTES",
        "probabilities": "FP32",
    }
    texts = np.array([t.encode() for t in TEXTS[:3]], dtype=np.object_)
    for binary in (True, False):  # tritonclient's default binary tensors, and plain JSON
        inp = httpclient.InferInput("text", [3], "BYTES")
        inp.set_data_from_numpy(texts, binary_data=binary)
        result = client.infer(MODEL, [inp])
        probs = result.as_numpy("probabilities")
        assert probs.shape == (3, len(run[1]))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert result.as_numpy("label_ids").tolist() == probs.argmax(axis=1).tolist()
    assert not client.is_model_ready("no-such-model")


BAD = [
    ("v2", b"{oops", 400, "not valid JSON"),
    ("v2", b"[]", 400, "JSON object"),
    ("v2", b'{"id": "a"}', 400, "'inputs' is missing"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}]}).encode(), 422, "'BYTES'"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}).encode(), 422, "shape"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}).encode(), 422, "empty"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}).encode(), 422, "must be a string"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [9], "data": ["a"] * 9}]}).encode(), 422, "the limit is 8"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a" * 201]}]}).encode(), 422, "the limit is 200"),
    ("v2", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a" * 5000]}]}).encode(), 413, "4096 bytes"),
    ("v1", b"not json", 400, "not valid JSON"),
    ("v1", b'{"instances": []}', 422, "empty"),
    ("v1", b'{"instances": [1]}', 422, "must be a string"),
    ("v1", json.dumps({"instances": ["a"] * 9}).encode(), 422, "the limit is 8"),
]  # fmt: skip


@pytest.mark.slow
def test_bad_requests_get_4xx_with_a_message(endpoint: str) -> None:
    urls = {"v2": f"{endpoint}/v2/models/{MODEL}/infer", "v1": f"{endpoint}/v1/models/{MODEL}:predict"}
    for proto, body, status, words in BAD:
        resp = requests.post(urls[proto], data=body, headers={"Content-Type": "application/json"}, timeout=30)
        assert resp.status_code == status, (proto, body[:60], resp.status_code, resp.text)
        assert words in resp.json()["error"], (proto, body[:60], resp.text)

    # A body over the limit streamed without Content-Length is cut off as well.
    chunks = iter([b'{"instances": ["', b"a" * 3000, b"a" * 3000, b'"]}'])
    resp = requests.post(urls["v1"], data=chunks, timeout=30)
    assert resp.status_code == 413, resp.text

    unknown = requests.post(f"{endpoint}/v2/models/nope/infer", json={"inputs": []}, timeout=30)
    assert unknown.status_code == 404 and unknown.json()["error"] == "model 'nope' not found"
    assert requests.get(f"{endpoint}/v2/models/nope", timeout=30).status_code == 404
    assert (
        requests.post(f"{endpoint}/v1/models/nope:predict", json={"instances": ["a"]}, timeout=30).status_code
        == 404
    )
    assert requests.get(f"{endpoint}/v2/models/{MODEL}/infer", timeout=30).status_code == 405
    assert requests.get(f"{endpoint}/v3/anything", timeout=30).status_code == 404
    # The gateway itself is not a model.
    assert requests.get(f"{endpoint}/v2/models/rayrelay-gateway/ready", timeout=30).status_code == 404
    # ... and nothing above hurt the replica.
    ok = requests.post(
        f"{endpoint}/v1/models/{MODEL}:predict", json={"instances": ["still fine"]}, timeout=60
    )
    assert ok.status_code == 200, ok.text
    # The refusals above are counted where a Prometheus user looks for them.
    assert "rayrelay_request_errors_total{" in requests.get(f"{endpoint}/metrics", timeout=30).text


def batch_records(endpoint: str) -> dict[str, float]:
    """The model's batch-size histogram as /metrics reports it (count, sum, le=1 bucket)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"count": 0.0, "sum": 0.0, "le1": 0.0}
    text = requests.get(f"{endpoint}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "rayrelay_batch_size":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != MODEL:
                continue
            if sample.name.endswith("_count"):
                out["count"] += sample.value
            elif sample.name.endswith("_sum"):
                out["sum"] += sample.value
            elif sample.name.endswith("_bucket") and float(sample.labels["le"]) == 1.0:
                out["le1"] += sample.value
    return out


@pytest.mark.slow
def test_concurrent_requests_are_batched(endpoint: str) -> None:
    before = batch_records(endpoint)

    def one(i: int) -> int:
        body = {"instances": [f"concurrent request number {i}"]}
        return requests.post(f"{endpoint}/v1/models/{MODEL}:predict", json=body, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(one, range(32))) == {200}
    after = batch_records(endpoint)
    batches = after["count"] - before["count"]
    texts = after["sum"] - before["sum"]
    singles = after["le1"] - before["le1"]
    # Every text went through exactly one batch, and fewer batches than texts ran.
    assert texts == 32, (before, after)
    assert singles < batches < 32, f"no batch larger than one: {batches} batches, {singles} of size 1"

    metrics = requests.get(f"{endpoint}/metrics", timeout=30).text
    assert "rayrelay_queue_wait_seconds_bucket" in metrics
    assert "rayrelay_inference_latency_seconds_bucket" in metrics
    assert 'rayrelay_requests_total{code="200",model="rr-serve-test",protocol="v1"}' in metrics

    # The variant the replica serves, as /metrics reports it and the operator reads it into
    # status.model (the ray backend's parser, the status function): forced fp32, never timed.
    from rayrelay_core.api import ServedModel
    from rayrelay_operator.backends.ray import served_variant
    from rayrelay_operator.reconcile.deployment import DesiredModel, served_model
    from rayrelay_operator.work import ServingObservation, ServingState
    from rayrelay_workloads.hardware import instruction_set

    choice = served_variant(metrics, MODEL)
    assert choice is not None, metrics[-3000:]
    assert (choice.requested, choice.variant, choice.isa) == ("fp32", "fp32", instruction_set())
    assert choice.provider == "CPUExecutionProvider" and choice.timings_s == {}
    assert f'rayrelay_variant_batch_seconds{{model="{MODEL}"' not in metrics
    desired = DesiredModel("uri/manifest.json", "sha256:x", "int8")
    status = served_model(desired, ServingObservation(ServingState.RUNNING, variant=choice), None)
    assert status == ServedModel(
        manifest_uri="uri/manifest.json",
        digest="sha256:x",
        variant="fp32",
        variant_reason=f"fp32 forced by the spec (not timed); running on {instruction_set()} (CPUExecutionProvider)",
        instruction_set=instruction_set(),
        runtime="onnxruntime",
        precision="fp32",
    )


@pytest.mark.slow
def test_altered_artifact_never_becomes_ready(
    endpoint: str, ray_cluster: Any, run: tuple[str, list[str]], tmp_path: Path
) -> None:
    root = local_copy(run[0], tmp_path / "altered")
    manifest = Manifest.model_validate_json((root / "manifest.json").read_text())
    model_file = manifest.variants[manifest.recommended_variant].file or ""
    with open(root / model_file, "r+b") as fh:
        fh.seek(64)
        fh.write(b"tampered")
    dashboard, port = ray_cluster.dashboard_url, ray_cluster.serve_port
    deploy(dashboard, port, CORRUPT, str(root / "manifest.json"), tmp_path / "cache")
    try:

        def refused() -> dict[str, Any]:
            status = app_status(dashboard, CORRUPT)
            assert status.get("status") != "RUNNING", status
            text = json.dumps(status)
            return status if "checksum mismatch" in text else {}

        status = wait_for(refused, 240, "the replica to refuse the altered file")
        assert model_file in json.dumps(status)
        ready = requests.get(f"{endpoint}/v2/models/{CORRUPT}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["ready"] is False
        infer = requests.post(
            f"{endpoint}/v1/models/{CORRUPT}:predict", json={"instances": ["a"]}, timeout=30
        )
        assert infer.status_code == 503, infer.text
        assert app_status(dashboard, CORRUPT).get("status") != "RUNNING"
    finally:
        undeploy(dashboard, port, CORRUPT)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_manifest_other_than_the_resolved_one_never_becomes_ready(
    endpoint: str, ray_cluster: Any, run: tuple[str, list[str]], tmp_path: Path
) -> None:
    """The replica compares the manifest's sha256 with the digest it was given (the operator's)."""
    dashboard, port = ray_cluster.dashboard_url, ray_cluster.serve_port
    resolved = "sha256:" + "0" * 64  # what the operator read before the manifest changed
    deploy(dashboard, port, OTHER_DIGEST, run[0], tmp_path / "cache", digest=resolved)
    try:

        def refused() -> dict[str, Any]:
            status = app_status(dashboard, OTHER_DIGEST)
            assert status.get("status") != "RUNNING", status
            return status if "manifest digest mismatch" in json.dumps(status) else {}

        status = wait_for(refused, 240, "the replica to refuse the manifest")
        assert resolved in json.dumps(status)
        ready = requests.get(f"{endpoint}/v2/models/{OTHER_DIGEST}/ready", timeout=30)
        assert ready.status_code == 503 and ready.json()["ready"] is False
    finally:
        undeploy(dashboard, port, OTHER_DIGEST)


def test_the_serve_port_is_haproxys_and_the_model_route_one_hop(endpoint: str, ray_cluster: Any) -> None:
    """Serve's HAProxy ingress (localray.haproxy_env, as `rayrelay run`'s head has it) owns the
    serve port and routes the model's infer path straight to the model application's replica."""
    configs = list(Path(ray_cluster.temp_dir, "hap").glob("*/haproxy.cfg"))
    assert configs, f"no HAProxy config under {ray_cluster.temp_dir}/hap: Serve's Python proxy serves"
    config = configs[0].read_text()
    assert f"bind 127.0.0.1:{ray_cluster.serve_port}" in config, config[:2000]
    # One backend per ingress application: the model's own route, and the gateway at "/".
    assert f"/v2/models/{MODEL}/infer" in config, config[-3000:]
    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and str(configs[0]) in _cmdline(p)]
    assert pids, "no haproxy process runs with that config"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["my invoice is wrong"]}]}
    response = requests.post(f"{endpoint}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
