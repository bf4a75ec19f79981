"""The publication step every task shares (``publish.publish_folder``), on a local folder store.

Each task hands the step its export folder and a ``ManifestBuilder`` (its own manifest of
the uploaded files); the step uploads, hashes, encrypts when asked and writes that
manifest last. Here a recording builder stands in for a task's; the classification
(``publish.publish``), text-generation (``textgen.pipeline.publish_lm``) and
sentence-embedding (``embedding.manifest.publish_embedding``) paths run as shipped, on
export folders of a few stand-in files. S3 (moto) and the encrypted replica: ``test_security_publish.py``,
``test_encrypted_artifacts.py``, ``tests/faults/test_s3_outage_publish.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import FileEntry, JobDocument, Manifest, PruningInfo, RunLayout, run_id_for
from rayrelay_core.store import sha256_file
from rayrelay_workloads.data import DataFile, LoadedData
from rayrelay_workloads.publish import ManifestBuilder, build_manifest, publish, publish_folder
from rayrelay_workloads.quality import Int8Decision
from tests.pipeline_fixtures import fp32_export_result

FP32_ONLY = Int8Decision(accepted=False, reason="not quantised", recommended_variant="fp32")
DATA = LoadedData(
    train=DataFile("s3://d/t", "0" * 64), validation=DataFile("s3://d/v", "1" * 64), labels=["a", "b"]
)
KEY = "5e" * 32


def job(artifacts: Path, spec: dict[str, Any] | None = None) -> JobDocument:
    doc = {"model": {"source": "m"}, "data": {"train": "t", "validation": "v"}, **(spec or {})}
    parsed = TrainingJobSpec.model_validate(doc)
    run_id = run_id_for(parsed)
    base = RunLayout.for_job(str(artifacts), "team-a", "tj", run_id).base
    return JobDocument(namespace="team-a", name="tj", run_id=run_id, run_uri=base, attempt=1, spec=parsed)


def export_folder(out: Path) -> Path:
    for rel in ("hf/config.json", "onnx/model.onnx", "ort/model.ort"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(rel.encode() * 3)
    return out


class Recording:
    """A task's manifest builder that records what the step handed it (a manifest of task "recording")."""

    def __init__(self, doc: JobDocument, out: Path) -> None:
        self.doc, self.out = doc, out
        self.calls: list[tuple[list[FileEntry], str]] = []

    def __call__(self, files: list[FileEntry], root: str) -> Manifest:
        self.calls.append((files, root))
        base = build_manifest(self.doc, fp32_export_result(self.out), DATA, FP32_ONLY, files, root)
        return base.model_copy(update={"task": "recording"})


def test_the_step_uploads_the_named_folders_then_writes_the_builders_manifest(tmp_path: Path) -> None:
    out, doc = export_folder(tmp_path / "out"), job(tmp_path / "artifacts")
    build = Recording(doc, out)
    typed: ManifestBuilder = build  # any task's builder satisfies the protocol (mypy checks this line)
    manifest, uri = publish_folder(doc, out, typed, folders=("hf", "onnx"), token="t1")
    [(files, root)] = build.calls
    assert root == "published/attempt-1-t1"
    assert [f.path for f in files] == [f"{root}/hf/config.json", f"{root}/onnx/model.onnx"]  # no ort/
    for entry in files:
        stored = Path(RunLayout(doc.run_uri).base) / entry.path
        assert sha256_file(stored) == entry.sha256 == sha256_file(out / entry.path.removeprefix(root + "/"))
    written = json.loads(Path(uri).read_text())
    assert written["task"] == "recording" and written["files"] == [
        f.model_dump(by_alias=True, exclude_none=True) for f in files
    ]
    assert manifest.encryption is None and "encryption" not in written


def test_every_tasks_manifest_gets_the_encryption_record(tmp_path: Path) -> None:
    doc = job(tmp_path / "artifacts", {"artifacts": {"encryption": {"keySecret": "model-key"}}})
    out = export_folder(tmp_path / "out")
    manifest, uri = publish_folder(doc, out, Recording(doc, out), environ={"RAYRELAY_ENCRYPTION_KEY": KEY})
    assert manifest.encryption is not None and manifest.encryption.key_secret == "model-key"
    assert json.loads(Path(uri).read_text())["encryption"]["keySecret"] == "model-key"
    assert all(f.plaintext_sha256 for f in manifest.files) and len(manifest.files) == 3  # ort/ too


