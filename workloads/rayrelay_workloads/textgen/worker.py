"""The Ray Train per-worker loop of causal-LM fine-tuning.

``textgen.train.run_lm_training`` hands :func:`lm_train_loop_per_worker` to a
``TorchTrainer`` the same way the classification driver does (same storage,
run name, failure and checkpoint settings: ``rayrelay_workloads.train``). The
loop reuses the task-neutral state of ``train_state``: the data position and
batch plan (so a resumed worker group runs exactly the batches that were left),
the optimizer and scheduler, and the checkpoint folder layout
(``save_state``/``load_state``). Only the step and the evaluation differ
(``textgen.lm``): a checkpoint's metrics carry ``val_loss``, ``val_perplexity``
(what selects the best checkpoint, lower is better) and next-token accuracy.

Rank 0 writes ``progress.json`` (``progress.ProgressWriter``) with the loss,
throughput, the latest checkpoint and, at each checkpoint, the validation
perplexity.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from rayrelay_core.store import join, open_store
from rayrelay_workloads.textgen.data import Fields, LmExample, read_lm_examples
from rayrelay_workloads.textgen.lm import METRIC, encode_examples, evaluate_lm, lm_train_step
from rayrelay_workloads.train_state import (
    MODEL_DIR,
    Position,
    batch_plan,
    build_optimization,
    checkpoint_due,
    eta_seconds,
    fault_step,
    load_state,
    resume_folder,
    save_state,
    steps_per_epoch,
)


def load_lm_rows(config: dict[str, Any], rank: int, world: int) -> tuple[list[LmExample], list[LmExample]]:
    from rayrelay_workloads.data import shard

    data, endpoint = config["data"], config["endpoint_url"]
    fields = Fields.of(data)
    train = read_lm_examples(data["train"], data["format"], fields, endpoint).examples
    validation = read_lm_examples(data["validation"], data["format"], fields, endpoint).examples
    return shard(train, rank, world), validation[rank::world]


def load_causal_lm(path: str) -> Any:
    from transformers import AutoModelForCausalLM

    from rayrelay_workloads.modeling import ModelSourceError

    try:
        return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load a causal language model from {path!r}: {exc}") from exc


def complete_tied_weights(folder: Path, model: Any) -> None:
    """Write the weights ``save_pretrained`` left out of ``folder/model/model.safetensors``.

    A causal LM's output embedding is usually tied to its input embedding (GPT-2's
    ``lm_head.weight``), and ``save_pretrained`` stores the tensor once; ``train_state.load_state``
    (resume) insists on every parameter being in the file, so the tied copies are written in.
    """
    from safetensors.torch import load_file, save_file

    path = folder / MODEL_DIR / "model.safetensors"
    weights = load_file(str(path))
    missing = {
        k: v for k, v in model.state_dict().items() if k not in weights and not k.endswith("position_ids")
    }
    if missing:
        weights.update({k: v.detach().clone().contiguous() for k, v in missing.items()})
        save_file(weights, str(path), metadata={"format": "pt"})


class _Progress:
    """Rank 0's progress.json: loss and throughput every few seconds, perplexity at checkpoints."""

    def __init__(self, config: dict[str, Any], total: int, per_epoch: int, rows_per_step: int) -> None:
        from rayrelay_workloads.progress import ProgressWriter

        self.writer = ProgressWriter(
            config["run_uri"], config["endpoint_url"], attempt=int(config["attempt"])
        )
        self.total, self.per_epoch, self.rows_per_step = total, per_epoch, rows_per_step
        self.started, self.samples = time.monotonic(), 0
        self.checkpoint: dict[str, Any] | None = None

    def step(self, position: Position, loss: float, force: bool = False) -> None:
        if not force:  # a forced write repeats the step just counted
            self.samples += self.rows_per_step
        rate = self.samples / max(time.monotonic() - self.started, 1e-6)
        self.writer.training(
            step=position.step,
            total_steps=self.total,
            epoch=position.step / max(self.per_epoch, 1),
            loss=loss,
            samples_per_second=rate,
            eta_seconds=eta_seconds(self.total - position.step, self.rows_per_step, rate),
            last_checkpoint=self.checkpoint,
            force=force,
        )

    def perplexity(self, value: float) -> None:
        # ProgressDoc carries valPerplexity when the core version knows it (older ones ignore it).
        if hasattr(self.writer.doc, "val_perplexity") and value == value and value != float("inf"):
            self.writer.doc.val_perplexity = round(value, 4)


