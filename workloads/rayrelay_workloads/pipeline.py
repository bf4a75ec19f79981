"""The whole TrainingJob run, the same for every task: stages, training, export, publish, failures.

``train_job.py`` (the entrypoint the operator's backends launch as a Ray job
driver) and the tests call :func:`run_pipeline`. The task (``spec.model.task``)
is chosen once here (``tasks.task_for``) and gives the steps that differ
(``tasks.base.Task``: data, the Ray Train loop, export and its checks, the gate,
the manifest); this module runs them in order between the shared ones: the
stage transitions in ``progress.json`` (``progress.py``), the Ray Train driver
(``train.fit_best_checkpoint``: storage, checkpoints, resume) and, on any
failure, a ``failure.json`` (``failures.py``) with a CamelCase reason before
raising :class:`PipelineError`. Checkpoints are never deleted here, so a later
attempt can resume from them.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rayrelay_core.runs import JobDocument, Manifest, RunLayout
from rayrelay_workloads.failures import PipelineError, classify, first_line, record_failure
from rayrelay_workloads.progress import ProgressWriter
from rayrelay_workloads.tasks import task_for
from rayrelay_workloads.tasks.base import Run, Task
from rayrelay_workloads.train import fit_best_checkpoint

# PipelineError and classify are part of this module's interface (train_job.py and tests import them here).
__all__ = ["PipelineError", "classify", "run_pipeline"]


def run_pipeline(
    job: JobDocument,
    scratch_dir: str | None = None,
    bench_repeats: int = 10,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Run every stage for ``job``; returns the published manifest.

    Ray must be reachable (``ray.init`` done, or Train starts a local instance).
    """
    say = log or (lambda msg: print(f"[rayrelay] {msg}", file=sys.stderr, flush=True))
    layout = RunLayout(job.run_uri)
    scratch = Path(scratch_dir or tempfile.mkdtemp(prefix="rr-pipeline-"))
    progress: ProgressWriter | None = None
    task: Task | None = None
    try:
        progress = ProgressWriter(layout.base, job.endpoint_url, attempt=job.attempt)
        progress.stage("Training", "reading data", required=True)
        task = task_for(job.spec.model.task)
        return run_stages(task, Run(job, scratch, progress, say, bench_repeats))
    except Exception as exc:
        reason, retryable = classify(exc, task.failure_reasons if task is not None else ())
        message = first_line(exc)
        record_failure(layout, job, progress, reason, message, retryable, say)
        raise PipelineError(reason, message, retryable) from exc


def run_stages(task: Task, run: Run) -> Manifest:
    """The task's steps in order, between the shared ones (``tasks.base`` lists the order)."""
    prepared = task.prepare(run)
    trained = fit_best_checkpoint(
        prepared.job,
        task.train_loop(),
        task.loop_config(run, prepared),
        task.metric,
        task.order,
        str(run.scratch),
    )
    task.check_trained(run, prepared, trained)
    exported = task.export(run, prepared, trained)
    manifest, uri = task.publish(run, prepared, trained, exported)
    run.progress.stage("Succeeded", f"manifest at {uri}")
    run.say(f"published {uri} (recommended variant {manifest.recommended_variant})")
    return manifest
