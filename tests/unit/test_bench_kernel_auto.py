"""The kernel bench's ``auto`` row: which variant ``variant: auto`` would serve on the host.

``bench.kernel.auto_choice`` feeds the measured p50s to the replica's own rule
(``rayrelay_core.variants.choose``) as a fake timing source; here the p50s are the
figures measured on an AMX host (issue 31) and on this project's AVX-512 VNNI host,
so the test checks the rule's outcome and the rendered report line, not a timing.
"""

from __future__ import annotations

from typing import Any

from bench.kernel import auto_choice
from bench.sections.kernel import _auto_lines
from rayrelay_core.runs import Lineage, Manifest, Parity, TokenizerInfo, VariantInfo


def manifest(bf16: VariantInfo | None = None) -> dict[str, Any]:
    variants = {
        "pytorch": VariantInfo(),
        "fp32": VariantInfo(file="onnx/model.onnx"),
        "int8": VariantInfo(file="onnx/model.int8.onnx"),
    }
    if bf16 is not None:
        variants["bf16"] = bf16
    m = Manifest(
        run_id="run-bench",
        created_at="2026-01-01T00:00:00Z",
        files=[],
        variants=variants,
        recommended_variant="int8",
        parity=Parity(tolerance=0.01, passed=True),
        labels=["a", "b"],
        tokenizer=TokenizerInfo(max_seq_length=128),
        lineage=Lineage(spec_hash="0" * 64, base_model="m", package_version="0"),
    )
    return m.model_dump(by_alias=True)


AMX = {"pytorch": 0.120, "ort-fp32": 0.1255, "ort-int8": 0.0645, "ov-fp32": 0.11, "ov-bf16": 0.0302}


def test_auto_serves_bf16_where_it_is_timed_and_fastest() -> None:
    choice = auto_choice(manifest(), AMX, {})  # a run from before the bf16 variant: bf16 added
    assert (choice.variant, choice.runtime) == ("bf16", "openvino")
    refused = VariantInfo(file="onnx/model.onnx", runtime="openvino", accepted=False, reason="drop")
    assert auto_choice(manifest(refused), AMX, {}).variant == "int8"


def test_auto_leaves_bf16_out_where_the_cpu_lacks_it() -> None:
    why = "this CPU has no bf16 instructions"
    p50 = {k: v for k, v in AMX.items() if k != "ov-bf16"}
    bf16 = VariantInfo(file="onnx/model.onnx", runtime="openvino", accuracy=0.99)
    choice = auto_choice(manifest(bf16), p50, {"ov-bf16": why})
    assert choice.variant == "int8" and choice.unavailable == {"bf16": why}
    older = auto_choice(manifest(), p50, {"ov-bf16": why})  # a run from before the bf16 variant
    assert older.variant == "int8" and older.reason.endswith(f"; bf16 not timed: {why}")


def test_the_report_says_what_auto_serves_and_what_was_left_out() -> None:
    doc = {
        "instruction_set": "avx512_vnni",
        "unavailable": {"ov-bf16": "this CPU has no bf16 instructions"},
        "auto": {
            "variant": "int8",
            "runtime": "onnxruntime",
            "precision": "int8",
            "reason": "auto: int8 fastest on avx512_vnni (CPUExecutionProvider): ...",
            "timed_shape": "8x32",
            "speedup_vs_pytorch_8x128": 3.9,
            "vs_fastest_8x128": 1.0,
            "fastest_8x128": "ort-int8",
            "accuracy": 0.985,
            "accuracy_vs_fp32": -0.005,
        },
    }
    text = "\n".join(_auto_lines(doc))
    assert "`ov-bf16` not run on this host: this CPU has no bf16 instructions." in text
    assert "would serve `int8`** here (onnxruntime, int8; instruction set avx512_vnni)" in text
    assert "-0.5 pt vs onnxruntime fp32" in text and "1.00× the fastest contender (`ort-int8`)" in text


def test_the_bench_says_what_a_replica_offering_fp32_openvino_would_serve() -> None:
    """``fp32-openvino`` (``ov-fp32``) counts only for a replica that offers it (off by default)."""
    why = "this CPU has no bf16 instructions"
    p50 = {"pytorch": 0.5, "ort-fp32": 0.7, "ort-int8": 0.429, "ov-fp32": 0.359}
    assert auto_choice(manifest(), p50, {"ov-bf16": why}).variant == "int8"
    offered = auto_choice(manifest(), p50, {"ov-bf16": why}, ("fp32-openvino",))
    assert (offered.variant, offered.runtime, offered.precision) == ("fp32-openvino", "openvino", "fp32")
    assert (
        auto_choice(manifest(), {**p50, "ov-fp32": 0.40}, {}, ("fp32-openvino",)).variant == "int8"
    )  # margin
    doc = {
        "auto_with_fp32_openvino": {
            "variant": "fp32-openvino",
            "reason": offered.reason,
            "speedup_vs_pytorch_8x128": 1.39,
            "vs_fastest_8x128": 1.0,
        }
    }
    text = "\n".join(_auto_lines(doc))
    assert (
        "offers `fp32-openvino`" in text
        and "would serve `fp32-openvino`: auto: fp32-openvino fastest" in text
    )
