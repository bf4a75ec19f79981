"""The quality gate: pure decisions on the measured accuracies (no I/O).

``pipeline.py`` calls :func:`check_min_accuracy` after training/export (a miss
fails the job with reason ``QualityGateFailed`` and a message naming the number
and by how much), :func:`int8_decision` to decide whether the int8 model is
accepted and :func:`bf16_decision` for the bf16 variant (OpenVINO in bf16);
``publish.py`` records the decisions in the manifest's variants and
``recommendedVariant``. A rejected variant is never served by ``variant: auto``
(``rayrelay_core.variants``) and refused when forced.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayrelay_core.api import QualityGate


class QualityGateError(RuntimeError):
    """The trained model misses qualityGate.minEvalAccuracy."""


@dataclass(frozen=True)
class Int8Decision:
    accepted: bool
    reason: str | None
    recommended_variant: str


def check_min_accuracy(gate: QualityGate, accuracy: float) -> None:
    """Raise QualityGateError when ``accuracy`` is below the gate's minimum."""
    minimum = gate.min_eval_accuracy
    if minimum is not None and accuracy < minimum:
        raise QualityGateError(
            f"validation accuracy {accuracy:.3f} is below qualityGate.minEvalAccuracy "
            f"{minimum:g} by {minimum - accuracy:.3f}"
        )


def int8_decision(gate: QualityGate, fp32_accuracy: float, int8_accuracy: float | None) -> Int8Decision:
    """Accept int8 unless it drops more than maxInt8AccuracyDrop below fp32."""
    if int8_accuracy is None:
        return Int8Decision(False, "no int8 model (export.quantize: none)", "fp32")
    limit = gate.max_int8_accuracy_drop
    drop = fp32_accuracy - int8_accuracy
    if limit is not None and drop > limit + 1e-12:
        return Int8Decision(
            False,
            f"int8 accuracy {int8_accuracy:.3f} is {drop:.3f} below fp32 {fp32_accuracy:.3f}, "
            f"more than qualityGate.maxInt8AccuracyDrop {limit:g}",
            "fp32",
        )
    return Int8Decision(True, None, "int8")


@dataclass(frozen=True)
class VariantDecision:
    accepted: bool
    reason: str | None


def bf16_decision(
    gate: QualityGate, fp32_accuracy: float, bf16_accuracy: float | None, missing: str | None = None
) -> VariantDecision:
    """Accept bf16 unless it was not measured or drops more than maxBf16AccuracyDrop below fp32.

    ``missing`` says why the export did not measure it (then it is never accepted: a variant
    whose accuracy nobody measured is not served)."""
    if bf16_accuracy is None:
        return VariantDecision(False, f"bf16 not measured at export: {missing or 'no figure'}")
    limit = gate.max_bf16_accuracy_drop
    drop = fp32_accuracy - bf16_accuracy
    if limit is not None and drop > limit + 1e-12:
        return VariantDecision(
            False,
            f"bf16 accuracy {bf16_accuracy:.3f} is {drop:.3f} below fp32 {fp32_accuracy:.3f}, "
            f"more than qualityGate.maxBf16AccuracyDrop {limit:g}",
        )
    return VariantDecision(True, None)
