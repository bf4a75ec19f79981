"""The sentence-embedding quality gate: pure decisions on measured retrieval and parity figures.

``qualityGate.minRecallAt1`` and ``minMrr`` judge the best checkpoint's validation pairs
(after training, and again on the exported PyTorch reference): a miss fails the run with
``QualityGateError`` (reason ``QualityGateFailed``) naming the figure and by how much.
``qualityGate.minInt8Cosine`` judges int8: its smallest cosine similarity to PyTorch's
vector over the validation texts; below it int8 is rejected and fp32 is served
(``quality.Int8Decision``, as classification's int8 gate decides). ``qualityGate.minBf16Cosine``
judges bf16 the same way; a bf16 the export did not measure is never accepted, and an
accepted one is served only where ``variant: auto`` times it fastest (classification's rule).
"""

from __future__ import annotations

from rayrelay_core.api import QualityGate
from rayrelay_workloads.quality import Int8Decision, QualityGateError, VariantDecision


def check_retrieval(gate: QualityGate, recall_at_1: float | None, mrr: float | None, what: str) -> None:
    """QualityGateError when ``what``'s recall@1 or MRR is below the gate's minimum (None: not measured)."""
    for value, minimum, name, field in (
        (recall_at_1, gate.min_recall_at1, "recall@1", "minRecallAt1"),
        (mrr, gate.min_mrr, "MRR", "minMrr"),
    ):
        if minimum is None:
            continue
        if value is None or value < minimum:
            shown = "not measured" if value is None else f"{value:.3f}"
            by = f" by {minimum - value:.3f}" if value is not None else ""
            raise QualityGateError(
                f"{what} {name} on the validation pairs {shown} is below qualityGate.{field} {minimum:g}{by}"
            )


def int8_cosine_decision(gate: QualityGate, int8_min_cosine: float | None) -> Int8Decision:
    """Accept int8 unless its smallest cosine to PyTorch is below qualityGate.minInt8Cosine."""
    if int8_min_cosine is None:
        return Int8Decision(False, "no int8 model (export.quantize: none)", "fp32")
    limit = gate.min_int8_cosine
    if limit is not None and int8_min_cosine < limit:
        return Int8Decision(
            False,
            f"int8 embeddings reach only cosine {int8_min_cosine:.4f} to PyTorch's, below "
            f"qualityGate.minInt8Cosine {limit:g}",
            "fp32",
        )
    return Int8Decision(True, None, "int8")


def bf16_cosine_decision(
    gate: QualityGate, bf16_min_cosine: float | None, missing: str | None = None
) -> VariantDecision:
    """Accept bf16 unless it was not measured (``missing`` says why) or its smallest cosine to
    PyTorch is below qualityGate.minBf16Cosine."""
    if bf16_min_cosine is None:
        return VariantDecision(False, f"bf16 not measured at export: {missing or 'no figure'}")
    limit = gate.min_bf16_cosine
    if limit is not None and bf16_min_cosine < limit:
        return VariantDecision(
            False,
            f"bf16 embeddings reach only cosine {bf16_min_cosine:.4f} to PyTorch's, below "
            f"qualityGate.minBf16Cosine {limit:g}",
        )
    return VariantDecision(True, None)
