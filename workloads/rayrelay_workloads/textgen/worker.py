"""The Ray Train worker of causal-LM fine-tuning: its model, loss and evaluation in the shared loop.

``textgen.task`` hands :func:`lm_train_loop_per_worker` to the shared
``TorchTrainer`` driver (``train.fit_best_checkpoint``: same storage, run name,
failure and checkpoint settings as every task). The loop is the shared one
(``train_worker.run_loop``: resume at the checkpoint's position so no step runs
twice, checkpoints, the store wait before an S3 upload, rank 0's progress and step
record); :class:`LmWorker` gives it what differs (``textgen.lm``): the step
(next-token cross-entropy) and the evaluation, whose metrics carry ``val_loss``,
``val_perplexity`` (what selects the best checkpoint, lower is better) and
next-token accuracy. ``progress.json`` also shows the validation perplexity of the
latest checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrelay_workloads.textgen.data import Fields, LmExample, read_lm_examples
from rayrelay_workloads.textgen.lm import METRIC, encode_examples, evaluate_lm, lm_train_step
from rayrelay_workloads.train_state import (
    MODEL_DIR,
    Optimization,
    Position,
    build_optimization,
    steps_per_epoch,
)
from rayrelay_workloads.train_worker import TrainWorker, run_loop, seed_everything


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


@dataclass
class LmWorker(TrainWorker):
    """One worker's causal LM, texts and optimizer; the loop is the shared one (``train_worker.run_loop``)."""

    config: dict[str, Any]
    rank: int
    world: int
    device: Any
    tokenizer: Any
    model: Any  # as Ray Train prepared it (DDP-wrapped when world > 1)
    raw_model: Any
    train_rows: list[LmExample]
    val_rows: list[LmExample]
    opt: Optimization

    @property
    def max_len(self) -> int:
        return int(self.config["hp"]["max_seq_length"])

    def step(self, indices: Any) -> float:
        """Next-token cross-entropy on the rows at ``indices`` (prompt tokens masked); the batch's loss."""
        rows = [self.train_rows[i] for i in indices]
        batch = {k: v.to(self.device) for k, v in encode_examples(self.tokenizer, rows, self.max_len).items()}
        return lm_train_step(self.model, self.opt, batch)

    def evaluate(self) -> dict[str, float]:
        result = evaluate_lm(self.raw_model, self.tokenizer, self.val_rows, self.max_len, self.world)
        return {
            METRIC: result.perplexity,
            "val_loss": result.loss,
            "val_token_accuracy": result.token_accuracy,
        }

    def save_checkpoint(self, folder: Path, position: Position, metrics: dict[str, Any]) -> None:
        super().save_checkpoint(folder, position, metrics)
        complete_tied_weights(folder, self.raw_model)

    def progress_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        value = float(metrics[METRIC])
        return {"val_perplexity": round(value, 4)} if math.isfinite(value) else {}


def setup_lm_worker(config: dict[str, Any]) -> LmWorker:
    import ray.train
    import ray.train.torch

    from rayrelay_workloads.modeling import load_tokenizer, resolve_source

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
    total = steps_per_epoch(len(train_rows), int(hp["batch_size"])) * int(hp["epochs"])
    return LmWorker(
        config=config,
        rank=rank,
        world=world,
        device=device,
        tokenizer=tokenizer,
        model=model,
        raw_model=raw,
        train_rows=train_rows,
        val_rows=val_rows,
        opt=build_optimization(raw, hp, total, device.type, config["precision"]),
    )


def lm_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on each worker: set up, then the shared loop (restore, steps, checkpoints)."""
    run_loop(setup_lm_worker(config))
