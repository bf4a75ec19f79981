"""The Ray Train driver of causal-LM fine-tuning: a TorchTrainer like classification's.

Same storage (``RunLayout.checkpoints``, S3 through pyarrow), same run name
(``train.run_name_for``: stable across attempts with ``checkpointing.resume``,
so Train V2 restores the run), same failure handling (``FailureConfig``) and
environment passed to workers; the loop is ``textgen.worker`` and the best
checkpoint is the one with the lowest validation perplexity.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rayrelay_core.runs import JobDocument, RunLayout
from rayrelay_core.store import join
from rayrelay_workloads.textgen.lm import METRIC
from rayrelay_workloads.textgen.worker import lm_train_loop_per_worker
from rayrelay_workloads.train import (
    _PROPAGATE_ENV,
    TrainResult,
    _first_line,
    checkpoint_uri,
    run_name_for,
    storage_for,
)
from rayrelay_workloads.train_state import TrainingError
from rayrelay_workloads.train_worker import FAULT_ENV


def build_lm_config(job: JobDocument) -> dict[str, Any]:
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


def run_lm_training(job: JobDocument, scratch_dir: str) -> TrainResult:
    """Fine-tune for ``job``; the best checkpoint (lowest validation perplexity) in ``scratch_dir``."""
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
        lm_train_loop_per_worker,
        train_loop_config=build_lm_config(job),
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
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=spec.failure_policy.max_failures),
            worker_runtime_env={"env_vars": env} if env else None,  # type: ignore[call-arg]
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        raise TrainingError(f"training failed: {_first_line(exc)}") from exc
    best = result.get_best_checkpoint(METRIC, "min") if result.best_checkpoints else result.checkpoint
    if best is None:
        raise TrainingError("training finished without a checkpoint")
    metrics = dict(
        next((m for c, m in (result.best_checkpoints or []) if c.path == best.path), result.metrics or {})
    )
    local = Path(scratch_dir) / "best-checkpoint"
    best.to_directory(str(local))
    return TrainResult(str(local), checkpoint_uri(job, Path(best.path).name), metrics, name)
