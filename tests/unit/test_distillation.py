"""Distillation's parts (issue 15, item 1) without Ray: the loss, layer truncation, the teacher.

The loss is checked against a hand computation; ``modeling.load_model`` with
``numLayers`` on the session's tiny BERT (``tiny_model``, no training);
``distill.resolve_teacher`` against manifests written to a local store (they
stand in for a published teacher run: ``tests/integration/test_distillation_run.py``
distils from a real one); the operator's teacher resolution by
``reconcile.run_pass`` with the fakes of ``test_reconcile_training.py``.
The API's rules are rows of ``validation_corpus.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, tj_dict, with_status

from rayrelay_core.api import TrainingJobSpec, TrainingJobStatus
from rayrelay_core.conditions import find_condition
from rayrelay_core.runs import JobDocument, TeacherLineage
from rayrelay_core.store import LocalStore, sha256_bytes
from rayrelay_operator.reconcile import run_pass
from rayrelay_workloads.distill import (
    DistillationError,
    check_labels,
    distillation_loss,
    resolve_teacher,
)
from rayrelay_workloads.modeling import ModelSourceError, load_model

LABELS = ["neg", "pos"]


# ------------------------------------------------------------------ the loss


def _softmax(xs: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_loss_matches_a_hand_computation() -> None:
    import torch

    student = [[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]]
    teacher = [[2.0, 0.0, 1.0], [-1.0, 3.0, 0.0]]
    target = [0, 1]
    t, alpha = 2.0, 0.3
    kl = ce = 0.0
    for s_row, t_row, y in zip(student, teacher, target, strict=True):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        ce += -math.log(_softmax(s_row, 1.0)[y])
    want = alpha * (kl / 2) * t * t + (1 - alpha) * (ce / 2)
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(target), t, alpha)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # alpha 0 is plain cross-entropy; a student equal to its teacher has no soft loss.
    plain = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(target), t, 0.0)
    assert float(plain) == pytest.approx(ce / 2, rel=1e-6)
    same = distillation_loss(torch.tensor(teacher), torch.tensor(teacher), torch.tensor(target), t, 1.0)
    assert float(same) == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------ numLayers


def test_num_layers_keeps_the_first_layers(tiny_model: str) -> None:
    import torch

    full = load_model(tiny_model, LABELS)
    student = load_model(tiny_model, LABELS, num_layers=1)
    assert student.config.num_hidden_layers == 1
    assert len(student.base_model.encoder.layer) == 1
    kept = student.base_model.encoder.layer[0].state_dict()
    for name, tensor in full.base_model.encoder.layer[0].state_dict().items():
        assert torch.equal(kept[name], tensor), name


def test_num_layers_above_the_models_count_names_the_field(tiny_model: str) -> None:
    with pytest.raises(ModelSourceError, match=r"spec\.model\.numLayers: 3 is more than the 2 layers"):
        load_model(tiny_model, LABELS, num_layers=3)


# ------------------------------------------------------------------ the teacher


def _publish(folder: Path, **changes: Any) -> tuple[str, str]:
    """A teacher's manifest.json in a local store; its uri and digest."""
    manifest = sample_manifest(run_id="run-teacher").model_copy(update=changes)
    data = manifest.to_json().encode()
    uri = str(folder / "teacher" / "manifest.json")
    LocalStore().write_bytes(uri, data)
    return uri, f"sha256:{sha256_bytes(data)}"


def _student(teacher: dict[str, Any], resolved: TeacherLineage | None = None) -> JobDocument:
    spec = TrainingJobSpec.model_validate(
        {
            "model": {"source": "m", "numLayers": 1},
            "data": {"train": "t.jsonl", "validation": "v.jsonl"},
            "distillation": {"teacher": teacher, "temperature": 3, "alpha": 0.7},
        }
    )
    return JobDocument(
        namespace="ml", name="student", run_id="run-s", run_uri="/x", spec=spec, teacher=resolved
    )


def test_manifest_uri_teacher_is_read_and_its_digest_recorded(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path)
    lineage = resolve_teacher(_student({"manifestUri": uri}), ["pos", "neg"])  # order may differ
    assert lineage == TeacherLineage(manifest_uri=uri, digest=digest, run_id="run-teacher")


def test_training_job_ref_teacher_must_match_the_resolved_digest(tmp_path: Path) -> None:
    uri, digest = _publish(tmp_path)
    ref = {"trainingJobRef": {"name": "big"}}
    resolved = TeacherLineage(manifest_uri=uri, digest=digest, run_id="run-teacher", training_job="big")
    assert resolve_teacher(_student(ref, resolved), LABELS).training_job == "big"
    stale = resolved.model_copy(update={"digest": "sha256:" + "0" * 64})
    with pytest.raises(DistillationError, match=r"teacher\.trainingJobRef: .*digest mismatch"):
        resolve_teacher(_student(ref, stale), LABELS)
    with pytest.raises(
        DistillationError, match=r"teacher\.trainingJobRef: TrainingJob 'big' was not resolved"
    ):
        resolve_teacher(_student(ref), LABELS)