def lm_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on each worker: set up, restore, run the remaining steps."""
    import ray.train
    import ray.train.torch

    from rayrelay_workloads.modeling import load_tokenizer, resolve_source
    from rayrelay_workloads.train_worker import StepRecorder, seed_everything

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    hp = config["hp"]
    seed_everything(int(hp["seed"]), int(config["cpus_per_worker"]))
    device = ray.train.torch.get_device()
    path = resolve_source(config["source"], config["endpoint_url"])
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_rows, val_rows = load_lm_rows(config, rank, world)
    model = ray.train.torch.prepare_model(load_causal_lm(path))
    raw = model.module if hasattr(model, "module") else model
    batch_size, epochs, max_len = int(hp["batch_size"]), int(hp["epochs"]), int(hp["max_seq_length"])
    per_epoch = steps_per_epoch(len(train_rows), batch_size)
    total = per_epoch * epochs
    opt = build_optimization(raw, hp, total, device.type, config["precision"])

    start, how = Position(), "scratch"
    store = open_store(config["checkpoints_uri"], config["endpoint_url"])
    with resume_folder(ray.train.get_checkpoint(), store, config["checkpoints_uri"]) as found:
        if found is not None:
            start, how = load_state(found[0], raw, opt), f"restart:{found[1]}"
    fault_at = fault_step(config.get("fault_at_step"), int(config["attempt"]), restored=how != "scratch")
    progress = _Progress(config, total, per_epoch, batch_size * world) if rank == 0 else None
    # Rank 0 records the steps this worker group ran (steps/*.json, as classification's loop does),
    # so a resumed run can be checked to repeat and skip none.
    recorder = (
        StepRecorder(config["run_uri"], config["endpoint_url"], int(config["attempt"]), start, how)
        if rank == 0
        else None
    )

    model.train()
    plan = batch_plan(start, len(train_rows), batch_size, epochs, int(hp["seed"]), rank)
    for position, indices in plan:
        if fault_at is not None and position.step == fault_at:
            raise RuntimeError(f"injected fault before step {fault_at} (RAYRELAY_FAULT_AT_STEP test hook)")
        rows = [train_rows[i] for i in indices]
        batch = {k: v.to(device) for k, v in encode_examples(tokenizer, rows, max_len).items()}
        loss = lm_train_step(model, opt, batch)
        if progress:
            progress.step(position, loss)
        if recorder:
            recorder.add(position.step)
            if progress and progress.writer.wrote_last:
                recorder.flush()
        if not checkpoint_due(position.step, int(config["every_n_steps"]), position.batch == 0):
            continue
        result = evaluate_lm(raw, tokenizer, val_rows, max_len, world)
        metrics = {
            METRIC: result.perplexity,
            "val_loss": result.loss,
            "val_token_accuracy": result.token_accuracy,
            "loss": loss,
            "step": position.step,
            "epoch": position.epoch,
        }
        dir_name = f"step-{position.step:07d}"
        with tempfile.TemporaryDirectory(prefix="rr-lm-ckpt-") as tmp:
            saved = None
            if rank == 0:
                save_state(Path(tmp), raw, opt, position, metrics)
                complete_tied_weights(Path(tmp), raw)
                saved = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=dir_name)
        if recorder:
            recorder.flush()
        if progress:
            progress.checkpoint = {"step": position.step, "uri": join(config["checkpoints_uri"], dir_name)}
            progress.perplexity(result.perplexity)
            progress.step(position, loss, force=True)
