"""Knowledge distillation (``spec.distillation``): a student trained on a teacher's logits too.

The teacher is a published classification run. ``pipeline.run_pipeline`` calls
:func:`resolve_teacher` on the driver: it reads the teacher's manifest (at
``teacher.manifestUri``, or the one the control plane resolved from
``teacher.trainingJobRef`` into ``JobDocument.teacher`` with its digest, which
must still match), checks that it is a classification set with the student's
labels and an fp32 ONNX model, and returns the ``TeacherLineage`` that the
manifest's lineage records (``publish.lineage_of``) and the workers receive
(:func:`loop_config`, through ``train.build_config``).

Each Ray Train worker then fetches the teacher's fp32 ONNX model and tokenizer
the way a serving replica does (``serve.artifacts.prepare``: every file checked
against the manifest's sha256, an encrypted set decrypted in memory) and scores
its own training shard once, before the first step (:func:`teacher_logits`).
The teacher is frozen and has no dropout at inference, so its logits for a
text never change: scoring each text once per worker group costs one teacher
pass over the shard, where scoring every batch on the fly would cost one per
epoch (docs/performance.md has the measurement). Every step then optimises
:func:`distillation_loss` (:func:`distill_step`, the same optimizer step as
plain training: ``train_state.optimizer_step``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rayrelay_core.runs import JobDocument, ManifestError, TeacherLineage, read_manifest
from rayrelay_core.store import open_store

SCORE_BATCH = 64  # texts per teacher call while scoring a shard


class DistillationError(ValueError):
    """The teacher cannot be used; the message names the field and says why."""


def resolve_teacher(job: JobDocument, labels: list[str]) -> TeacherLineage:
    """The teacher's manifest URI, digest and run (checked against the student's labels)."""
    from rayrelay_workloads.serve.artifacts import ArtifactError, check_digest

    distillation = job.spec.distillation
    assert distillation is not None
    teacher = distillation.teacher
    expected: str | None = None
    if teacher.training_job_ref is not None:
        field = "spec.distillation.teacher.trainingJobRef"
        resolved = job.teacher
        if resolved is None:
            raise DistillationError(
                f"{field}: TrainingJob {teacher.training_job_ref.name!r} was not resolved to a published "
                "manifest (the operator or `rayrelay run` resolves it once that TrainingJob has succeeded)"
            )
        uri, expected = resolved.manifest_uri, resolved.digest
    else:
        field = "spec.distillation.teacher.manifestUri"
        assert teacher.manifest_uri is not None
        uri = teacher.manifest_uri
    try:
        manifest, digest = read_manifest(open_store(uri, job.endpoint_url), uri)
        check_digest(digest, expected, uri)
    except (ManifestError, ArtifactError) as exc:
        raise DistillationError(f"{field}: {exc}") from exc
    if manifest.task != "sequence-classification":
        raise DistillationError(
            f"{field}: {uri} is a {manifest.task} model; a teacher must be a sequence-classification model"
        )
    check_labels(manifest.labels, labels, f"{field}: {uri}")
    fp32 = manifest.variants.get("fp32")
    if fp32 is None or not fp32.file:
        raise DistillationError(f"{field}: {uri} has no fp32 ONNX model (the variant the teacher runs)")
    return TeacherLineage(
        manifest_uri=uri,
        digest=f"sha256:{digest}",
        run_id=manifest.run_id,
        training_job=teacher.training_job_ref.name if teacher.training_job_ref else None,
    )


def check_labels(teacher: Sequence[str], student: Sequence[str], where: str) -> list[int]:
    """Column ``i`` of the student is the teacher's column ``order[i]``; the label sets must match."""
    if sorted(teacher) != sorted(student):
        raise DistillationError(
            f"{where}: the teacher's labels {list(teacher)} are not the student's {list(student)} "
            "(a teacher must be trained on the same classes)"
        )
    return [list(teacher).index(name) for name in student]


def loop_config(job: JobDocument) -> dict[str, Any] | None:
    """The workers' part of ``spec.distillation`` (plain JSON), or None without distillation."""
    distillation = job.spec.distillation
    if distillation is None:
        return None
    if job.teacher is None:
        raise DistillationError("spec.distillation.teacher: not resolved (resolve_teacher runs first)")
    return {
        "manifestUri": job.teacher.manifest_uri,
        "digest": job.teacher.digest,
        "temperature": distillation.temperature,
        "alpha": distillation.alpha,
    }


def teacher_logits(
    teacher: dict[str, Any],
    texts: Sequence[str],
    labels: list[str],
    endpoint_url: str | None,
    threads: int = 1,
    cache_dir: str | None = None,
) -> Any:
    """The teacher's fp32 ONNX logits for ``texts`` (float32, columns in the student's label order)."""
    import numpy as np
    import onnxruntime as ort

    from rayrelay_workloads.export import onnx_logits
    from rayrelay_workloads.serve.artifacts import ArtifactError, load_tokenizer, prepare

    try:
        prepared = prepare(
            teacher["manifestUri"],
            "fp32",
            cache_dir=cache_dir,
            endpoint_url=endpoint_url,
            expected_digest=teacher["digest"],
        )
    except ArtifactError as exc:
        raise DistillationError(f"spec.distillation.teacher: {exc}") from exc
    order = check_labels(
        prepared.manifest.labels, labels, f"spec.distillation.teacher: {teacher['manifestUri']}"
    )
    tokenizer = load_tokenizer(prepared)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(prepared.model_source, options, providers=["CPUExecutionProvider"])
    max_len = prepared.manifest.tokenizer.max_seq_length
    out = np.zeros((len(texts), len(labels)), dtype=np.float32)
    for start in range(0, len(texts), SCORE_BATCH):
        batch = list(texts[start : start + SCORE_BATCH])
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        out[start : start + len(batch)] = onnx_logits(session, dict(enc))[:, order]
    return out


def score_shard(
    teacher: dict[str, Any], texts: Sequence[str], labels: list[str], endpoint_url: str | None, threads: int
) -> tuple[Any, float]:
    """:func:`teacher_logits` of a worker's shard and the seconds it took."""
    start = time.perf_counter()
    logits = teacher_logits(teacher, texts, labels, endpoint_url, threads)
    return logits, time.perf_counter() - start


def distillation_loss(student: Any, teacher: Any, target: Any, temperature: float, alpha: float) -> Any:
    """alpha * KL(softmax(teacher/T) || softmax(student/T)) * T^2 + (1 - alpha) * CE(student, target).

    The KL term is averaged over the batch (like the cross-entropy); T^2 keeps its
    gradients the same size whatever T is.
    """
    import torch.nn.functional as F

    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student / t, dim=-1),
        F.log_softmax(teacher / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student, target)
    return alpha * soft * (t * t) + (1.0 - alpha) * hard


def distill_step(
    model: Any,
    opt: Any,
    inputs: dict[str, Any],
    target: Any,
    teacher: Any,
    temperature: float,
    alpha: float,
) -> float:
    """One training step on :func:`distillation_loss`; the batch's loss (``teacher``: its logits)."""
    import torch

    from rayrelay_workloads.train_state import optimizer_step

    with torch.autocast(
        device_type=target.device.type, dtype=opt.autocast_dtype, enabled=opt.autocast_dtype is not None
    ):
        logits = model(**inputs).logits
    loss = distillation_loss(logits.float(), teacher.to(target.device), target, temperature, alpha)
    return optimizer_step(model, opt, loss)
