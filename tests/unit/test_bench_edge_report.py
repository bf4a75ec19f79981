"""Issue 29: the ``edge`` section of docs/performance.md, rendered from a literal result document."""

from __future__ import annotations

from bench.edge import report_section

DOC = {
    "quick": True,
    "seq_len": 128,
    "threads": 2,
    "instruction_set": "avx512_vnni",
    "cpu_flags": ["avx2", "avx512f", "avx512_vnni"],
    "load_average_before": [1.0, 1.0, 1.0],
    "load_average_at_end": [2.0, 1.5, 1.0],
    "rows": {
        "pytorch fp32": {"variant": "pytorch", "mib": None, "accuracy": 0.9, "batch1_ms": 20.0},
        "litert int8": {
            "variant": "int8-tflite",
            "mib": 22.1,
            "accuracy": 0.89,
            "max_abs_logit_diff": 0.031,
            "batch1_ms": 7.5,
        },
    },
    "export_s": {"onnx": 70.0, "onnx+ort+tflite": 160.0},
    "tflite_stage_s": 80.0,
    "tflite_convert_s": 40.0,
    "tflite_quantize_s": 3.0,
}


def test_edge_section_states_flags_rows_and_export_cost() -> None:
    lines = report_section(DOC)
    text = "\n".join(lines)
    assert lines[0] == "## edge"
    assert "avx512_vnni (flags: avx2 avx512f avx512_vnni)" in text and "--quick" in text
    assert "| litert int8 | 22.1 | 0.89 | 3.10e-02 | 7.5 |" in lines
    assert "| pytorch fp32 | - | 0.9 | - | 20.0 |" in lines
    assert "targets [onnx] 70.0 s, [onnx, ort, tflite] 160.0 s (LiteRT step 80.0 s" in text
