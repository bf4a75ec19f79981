"""Section 1 of the performance page: the inference kernel grid and what ``variant: auto`` serves."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, ratio, table


def kernel_section(k: dict[str, Any]) -> list[str]:
    s = k["settings"]
    out = [
        "## 1. Inference kernel",
        "",
        f"One fine-tuned MiniLM (run `{s['model_run']}`), {s['threads']} threads for every contender, "
        f"inputs padded to exactly the sequence length; {s['repetitions']} interleaved repetitions of "
        f"~{s['timed_seconds_per_contender_shape_rep']} s per contender and shape after a warm-up call. "
        "Latency percentiles pool all calls; throughput is the median over repetitions. "
        "`GFLOP/s` = analytic model FLOPs (≈ 2 × encoder params × tokens + attention) / p50 latency; "
        "`% peak` = FLOPs / the best call, over the best fp32 GEMM sample below (best against best, "
        "the two least disturbed by other load). int8 runs on VNNI int8 dot products, so it can pass "
        "the fp32 peak. The onnxruntime rows keep onnxruntime's default of spinning idle threads, which "
        "a replica turns off: on a loaded machine they suffer most (at load 9-14 onnxruntime int8 "
        "took 1,186 ms against OpenVINO fp32's 624 ms at 8×128; without spinning, at load 4.5-6.6, the two "
        "tied). Which variant `auto` serves on each host kind, and the opt-in `fp32-openvino` "
        'candidate: docs/operator.md, "Which variant a replica serves".',
        "",
    ]
    rows = []
    for r in k["grid"]:
        rows.append(
            [
                f"{r['batch']}×{r['seq']}",
                r["contender"],
                num(r["p50_ms"]),
                num(r["p99_ms"]),
                num(r["throughput_seq_per_s"]),
                ratio(r["speedup_vs_pytorch"]),
                num(r["achieved_gflops_p50"]),
                num(100 * r["fraction_of_gemm_peak"], 0, "%"),
            ]
        )
    out += table(
        [
            "batch×seq",
            "contender",
            "p50 ms",
            "p99 ms",
            "seq/s",
            "speed-up vs PyTorch",
            "GFLOP/s at p50",
            "% peak",
        ],
        rows,
    )
    g = k["gemm"]
    out += [
        f"fp32 GEMM {g['n']}³ in the same process with the same threads, {g['samples']} samples through "
        f"the run: best torch {num(g['torch_best'])}, numpy {num(g['numpy_best'])}, onnxruntime MatMul "
        f"{num(g.get('onnxruntime_best'))} GFLOP/s (medians {num(g['torch_median'])} / {num(g['numpy_median'])} / "
        f"{num(g.get('onnxruntime_median'))}); the peak used is the best of all, {num(g['peak'])} GFLOP/s. CPU flags: "
        f"{', '.join(k.get('cpu_flags', [])) or 'n/a'}.",
        "",
        "Accuracy on the validation set (600 texts) and the largest logit difference from PyTorch:",
        "",
    ]
    out += table(
        ["contender", "accuracy", "max |Δlogit| vs PyTorch"],
        [
            [c, f"{k['accuracy'][c]:.4f}", f"{k['max_abs_logit_diff_vs_pytorch'][c]:.2e}"]
            for c in k.get("contenders")
            or ("pytorch", "ort-fp32", "ort-fp32-fused", "ort-int8", "ortfmt-fp32", "ortfmt-int8")
            if c in k["accuracy"]
        ],
    )
    out += _auto_lines(k)
    ops = k["op_counts"]

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "none"

    out += [
        "**Fusion.** Op types in each graph (of Attention, MultiHeadAttention, SkipLayerNormalization, "
        "EmbedLayerNormalization, BiasGelu, FastGelu, Gelu, LayerNormalization):",
        "",
        f"- plain export: {fmt(ops['plain_graph'])}",
        f"- plain export after onnxruntime's own session optimizer (`ORT_ENABLE_ALL`): "
        f"{fmt(ops['plain_after_session_optimizer'])}",
        f"- transformer optimizer (`optimize_onnx`): {fmt(ops['fused_graph'])}",
        f"- transformer optimizer, then the session optimizer: {fmt(ops['fused_after_session_optimizer'])}",
        "",
        "File sizes (MiB; `.ort` = onnxruntime's mobile format, `export.targets: ort`): "
        + ", ".join(f"{name} {mib}" for name, mib in (ops.get("files_mib") or {}).items()),
        "",
        f"Attention fused: **{'yes' if k['attention_fused'] else 'no'}**. "
        + (
            "Without an Attention node the transformer optimizer only pre-applies LayerNorm/GELU "
            "fusions that onnxruntime's session optimizer already applies to the plain graph at load "
            "time, so the fused graph cannot be expected to be faster than the plain one, and here it "
            "is not (see the table); `rayrelay_workloads.export` therefore serves the plain graph unless "
            "the fused one measures faster."
            if not k["attention_fused"]
            else "The attention subgraph is fused into one kernel."
        ),
        "",
    ]
    return out


def _auto_lines(k: dict[str, Any]) -> list[str]:
    """The kernel section's rows left out on this host and what ``variant: auto`` would serve here."""
    lines: list[str] = []
    for contender, why in sorted((k.get("unavailable") or {}).items()):
        lines.append(f"- `{contender}` not run on this host: {why}.")
    auto = k.get("auto")
    if auto:
        lines.append(
            f"- **`variant: auto` would serve `{auto['variant']}`** here ({auto['runtime']}, "
            f"{auto['precision']}; instruction set {k.get('instruction_set', '?')}): {auto['reason']} "
            f"(the p50s at {auto['timed_shape']}, fed to the replica's own rule). At 8×128 it is "
            f"{ratio(auto['speedup_vs_pytorch_8x128'])} PyTorch and {auto['vs_fastest_8x128']:.2f}× the "
            f"fastest contender (`{auto['fastest_8x128']}`); accuracy {auto['accuracy']:.4f}, "
            f"{100 * auto['accuracy_vs_fp32']:+.1f} pt vs onnxruntime fp32."
        )
    ov = k.get("auto_with_fp32_openvino")
    if ov:
        lines.append(
            f"- A replica that also offers `fp32-openvino` (OpenVINO running the fp32 file in fp32, "
            f"`RAYRELAY_OPENVINO_FP32=1`, off by default) would serve `{ov['variant']}`: {ov['reason']}; "
            f"at 8×128 {ratio(ov['speedup_vs_pytorch_8x128'])} PyTorch and {ov['vs_fastest_8x128']:.2f}× "
            f"the fastest contender."
        )
    return [*lines, ""] if lines else []
