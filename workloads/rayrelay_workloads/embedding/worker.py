"""The Ray Train per-worker loop of sentence-embedding training.

The shared run (``pipeline.run_stages``, through ``embedding.task``) gives
:func:`embedding_loop_per_worker` to the shared TorchTrainer driver
(``train.fit_best_checkpoint``), and the loop is the shared one
(``train_worker.run_loop``: restore, the batch plan, checkpoints with the store wait,
rank 0's progress and step record). This module is the task's part of it,
:class:`EmbeddingWorker` (a ``train_worker.TrainWorker``): its step encodes the batch's
anchors, positives and negatives in one forward pass (one DDP forward per step) and
takes the multiple-negatives ranking loss (``objective``); its evaluation is recall@1
and MRR on the validation pairs.

Every worker evaluates the whole validation set (retrieval ranks each anchor against
every positive, so a shard would change the figure); it is small, and every worker gets
the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rayrelay_workloads.embedding.data import Pair, PairFields, read_pairs
from rayrelay_workloads.embedding.objective import (
    METRIC,
    embed,
    embed_texts,
    encode_texts,
    ranking_loss,
    retrieval,
    without_pooler,
)
from rayrelay_workloads.train_state import (
    Optimization,
    build_optimization,
    optimizer_step,
    steps_per_epoch,
)
from rayrelay_workloads.train_worker import TrainWorker, run_loop, seed_everything


@dataclass
class EmbeddingWorker(TrainWorker):
    """One worker's encoder, pairs and optimizer: ``train_worker.TrainWorker`` with this task's step and evaluation."""

    config: dict[str, Any]
    rank: int
    world: int
    device: Any
    tokenizer: Any
    model: Any  # as Ray Train prepared it (DDP-wrapped when world > 1)
    raw_model: Any
    train_rows: list[Pair]
    val_rows: list[Pair]
    opt: Optimization

    @property
    def max_len(self) -> int:
        return int(self.config["hp"]["max_seq_length"])

    def step(self, indices: Any) -> float:
        """One optimizer step on the pairs at ``indices``; the batch's loss."""
        import torch

        rows = [self.train_rows[i] for i in indices]
        negatives = [r.negative for r in rows if r.negative is not None]
        texts = [r.anchor for r in rows] + [r.positive for r in rows] + negatives
        inputs = encode_texts(self.tokenizer, texts, self.max_len, self.device)
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.opt.autocast_dtype,
            enabled=self.opt.autocast_dtype is not None,
        ):
            vectors = embed(self.model, inputs).float()
        n = len(rows)
        loss = ranking_loss(vectors[:n], vectors[n : 2 * n], vectors[2 * n :])
        return optimizer_step(self.model, self.opt, loss)

    def evaluate(self) -> dict[str, float]:
        anchors = embed_texts(self.raw_model, self.tokenizer, [r.anchor for r in self.val_rows], self.max_len)
        positives = embed_texts(
            self.raw_model, self.tokenizer, [r.positive for r in self.val_rows], self.max_len
        )
        found = retrieval(anchors, positives)
        return {METRIC: found.recall_at_1, "val_mrr": found.mrr}


def load_pair_rows(config: dict[str, Any], rank: int, world: int) -> tuple[list[Pair], list[Pair]]:
    """This worker's training shard (equal sizes, as DDP needs) and the whole validation set."""
    from rayrelay_workloads.data import shard

    data, endpoint = config["data"], config["endpoint_url"]
    fields = PairFields.of(data)
    train = read_pairs(data["train"], data["format"], fields, endpoint).examples
    validation = read_pairs(data["validation"], data["format"], fields, endpoint).examples
    return shard(train, rank, world), validation


def load_encoder(path: str) -> Any:
    from transformers import AutoModel

    from rayrelay_workloads.modeling import ModelSourceError

    try:
        return without_pooler(AutoModel.from_pretrained(path))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load an encoder from {path!r}: {exc}") from exc


def setup(config: dict[str, Any]) -> EmbeddingWorker:
    import ray.train
    import ray.train.torch

    from rayrelay_workloads.modeling import load_tokenizer, resolve_source

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(int(config["hp"]["seed"]), int(config["cpus_per_worker"]))
    device = ray.train.torch.get_device()
    path = resolve_source(config["source"], config["endpoint_url"])
    train_rows, val_rows = load_pair_rows(config, rank, world)
    model = ray.train.torch.prepare_model(load_encoder(path))
    raw = model.module if hasattr(model, "module") else model
    total = steps_per_epoch(len(train_rows), int(config["hp"]["batch_size"])) * int(config["hp"]["epochs"])
    return EmbeddingWorker(
        config=config,
        rank=rank,
        world=world,
        device=device,
        tokenizer=load_tokenizer(path),
        model=model,
        raw_model=raw,
        train_rows=train_rows,
        val_rows=val_rows,
        opt=build_optimization(raw, config["hp"], total, device.type, config["precision"]),
    )


def embedding_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on each worker: set up, then the shared loop (``train_worker.run_loop``)."""
    run_loop(setup(config))