def test_classification_publish_is_the_step_with_its_manifest_and_pruning_record(tmp_path: Path) -> None:
    out = export_folder(tmp_path / "out")
    pruning = PruningInfo(
        heads_fraction=0.25,
        ffn_fraction=0.0,
        heads_per_layer_before=4,
        heads_per_layer_after=3,
        heads_kept=[[0, 1, 3]],
        ffn_per_layer_before=16,
        ffn_per_layer_after=16,
        parameters_before=100,
        parameters_after=90,
        importance_batches=2,
        recovery_steps=0,
    )
    manifest, uri = publish(
        job(tmp_path / "a"), fp32_export_result(out), DATA, FP32_ONLY, token="t", pruning=pruning
    )
    assert manifest.labels == ["a", "b"]
    assert manifest.variants["fp32"].file == "published/attempt-1-t/onnx/model.onnx"
    assert [f.path.split("/", 2)[2] for f in manifest.files] == [
        "hf/config.json",
        "onnx/model.onnx",
        "ort/model.ort",
    ]
    assert json.loads(Path(uri).read_text())["pruning"]["headsPerLayerAfter"] == 3
    unpruned, _ = publish(job(tmp_path / "b"), fp32_export_result(out), DATA, FP32_ONLY, token="t")
    assert unpruned.pruning is None


def test_text_generation_publishes_hf_and_onnx_only_through_the_step(tmp_path: Path) -> None:
    from rayrelay_workloads.textgen.data import LmDataFile, LoadedLmData
    from rayrelay_workloads.textgen.export import LmExportResult
    from rayrelay_workloads.textgen.pipeline import publish_lm

    out = export_folder(tmp_path / "out")
    result = LmExportResult(
        out_dir=out,
        fp32_file="onnx/model.onnx",
        int8_file=None,
        max_diff_fp32=1e-4,
        max_diff_int8=None,
        greedy_match={"fp32": 1.0},
        perplexity={"pytorch": 9.0, "fp32": 9.0},
        prompts=4,
        eos_token_id=0,
        context_length=128,
    )
    data = LoadedLmData(train=LmDataFile("s3://d/t", "0" * 64), validation=LmDataFile("s3://d/v", "1" * 64))
    doc = job(tmp_path / "artifacts")
    manifest, uri = publish_lm(doc, result, data, FP32_ONLY, {}, token="t")
    assert manifest.task == "text-generation" and manifest.generation is not None
    assert [f.path for f in manifest.files] == [
        "published/attempt-1-t/hf/config.json",
        "published/attempt-1-t/onnx/model.onnx",
    ]
    assert (
        json.loads(Path(uri).read_text())["variants"]["fp32"]["file"]
        == "published/attempt-1-t/onnx/model.onnx"
    )


def test_sentence_embedding_publishes_through_the_step_encrypted_when_asked(tmp_path: Path) -> None:
    from rayrelay_workloads.embedding.data import LoadedPairs, PairFile
    from rayrelay_workloads.embedding.export import EmbeddingExportResult
    from rayrelay_workloads.embedding.manifest import publish_embedding

    out = export_folder(tmp_path / "out")
    result = EmbeddingExportResult(
        out_dir=out,
        input_names=["input_ids", "attention_mask"],
        dimension=384,
        fp32_file="onnx/model.onnx",
        int8_file=None,
        fused_used=False,
        cosine_min={"fp32": 0.9999},
        cosine_mean={"fp32": 0.99995},
        recall_at_1={"pytorch": 0.9, "fp32": 0.9},
        mrr={"pytorch": 0.95, "fp32": 0.95},
        texts=10,
        pairs=5,
        lower_case=True,
    )
    data = LoadedPairs(train=PairFile("s3://d/t", "0" * 64), validation=PairFile("s3://d/v", "1" * 64))
    doc = job(tmp_path / "artifacts", {"artifacts": {"encryption": {"keySecret": "model-key"}}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYRELAY_ENCRYPTION_KEY", KEY)
        manifest, _ = publish_embedding(doc, result, data, FP32_ONLY, {})
    assert manifest.task == "sentence-embedding" and manifest.embedding is not None
    assert manifest.encryption is not None and len(manifest.files) == 3
