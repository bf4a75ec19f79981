"""The whole TrainingJob run: train -> [prune] -> export -> optimise -> quantise -> gate -> publish.

``train_job.py`` (the entrypoint the operator's backends launch as a Ray job
driver) and the tests call :func:`run_pipeline`. It writes the stage
transitions to ``progress.json`` (``progress.py``) and, on any failure, a
``failure.json`` (``rayrelay_core.runs.FailureDoc``) with a CamelCase reason
before re-raising. Checkpoints are never deleted here, so a later attempt can
resume from them. With ``spec.optimization.pruning`` the ``Pruning`` stage
(``prune.py``) makes the best checkpoint smaller before export, and everything
after it (parity, the quality gate, the manifest's variants) is about the
pruned model.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rayrelay_core.api import Pruning
from rayrelay_core.runs import FailureDoc, JobDocument, Manifest, PruningInfo, RunLayout
from rayrelay_core.store import StoreError, open_store
from rayrelay_workloads.data import DataError, LoadedData, load_data
from rayrelay_workloads.distill import DistillationError, resolve_teacher
from rayrelay_workloads.envelope import EnvelopeError, key_from_env
from rayrelay_workloads.export import export_all
from rayrelay_workloads.export_checks import ParityError
from rayrelay_workloads.modeling import ModelSourceError, check_num_layers, resolve_source
from rayrelay_workloads.progress import ProgressWriter
from rayrelay_workloads.prune import (
    PruneSettings,
    PruningError,
    check_prunable,
    is_pruned,
    manifest_info,
    prune_checkpoint,
)
from rayrelay_workloads.publish import publish
from rayrelay_workloads.quality import QualityGateError, bf16_decision, check_min_accuracy, int8_decision
from rayrelay_workloads.storewait import StoreWait
from rayrelay_workloads.train import METRIC, TrainingError, TrainResult, run_training

# (exception type, condition reason, worth retrying) — first match wins.
FAILURE_REASONS: list[tuple[type[BaseException], str, bool]] = [
    (DataError, "InvalidData", False),
    (DistillationError, "InvalidTeacher", False),
    (EnvelopeError, "EncryptionKeyInvalid", False),
    (ModelSourceError, "InvalidModel", False),
    (ParityError, "ParityFailed", False),
    (PruningError, "PruningFailed", False),
    (QualityGateError, "QualityGateFailed", False),
    (StoreError, "StorageError", True),
    (TrainingError, "TrainingFailed", True),
]


class PipelineError(RuntimeError):
    """A run failed; ``reason`` is the condition reason also written to failure.json."""

    def __init__(self, reason: str, message: str, retryable: bool) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.retryable = retryable


def classify(exc: BaseException) -> tuple[str, bool]:
    for kind, reason, retryable in FAILURE_REASONS:
        if isinstance(exc, kind):
            return reason, retryable
    return "TrainingFailed", True


def run_pipeline(
    job: JobDocument,
    scratch_dir: str | None = None,
    bench_repeats: int = 10,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Run every stage for ``job``; returns the published manifest.

    Ray must be reachable (``ray.init`` done, or Train starts a local instance).
    """
    if str(job.spec.model.task) == "text-generation":  # a decoder's run (issue 16): textgen/pipeline.py
        from rayrelay_workloads.textgen.pipeline import run_lm_pipeline

        return run_lm_pipeline(job, scratch_dir, bench_repeats=min(bench_repeats, 5))
    say = log or (lambda msg: print(f"[rayrelay] {msg}", file=sys.stderr, flush=True))
    layout = RunLayout(job.run_uri)
    spec = job.spec
    scratch = Path(scratch_dir or tempfile.mkdtemp(prefix="rr-pipeline-"))
    progress: ProgressWriter | None = None
    try:
        progress = ProgressWriter(layout.base, job.endpoint_url, attempt=job.attempt)
        progress.stage("Training", "reading data", required=True)
        if spec.artifacts.encryption is not None:
            key_from_env()  # a missing or malformed key fails now, not after training
        data = load_data(spec.data, spec.model.num_labels, job.endpoint_url)
        say(
            f"data: {len(data.train.examples)} train, {len(data.validation.examples)} validation, labels {data.labels}"
        )
        # Resolve once on the driver too: a bad source fails here, not in every worker.
        tokenizer_source = resolve_source(spec.model.source, job.endpoint_url, str(scratch / "base-model"))
        check_num_layers(tokenizer_source, spec.model.num_layers)
        if spec.distillation is not None:  # the teacher's manifest, digest and labels, checked once
            teacher = resolve_teacher(job, data.labels)
            job = job.model_copy(update={"teacher": teacher})
            say(f"teacher: run {teacher.run_id} at {teacher.manifest_uri} ({teacher.digest})")
        if is_pruned(tokenizer_source):
            raise ModelSourceError(
                f"model.source {spec.model.source!r} is a pruned model (rayrelay_pruning in its config): "
                "it serves, but cannot be fine-tuned again; use the unpruned base model and optimization.pruning"
            )
        pruning_spec = spec.optimization.pruning if spec.optimization is not None else None
        if pruning_spec is not None:
            check_prunable(tokenizer_source)  # a model pruning cannot handle fails now, not after training
        trained = run_training(job, data.labels, str(scratch))
        say(f"training done: best {trained.checkpoint_uri} ({METRIC} {trained.metrics.get(METRIC)})")
        if trained.metrics.get(METRIC) is not None:
            check_min_accuracy(spec.quality_gate, float(trained.metrics[METRIC]))

        checkpoint_dir, pruning = trained.checkpoint_dir, None
        if pruning_spec is not None:
            checkpoint_dir, pruning = _prune(
                job, progress, trained, pruning_spec, tokenizer_source, data, scratch
            )
            say(
                f"pruning: heads {pruning.heads_per_layer_before}->{pruning.heads_per_layer_after}, "
                f"ffn {pruning.ffn_per_layer_before}->{pruning.ffn_per_layer_after} per layer, "
                f"parameters {pruning.parameters_before}->{pruning.parameters_after}, "
                f"accuracy {pruning.accuracy_before_recovery} -> {pruning.accuracy_after_recovery} after recovery"
            )

        progress.stage("Exporting", f"exporting {trained.checkpoint_uri}")
        result = export_all(
            checkpoint_dir,
            tokenizer_source,
            scratch / "out",
            spec.export,
            spec.hyperparameters.max_seq_length,
            data.validation.examples,
            data.labels,
            threads=max(1, int(spec.resources.cpus_per_worker)),
            bench_repeats=bench_repeats,
            on_stage=lambda stage: progress.stage(stage) if progress else None,
        )
        say(f"export: accuracy {result.accuracy}, parity {result.max_diff_fp32:.2e}")
        check_min_accuracy(spec.quality_gate, result.accuracy["pytorch"])
        decision = int8_decision(spec.quality_gate, result.accuracy["fp32"], result.accuracy.get("int8"))
        bf16 = bf16_decision(
            spec.quality_gate, result.accuracy["fp32"], result.accuracy.get("bf16"), result.bf16_missing
        )
        if result.bf16 is not None:
            say(
                f"bf16: {result.bf16.measured}, accepted {bf16.accepted}"
                + (f" ({bf16.reason})" if bf16.reason else "")
            )
        progress.stage("Publishing")
        waited = StoreWait()
        manifest, uri = publish(job, result, data, decision, pruning=pruning, wait=waited, bf16=bf16)
        if waited.retries:
            say(f"publish: waited {waited.waited_s:.1f}s for the store ({waited.retries} retries)")
        progress.stage("Succeeded", f"manifest at {uri}")
        say(f"published {uri} (recommended variant {manifest.recommended_variant})")
        return manifest
    except Exception as exc:
        reason, retryable = classify(exc)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _record_failure(layout, job, progress, reason, message, retryable, say)
        raise PipelineError(reason, message, retryable) from exc


