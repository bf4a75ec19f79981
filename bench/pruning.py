"""Structured pruning (issue 15, item 2): the MiniLM classifier pruned vs unpruned, side by side.

``python -m bench.pruning [--quick]``. The unpruned model is the benchmarks'
shared one (``bench.model.ensure_run``: MiniLM, 6 layers x 12 heads, FFN 1536,
fine-tuned by the product's pipeline on the shipped data). Each pruning setting
goes through what the pipeline's ``Pruning`` stage and export run
(``rayrelay_workloads.prune.prune_checkpoint``: importance on 8 training
batches, slicing, ``recoverySteps`` of fine-tuning at the run's
hyperparameters; then ``export.export_all``: ONNX, fusion, int8, parity against
the pruned model), on this process. Reported per model: accuracy of PyTorch,
ONNX fp32 and int8 on the whole validation set, fp32 and int8 file sizes, and
int8 latency at batch 8 x sequence 128 with ``THREADS`` threads, all models
interleaved in the same loop so they see the same machine load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import CACHE, DATA, THREADS, apply_env, log, percentile, time_calls, write_result

WORK = CACHE / "pruning"
# (name, heads, ffn): half of both, and a milder cut of the heads with half the FFN.
SETTINGS = [("heads 0.5, ffn 0.5", 0.5, 0.5), ("heads 0.25, ffn 0.5", 0.25, 0.5)]
RECOVERY_STEPS = 100  # the API's default
IMPORTANCE_BATCHES = 8  # the API's default


def prune_and_export(
    name: str, heads: float, ffn: float, hf: Path, train: list[Any], validation: list[Any], labels: list[str]
) -> dict[str, Any]:
    """Prune the benchmark model as the pipeline's stage does, export it; the row's figures."""
    import shutil

    from bench.model import bench_spec
    from rayrelay_core.api import ExportSpec, TrainingJobSpec
    from rayrelay_workloads.export import export_all
    from rayrelay_workloads.prune import PruneSettings, prune_checkpoint

    spec = TrainingJobSpec.model_validate(bench_spec())
    slug = name.replace(" ", "").replace(",", "-")
    ckpt = WORK / "unpruned-ckpt"
    if not (ckpt / "model").exists():
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "model").symlink_to(hf.resolve())  # load_checkpoint_model reads <dir>/model
    shutil.rmtree(WORK / slug, ignore_errors=True)
    start = time.perf_counter()
    pruned_dir, report = prune_checkpoint(
        ckpt,
        str(hf),
        WORK / slug / "ckpt",
        PruneSettings(heads, ffn, IMPORTANCE_BATCHES, RECOVERY_STEPS),
        train,
        validation,
        labels,
        spec.hyperparameters.model_dump(),
        threads=THREADS,
    )
    prune_s = time.perf_counter() - start
    result = export_all(
        pruned_dir, str(hf), WORK / slug / "out", ExportSpec(), 128, validation, labels, threads=THREADS
    )
    out = result.out_dir
    return {
        "model": name,
        "heads_per_layer": report.heads_per_layer_after,
        "ffn_per_layer": report.ffn_per_layer_after,
        "parameters": report.parameters_after,
        "accuracy_pytorch": result.accuracy["pytorch"],
        "accuracy_fp32": result.accuracy["fp32"],
        "accuracy_int8": result.accuracy.get("int8"),
        "accuracy_before_recovery": report.accuracy_before_recovery,
        "fp32_mib": (out / result.fp32_file).stat().st_size / 2**20,
        "int8_mib": (out / str(result.int8_file)).stat().st_size / 2**20,
        "int8_file": str(out / str(result.int8_file)),
        "max_abs_logit_diff_fp32": result.max_diff_fp32,
        "fused_attention": result.metrics.get("optimizer_fused_ops_Attention"),
        "prune_and_recover_s": prune_s,
        "recovery_steps": report.recovery_steps,
    }


def int8_latency(files: dict[str, Path], hf: Path, texts: list[str], reps: int, calls: int) -> dict[str, Any]:
    """p50/p90 ms of each int8 model at batch 8 x sequence 128, contenders interleaved."""
    import numpy as np
    from transformers import AutoTokenizer

    from rayrelay_workloads.export import onnx_logits, session

    tok = AutoTokenizer.from_pretrained(str(hf))
    enc = tok(texts[:8], padding="max_length", truncation=True, max_length=128, return_tensors="np")
    sessions = {name: session(path, THREADS) for name, path in files.items()}
    feeds = {}
    for name, sess in sessions.items():
        names = {i.name for i in sess.get_inputs()}
        feeds[name] = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
    for name in files:  # warm-up
        time_calls(lambda n=name: onnx_logits(sessions[n], feeds[n]), 3)
    samples: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(reps):
        for name in files:
            samples[name] += time_calls(lambda n=name: onnx_logits(sessions[n], feeds[n]), calls)
    return {
        name: {"p50_ms": percentile(s, 50) * 1000, "p90_ms": percentile(s, 90) * 1000}
        for name, s in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one setting, fewer latency repetitions")
    args = parser.parse_args()
    apply_env()
    from bench.model import ensure_run, hf_dir, manifest_of
    from rayrelay_workloads.data import read_examples
    from rayrelay_workloads.hardware import instruction_set

    run = ensure_run()
    hf = hf_dir(run)
    manifest = manifest_of(run)
    labels = list(manifest["labels"])
    train = read_examples(str(DATA / "train.jsonl"), "jsonl", "text", "label").examples
    validation = read_examples(str(DATA / "validation.jsonl"), "jsonl", "text", "label").examples
    settings = SETTINGS[:1] if args.quick else SETTINGS

    import json

    config = json.loads((hf / "config.json").read_text())
    unpruned = {
        "model": "unpruned",
        "heads_per_layer": config["num_attention_heads"],
        "ffn_per_layer": config["intermediate_size"],
        "parameters": None,
        "accuracy_pytorch": manifest["variants"]["pytorch"]["accuracy"],
        "accuracy_fp32": manifest["variants"]["fp32"]["accuracy"],
        "accuracy_int8": manifest["variants"]["int8"]["accuracy"],
        "fp32_mib": manifest["variants"]["fp32"]["size"] / 2**20,
        "int8_mib": manifest["variants"]["int8"]["size"] / 2**20,
        "int8_file": str(run / manifest["variants"]["int8"]["file"]),
    }
    rows = [unpruned]
    for name, heads, ffn in settings:
        log(f"pruning: {name}: prune, recover ({RECOVERY_STEPS} steps), export")
        rows.append(prune_and_export(name, heads, ffn, hf, train, validation, labels))
        log(f"pruning: {rows[-1]}")
    from transformers import AutoModelForSequenceClassification

    unpruned["parameters"] = sum(
        p.numel() for p in AutoModelForSequenceClassification.from_pretrained(str(hf)).parameters()
    )
    log("pruning: int8 latency at 8 x 128")
    latency = int8_latency(
        {r["model"]: Path(r["int8_file"]) for r in rows},
        hf,
        [e.text for e in validation],
        reps=2 if args.quick else 5,
        calls=10,
    )
    for r in rows:
        r |= {"int8_p50_ms": latency[r["model"]]["p50_ms"], "int8_p90_ms": latency[r["model"]]["p90_ms"]}
    result = {
        "settings": {
            "importance_batches": IMPORTANCE_BATCHES,
            "recovery_steps": RECOVERY_STEPS,
            "validation_samples": len(validation),
            "threads": THREADS,
            "instruction_set": instruction_set(),
            "unpruned_spec": "bench.model.bench_spec() (1 epoch, batch 32, sequence 128)",
        },
        "rows": rows,
        "quick": args.quick,
    }
    write_result("pruning", result)


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``pruning`` section of docs/performance.md (``bench.report``)."""
    s = doc["settings"]
    lines = [
        "## 9. Structured pruning",
        "",
        "The benchmarks' MiniLM classifier unpruned and pruned by `spec.optimization.pruning` (what the "
        f"pipeline's Pruning stage runs: importance on {s['importance_batches']} training batches, the "
        f"least important heads and FFN neurons sliced out of every layer, {s['recovery_steps']} recovery "
        "steps, then the usual export, fusion, int8 and parity against the pruned model). Accuracy on the "
        f"{s['validation_samples']} validation texts; int8 latency at batch 8 x sequence 128, "
        f"{s['threads']} threads ({s.get('instruction_set', '?')}), all models interleaved. Command: "
        "`python -m bench --only pruning` (it runs `python -m bench.pruning`).",
        "",
        "| model | heads/layer | FFN/layer | parameters | accuracy PyTorch | accuracy fp32 | accuracy int8 "
        "| fp32 MiB | int8 MiB | int8 p50 ms | int8 p90 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        params = f"{r['parameters'] / 1e6:.1f} M" if r.get("parameters") else "?"
        lines.append(
            f"| {r['model']} | {r['heads_per_layer']} | {r['ffn_per_layer']} | {params} | "
            f"{r['accuracy_pytorch']:.4f} | {r['accuracy_fp32']:.4f} | {r['accuracy_int8']:.4f} | "
            f"{r['fp32_mib']:.1f} | {r['int8_mib']:.1f} | {r['int8_p50_ms']:.1f} | {r['int8_p90_ms']:.1f} |"
        )
    pruned = [r for r in doc["rows"] if r["model"] != "unpruned"]
    if pruned:
        lines += [
            "",
            "Accuracy right after slicing, before recovery: "
            + ", ".join(f"{r['model']} {r['accuracy_before_recovery']:.4f}" for r in pruned)
            + ". Pruning and recovery took "
            + ", ".join(f"{r['prune_and_recover_s']:.0f} s" for r in pruned)
            + " on this machine. The embeddings (30,522 x 384, about half of MiniLM's weights) are not "
            "pruned, so the files shrink less than the encoder does.",
        ]
    return lines + [""]


if __name__ == "__main__":
    main()
