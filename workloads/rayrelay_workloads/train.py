"""Distributed fine-tuning with Ray Train: the TorchTrainer driver and the per-worker loop.

``pipeline.py`` calls :func:`run_training` with a ``JobDocument`` and the
validated data (``data.py``); it returns the best checkpoint (by validation
accuracy) downloaded to a local folder, which ``export.py`` turns into ONNX.

Checkpoints go to ``RunLayout.checkpoints`` through Ray Train's storage
(pyarrow; S3 with a configurable endpoint). A checkpoint holds the model
(``model/``, save_pretrained), the optimizer, the scheduler, and the exact
position (global step, epoch, batch index in the epoch), so a restarted worker
group (``FailureConfig.max_failures``), a new attempt (same Ray Train run name:
Train V2 restores its checkpoint manager from storage) or a new run
(``JobDocument.resume_from``) continues at the next step and never repeats one.

Rank 0 writes ``progress.json`` (``progress.py``) at most every ~2 s and records
the steps it executed in ``steps/`` (one JSON file per worker-group start), so
tests and humans can check that no step ran twice.

Test hook: ``RAYRELAY_FAULT_AT_STEP=k`` (read on the driver) makes every worker
raise once, just before step k, in the first worker group of attempt 1 that did
not start from a checkpoint. It exists to exercise resume; never set it in
production.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrelay_core.runs import JobDocument, RunLayout
from rayrelay_core.store import is_s3, join, local_path, open_store, split_s3

FAULT_ENV = "RAYRELAY_FAULT_AT_STEP"
METRIC = "val_accuracy"
PROGRESS_INTERVAL_S = 2.0
# Environment the workers need to see as the driver does (offline hub, S3 endpoint, credentials).
_PROPAGATE_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "RAYRELAY_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
)


class TrainingError(RuntimeError):
    """Training did not finish; the message carries the worker's error."""


@dataclass
class TrainResult:
    checkpoint_dir: str  # local copy of the best checkpoint
    checkpoint_uri: str
    metrics: dict[str, Any]
    run_name: str


def run_name_for(job: JobDocument) -> str:
    """Ray Train run name: stable across attempts when resuming, so Train V2 restores it."""
    return "train" if job.spec.checkpointing.resume else f"train-attempt-{job.attempt}"


def storage_for(uri: str, endpoint_url: str | None) -> tuple[str, Any]:
    """(storage_path, storage_filesystem) for Ray Train's RunConfig."""
    if not is_s3(uri):
        path = local_path(uri)
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None
    import pyarrow.fs

    endpoint = endpoint_url or os.environ.get("RAYRELAY_S3_ENDPOINT_URL")
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme or "https")
    # A few retries with backoff on throttling/5xx, like the boto3 side (store.py).
    kwargs["retry_strategy"] = pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=8)
    bucket, key = split_s3(uri)
    return f"{bucket}/{key}".rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)


def checkpoint_uri(job: JobDocument, dir_name: str) -> str:
    return join(RunLayout(job.run_uri).checkpoints, run_name_for(job), dir_name)


def build_config(job: JobDocument, labels: list[str]) -> dict[str, Any]:
    """The train_loop_per_worker config (plain JSON-able values)."""
    spec = job.spec
    fault = os.environ.get(FAULT_ENV)
    return {
        "source": spec.model.source,
        "labels": labels,
        "data": spec.data.wire(),
        "hp": spec.hyperparameters.model_dump(),
        "precision": str(spec.resources.precision),
        "cpus_per_worker": spec.resources.cpus_per_worker,
        "every_n_steps": spec.checkpointing.every_n_steps,
        "run_uri": job.run_uri,
        "checkpoints_uri": join(RunLayout(job.run_uri).checkpoints, run_name_for(job)),
        "endpoint_url": job.endpoint_url,
        "attempt": job.attempt,
        "resume_from": job.resume_from if spec.checkpointing.resume else None,
        "fault_at_step": int(fault) if fault else None,
    }


