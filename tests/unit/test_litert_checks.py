"""Issue 29: the pure parts of the LiteRT target: parity naming the variant, finding the converter.

The conversion itself runs in tests/integration/test_export_tflite.py; here the
figures are literal logits, so each check can be made to fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayrelay_workloads.export_checks import ParityError, ParityFigures, check_parity, parity
from rayrelay_workloads.litert import LiteRTUnavailable, converter_error, litert_python

REFERENCE = np.array([[0.5, -0.5], [1.0, 2.0], [0.0, 0.25]], dtype=np.float32)
TARGET = np.array([0, 1, 1])


def figures_with(**shifts: float) -> ParityFigures:
    logits = {"pytorch": REFERENCE, "fp32": REFERENCE + 1e-5}
    logits |= {name: REFERENCE + shift for name, shift in shifts.items()}
    return parity(logits, TARGET)


def test_fp32_tflite_beyond_tolerance_is_named_with_its_difference() -> None:
    figures = figures_with(**{"fp32-tflite": 0.02, "int8-tflite": 0.3})
    with pytest.raises(
        ParityError, match=r"LiteRT fp32 \(fp32-tflite\) logits differ from PyTorch by up to 0\.02 "
    ):
        check_parity(figures, 1e-3)


def test_int8_tflite_is_judged_by_accuracy_not_parity() -> None:
    figures = figures_with(**{"fp32-tflite": 1e-6, "int8-tflite": 0.3})
    check_parity(figures, 1e-3)
    assert figures.max_diff["int8-tflite"] == pytest.approx(0.3, abs=1e-6)
    assert figures.accuracy["fp32-tflite"] == figures.accuracy["pytorch"]


def test_onnx_fp32_is_checked_first_and_named_as_before() -> None:
    logits = {"pytorch": REFERENCE, "fp32": REFERENCE + 0.5, "fp32-tflite": REFERENCE + 0.9}
    with pytest.raises(ParityError, match=r"^ONNX fp32 logits differ from PyTorch by up to 0\.5 "):
        check_parity(parity(logits, TARGET), 1e-3)


def test_no_tflite_variant_no_tflite_check() -> None:
    check_parity(figures_with(), 1e-3)


def test_litert_python_from_the_environment_or_how_to_make_it(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("")
    assert litert_python({"RAYRELAY_LITERT_PYTHON": str(python)}) == python
    with pytest.raises(LiteRTUnavailable, match=r"make litert.*RAYRELAY_LITERT_PYTHON"):
        litert_python({"RAYRELAY_LITERT_PYTHON": str(tmp_path / "missing")})


def test_converter_error_is_the_exception_line_not_the_log() -> None:
    stderr = (
        "I0000 flatbuffer_export.cc:4410] Estimated count of arithmetic ops\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n'
        "RuntimeError: Found <class 'DynamicCache'> in output, which is not a known type.\n"
        "(00:01) [ FAIL] LiteRT-Torch Convert\n"
    )
    assert (
        converter_error(stderr)
        == "RuntimeError: Found <class 'DynamicCache'> in output, which is not a known type."
    )
    assert converter_error("") == "no output"
