"""Issue 15, part 3: ``export.targets: [onnx, ort]`` writes onnxruntime's mobile format, checked.

``export_all`` runs on a checkpoint of the suite's tiny BERT (no Ray: the export
step is what differs), then ``publish`` lists the variants. Checked: ``.ort``
files of fp32 and int8 and the reduced-build operator config exist, the ``.ort``
files load in onnxruntime and agree with their ONNX originals on the validation
rows, their accuracy is measured like the other variants', and the manifest
lists ``fp32-ort`` / ``int8-ort`` with file, size and accuracy. The default
targets write no ``ort/`` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rayrelay_core.api import ExportSpec
from rayrelay_workloads.data import parse_examples
from tests.pipeline_fixtures import LABELS


@pytest.fixture(scope="module")
def checkpoint(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification

    ckpt = tmp_path_factory.mktemp("ckpt")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=len(LABELS), ignore_mismatched_sizes=True
    )
    model.save_pretrained(ckpt / "model")
    return ckpt


def validation(tiny_data: tuple[str, str]) -> list:
    return parse_examples(Path(tiny_data[1]).read_bytes(), "jsonl", tiny_data[1])[:32]


@pytest.mark.slow
def test_ort_target_writes_checked_ort_variants(
    checkpoint: Path, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    import onnxruntime as ort

    from rayrelay_workloads.export import ORT_CONFIG, export_all, onnx_logits

    rows = validation(tiny_data)
    spec = ExportSpec.model_validate({"targets": ["onnx", "ort"], "parityTolerance": 0.01})
    result = export_all(
        checkpoint, tiny_model, tmp_path / "out", spec, 32, rows, LABELS, threads=1, bench_repeats=2
    )
    assert result.extra_files == {"fp32-ort": "ort/model.ort", "int8-ort": "ort/model.int8.ort"}
    config = (tmp_path / "out" / "ort" / ORT_CONFIG).read_text()
    assert "ai.onnx;" in config and "MatMul" in config and "/tmp" not in config
    for name, onnx_name in (("fp32-ort", "model.onnx"), ("int8-ort", "model.int8.onnx")):
        assert name in result.accuracy and 0.0 <= result.accuracy[name] <= 1.0
        ort_sess = ort.InferenceSession(str(tmp_path / "out" / result.extra_files[name]))
        onnx_sess = ort.InferenceSession(str(tmp_path / "out" / "onnx" / onnx_name))
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tiny_model)
        enc = dict(
            tok([r.text for r in rows], padding=True, truncation=True, max_length=32, return_tensors="np")
        )
        a, b = onnx_logits(ort_sess, enc), onnx_logits(onnx_sess, enc)
        assert np.abs(a - b).max() < 1e-3, name
        assert result.metrics[f"max_abs_logit_diff_{name}"] >= 0
    assert result.metrics["ort_fp32_ms"] > 0 and result.metrics["ort_int8_ms"] > 0

    from rayrelay_workloads.data import DataFile, LoadedData
    from rayrelay_workloads.publish import publish
    from rayrelay_workloads.quality import Int8Decision
    from tests.pipeline_fixtures import tiny_job, tiny_spec

    job = tiny_job(
        tiny_spec(tiny_model, *tiny_data, export={"targets": ["onnx", "ort"]}), f"file://{tmp_path}/arts"
    )
    data = LoadedData(DataFile("t", "0" * 64), DataFile("v", "1" * 64), LABELS)
    decision = Int8Decision(accepted=True, reason=None, recommended_variant="int8")
    manifest, uri = publish(job, result, data, decision, token="ort")
    for name in ("fp32-ort", "int8-ort"):
        info = manifest.variants[name]
        assert info.file and info.file.endswith(".ort") and info.size and info.accuracy is not None
        assert any(f.path == info.file for f in manifest.files)
    assert any(f.path.endswith("ort/" + ORT_CONFIG) for f in manifest.files)
    assert json.loads(Path(uri[len("file://") :]).read_text())["variants"]["int8-ort"]["accepted"] is True


@pytest.mark.slow
def test_default_targets_write_no_ort(
    checkpoint: Path, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    from rayrelay_workloads.export import export_all, export_host_lacks_bf16

    spec = ExportSpec.model_validate({"quantize": "none", "parityTolerance": 0.01})
    assert spec.targets == ["onnx"]
    result = export_all(
        checkpoint,
        tiny_model,
        tmp_path / "out",
        spec,
        32,
        validation(tiny_data),
        LABELS,
        threads=1,
        bench_repeats=1,
    )
    assert result.extra_files == {} and not (tmp_path / "out" / "ort").exists()
    # bf16 (OpenVINO on the fp32 file) only where this host runs it natively: export.bf16 is unset.
    native_bf16 = export_host_lacks_bf16() is None
    assert set(result.accuracy) == {"pytorch", "fp32"} | ({"bf16"} if native_bf16 else set())
