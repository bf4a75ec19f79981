"""GPU check of the training steps in ``rayrelay_workloads.train_state`` on CUDA.

The test suite runs on CPU-only machines, so the GPU branches of the training
steps -- mixed precision (bf16 autocast, fp16 with a grad scaler), evaluation
summed over workers with NCCL (which reduces GPU tensors only), a checkpoint
written from GPU tensors and restored -- are run here, on a machine with a
GPU, without Ray: the steps are Ray-free by design. The model has
all-MiniLM-L6-v2's shape (BERT, 6 layers, hidden 384, 12 heads) with random
weights, trained on a synthetic task it can learn in a few dozen steps.

Usage (repository root, torch + transformers + onnx + onnxruntime installed):
    PYTHONPATH=workloads python hack/gpu_check.py --out gpu_check.json
    PYTHONPATH=workloads python hack/gpu_check.py --device cpu --steps 4   # dry run

Prints one JSON document (also written to --out) and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rayrelay_workloads import train_state as ts

SEQ, BATCH, LABELS = 64, 32, ("negative", "positive")
HP = {"weight_decay": 0.01, "learning_rate": 2e-4, "warmup_ratio": 0.1, "max_grad_norm": 1.0}


@dataclass
class Row:
    ids: list[int]
    label: str


def make_rows(n: int, seed: int) -> list[Row]:
    """Label = which of two marker tokens sits somewhere in the sequence."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(1000, 30000, (SEQ,), generator=g)
        label = int(torch.randint(0, 2, (1,), generator=g))
        ids[int(torch.randint(1, SEQ, (1,), generator=g))] = 101 + label * 99  # 101 or 200
        rows.append(Row(ids.tolist(), LABELS[label]))
    return rows


def build_model(device: torch.device) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        num_labels=2,
    )
    return BertForSequenceClassification(config).to(device)


def encoder(device: torch.device):
    def encode(chunk):
        ids = torch.tensor([r.ids for r in chunk], device=device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return encode


def train(precision: str, device: torch.device, steps: int, rows: list[Row]) -> dict[str, Any]:
    model = build_model(device)
    opt = ts.build_optimization(model, HP, steps, device.type, precision)
    encode, label_ids = encoder(device), {name: i for i, name in enumerate(LABELS)}
    losses, times = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(steps):
        chunk = [rows[(step * BATCH + i) % len(rows)] for i in range(BATCH)]
        target = torch.tensor([label_ids[r.label] for r in chunk], device=device)
        start = time.perf_counter()
        losses.append(ts.train_step(model, opt, encode(chunk), target))  # float(): synchronises
        times.append(time.perf_counter() - start)
    steady = sorted(times[3:] or times)
    result = {
        "precision": precision,
        "autocast": str(opt.autocast_dtype),
        "grad_scaler": opt.scaler is not None,
        "loss_first5": sum(losses[:5]) / len(losses[:5]),
        "loss_last5": sum(losses[-5:]) / len(losses[-5:]),
        "step_ms_p50": 1000 * steady[len(steady) // 2],
    }
    if device.type == "cuda":
        result["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return {"result": result, "model": model, "opt": opt}


def check_nccl_evaluate(model: Any, device: torch.device, rows: list[Row]) -> dict[str, Any]:
    """evaluate() with a process group: NCCL on CUDA (a CPU tensor would be refused), gloo on CPU."""
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        label_ids = {name: i for i, name in enumerate(LABELS)}
        # world=2 makes evaluate() reduce across the group (of one rank here: a GPU allows one rank).
        accuracy, loss = ts.evaluate(model, encoder(device), rows, label_ids, world=2)
        cpu_refused = None
        if backend == "nccl":
            try:
                dist.all_reduce(torch.zeros(3))
                cpu_refused = False
            except Exception as exc:  # what evaluate() did before it reduced on the model's device
                cpu_refused = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return {"backend": backend, "accuracy": accuracy, "loss": loss, "cpu_tensor_refused": cpu_refused}
    finally:
        dist.destroy_process_group()


def check_checkpoint(
    model: Any, opt: Any, device: torch.device, precision: str, steps: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ts.save_state(folder, model, opt, ts.Position(steps, 0, steps), {"val_accuracy": 0.0})
        fresh = build_model(device)
        fresh_opt = ts.build_optimization(fresh, HP, steps, device.type, precision)
        position = ts.load_state(folder, fresh, fresh_opt)
    same = all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
    return {"position_step": position.step, "weights_equal": same}


def check_onnx(model: Any, rows: list[Row]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    cpu = model.float().cpu().eval()
    ids = torch.tensor([r.ids for r in rows[:8]])
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            cpu,
            (ids, mask),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in ("input_ids", "attention_mask")},
            opset_version=17,
            dynamo=False,
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        want = cpu(input_ids=ids, attention_mask=mask).logits.numpy()
    return {"max_abs_logit_diff": float(np.abs(got - want).max()), "providers": ort.get_available_providers()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows, held_out = make_rows(args.steps * BATCH, seed=1), make_rows(256, seed=2)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"}
    report["torch"] = torch.__version__
    precisions = ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32"]
    runs = {p: train(p, device, args.steps, rows) for p in precisions}
    report["training"] = [run["result"] for run in runs.values()]
    last = runs[precisions[-1]]
    report["evaluate"] = check_nccl_evaluate(
        runs["bf16" if "bf16" in runs else "fp32"]["model"], device, held_out
    )
    report["checkpoint"] = check_checkpoint(last["model"], last["opt"], device, precisions[-1], args.steps)
    report["onnx"] = check_onnx(runs["bf16" if "bf16" in runs else "fp32"]["model"], held_out)
    failures = [
        f"{r['precision']}: loss did not fall ({r['loss_first5']:.3f} -> {r['loss_last5']:.3f})"
        for r in report["training"]
        if args.steps >= 30 and not r["loss_last5"] < 0.5 * r["loss_first5"]
    ]
    if not report["checkpoint"]["weights_equal"]:
        failures.append("checkpoint: restored weights differ")
    if report["onnx"]["max_abs_logit_diff"] > 1e-3:
        failures.append(f"onnx: logits differ by {report['onnx']['max_abs_logit_diff']}")
    if report["evaluate"]["cpu_tensor_refused"] is False:
        failures.append("nccl accepted a CPU tensor: the evaluate() fix is not needed?")
    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
