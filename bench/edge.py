"""Benchmark: the edge formats side by side at batch 1 (issue 29).

The benchmark run's fine-tuned MiniLM (``bench.model``) goes through the
product's own export (``rayrelay_workloads.export.export_all``) twice:

- ``export.targets: [onnx]``, the default: the export stage's time without
  LiteRT (nothing of the LiteRT path runs);
- ``export.targets: [onnx, ort, tflite]``: the same plus onnxruntime's mobile
  format and LiteRT (``litert-torch`` in its own environment,
  ``hack/litert_env.py``); the difference is the cost of the targets, and the
  export's own figures split it (``tflite_stage_s``, ``tflite_convert_s``).

Then every file it wrote is a row: size on disk, accuracy on the validation
set (the export's parity pass: each variant in its own runtime), and the
latency of one text at batch 1 padded to the maximum sequence length (128, the
shape the ``.tflite`` files are converted at), 2 threads each:
onnxruntime fp32 and int8 (``onnx/``), the ``.ort`` files (``ort/``), LiteRT
fp32 and int8 (``tflite/``, timed by the LiteRT interpreter in a process of
the converter environment, as ``edge_check.py`` runs it), and PyTorch eager
for reference; the contenders take turns (3 rounds, the median of each
one's round medians). The CPU's vector flags are recorded beside the figures
(int8 speed depends on VNNI). ``--quick``: 64 validation rows, fewer calls,
one round.

Run: ``python -m bench --only edge`` or ``python -m bench.edge [--quick]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import THREADS, apply_env, load_average, log, write_result
from rayrelay_workloads.hardware import cpu_flags, instruction_set

apply_env()
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

SEQ = 128


def batch1_ms(fn: Any, calls: int) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


LITERT_TIMER = """
import statistics, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
feed = {k: v.astype(np.int32) for k, v in np.load(sys.argv[2]).items()}
run = Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[4])).get_signature_runner()
for _ in range(3):
    run(**feed)
samples = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    run(**feed)
    samples.append((time.perf_counter() - start) * 1000)
