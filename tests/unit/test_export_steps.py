"""Unit tests of export's measurements (rayrelay_workloads.export_checks): timing, fused choice, parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayrelay_workloads.export_checks import (
    ParityError,
    ParityFigures,
    check_parity,
    fused_is_faster,
    parity,
    time_ms,
)


class FakeClock:
    """Each call of the timed function takes the next of ``durations`` seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        if self.calls > 2:  # the two warm-up calls are not timed
            self.now += self.durations.pop(0)


def test_time_ms_is_the_median_after_two_warmups() -> None:
    clock = FakeClock([0.010, 0.500, 0.012, 0.011, 0.013])
    assert time_ms(clock.run, repeats=5, clock=clock) == 12.0  # one slow outlier does not count
    assert clock.calls == 7 and clock.durations == []


def test_fused_graph_is_served_only_when_measurably_faster() -> None:
    assert fused_is_faster(90.0, 100.0)
    assert not fused_is_faster(98.0, 100.0)  # within the 3 % noise margin
    assert not fused_is_faster(110.0, 100.0)
    assert fused_is_faster(98.0, 100.0, min_gain=0.01)


def test_parity_figures() -> None:
    pytorch = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.5], [0.2, 0.1]])
    fp32 = pytorch + np.array([[0.001, 0.0], [0.0, -0.002], [0.0, 0.0], [0.0, 0.0]])
    int8 = pytorch + np.array([[0.0, 0.0], [0.0, 0.0], [-0.3, 0.3], [0.05, 0.0]])  # row 2 flips
    target = np.array([0, 1, 0, 1])
    figures = parity({"pytorch": pytorch, "fp32": fp32, "int8": int8}, target)
    assert figures.accuracy == {"pytorch": 0.75, "fp32": 0.75, "int8": 0.5}
    assert figures.max_diff_fp32 == pytest.approx(0.002)
    assert figures.max_diff_int8 == pytest.approx(0.3)
    assert figures.samples == 4
    without_int8 = parity({"pytorch": pytorch, "fp32": fp32}, target)
    assert without_int8.max_diff_int8 is None and set(without_int8.accuracy) == {"pytorch", "fp32"}


def test_parity_refuses_logits_of_other_rows() -> None:
    with pytest.raises(ValueError, match=r"fp32 logits have shape \(3, 2\), PyTorch's \(4, 2\)"):
        parity({"pytorch": np.zeros((4, 2)), "fp32": np.zeros((3, 2))}, np.zeros(4))


def test_check_parity_against_the_tolerance() -> None:
    check_parity(ParityFigures({}, 0.01, None, 4), tolerance=0.01)  # at the limit: accepted
    with pytest.raises(ParityError) as err:
        check_parity(ParityFigures({}, 0.0123, 0.5, 4), tolerance=0.01)
    assert str(err.value) == (
        "ONNX fp32 logits differ from PyTorch by up to 0.0123 on the validation set "
        "(export.parityTolerance is 0.01)"
    )


# ------------------------------------------------------------------ the whole export, no Ray


def test_export_all_on_a_tiny_checkpoint(tiny_model: str, tmp_path: Path) -> None:
    """Export, optimise, quantise, time and compare a tiny BERT: the files and figures publish needs."""
    from rayrelay_core.api import ExportSpec
    from rayrelay_workloads.data import Example
    from rayrelay_workloads.export import export_all

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(tiny_model, target_is_directory=True)  # a checkpoint's layout
    validation = [Example(f"text number {i} " * (i % 4 + 1), "ab"[i % 2], i + 1) for i in range(20)]
    stages: list[str] = []
    result = export_all(
        checkpoint,
        tiny_model,
        tmp_path / "out",
        ExportSpec.model_validate({"optimize": True, "quantize": "int8", "bf16": True}),
        max_len=32,
        validation=validation,
        labels=["a", "b"],
        threads=1,
        bench_repeats=1,
        on_stage=stages.append,
    )
    out = tmp_path / "out"
    assert stages == ["Optimizing"]
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["model.int8.onnx", "model.onnx"]
    assert (out / "hf" / "config.json").is_file() and (out / "hf" / "tokenizer_config.json").is_file()
    assert result.fp32_file == "onnx/model.onnx" and result.int8_file == "onnx/model.int8.onnx"
    # bf16 (export.bf16: true): OpenVINO on the fp32 graph (openvino_runtime), measured like every
    # variant, emulated on a host without bf16 instructions.
    assert set(result.accuracy) == {"pytorch", "fp32", "int8", "bf16"} and result.samples == 20
    assert result.max_diff_fp32 < 1e-3 and result.max_diff_int8 is not None
    assert result.accuracy["fp32"] == result.accuracy["pytorch"]
    assert result.input_names[:2] == ["input_ids", "attention_mask"]
    for key in ("pytorch_ms", "onnx_plain_ms", "onnx_fused_ms", "onnx_fp32_ms", "onnx_int8_ms"):
        assert result.metrics[key] > 0, key
    assert result.metrics["onnx_fused_served"] == float(result.fused_used)
    assert result.metrics["bench_batch"] == 8 and result.metrics["bench_seq_len"] == 32
    # The bf16 record says what ran: real bf16 on a CPU with bf16 instructions, else OpenVINO's
    # emulation (same numerics, not timed). Either way its logits are bf16's, not fp32's.
    from rayrelay_workloads.openvino_runtime import capability

    cap = capability()
    ran = "bf16" if cap.hardware_bf16 else "bf16-emulated"
    assert result.bf16 is not None and result.bf16_missing is None
    assert result.bf16.runtime == "openvino" and result.bf16.measured == f"openvino {cap.version}, {ran}"
    assert result.metrics["bf16_emulated"] == float(not cap.hardware_bf16)
    assert ("openvino_bf16_ms" in result.metrics) == cap.hardware_bf16
    assert 0 < result.bf16.max_diff_fp32 < 0.5 and result.bf16.max_diff_pytorch > 0
    assert 0.8 <= result.bf16.labels_equal_fp32 <= 1.0
    assert result.metrics["max_abs_logit_diff_bf16"] == result.bf16.max_diff_pytorch


