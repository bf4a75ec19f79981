"""The manifest of a sentence-embedding artifact set, and its publication.

``publish_embedding`` hands the export's folder to ``publish.publish_folder`` (every file
hashed, uploaded into a fresh publication folder, encrypted when asked, the store's
outages waited out, manifest.json written last) with :func:`build_embedding_manifest`
as the manifest: ``task: sentence-embedding``, the variants (int8 accepted or not by
``gate.int8_cosine_decision``; bf16, OpenVINO on fp32's file, by
``gate.bf16_cosine_decision``), the tokenizer, lineage, and an ``embedding`` block (vector
size, output name, pooling, and each variant's cosine similarity to PyTorch and recall@1
/ MRR on the validation pairs), with the same figures flat in ``metrics``.
"""

from __future__ import annotations

from typing import Any

from rayrelay_core.runs import FileEntry, JobDocument, Manifest, Parity, TokenizerInfo, VariantInfo
from rayrelay_core.store import join
from rayrelay_workloads.embedding.data import LoadedPairs
from rayrelay_workloads.embedding.export import FP32_MIN_COSINE, OUTPUT, EmbeddingExportResult
from rayrelay_workloads.embedding.gate import bf16_cosine_decision
from rayrelay_workloads.embedding.objective import METRIC
from rayrelay_workloads.publish import bf16_info, lineage_of, onnx_variants, publish_folder, timestamp
from rayrelay_workloads.quality import Int8Decision
from rayrelay_workloads.storewait import StoreWait

TASK = "sentence-embedding"


def embedding_metrics(result: EmbeddingExportResult, train_metrics: dict[str, Any]) -> dict[str, float]:
    """The manifest's flat metrics: the export's timings, each variant's figures, the best checkpoint's."""
    metrics = {k: float(v) for k, v in result.metrics.items()}
    for name in result.recall_at_1:
        metrics[f"recall_at_1_{name}"] = result.recall_at_1[name]
        metrics[f"mrr_{name}"] = result.mrr[name]
    for name in result.cosine_min:
        metrics[f"cosine_min_{name}"] = round(result.cosine_min[name], 6)
        metrics[f"cosine_mean_{name}"] = round(result.cosine_mean[name], 6)
    for key in (METRIC, "val_mrr", "loss"):
        if isinstance(train_metrics.get(key), int | float):
            metrics[f"train_best_{key}"] = float(train_metrics[key])
    return metrics


def embedding_variants(
    job: JobDocument, result: EmbeddingExportResult, decision: Int8Decision, files: list[FileEntry], root: str
) -> dict[str, VariantInfo]:
    """PyTorch, fp32, int8 as its gate decided, and bf16 (fp32's file, run by OpenVINO) when the
    export measured it or says why not (``export.bf16: false`` lists none)."""
    variants = onnx_variants(root, files, result.fp32_file, result.int8_file, decision)
    if result.bf16 is None and not result.bf16_missing:
        return variants
    bf16 = bf16_cosine_decision(job.spec.quality_gate, result.cosine_min.get("bf16"), result.bf16_missing)
    fp32 = variants["fp32"]
    variants["bf16"] = bf16_info(result.bf16, bf16, fp32.file, fp32.size, logits=False)
    return variants


def embedding_block(result: EmbeddingExportResult) -> dict[str, Any]:
    return {
        "dimension": result.dimension,
        "output": OUTPUT,
        "pooling": "mean",
        "normalized": True,
        "cosineMin": result.cosine_min,
        "cosineMean": result.cosine_mean,
        "fp32MinCosineRequired": FP32_MIN_COSINE,
        "recallAt1": result.recall_at_1,
        "mrr": result.mrr,
        "validationPairs": result.pairs,
    }


def build_embedding_manifest(
    job: JobDocument,
    result: EmbeddingExportResult,
    data: LoadedPairs,
    decision: Int8Decision,
    train_metrics: dict[str, Any],
    files: list[FileEntry],
    root: str,
) -> Manifest:
    spec = job.spec
    return Manifest(
        run_id=job.run_id,
        created_at=timestamp(),
        files=files,
        variants=embedding_variants(job, result, decision, files, root),
        recommended_variant=decision.recommended_variant,
        task=TASK,
        embedding=embedding_block(result),
        # Parity here is cosine, not logits: fp32 passed FP32_MIN_COSINE on every text (else no publish).
        parity=Parity(tolerance=round(1 - FP32_MIN_COSINE, 9), passed=True, samples=result.texts),
        labels=[],
        tokenizer=TokenizerInfo(
            path=join(root, "hf"),
            max_seq_length=spec.hyperparameters.max_seq_length,
            model_input_names=result.input_names,
            lower_case=result.lower_case,
        ),
        lineage=lineage_of(job, data),
        metrics=embedding_metrics(result, train_metrics),
    )


def publish_embedding(
    job: JobDocument,
    result: EmbeddingExportResult,
    data: LoadedPairs,
    decision: Int8Decision,
    train_metrics: dict[str, Any],
    wait: StoreWait | None = None,
) -> tuple[Manifest, str]:
    """Upload ``result.out_dir``'s ``hf/`` and ``onnx/``, then this task's manifest.json (its URI)."""

    def build(files: list[FileEntry], root: str) -> Manifest:
        return build_embedding_manifest(job, result, data, decision, train_metrics, files, root)

    return publish_folder(job, result.out_dir, build, wait=wait)
