"""The quality gate: pure decisions on the measured accuracies (no I/O).

``pipeline.py`` calls :func:`check_min_accuracy` after training/export (a miss
fails the job with reason ``QualityGateFailed`` and a message naming the number
and by how much) and :func:`int8_decision` to decide whether the int8 model is
accepted; ``publish.py`` records the decision in the manifest's variants and
``recommendedVariant``.
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