def test_export_without_openvino_records_bf16_as_not_measured(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export image without OpenVINO (the probe stubbed to say so) publishes no bf16 figure,
    and the gate never accepts a variant nobody measured."""
    from rayrelay_core.api import ExportSpec, QualityGate
    from rayrelay_workloads import openvino_runtime
    from rayrelay_workloads.data import Example
    from rayrelay_workloads.export import export_all
    from rayrelay_workloads.quality import bf16_decision

    missing = openvino_runtime.Capability(False, error="ModuleNotFoundError: No module named 'openvino'")
    monkeypatch.setattr(openvino_runtime, "capability", lambda: missing)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(tiny_model, target_is_directory=True)
    validation = [Example(f"text {i}", "ab"[i % 2], i + 1) for i in range(8)]
    spec = ExportSpec.model_validate({"optimize": False, "quantize": "none", "bf16": True})
    result = export_all(checkpoint, tiny_model, tmp_path / "out", spec, 16, validation, ["a", "b"], 1, 1)
    assert result.bf16 is None and "bf16" not in result.accuracy
    assert result.bf16_missing is not None and "OpenVINO is not installed" in result.bf16_missing
    decision = bf16_decision(QualityGate(), result.accuracy["fp32"], None, result.bf16_missing)
    assert not decision.accepted and "not measured" in (decision.reason or "")


def test_attention_is_fused_on_what_transformers_exports(tiny_model: str, tmp_path: Path) -> None:
    """prepare_for_fusion lets onnxruntime's optimizer fuse Attention (eager export: Mul scale, -1 heads)."""
    from transformers import AutoTokenizer

    from rayrelay_workloads.export import export_onnx, load_checkpoint_model, optimize_onnx

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(tiny_model, target_is_directory=True)
    model = load_checkpoint_model(checkpoint)
    plain = tmp_path / "plain.onnx"
    export_onnx(model, AutoTokenizer.from_pretrained(tiny_model), plain, 17, 32)
    counts = optimize_onnx(plain, tmp_path / "fused.onnx", model.config)
    assert counts.get("Attention") == model.config.num_hidden_layers, counts


def test_export_bf16_false_publishes_no_bf16_variant(tiny_model: str, tmp_path: Path) -> None:
    """``export.bf16: false`` (an export host without bf16 instructions would emulate it, slowly):
    no OpenVINO pass, no figure, and publish lists no bf16 variant."""
    from rayrelay_core.api import ExportSpec
    from rayrelay_workloads.data import Example
    from rayrelay_workloads.export import export_all

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(tiny_model, target_is_directory=True)
    validation = [Example(f"text {i}", "ab"[i % 2], i + 1) for i in range(8)]
    spec = ExportSpec.model_validate({"optimize": False, "quantize": "none", "bf16": False})
    result = export_all(checkpoint, tiny_model, tmp_path / "out", spec, 16, validation, ["a", "b"], 1, 1)
    assert result.bf16 is None and result.bf16_missing is None
    assert set(result.accuracy) == {"pytorch", "fp32"} and "bf16_emulated" not in result.metrics


def test_export_bf16_unset_measures_only_where_the_host_has_bf16(
    tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export.bf16`` unset: the CPU flags decide. Here the flags are read from a cpuinfo text
    (standing in for /proc/cpuinfo on the two kinds of host), and the export is the real one."""
    from rayrelay_core.api import ExportSpec
    from rayrelay_workloads import export, hardware
    from rayrelay_workloads.data import Example

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model").symlink_to(tiny_model, target_is_directory=True)
    validation = [Example(f"text {i}", "ab"[i % 2], i + 1) for i in range(8)]
    spec = ExportSpec.model_validate({"optimize": False, "quantize": "none"})
    assert spec.bf16 is None
    real_flags = hardware.cpu_flags
    for flags, measured in (
        ("avx2 fma avx512f avx512_vnni", False),
        ("avx2 avx512f amx_tile amx_bf16", True),
    ):
        monkeypatch.setattr(hardware, "cpu_flags", lambda cpuinfo=None, f=flags: real_flags(f"flags : {f}"))
        result = export.export_all(
            checkpoint, tiny_model, tmp_path / flags.split()[-1], spec, 16, validation, ["a", "b"], 1, 1
        )
        if measured:
            assert result.bf16 is not None and result.bf16_missing is None and "bf16" in result.accuracy
        else:
            assert result.bf16 is None and "bf16" not in result.accuracy
            assert result.bf16_missing is not None and "no bf16 instructions" in result.bf16_missing
            assert "export.bf16" in result.bf16_missing
