"""The Ray Train driver of causal-LM fine-tuning: a TorchTrainer like classification's.

Same storage (``RunLayout.checkpoints``, S3 through pyarrow), same run name
(``train.run_name_for``: stable across attempts with ``checkpointing.resume``,
so Train V2 restores the run), same failure handling (``FailureConfig``) and
environment passed to workers; the loop is ``textgen.worker`` and the best
checkpoint is the one with the lowest validation perplexity.
"""

from __future__ import annotations

from typing import Any

from rayrelay_core.runs import JobDocument
from rayrelay_workloads.textgen.lm import METRIC
from rayrelay_workloads.textgen.worker import lm_train_loop_per_worker
from rayrelay_workloads.train import (
    TrainResult,
    base_loop_config,
    fit_best_checkpoint,
)


def build_lm_config(job: JobDocument) -> dict[str, Any]:
    """The causal-LM loop's config: the one every task shares (no labels)."""
    return base_loop_config(job)


def run_lm_training(job: JobDocument, scratch_dir: str) -> TrainResult:
    """Fine-tune for ``job``; the best checkpoint (lowest validation perplexity) in ``scratch_dir``."""
    return fit_best_checkpoint(
        job, lm_train_loop_per_worker, build_lm_config(job), METRIC, "min", scratch_dir
    )
