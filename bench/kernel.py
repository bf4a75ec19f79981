"""Benchmark 1, inference kernel: one fine-tuned model, four runtimes, one process.

The model is the benchmark run's (``bench.model``). The ONNX variants are made
with the product's own functions (``rayrelay_workloads.export``):

- ``pytorch``: the ``hf/`` folder in transformers, eager mode, fp32
  (``from_pretrained`` defaults, i.e. what a user of transformers gets);
- ``ort-fp32``: ``export_onnx`` (torch.onnx, opset 17, dynamic axes), the
  plain graph; onnxruntime applies its own session-level fusions at load
  (``ORT_ENABLE_ALL``, the default);
- ``ort-fp32-fused``: ``optimize_onnx`` (onnxruntime's transformer optimizer,
  ``model_type="bert"``) on that graph; the fused op types found in it are
  reported, next to those the session optimizer produces from the plain graph;
- ``ort-int8``: ``quantize_int8`` (dynamic int8, ``quantize_dynamic``) of the
  plain graph, as the pipeline publishes it;
- ``ortfmt-fp32`` / ``ortfmt-int8``: ``convert_to_ort`` (``export.targets: ort``,
  onnxruntime's mobile format for the arm target, fixed optimisations baked in) of
  ``ort-fp32`` and ``ort-int8``, loaded from the ``.ort`` files; file sizes of all
  variants are in ``op_counts.files_mib``;
- ``ov-fp32`` / ``ov-bf16``: OpenVINO (``rayrelay_workloads.openvino_runtime``, what a
  replica serves the ``bf16`` variant with) reading the plain fp32 graph with an f32 /
  bf16 precision hint. ``ov-bf16`` runs only on a CPU with bf16 instructions (AMX,
  AVX-512 BF16): elsewhere OpenVINO emulates bf16 at ~20x fp32's time, which is no
  contender (``unavailable`` in the results says so; ``--emulated-bf16`` runs it anyway).
  Without OpenVINO installed both are listed as unavailable.

Every runtime x precision the host offers is a row. ``auto`` in the results is what
``variant: auto`` would serve on this host: ``rayrelay_core.variants.choose`` (the
replica's own rule, margin included) fed the p50 of each candidate at batch 8 x
sequence 32 (the shape nearest the replica's timing batch of 8 short texts) through
a fake timing source: int8 = ``ort-int8``, fp32 = ``ort-fp32``, bf16 = ``ov-bf16``,
with the candidates the run's manifest accepted (bf16 accepted when the bench measured
its accuracy, the gate's default). Its speed-up over PyTorch and its ratio to the
fastest contender are reported at 8 x 128 as well. ``auto_with_fp32_openvino`` is the
same for a replica that also offers fp32-openvino = ``ov-fp32`` (OpenVINO running the
fp32 file in fp32; ``RAYRELAY_OPENVINO_FP32=1``, off by default), side by side.

Every contender runs with 2 intra-op threads (``torch.set_num_threads`` /
``intra_op_num_threads``). For each batch x sequence shape (inputs: validation
texts tokenised and padded/truncated to exactly that length), the contenders
are interleaved: per repetition each runs ``calls`` timed calls after one
warm-up call; latency percentiles pool the calls of all repetitions, throughput
(sequences/s) is the median over repetitions. Accuracy: each contender on the
whole validation set (dynamic padding, up to 128 tokens). Peak: a 2048^3 fp32
GEMM (torch, numpy and a one-node onnxruntime MatMul, same threads), sampled at the start and after every
shape of the same run, the best sample taken; the model's achieved FLOP/s uses
an analytic count from the BERT config (see :func:`model_flops`), at the p50
and at the best call; the fraction of peak compares best with best (both the
least disturbed by the other load on this shared machine). int8 kernels use
VNNI int8 dot products, so their FLOP/s are not bounded by the fp32 GEMM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, THREADS, apply_env, log, median, percentile, ratio, write_result
from rayrelay_workloads.hardware import cpu_flags, instruction_set

apply_env()
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

ORT_CONTENDERS = ("pytorch", "ort-fp32", "ort-fp32-fused", "ort-int8", "ortfmt-fp32", "ortfmt-int8")
OV_CONTENDERS = ("ov-fp32", "ov-bf16")
# variant: auto's candidates and the contender that runs each the way a replica does.
AUTO_CONTENDERS = {"int8": "ort-int8", "fp32": "ort-fp32", "bf16": "ov-bf16", "fp32-openvino": "ov-fp32"}


def openvino_contenders(emulated_bf16: bool) -> tuple[list[str], dict[str, str]]:
    """The OpenVINO rows this host offers, and the others with the reason they are left out."""
    from rayrelay_workloads.openvino_runtime import capability

    cap = capability()
    if not cap.installed:
        return [], {c: f"OpenVINO is not installed ({cap.error})" for c in OV_CONTENDERS}
    why = cap.unavailable(allow_emulated=emulated_bf16)
    return (["ov-fp32", "ov-bf16"], {}) if why is None else (["ov-fp32"], {"ov-bf16": why})


def auto_choice(
    manifest: dict[str, Any],
    p50_s: dict[str, float],
    unavailable: dict[str, str],
    extra: tuple[str, ...] = (),
) -> Any:
    """What ``variant: auto`` would serve here: the replica's rule on the measured p50s (fake timing)."""
    from rayrelay_core import variants
    from rayrelay_core.runs import Manifest, VariantInfo

    m = Manifest.model_validate(manifest)
    if "bf16" not in m.variants and ("ov-bf16" in p50_s or "ov-bf16" in unavailable):
        # A run published before the bf16 variant: as the gate's default would list it.
        m.variants["bf16"] = VariantInfo(file=m.variants["fp32"].file, runtime="openvino")
    gone = {v: unavailable[c] for v, c in AUTO_CONTENDERS.items() if c in unavailable}

    def run(variant: str) -> float:
        return p50_s[AUTO_CONTENDERS[variant]]

    return variants.choose(
        m,
        variants.AUTO,
        lambda variant: p50_s[AUTO_CONTENDERS[variant]],
        run,
        isa=instruction_set(),
        provider=variants.CPU_PROVIDER,
        batch=8,
        rounds=1,
        budget_s=1.0,
        unavailable=gone,
        extra=extra,
    )


