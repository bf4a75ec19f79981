"""The measurements ``export.py`` makes of exported models: timing, the fused-graph choice, parity.

Pure (numpy and a clock that can be passed in; no torch, no onnxruntime), so
the unit tests check the figures the manifest records:

- :func:`time_ms`: the median wall time of a call, after warm-up calls;
- :func:`fused_is_faster`: whether the optimizer's fused graph is served (only
  when measurably faster than the plain export, never on noise);
- :func:`parity`: the accuracy of every variant and the largest |logit
  difference| of ONNX fp32 and int8 against PyTorch, on the same rows;
- :func:`check_parity`: :class:`ParityError` when an fp32 variant (ONNX fp32, and
  LiteRT's ``fp32-tflite`` with ``export.targets`` tflite) is beyond the tolerance,
  naming the variant and the difference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

# Prefer a pre-fused graph only when it beats the plain one by more than noise.
FUSED_MIN_GAIN = 0.03
WARMUP_CALLS = 2


class ParityError(RuntimeError):
    """An fp32 variant (ONNX or LiteRT) disagrees with PyTorch beyond the tolerance."""


def time_ms(fn: Callable[[], object], repeats: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls, after two warm-up calls."""
    for _ in range(WARMUP_CALLS):
        fn()
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append((clock() - start) * 1000)
    return round(statistics.median(samples), 3)


def fused_is_faster(fused_ms: float, plain_ms: float, min_gain: float = FUSED_MIN_GAIN) -> bool:
    return fused_ms < plain_ms * (1 - min_gain)


@dataclass
class ParityFigures:
    accuracy: dict[str, float]  # per variant: pytorch, fp32, int8 (when quantised)
    max_diff_fp32: float
    max_diff_int8: float | None
    samples: int
    # Every variant's largest |logit difference| to PyTorch (fp32, int8, fp32-ort, ...).
    max_diff: dict[str, float] = field(default_factory=dict)


def parity(logits: Mapping[str, np.ndarray], target: np.ndarray) -> ParityFigures:
    """Accuracy of each variant's logits and their distance to PyTorch's (``logits["pytorch"]``)."""
    reference = logits["pytorch"]
    for name, values in logits.items():
        if values.shape != reference.shape:
            raise ValueError(f"{name} logits have shape {values.shape}, PyTorch's {reference.shape}")
    accuracy = {k: round(float((v.argmax(-1) == target).mean()), 6) for k, v in logits.items()}
    max_fp32 = float(np.abs(logits["fp32"] - reference).max())
    max_int8 = float(np.abs(logits["int8"] - reference).max()) if "int8" in logits else None
    max_diff = {k: float(np.abs(v - reference).max()) for k, v in logits.items() if k != "pytorch"}
    return ParityFigures(accuracy, max_fp32, max_int8, len(target), max_diff)


# The fp32 variants held to export.parityTolerance, and how a failure names them.
PARITY_CHECKED = {"fp32": "ONNX fp32", "fp32-tflite": "LiteRT fp32 (fp32-tflite)"}


def check_parity(figures: ParityFigures, tolerance: float) -> None:
    """ParityError naming the first fp32 variant (ONNX, then LiteRT) beyond the tolerance."""
    for name, label in PARITY_CHECKED.items():
        diff = figures.max_diff_fp32 if name == "fp32" else figures.max_diff.get(name)
        if diff is not None and diff > tolerance:
            raise ParityError(
                f"{label} logits differ from PyTorch by up to {diff:.3g} on the validation "
                f"set (export.parityTolerance is {tolerance:g})"
            )
