"""Distillation through the whole pipeline (issue 15, item 1), on the session's tiny run.

The teacher is the session's ``tiny_run`` (a trained 2-layer BERT published to
``file://``); the student is the same base model cut to one layer
(``model.numLayers: 1``), trained by ``run_pipeline`` on 2 real Ray Train
workers that score their shards with the teacher's published fp32 ONNX model.
The JobDocument names the teacher the way the operator resolves
``teacher.trainingJobRef`` (its TrainingJob's manifest and digest).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.pipeline_fixtures import TinyRun, tiny_job, tiny_spec


def _onnx_layers(path: Path) -> set[str]:
    """The encoder layer indices the graph's node names mention (layer.0, layer.1, ...)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {m.group(1) for node in graph.node for m in re.finditer(r"layer\.(\d+)[./]", node.name)}


def test_a_one_layer_student_distils_from_the_tiny_run(
    tiny_run: TinyRun, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import RunLayout, TeacherLineage
    from rayrelay_core.store import sha256_file
    from rayrelay_workloads.pipeline import run_pipeline

    teacher_file = Path(tiny_run.manifest_uri.removeprefix("file://"))
    teacher_digest = f"sha256:{sha256_file(teacher_file)}"
    wire = tiny_spec(
        tiny_model,
        *tiny_data,
        distillation={"teacher": {"trainingJobRef": {"name": "tiny"}}, "temperature": 2, "alpha": 0.5},
    ).wire()
    spec = TrainingJobSpec.model_validate({**wire, "model": {**wire["model"], "numLayers": 1}})
    teacher = TeacherLineage(manifest_uri=tiny_run.manifest_uri, digest=teacher_digest, training_job="tiny")
    job = tiny_job(spec, f"file://{tmp_path / 'artifacts'}", name="student", teacher=teacher)

    manifest = run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), bench_repeats=2)

    lineage: Any = manifest.lineage.teacher
    assert lineage is not None
    assert lineage.run_id == tiny_run.job.run_id
    assert lineage.digest == teacher_digest
    assert lineage.training_job == "tiny"
    assert lineage.manifest_uri == tiny_run.manifest_uri
    assert manifest.labels == tiny_run.labels
    run = Path(RunLayout(job.run_uri).base.removeprefix("file://"))
    fp32 = manifest.variants["fp32"].file
    assert fp32 is not None
    assert _onnx_layers(run / fp32) == {"0"}
    teacher_fp32 = tiny_run.manifest.variants["fp32"].file
    assert _onnx_layers(Path(tiny_run.run_uri.removeprefix("file://")) / teacher_fp32) == {"0", "1"}
    hf_config = next(f.path for f in manifest.files if f.path.endswith("hf/config.json"))
    assert json.loads((run / hf_config).read_text())["num_hidden_layers"] == 1