def model_flops(config: Any, batch: int, seq: int, num_labels: int) -> float:
    """Forward-pass FLOPs of a BERT encoder + pooler + classifier (multiply-add = 2 FLOPs).

    Per layer and token: Q, K, V and output projections 4 * 2h^2, the FFN
    2 * 2hi; per layer and sequence the attention scores QK^T and the weighted
    sum AV, each 2 * s^2 * h. Embedding lookups, softmax, LayerNorm, GELU and
    biases are omitted (a few % at these sizes). This is ~2 * params * tokens
    (encoder weights) plus the attention terms.
    """
    h, i, layers = int(config.hidden_size), int(config.intermediate_size), int(config.num_hidden_layers)
    per_layer = seq * (8 * h * h + 4 * h * i) + 4 * seq * seq * h
    pooler = 2 * h * h + 2 * h * num_labels
    return float(batch * (layers * per_layer + pooler))


def matmul_session(n: int) -> Any:
    """onnxruntime running one fp32 MatMul node (its MLAS kernels), 2 threads."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def gemm_flops(n: int, reps: int, ort_session: Any) -> dict[str, float]:
    """Best-of FLOP/s of an n x n x n fp32 GEMM in torch, numpy and onnxruntime (2 threads each)."""
    import numpy as np
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    out: dict[str, float] = {}
    for name, fn in (
        ("torch", lambda: torch.mm(a, b)),
        ("numpy", lambda: np.matmul(an, bn)),
        ("onnxruntime", lambda: ort_session.run(None, {"a": an, "b": bn})),
    ):
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = 2 * n**3 / min(times)
    return out


def build_variants(run: Path, work: Path) -> dict[str, Any]:
    """The three ONNX files, made with the product's export functions; returns op counts."""
    from transformers import AutoConfig, AutoTokenizer

    from bench.model import hf_dir
    from rayrelay_workloads.export import (
        convert_to_ort,
        export_onnx,
        load_checkpoint_model,
        op_counts,
        optimize_onnx,
        quantize_int8,
        session,
    )

    work.mkdir(parents=True, exist_ok=True)
    plain, fused, int8 = work / "plain.onnx", work / "fused.onnx", work / "int8.onnx"
    ort_fp32, ort_int8 = work / "ort" / "plain.ort", work / "ort" / "int8.ort"
    stamp = work / "source.txt"
    built = (plain, fused, int8, ort_fp32, ort_int8)
    if stamp.is_file() and stamp.read_text() == str(run) and all(p.is_file() for p in built):
        log("kernel: reusing the cached ONNX variants")
    else:
        log("kernel: exporting, optimizing and quantizing with rayrelay_workloads.export")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        # load_checkpoint_model reads <dir>/model; the run's save_pretrained folder is that.
        (work / "ckpt").mkdir()
        (work / "ckpt" / "model").symlink_to(hf_dir(run), target_is_directory=True)
        model = load_checkpoint_model(work / "ckpt")
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir(run)))
        export_onnx(model, tokenizer, plain, 17, 128)
        optimize_onnx(plain, fused, AutoConfig.from_pretrained(str(hf_dir(run))))
        quantize_int8(plain, int8, fused=False)
        convert_to_ort({"fp32": plain, "int8": int8}, work / "ort")
        stamp.write_text(str(run))
    session(plain, THREADS, save_optimized=work / "plain.session-optimized.onnx")
    session(fused, THREADS, save_optimized=work / "fused.session-optimized.onnx")
    return {
        "fused_graph": op_counts(fused),
        "plain_graph": op_counts(plain),
        "plain_after_session_optimizer": op_counts(work / "plain.session-optimized.onnx"),
        "fused_after_session_optimizer": op_counts(work / "fused.session-optimized.onnx"),
        "files_mib": {p.name: round(p.stat().st_size / 2**20, 1) for p in built},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--run", help="run folder (default: bench.model.ensure_run())")
    parser.add_argument(
        "--emulated-bf16", action="store_true", help="time ov-bf16 even where the CPU only emulates bf16"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bench.model import ensure_run, hf_dir, manifest_of
    from rayrelay_workloads.data import read_examples
    from rayrelay_workloads.export import onnx_logits, session

    torch.set_num_threads(THREADS)
    run = Path(args.run) if args.run else ensure_run()
    manifest = manifest_of(run)
    labels: list[str] = manifest["labels"]
    work = CACHE / "kernel"
    ops = build_variants(run, work)

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir(run)))
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir(run))).eval()
    sessions = {
        "ort-fp32": session(work / "plain.onnx", THREADS),
        "ort-fp32-fused": session(work / "fused.onnx", THREADS),
        "ort-int8": session(work / "int8.onnx", THREADS),
        "ortfmt-fp32": session(work / "ort" / "plain.ort", THREADS),
        "ortfmt-int8": session(work / "ort" / "int8.ort", THREADS),
    }
    ov_rows, unavailable = openvino_contenders(args.emulated_bf16)
    if ov_rows:
        from rayrelay_workloads.openvino_runtime import OpenVinoSession

        for name in ov_rows:
            sessions[name] = OpenVinoSession(str(work / "plain.onnx"), THREADS, name.removeprefix("ov-"))
    precisions = {name: getattr(sessions[name], "precision_label", "") for name in ov_rows}
    CONTENDERS = (*ORT_CONTENDERS, *ov_rows)
    log(f"kernel: contenders {', '.join(CONTENDERS)}; left out: {unavailable or 'none'}")
    input_names = [i.name for i in sessions["ort-fp32"].get_inputs()]

    def runner(name: str, enc: dict[str, np.ndarray]) -> Any:
        if name == "pytorch":
            tensors = {k: torch.from_numpy(v) for k, v in enc.items()}

            def call() -> Any:
                with torch.inference_mode():
                    return model(**tensors).logits.numpy()

            return call
        sess = sessions[name]
        return lambda: onnx_logits(sess, enc)

    validation = read_examples(str(DATA / "validation.jsonl"), "jsonl", "text", "label").examples
    texts = [ex.text for ex in validation]

    # ---- accuracy (and agreement with PyTorch) on the whole validation set
    log("kernel: accuracy of each contender on the validation set")
    ids = np.array([labels.index(ex.label) for ex in validation])
    logits: dict[str, list[np.ndarray]] = {c: [] for c in CONTENDERS}
    for i in range(0, len(texts), 32):
        enc = tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=128, return_tensors="np")
        enc = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in input_names}
        for c in CONTENDERS:
            logits[c].append(runner(c, enc)())
    full = {c: np.concatenate(v) for c, v in logits.items()}
    accuracy = {c: float((full[c].argmax(-1) == ids).mean()) for c in CONTENDERS}
    max_diff = {c: float(np.abs(full[c] - full["pytorch"]).max()) for c in CONTENDERS}

    # ---- peak: a large GEMM in the same process and thread count, sampled at the start and
    # after every shape (the machine is shared: the best sample is the least disturbed one)
    gemm_n = 2048
    gemm_samples: list[dict[str, float]] = []

    gemm_sess = matmul_session(gemm_n)

    def sample_gemm() -> None:
        gemm_samples.append(gemm_flops(gemm_n, 3, gemm_sess))

    log("kernel: fp32 GEMM peak")
    sample_gemm()

    # ---- latency / throughput grid, contenders interleaved
    batches = (1, 8, 32)
    seqs = (32, 128)
    reps = 2 if args.quick else 5
    budget_s = 0.25 if args.quick else 0.9  # timed seconds per contender, shape and repetition
    grid: list[dict[str, Any]] = []
    for seq in seqs:
        for batch in batches:
            rows = (texts * (batch // len(texts) + 1))[:batch]
            enc = tokenizer(rows, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
            enc = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in input_names}
            calls_for: dict[str, int] = {}
            for c in CONTENDERS:  # warm-up, and size each contender's call count to the budget
                fn = runner(c, enc)
                fn()
                start = time.perf_counter()
                fn()
                calls_for[c] = max(3, min(200, int(budget_s / max(time.perf_counter() - start, 1e-6))))
            lat: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            tput: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            for _ in range(reps):
                for c in CONTENDERS:
                    fn = runner(c, enc)
                    fn()
                    times = []
                    for _ in range(calls_for[c]):
                        start = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - start)
                    lat[c].extend(times)
                    tput[c].append(batch * len(times) / sum(times))
            sample_gemm()
            flops = model_flops(model.config, batch, seq, len(labels))
            base_p50 = percentile(lat["pytorch"], 50)
            for c in CONTENDERS:
                p50 = percentile(lat[c], 50)
                grid.append(
                    {
                        "contender": c,
                        "batch": batch,
                        "seq": seq,
                        "calls": len(lat[c]),
                        "p50_ms": p50 * 1000,
                        "p99_ms": percentile(lat[c], 99) * 1000,
                        "throughput_seq_per_s": median(tput[c]),
                        "speedup_vs_pytorch": ratio(base_p50, p50),
                        "min_ms": min(lat[c]) * 1000,
                        "gflop_per_call": flops / 1e9,
                        "achieved_gflops_p50": flops / p50 / 1e9,
                        "achieved_gflops_best": flops / min(lat[c]) / 1e9,
                    }
                )
            log(
                f"kernel: b{batch} s{seq} p50 ms "
                + ", ".join(f"{c} {percentile(lat[c], 50) * 1000:.1f}" for c in CONTENDERS)
            )

    def p50s(batch: int, seq: int) -> dict[str, float]:
        return {r["contender"]: r["p50_ms"] / 1000 for r in grid if (r["batch"], r["seq"]) == (batch, seq)}

    at_128 = p50s(8, 128)
    fastest = min(at_128, key=lambda c: at_128[c])

    def served_by(choice: Any) -> dict[str, Any]:
        served = at_128[AUTO_CONTENDERS[choice.variant]]
        return {
            "variant": choice.variant,
            "runtime": choice.runtime,
            "precision": choice.precision,
            "reason": choice.reason,
            "timed_shape": "8x32",
            "speedup_vs_pytorch_8x128": ratio(at_128["pytorch"], served),
            "vs_fastest_8x128": ratio(at_128[fastest], served),
            "fastest_8x128": fastest,
            "accuracy": accuracy[AUTO_CONTENDERS[choice.variant]],
            "accuracy_vs_fp32": accuracy[AUTO_CONTENDERS[choice.variant]] - accuracy["ort-fp32"],
        }

    from rayrelay_workloads.openvino_runtime import fp32_offered

    choice = auto_choice(manifest, p50s(8, 32), unavailable, ("fp32-openvino",) if fp32_offered() else ())
    auto = served_by(choice)
    log(f"kernel: auto would serve {choice.variant} here: {choice.reason}")
    auto_ov = None
    if "ov-fp32" in at_128:
        with_ov = auto_choice(manifest, p50s(8, 32), unavailable, ("fp32-openvino",))
        auto_ov = served_by(with_ov)
        log(f"kernel: with fp32-openvino offered (RAYRELAY_OPENVINO_FP32=1) it would serve {with_ov.reason}")

    peak = max(max(g.values()) for g in gemm_samples)
    for row in grid:
        # Best call against the best GEMM sample: both the least disturbed by other load.
        row["fraction_of_gemm_peak"] = row["achieved_gflops_best"] * 1e9 / peak
    fused_ops = ops["fused_graph"]
    write_result(
        "kernel",
        {
            "settings": {
                "threads": THREADS,
                "batches": list(batches),
                "seqs": list(seqs),
                "repetitions": reps,
                "timed_seconds_per_contender_shape_rep": budget_s,
                "onnx_opset": 17,
                "quick": args.quick,
                "model_run": manifest["runId"],
                "pytorch_attention": str(getattr(model.config, "_attn_implementation", "default")),
            },
            "gemm": {
                "n": gemm_n,
                "unit": "GFLOP/s",
                "peak": peak / 1e9,
                "torch_best": max(g["torch"] for g in gemm_samples) / 1e9,
                "numpy_best": max(g["numpy"] for g in gemm_samples) / 1e9,
                "onnxruntime_best": max(g["onnxruntime"] for g in gemm_samples) / 1e9,
                "onnxruntime_median": median(g["onnxruntime"] for g in gemm_samples) / 1e9,
                "torch_median": median(g["torch"] for g in gemm_samples) / 1e9,
                "numpy_median": median(g["numpy"] for g in gemm_samples) / 1e9,
                "samples": len(gemm_samples),
            },
            "cpu_flags": cpu_flags(),
            "instruction_set": instruction_set(),
            "contenders": list(CONTENDERS),
            "unavailable": unavailable,
            "openvino_precisions": precisions,
            "auto": auto,
            "auto_with_fp32_openvino": auto_ov,
            "accuracy": accuracy,
            "max_abs_logit_diff_vs_pytorch": max_diff,
            "validation_samples": len(texts),
            "manifest_accuracy": {k: v.get("accuracy") for k, v in manifest["variants"].items()},
            "op_counts": ops,
            "attention_fused": any(op in fused_ops for op in ("Attention", "MultiHeadAttention")),
            "grid": grid,
        },
    )


if __name__ == "__main__":
    main()
