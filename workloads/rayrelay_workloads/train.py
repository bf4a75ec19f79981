"""Distributed fine-tuning with Ray Train: the TorchTrainer driver every task trains through.

``pipeline.py`` calls :func:`fit_best_checkpoint` with the task's per-worker loop,
its config, and the metric that picks the best checkpoint (``tasks.base.Task``);
it returns the best checkpoint downloaded to a local folder, which the task's
export turns into ONNX. :func:`run_training` is classification's call of it
(``train_worker.train_loop_per_worker`` with the plain config of
:func:`build_config`, best by validation accuracy).

Checkpoints go to ``RunLayout.checkpoints`` through Ray Train's storage
(pyarrow; S3 with a configurable endpoint). A checkpoint holds the model, the
optimizer, the scheduler, and the exact position (global step, epoch, batch
index in the epoch; ``train_state.py``), so a restarted worker group
(``FailureConfig.max_failures``) or a new attempt of the same run continues at
the next step and never repeats one. Attempts share a run's checkpoints through
the Ray Train run name (:func:`run_name_for`): with ``checkpointing.resume`` it
is the same for every attempt, and Train V2 restores its checkpoint manager
from storage; without it each attempt starts from scratch under its own name.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrelay_core.runs import JobDocument, RunLayout
from rayrelay_core.store import is_s3, join, local_path, split_s3
from rayrelay_workloads.train_state import METRIC, TrainingError
from rayrelay_workloads.train_worker import FAULT_ENV, train_loop_per_worker

# METRIC and TrainingError are part of this module's interface (pipeline.py imports them here).
__all__ = ["METRIC", "TrainResult", "TrainingError", "build_config", "run_training"]

# Environment the workers need to see as the driver does (offline hub, S3 endpoint, credentials).
_PROPAGATE_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "RAYRELAY_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "RAYRELAY_STORE_WAIT_SECONDS",
)


@dataclass
class TrainResult:
    checkpoint_dir: str  # local copy of the best checkpoint
    checkpoint_uri: str
    metrics: dict[str, Any]
    run_name: str


def run_name_for(job: JobDocument) -> str:
    """Ray Train run name: stable across attempts when resuming, so Train V2 restores it."""
    return "train" if job.spec.checkpointing.resume else f"train-attempt-{job.attempt}"


def storage_for(uri: str, endpoint_url: str | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig."""
    if not is_s3(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None
    import pyarrow.fs

    from rayrelay_workloads.holdfs import holding

    endpoint = endpoint_url or os.environ.get("RAYRELAY_S3_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    # A few retries with backoff on throttling/5xx, like the boto3 side (store.py).
    kwargs["retry_strategy"] = pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=8)
    bucket, key = split_s3(uri)
    # Every call Ray Train makes (workers' uploads, the controller's checkpoint snapshot)
    # waits out an S3 outage for up to RAYRELAY_STORE_WAIT_SECONDS (holdfs.py).
    return f"{bucket}/{key}".rstrip("/"), holding(pyarrow.fs.S3FileSystem(**kwargs))


def checkpoint_uri(job: JobDocument, dir_name: str) -> str:
    return join(RunLayout(job.run_uri).checkpoints, run_name_for(job), dir_name)


def base_loop_config(job: JobDocument) -> dict[str, Any]:
    """The train_loop_per_worker config every task shares (plain JSON-able values)."""
    spec = job.spec
    fault = os.environ.get(FAULT_ENV)
    return {
        "source": spec.model.source,
        "data": spec.data.wire(),
        "hp": spec.hyperparameters.model_dump(),
        "precision": str(spec.resources.precision),
        "cpus_per_worker": spec.resources.cpus_per_worker,
        "every_n_steps": spec.checkpointing.every_n_steps,
        "run_uri": job.run_uri,
        "checkpoints_uri": join(RunLayout(job.run_uri).checkpoints, run_name_for(job)),
        "endpoint_url": job.endpoint_url,
        "attempt": job.attempt,
        "fault_at_step": int(fault) if fault else None,
    }


def build_config(job: JobDocument, labels: list[str]) -> dict[str, Any]:
    """The classification loop's config: the shared one, the label names, the student's layer
    count (``model.numLayers``) and the resolved teacher (``distill.loop_config``)."""
    from rayrelay_workloads.distill import loop_config

    return {
        **base_loop_config(job),
        "labels": labels,
        "num_layers": job.spec.model.num_layers,
        "distillation": loop_config(job),
    }


def run_training(job: JobDocument, labels: list[str], scratch_dir: str) -> TrainResult:
    """Run the TorchTrainer for ``job`` and fetch its best checkpoint into ``scratch_dir``."""
    return fit_best_checkpoint(
        job, train_loop_per_worker, build_config(job, labels), METRIC, "max", scratch_dir
    )


def fit_best_checkpoint(
    job: JobDocument, loop: Any, loop_config: dict[str, Any], metric: str, order: str, scratch_dir: str
) -> TrainResult:
    """A TorchTrainer running ``loop`` for ``job``; its best checkpoint by ``metric`` in ``scratch_dir``.

    Every task trains through this: the same storage, run name (stable across attempts
    with ``checkpointing.resume``, so Train V2 restores the run), failure handling and
    environment passed to the workers; ``order`` is "max" or "min" for ``metric``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = job.spec
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": float(res.cpus_per_worker)}
    if use_gpu:
        per_worker["GPU"] = float(res.gpus_per_worker)
    storage_path, filesystem = storage_for(RunLayout(job.run_uri).checkpoints, job.endpoint_url)
    env = {k: os.environ[k] for k in _PROPAGATE_ENV if k in os.environ}
    if job.endpoint_url:
        env["RAYRELAY_S3_ENDPOINT_URL"] = job.endpoint_url
    name = run_name_for(job)
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpointing.keep,
                checkpoint_score_attribute=metric,
                checkpoint_score_order=order,
            ),
            failure_config=ray.train.FailureConfig(max_failures=spec.failure_policy.max_failures),
            # Train V2's RunConfig (the default in 2.58); mypy sees the V1 stub.
            worker_runtime_env={"env_vars": env} if env else None,  # type: ignore[call-arg]
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the first line readable
        raise TrainingError(f"training failed: {_first_line(exc)}") from exc
    best = result.get_best_checkpoint(metric, order) if result.best_checkpoints else result.checkpoint
    if best is None:
        raise TrainingError("training finished without a checkpoint")
    metrics = dict(
        next((m for c, m in (result.best_checkpoints or []) if c.path == best.path), result.metrics or {})
    )
    local = Path(scratch_dir) / "best-checkpoint"
    best.to_directory(str(local))
    return TrainResult(str(local), checkpoint_uri(job, Path(best.path).name), metrics, name)


def _first_line(exc: BaseException) -> str:
    """The most telling line of a Ray Train error: the last "XError: ..." of the worker traceback."""
    text = str(exc)
    errors = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\b.*:", ln)]
    head = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{head} {errors[-1]}"[:500] if errors else head[:500]