def test_teacher_refusals_name_the_field(tmp_path: Path) -> None:
    uri, _ = _publish(tmp_path)
    with pytest.raises(DistillationError, match=r"teacher\.manifestUri: .*labels \['neg', 'pos'\] are not"):
        resolve_teacher(_student({"manifestUri": uri}), ["neg", "pos", "neutral"])
    missing = str(tmp_path / "nowhere" / "manifest.json")
    with pytest.raises(DistillationError, match=r"teacher\.manifestUri: .*no manifest"):
        resolve_teacher(_student({"manifestUri": missing}), LABELS)
    lm, _ = _publish(tmp_path / "lm", task="text-generation")
    with pytest.raises(DistillationError, match="is a text-generation model"):
        resolve_teacher(_student({"manifestUri": lm}), LABELS)


def test_label_order_maps_teacher_columns_to_the_students() -> None:
    assert check_labels(["b", "c", "a"], ["a", "b", "c"], "x") == [2, 0, 1]


# ------------------------------------------------------------------ the operator


def test_student_waits_for_its_teacher_then_carries_its_manifest(tmp_path: Path) -> None:
    """A teacher TrainingJob still training: Pending, WaitingForTeacher, nothing submitted;
    once it succeeded, the submission's JobDocument names its manifest and digest."""
    teacher_obj: dict[str, Any] = tj_dict(name="big")
    backend, clock = FakeBackend(), Clock()
    ctx, _ = make_ctx(backend, clock, str(tmp_path / "store"), get_trainingjob=lambda ns, name: teacher_obj)
    student = tj_dict(name="small", distillation={"teacher": {"trainingJobRef": {"name": "big"}}})
    teacher_obj = with_status(teacher_obj, TrainingJobStatus(phase="Training"))

    status = run_pass("TrainingJob", student, ctx).status
    assert isinstance(status, TrainingJobStatus)
    running = find_condition(status.conditions, "Running")
    assert status.phase == "Pending" and running is not None
    assert running.reason == "WaitingForTeacher"
    assert "teacher: waiting for TrainingJob big to succeed (it is Training)" in running.message
    assert backend.submitted == []

    published = {"manifestUri": "s3://store/ml/big/run-1/manifest.json", "digest": "sha256:" + "ab" * 32}
    teacher_obj = with_status(
        teacher_obj, TrainingJobStatus(phase="Succeeded", run_id="run-1", artifacts=published)
    )
    student = with_status(student, status)
    run_pass("TrainingJob", student, ctx)
    [work] = backend.submitted
    assert work.job.teacher == TeacherLineage(
        manifest_uri=published["manifestUri"], digest=published["digest"], run_id="run-1", training_job="big"
    )


def test_rayrelay_run_stops_waiting_for_a_failed_teacher() -> None:
    """`rayrelay run`'s loop (local.objects.done): a student whose teacher failed is finished,
    and so is the ModelDeployment of that student, each saying why."""
    from rayrelay_operator.local.objects import LocalObjects, Tracked, done, referenced_training_failed

    teacher = with_status(tj_dict(name="big"), TrainingJobStatus(phase="Failed"))
    student = tj_dict(name="small", distillation={"teacher": {"trainingJobRef": {"name": "big"}}})
    deployment = {
        "kind": "ModelDeployment",
        "metadata": {"name": "small"},
        "spec": {"model": {"trainingJobRef": {"name": "small"}}},
    }
    for obj in (teacher, student, deployment):
        obj["metadata"]["namespace"] = "default"
    objects = LocalObjects([teacher, student, deployment])
    assert done(Tracked(student), objects)
    assert referenced_training_failed(Tracked(student), objects) == "its teacher TrainingJob big failed"
    assert done(Tracked(deployment), objects)
    assert referenced_training_failed(Tracked(deployment), objects) == (
        "its TrainingJob small will not run: its teacher TrainingJob big failed"
    )
    teacher["status"]["phase"] = "Training"
    assert not done(Tracked(student), objects)


def test_rayrelay_run_refuses_a_teacher_the_file_does_not_define() -> None:
    """``validation.cross_checks`` as `rayrelay run` calls it (self_contained); `rayrelay validate`
    of a student alone accepts it (the teacher may already be in the cluster)."""
    from rayrelay_core.validation import cross_checks

    student = tj_dict(name="small", distillation={"teacher": {"trainingJobRef": {"name": "big"}}})
    [issue] = cross_checks([student], self_contained=True)
    assert issue.path == "spec.distillation.teacher.trainingJobRef.name"
    assert "TrainingJob 'big' is not defined in this file" in issue.message
    assert cross_checks([student]) == []
    assert cross_checks([tj_dict(name="big"), student], self_contained=True) == []