print(statistics.median(samples))
"""


def litert_ms(model: Path, feed: Path, calls: int) -> float:
    """Batch-1 median ms of a .tflite file in the LiteRT interpreter (the converter environment's process)."""
    from rayrelay_workloads.litert import litert_python

    command = [str(litert_python()), "-c", LITERT_TIMER, str(model), str(feed), str(calls), str(THREADS)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 3)


def run_export(run: Path, targets: list[str], rows: int, repeats: int, out: Path) -> tuple[Any, float]:
    from bench.model import hf_dir, manifest_of
    from rayrelay_core.api import ExportSpec
    from rayrelay_workloads.data import read_examples
    from rayrelay_workloads.export import export_all

    hf = hf_dir(run)
    ckpt = out.parent / f"ckpt-{out.name}"
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "model").symlink_to(hf.resolve(), target_is_directory=True)
    labels = list(manifest_of(run)["labels"])
    from bench.common import DATA

    validation = read_examples(str(DATA / "validation.jsonl"), "jsonl", "text", "label").examples[:rows]
    spec = ExportSpec.model_validate({"opset": 17, "optimize": True, "quantize": "int8", "targets": targets})
    start = time.perf_counter()
    result = export_all(
        ckpt, str(hf), out, spec, SEQ, validation, labels, threads=THREADS, bench_repeats=repeats
    )
    return result, round(time.perf_counter() - start, 2)


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``edge`` section of docs/performance.md (``bench/report.py``)."""
    head = "| format | size MiB | accuracy | max abs logit diff vs PyTorch | batch-1 ms |"
    lines = [
        "## edge",
        "",
        f"One text, batch 1 x sequence {doc['seq_len']}, {doc['threads']} threads; CPU "
        f"{doc['instruction_set']} (flags: {' '.join(doc['cpu_flags'])}); load average "
        f"{doc.get('load_average_before')} before, {doc.get('load_average_at_end')} after"
        + (" (--quick: 64 validation rows)" if doc.get("quick") else "")
        + ". LiteRT timed by its interpreter in the converter environment (docs/litert.md).",
        "",
        head,
        "|---|---|---|---|---|",
    ]
    for name, r in doc["rows"].items():
        diff = r.get("max_abs_logit_diff")
        lines.append(
            f"| {name} | {r['mib'] if r['mib'] is not None else '-'} | {r['accuracy']} | "
            f"{f'{diff:.2e}' if diff is not None else '-'} | {r['batch1_ms']} |"
        )
    e = doc["export_s"]
    lines += [
        "",
        f"Export stage: targets [onnx] {e['onnx']} s, [onnx, ort, tflite] {e['onnx+ort+tflite']} s "
        f"(LiteRT step {doc['tflite_stage_s']} s, of which conversion {doc['tflite_convert_s']} s and "
        f"int8 quantisation {doc.get('tflite_quantize_s')} s).",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 validation rows, fewer timed calls")
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from bench.model import ensure_run
    from rayrelay_workloads.export import onnx_logits, session

    torch.set_num_threads(THREADS)
    rows = 64 if args.quick else 10_000
    calls = 20 if args.quick else 100
    rounds = 1 if args.quick else 3
    run = ensure_run()
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="rr-bench-edge-") as tmp:
        # The same timing repeats in both exports: the difference is the targets' cost.
        base, base_s = run_export(run, ["onnx"], rows, 3, Path(tmp) / "onnx-only")
        log(f"edge: export with targets [onnx] {base_s} s")
        full, full_s = run_export(run, ["onnx", "ort", "tflite"], rows, 3, Path(tmp) / "all")
        log(f"edge: export with targets [onnx, ort, tflite] {full_s} s")
        out = full.out_dir
        files = {
            "onnxruntime fp32": ("fp32", "onnx/model.onnx"),
            "onnxruntime int8": ("int8", "onnx/model.int8.onnx"),
            "ort-format fp32": ("fp32-ort", "ort/model.ort"),
            "ort-format int8": ("int8-ort", "ort/model.int8.ort"),
            "litert fp32": ("fp32-tflite", "tflite/model.tflite"),
            "litert int8": ("int8-tflite", "tflite/model.int8.tflite"),
        }
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out / "hf")
        enc = tok(
            ["the parcel arrived broken, I want a refund"],
            padding="max_length",
            max_length=SEQ,
            return_tensors="np",
        )
        feed = {k: np.asarray(enc[k]) for k in full.input_names}
        np.savez(Path(tmp) / "feed.npz", **feed)
        model = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
        pt = {k: torch.from_numpy(v) for k, v in feed.items()}
        timers: dict[str, Any] = {"pytorch fp32": lambda: batch1_ms(lambda: model(**pt), calls)}
        for row, (variant, rel) in files.items():
            if variant.endswith("-tflite"):
                timers[row] = functools.partial(litert_ms, out / rel, Path(tmp) / "feed.npz", calls)
            else:
                sess = session(out / rel, THREADS)
                timers[row] = functools.partial(batch1_ms, functools.partial(onnx_logits, sess, feed), calls)
        # Interleaved rounds: every contender once per round, the median of its round medians kept.
        samples: dict[str, list[float]] = {row: [] for row in timers}
        with torch.no_grad():
            for _ in range(rounds):
                for row, timer in timers.items():
                    samples[row].append(timer())
        rows_out: dict[str, dict[str, Any]] = {
            "pytorch fp32": {
                "variant": "pytorch",
                "mib": None,
                "accuracy": full.accuracy.get("pytorch"),
                "batch1_ms": round(statistics.median(samples["pytorch fp32"]), 3),
            }
        }
        for row, (variant, rel) in files.items():
            rows_out[row] = {
                "variant": variant,
                "mib": round((out / rel).stat().st_size / 2**20, 2),
                "accuracy": full.accuracy.get(variant),
                "max_abs_logit_diff": full.metrics.get(f"max_abs_logit_diff_{variant}")
                if variant not in ("fp32", "int8")
                else (full.max_diff_fp32 if variant == "fp32" else full.max_diff_int8),
                "batch1_ms": round(statistics.median(samples[row]), 3),
            }
    flags = cpu_flags()
    print(
        f"\nbatch 1 x sequence {SEQ}, {THREADS} threads; CPU {instruction_set()} (flags: {' '.join(flags)})"
    )
    print(
        f"load average before {load_before}, after {load_average()}; {min(rows, 10_000)} validation rows at most"
    )
    print(f"{'format':<18} {'size MiB':>9} {'accuracy':>9} {'max|dlogit|':>12} {'batch-1 ms':>11}")
    for name, r in rows_out.items():
        diff = r.get("max_abs_logit_diff")
        print(
            f"{name:<18} {r['mib'] if r['mib'] is not None else '-':>9} {r['accuracy']:>9} "
            f"{f'{diff:.2e}' if diff is not None else '-':>12} {r['batch1_ms']:>11}"
        )
    m = full.metrics
    print(
        f"export stage: targets [onnx] {base_s} s; [onnx, ort, tflite] {full_s} s "
        f"(LiteRT step {m['tflite_stage_s']} s: convert {m['tflite_convert_s']} s, "
        f"quantize {m.get('tflite_quantize_s')} s, the rest process start, tracing and the parity rows)"
    )
    write_result(
        "edge",
        {
            "quick": args.quick,
            "batch": 1,
            "seq_len": SEQ,
            "threads": THREADS,
            "cpu_flags": flags,
            "instruction_set": instruction_set(),
            "load_average_before": load_before,
            "rows": rows_out,
            "export_s": {"onnx": base_s, "onnx+ort+tflite": full_s},
            "tflite_stage_s": m["tflite_stage_s"],
            "tflite_convert_s": m["tflite_convert_s"],
            "tflite_quantize_s": m.get("tflite_quantize_s"),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