def _prune(
    job: JobDocument,
    progress: ProgressWriter,
    trained: TrainResult,
    settings: Pruning,
    tokenizer_source: str,
    data: LoadedData,
    scratch: Path,
) -> tuple[str, PruningInfo]:
    """The Pruning stage: score, slice, recover (on this process, see prune.py); the pruned checkpoint."""
    spec = job.spec
    progress.stage(
        "Pruning",
        f"removing {settings.heads:g} of the heads and {settings.ffn:g} of the FFN neurons, "
        f"then {settings.recovery_steps} recovery steps",
    )
    out, report = prune_checkpoint(
        trained.checkpoint_dir,
        tokenizer_source,
        scratch / "pruned",
        PruneSettings(settings.heads, settings.ffn, settings.importance_batches, settings.recovery_steps),
        data.train.examples,
        data.validation.examples,
        data.labels,
        spec.hyperparameters.model_dump(),
        threads=max(1, int(spec.resources.cpus_per_worker)),
    )
    unpruned = trained.metrics.get(METRIC)
    return str(out), manifest_info(report, float(unpruned) if unpruned is not None else None)


def _record_failure(
    layout: RunLayout,
    job: JobDocument,
    progress: ProgressWriter | None,
    reason: str,
    message: str,
    retryable: bool,
    say: Callable[[str], None],
) -> None:
    try:
        store = open_store(layout.base, job.endpoint_url)
        store.write_bytes(
            layout.failure,
            FailureDoc(reason=reason, message=message, retryable=retryable, attempt=job.attempt)
            .to_json()
            .encode(),
        )
        if progress is not None:
            progress.stage("Failed", f"{reason}: {message}")
    except StoreError as exc:
        # The store itself may be what failed; the exit message still carries the reason.
        say(f"could not write failure.json: {exc}")
