"""Issue 12, finding 9 (second half): an overlapping attempt never re-publishes in place.

``rayrelay_workloads.publish.publish`` uploads each publication into its own
folder (``published/attempt-<n>-<token>/``) and only then replaces the run's
``manifest.json``. Against moto's real S3 server: while attempt 2 is half-way
through its upload, a replica resolving attempt 1's manifest (with the digest
the operator pinned) fetches and verifies exactly attempt 1's files; once
attempt 2 finishes, attempt 1's files are still byte for byte what its manifest
lists, and the new manifest serves attempt 2's model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import JobDocument, RunLayout, read_manifest, run_id_for
from rayrelay_core.store import S3Store, join, open_store, sha256_bytes
from rayrelay_workloads.data import DataFile, LoadedData
from rayrelay_workloads.export import ExportResult
from rayrelay_workloads.publish import publish
from rayrelay_workloads.quality import Int8Decision
from rayrelay_workloads.serve.artifacts import prepare
from tests.pipeline_fixtures import fp32_export_result

FP32_ONLY = Int8Decision(accepted=False, reason="not quantised", recommended_variant="fp32")


def export_result(out: Path, model_bytes: bytes) -> ExportResult:
    """What export.py leaves: hf/ (config, tokenizer, weights) and onnx/model.onnx."""
    for rel, data in {
        "hf/config.json": b'{"model": "%s"}' % sha256_bytes(model_bytes)[:8].encode(),
        "hf/tokenizer_config.json": b"{}",
        "hf/model.safetensors": b"weights" + model_bytes,
        "onnx/model.onnx": model_bytes,
    }.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return fp32_export_result(out)


def job(artifacts: str, attempt: int) -> JobDocument:
    spec = TrainingJobSpec.model_validate(
        {"model": {"source": "m"}, "data": {"train": "t", "validation": "v"}}
    )
    run_id = run_id_for(spec)
    base = RunLayout.for_job(artifacts, "team-a", "tj", run_id).base
    return JobDocument(namespace="team-a", name="tj", run_id=run_id, run_uri=base, attempt=attempt, spec=spec)


DATA = LoadedData(
    train=DataFile("s3://d/t", "0" * 64), validation=DataFile("s3://d/v", "1" * 64), labels=["a", "b"]
)


def test_an_overlapping_attempt_never_changes_a_published_artifact_set(
    s3_server: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = job(s3_bucket, 1), job(s3_bucket, 2)
    manifest_1, uri = publish(
        first, export_result(tmp_path / "out1", b"model-1"), DATA, FP32_ONLY, token="t1"
    )
    store = open_store(uri, s3_server)
    _, digest_1 = read_manifest(store, uri)
    assert manifest_1.variants["fp32"].file == "published/attempt-1-t1/onnx/model.onnx"
    assert manifest_1.tokenizer.path == "published/attempt-1-t1/hf"

    # Attempt 2 overlaps: its upload stops half-way (after its first file)...
    real_upload = S3Store.upload
    uploaded: list[str] = []

    def upload_then_die(self: S3Store, path: Any, target: str) -> None:
        if uploaded:
            raise RuntimeError("attempt 2's driver was killed mid-upload")
        uploaded.append(target)
        real_upload(self, path, target)

    monkeypatch.setattr(S3Store, "upload", upload_then_die)
    with pytest.raises(RuntimeError, match="mid-upload"):
        publish(second, export_result(tmp_path / "out2", b"model-2"), DATA, FP32_ONLY, token="t2")
    monkeypatch.setattr(S3Store, "upload", real_upload)
    assert uploaded and "/published/attempt-2-t2/" in uploaded[0]

    # ...and a replica starting now, pinned to the digest the operator resolved, loads attempt 1.
    prepared = prepare(uri, "fp32", cache_dir=str(tmp_path / "cache"), expected_digest=f"sha256:{digest_1}")
    assert prepared.digest == digest_1 and prepared.model_path.read_bytes() == b"model-1"

    # Attempt 2 runs again to the end: a new manifest, attempt 1's files untouched.
    manifest_2, _ = publish(second, export_result(tmp_path / "out2", b"model-2"), DATA, FP32_ONLY, token="t3")
    manifest_now, digest_2 = read_manifest(store, uri)
    assert (
        digest_2 != digest_1
        and manifest_now.variants["fp32"].file == "published/attempt-2-t3/onnx/model.onnx"
    )
    for entry in manifest_1.files:
        data = store.read_bytes(join(first.run_uri, entry.path))
        assert (sha256_bytes(data), len(data)) == (entry.sha256, entry.size), entry.path
    latest = prepare(uri, "fp32", cache_dir=str(tmp_path / "cache"), expected_digest=digest_2)
    assert latest.model_path.read_bytes() == b"model-2"
