"""The whole TrainingJob run: train -> export -> optimise -> quantise -> gate -> publish.

``train_job.py`` (the entrypoint the operator's backends launch as a Ray job
driver) and the tests call :func:`run_pipeline`. It writes the stage
transitions to ``progress.json`` (``progress.py``) and, on any failure, a
``failure.json`` (``rayrelay_core.runs.FailureDoc``) with a CamelCase reason
before re-raising. Checkpoints are never deleted here, so a later attempt can
resume from them.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rayrelay_core.runs import FailureDoc, JobDocument, Manifest, RunLayout
from rayrelay_core.store import StoreError, open_store
from rayrelay_workloads.data import DataError, load_data
from rayrelay_workloads.envelope import EnvelopeError, key_from_env
from rayrelay_workloads.export import export_all
from rayrelay_workloads.export_checks import ParityError
from rayrelay_workloads.modeling import ModelSourceError, resolve_source
from rayrelay_workloads.progress import ProgressWriter
from rayrelay_workloads.publish import publish
from rayrelay_workloads.quality import QualityGateError, check_min_accuracy, int8_decision
from rayrelay_workloads.train import METRIC, TrainingError, run_training

# (exception type, condition reason, worth retrying) — first match wins.
FAILURE_REASONS: list[tuple[type[BaseException], str, bool]] = [
    (DataError, "InvalidData", False),
    (EnvelopeError, "EncryptionKeyInvalid", False),
    (ModelSourceError, "InvalidModel", False),
    (ParityError, "ParityFailed", False),
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
        trained = run_training(job, data.labels, str(scratch))
        say(f"training done: best {trained.checkpoint_uri} ({METRIC} {trained.metrics.get(METRIC)})")
        if trained.metrics.get(METRIC) is not None:
            check_min_accuracy(spec.quality_gate, float(trained.metrics[METRIC]))

        progress.stage("Exporting", f"exporting {trained.checkpoint_uri}")
        result = export_all(
            trained.checkpoint_dir,
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
        progress.stage("Publishing")
        manifest, uri = publish(job, result, data, decision)
        progress.stage("Succeeded", f"manifest at {uri}")
        say(f"published {uri} (recommended variant {manifest.recommended_variant})")
        return manifest
    except Exception as exc:
        reason, retryable = classify(exc)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _record_failure(layout, job, progress, reason, message, retryable, say)
        raise PipelineError(reason, message, retryable) from exc


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
