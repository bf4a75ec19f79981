"""Text generation's gate and publication: perplexity bounds, the manifest with its ``generation`` block.

``textgen.task`` (this task's steps for the shared run, ``pipeline.run_pipeline``)
calls these; stages, ``progress.json``, ``failure.json`` and the failure reasons
are every task's (``failures.py``), so the operator and ``rayrelay run`` see the
same documents. The quality gate is a perplexity bound
(``qualityGate.maxValPerplexity``, on the best checkpoint's validation
perplexity) and, for int8, ``qualityGate.maxInt8PerplexityIncrease`` (its
validation perplexity against ONNX fp32's on the same rows).

The manifest (``Manifest.task: text-generation``) lists the files like any run's
and carries a ``generation`` block: the decoder's input and output names, the
EOS id, the context length, the logits and greedy-decoding parity of each
variant, and the validation perplexities.
"""

from __future__ import annotations

import math
from typing import Any

from rayrelay_core.api import QualityGate
from rayrelay_core.runs import FileEntry, JobDocument, Manifest, Parity, TokenizerInfo
from rayrelay_core.store import join
from rayrelay_workloads.publish import lineage_of, onnx_variants, publish_folder, timestamp
from rayrelay_workloads.quality import Int8Decision, QualityGateError
from rayrelay_workloads.textgen.data import LoadedLmData
from rayrelay_workloads.textgen.export import LmExportResult
from rayrelay_workloads.textgen.lm import METRIC

TASK = "text-generation"


def check_max_perplexity(gate: QualityGate, value: float) -> None:
    limit = getattr(gate, "max_val_perplexity", None)
    if limit is not None and not value <= limit:
        raise QualityGateError(
            f"validation perplexity {value:.3f} is above qualityGate.maxValPerplexity {limit:g}"
            + (f" by {value - limit:.3f}" if math.isfinite(value) else "")
        )


def int8_perplexity_decision(gate: QualityGate, fp32: float, int8: float | None) -> Int8Decision:
    """Accept int8 unless its perplexity rises more than maxInt8PerplexityIncrease over fp32."""
    if int8 is None:
        return Int8Decision(False, "no int8 model (export.quantize: none)", "fp32")
    limit = getattr(gate, "max_int8_perplexity_increase", None)
    rise = int8 / fp32 - 1 if fp32 > 0 else math.inf
    if limit is not None and not rise <= limit + 1e-12:
        return Int8Decision(
            False,
            f"int8 validation perplexity {int8:.3f} is {rise:.1%} above fp32 {fp32:.3f}, more than "
            f"qualityGate.maxInt8PerplexityIncrease {limit:g}",
            "fp32",
        )
    return Int8Decision(True, None, "int8")


def build_lm_manifest(
    job: JobDocument,
    result: LmExportResult,
    data: LoadedLmData,
    decision: Int8Decision,
    files: list[FileEntry],
    root: str,
    train_metrics: dict[str, float],
) -> Manifest:
    spec = job.spec
    return Manifest(
        run_id=job.run_id,
        created_at=timestamp(),
        files=files,
        variants=onnx_variants(root, files, result.fp32_file, result.int8_file, decision),
        recommended_variant=decision.recommended_variant,
        task=TASK,
        generation=generation_block(result),
        parity=Parity(
            max_abs_logit_diff_fp32=result.max_diff_fp32,
            max_abs_logit_diff_int8=result.max_diff_int8,
            tolerance=spec.export.parity_tolerance,
            passed=result.max_diff_fp32 <= spec.export.parity_tolerance,
            samples=result.prompts,
        ),
        labels=[],
        tokenizer=TokenizerInfo(
            path=join(root, "hf"),
            max_seq_length=spec.hyperparameters.max_seq_length,
            model_input_names=["input_ids", "attention_mask", "position_ids"],
        ),
        lineage=lineage_of(job, data),
        metrics=lm_metrics(result, train_metrics),
    )


def lm_metrics(result: LmExportResult, train_metrics: dict[str, float]) -> dict[str, float]:
    """The manifest's metrics: the export's timings, perplexities and greedy matches, the best checkpoint's."""
    metrics = {k: float(v) for k, v in result.metrics.items()}
    for name, value in result.perplexity.items():
        metrics[f"val_perplexity_{name}"] = round(value, 6) if math.isfinite(value) else 1e30
    for name, value in result.greedy_match.items():
        metrics[f"greedy_match_{name}"] = value
    for key in ("val_loss", "val_token_accuracy", METRIC):
        if isinstance(train_metrics.get(key), int | float):
            metrics[f"train_best_{key}"] = float(train_metrics[key])
    return metrics


def generation_block(result: LmExportResult) -> dict[str, Any]:
    """The manifest's ``generation``: what a replica needs to drive the decoder, and its parity figures."""
    if result.kv_cache == "inplace":
        inputs = [
            "input_ids",
            "position_ids",
            "seqlens_k",
            "total_sequence_length",
            "past_key_values.{i}.key|value",
        ]
    else:
        inputs = ["input_ids", "attention_mask", "position_ids", "past_key_values.{i}.key|value"]
    return {
        "inputs": inputs,
        "outputs": ["logits", "present.{i}.key|value"],
        "kvCache": result.kv_cache,
        "eosTokenId": result.eos_token_id,
        "contextLength": result.context_length,
        "parityPrompts": result.prompts,
        "greedyMatch": result.greedy_match,
        "maxAbsLogitDiff": {"fp32": result.max_diff_fp32, "int8": result.max_diff_int8},
        "valPerplexity": {k: (v if math.isfinite(v) else None) for k, v in result.perplexity.items()},
    }


def publish_lm(
    job: JobDocument,
    result: LmExportResult,
    data: LoadedLmData,
    decision: Int8Decision,
    train_metrics: dict[str, float],
    token: str | None = None,
) -> tuple[Manifest, str]:
    """Upload ``hf/`` and ``onnx/`` into a new publication folder, then write manifest.json last.

    The shared step (``publish.publish_folder``): server-side encryption and the store's
    outages waited out as for every task (``spec.artifacts.encryption`` is refused for this
    task before training, so no file is encrypted here)."""

    def build(files: list[FileEntry], root: str) -> Manifest:
        return build_lm_manifest(job, result, data, decision, files, root, train_metrics)

    return publish_folder(job, result.out_dir, build, folders=("hf", "onnx"), token=token)