def run_training(job: JobDocument, labels: list[str], scratch_dir: str) -> TrainResult:
    """Run the TorchTrainer for ``job`` and fetch its best checkpoint into ``scratch_dir``."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = job.spec
    res = spec.resources
    use_gpu = res.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": float(res.cpus_per_worker)}
    if use_gpu:
        per_worker["GPU"] = float(res.gpus_per_worker)
    storage_path, filesystem = storage_for(RunLayout(job.run_uri).checkpoints, job.endpoint_url)
    env = {k: os.environ[k] for k in _PROPAGATE_ENV if k in os.environ}
    if job.endpoint_url:
        env["RAYRELAY_S3_ENDPOINT_URL"] = job.endpoint_url
    name = run_name_for(job)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=build_config(job, labels),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.checkpointing.keep,
                checkpoint_score_attribute=METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=spec.failure_policy.max_failures),
            # Train V2's RunConfig (the default in 2.58); mypy sees the V1 stub.
            worker_runtime_env={"env_vars": env} if env else None,  # type: ignore[call-arg]
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the first line readable
        raise TrainingError(f"training failed: {_first_line(exc)}") from exc
    best = result.get_best_checkpoint(METRIC, "max") if result.best_checkpoints else result.checkpoint
    if best is None:
        raise TrainingError("training finished without a checkpoint")
    metrics = dict(
        next((m for c, m in (result.best_checkpoints or []) if c.path == best.path), result.metrics or {})
    )
    local = Path(scratch_dir) / "best-checkpoint"
    best.to_directory(str(local))
    return TrainResult(str(local), checkpoint_uri(job, Path(best.path).name), metrics, name)


def _first_line(exc: BaseException) -> str:
    """The most telling line of a Ray Train error: the last "XError: ..." of the worker traceback."""
    text = str(exc)
    errors = [ln.strip() for ln in text.splitlines() if re.match(r"^\s*[\w.]*(Error|Exception)\b.*:", ln)]
    head = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{head} {errors[-1]}"[:500] if errors else head[:500]


# ------------------------------------------------------------------ worker side


class _StepRecorder:
    """Rank 0's record of the steps this worker group executed (steps/<attempt>-<id>.json)."""

    def __init__(
        self, run_uri: str, endpoint_url: str | None, attempt: int, started_at: int, how: str
    ) -> None:
        self.store = open_store(run_uri, endpoint_url)
        self.uri = join(run_uri, "steps", f"attempt-{attempt}-{uuid.uuid4().hex[:8]}.json")
        self.doc: dict[str, Any] = {
            "attempt": attempt,
            "startedAtStep": started_at,
            "resumedFrom": how,
            "startTime": time.time(),
            "steps": [],
        }

    def add(self, step: int) -> None:
        self.doc["steps"].append(step)

    def flush(self) -> None:
        self.store.write_bytes(self.uri, json.dumps(self.doc).encode())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_linear_schedule_with_warmup

    from rayrelay_workloads.data import read_examples, shard
    from rayrelay_workloads.modeling import load_model, load_tokenizer, resolve_source
    from rayrelay_workloads.progress import ProgressWriter

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hp = config["hp"]
    seed = int(hp["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    device = ray.train.torch.get_device()
    endpoint = config["endpoint_url"]

    labels: list[str] = config["labels"]
    label_ids = {name: i for i, name in enumerate(labels)}
    data = config["data"]
    model_path = resolve_source(config["source"], endpoint)
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, labels)
    train_rows = shard(
        read_examples(
            data["train"], data["format"], data["textField"], data["labelField"], endpoint
        ).examples,
        rank,
        world,
    )
    val_all = read_examples(
        data["validation"], data["format"], data["textField"], data["labelField"], endpoint
    ).examples
    val_rows = val_all[rank::world]  # evaluation sums counts, so shards need not be equal

    batch_size = int(hp["batch_size"])
    epochs = int(hp["epochs"])
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = steps_per_epoch * epochs

    model = ray.train.torch.prepare_model(model)
    raw_model: Any = model.module if hasattr(model, "module") else model
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {
            "params": [p for n, p in raw_model.named_parameters() if not any(x in n for x in no_decay)],
            "weight_decay": float(hp["weight_decay"]),
        },
        {
            "params": [p for n, p in raw_model.named_parameters() if any(x in n for x in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=float(hp["learning_rate"]))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(float(hp["warmup_ratio"]) * total_steps), max(total_steps, 1)
    )
    precision = config["precision"]
    use_amp = device.type == "cuda" and precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and precision == "fp16" else None

    # ---- resume: restart inside this attempt first, else a checkpoint of an earlier run
    step, epoch, position = 0, 0, 0
    how = "scratch"
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        how = f"restart:{Path(checkpoint.path).name}"
    elif config["resume_from"]:
        checkpoint = _checkpoint_at(config["resume_from"], endpoint)
        how = f"resume:{config['resume_from']}"
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            step, epoch, position = _load_state(Path(ckpt_dir), raw_model, optimizer, scheduler, scaler)
    first_group = ray.train.get_checkpoint() is None
    fault_at = config["fault_at_step"] if (first_group and config["attempt"] == 1) else None

    progress = (
        ProgressWriter(config["run_uri"], endpoint, attempt=int(config["attempt"])) if rank == 0 else None
    )
    recorder = (
        _StepRecorder(config["run_uri"], endpoint, int(config["attempt"]), step, how) if rank == 0 else None
    )
    if recorder:
        recorder.flush()
    last_ckpt: dict[str, Any] | None = None

    def encode(rows: list[Any]) -> dict[str, Any]:
        enc = tokenizer(
            [r.text for r in rows],
            padding=True,
            truncation=True,
            max_length=int(hp["max_seq_length"]),
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in enc.items()}

    def evaluate() -> tuple[float, float]:
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        with torch.no_grad():
            for i in range(0, len(val_rows), 64):
                rows = val_rows[i : i + 64]
                target = torch.tensor([label_ids[r.label] for r in rows], device=device)
                logits = raw_model(**encode(rows)).logits.float()
                sums[0] += float((logits.argmax(-1) == target).sum())
                sums[1] += len(rows)
                sums[2] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        model.train()
        count = max(float(sums[1]), 1.0)
        return float(sums[0]) / count, float(sums[2]) / count

    def save_and_report(loss: float) -> None:
        nonlocal last_ckpt
        accuracy, val_loss = evaluate()
        metrics = {METRIC: accuracy, "val_loss": val_loss, "loss": loss, "step": step, "epoch": epoch}
        dir_name = f"step-{step:07d}"
        with tempfile.TemporaryDirectory(prefix="rr-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                _save_state(
                    Path(tmp), raw_model, optimizer, scheduler, scaler, step, epoch, position, metrics
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=dir_name)
        last_ckpt = {"step": step, "uri": join(config["checkpoints_uri"], dir_name), "accuracy": accuracy}
        if recorder:
            recorder.flush()

    model.train()
    loss_value = float("nan")
    started, samples = time.monotonic(), 0
    try:
        while epoch < epochs:
            order = np.random.default_rng(seed + 1000 * epoch + rank).permutation(len(train_rows))
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            while position < len(batches):
                if fault_at is not None and step + 1 == fault_at:
                    raise RuntimeError(f"injected fault before step {fault_at} ({FAULT_ENV} test hook)")
                rows = [train_rows[i] for i in batches[position]]
                inputs = encode(rows)
                target = torch.tensor([label_ids[r.label] for r in rows], device=device)
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(**inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(hp["max_grad_norm"]))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                position += 1
                samples += len(rows) * world
                loss_value = float(loss.detach())
                if recorder:
                    recorder.add(step)
                epoch_end = position == len(batches)
                if epoch_end:
                    epoch, position = epoch + 1, 0
                if progress:
                    elapsed = max(time.monotonic() - started, 1e-6)
                    rate = samples / elapsed
                    left = (total_steps - step) * batch_size * world / rate if rate else None
                    progress.training(
                        step=step,
                        total_steps=total_steps,
                        epoch=step / steps_per_epoch,
                        loss=loss_value,
                        samples_per_second=rate,
                        eta_seconds=left,
                        last_checkpoint=last_ckpt,
                    )
                every = int(config["every_n_steps"])
                if epoch_end or (every and step % every == 0):
                    save_and_report(loss_value)
                    if progress:
                        progress.training(
                            step=step,
                            total_steps=total_steps,
                            epoch=step / steps_per_epoch,
                            loss=loss_value,
                            last_checkpoint=last_ckpt,
                            force=True,
                        )
                if recorder and progress and progress.wrote_last:
                    recorder.flush()
                if epoch_end:
                    break  # the next epoch has its own shuffle
    finally:
        if recorder:
            recorder.flush()


def _checkpoint_at(uri: str, endpoint_url: str | None) -> Any:
    import ray.train

    path, fs = storage_for(uri, endpoint_url) if is_s3(uri) else (str(local_path(uri)), None)
    return ray.train.Checkpoint(path=path, filesystem=fs)


def _save_state(
    folder: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    step: int,
    epoch: int,
    position: int,
    metrics: dict[str, Any],
) -> None:
    import torch

    model.save_pretrained(folder / "model")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
        },
        folder / "training_state.pt",
    )
    meta = {"step": step, "epoch": epoch, "position": position, "metrics": metrics}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def _load_state(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, scaler: Any
) -> tuple[int, int, int]:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model" / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # position_ids-like buffers are not saved; real parameters must all be there.
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise TrainingError(f"checkpoint {folder} does not fit the model: missing {real_missing[:5]}")
    state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    meta = json.loads((folder / "meta.json").read_text())
    return int(meta["step"]), int(meta["epoch"]), int(meta["position"])
