"""The Ray Train per-worker loop: set up, restore, run the planned batches, checkpoint.

The loop is every task's (:func:`run_loop`): a short sequence of named steps over
one :class:`TrainWorker`, which a task subclasses with its model, its loss
(``step``) and its evaluation (``evaluate``); what needs no Ray (the data position
and batch plan, checkpoint files, one optimizer step, evaluation) is in
``train_state.py``. Classification's worker is :class:`Worker`, and
:func:`train_loop_per_worker` (with the config of ``train.build_config``) is what
its task hands to the ``TorchTrainer`` (``train.fit_best_checkpoint``);
``textgen.worker`` builds text generation's the same way.

Resume: a restarted worker group (``FailureConfig.max_failures``) and a new
attempt of the same run (same Ray Train run name, ``train.run_name_for``: Train
V2 restores its checkpoint manager from storage) both find
``ray.train.get_checkpoint()`` set, and continue at the position it holds, so
no step runs twice.

Rank 0 writes ``progress.json`` (``progress.py``) at most every ~2 s and records
the steps it executed in ``steps/`` (one JSON file per worker-group start), so
tests and humans can check that no step ran twice. Both are advisory: a store
that fails them never fails a step, and the record's last write (retried with
backoff) never replaces an error the loop is raising.

Test hook: ``RAYRELAY_FAULT_AT_STEP=k`` (read on the driver) makes every worker
raise once, just before step k, in the first worker group of attempt 1 that did
not start from a checkpoint. It exists to exercise resume; never set it in
production.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrelay_core.store import Store, StoreError, is_s3, join, open_store
from rayrelay_workloads.data import Example
from rayrelay_workloads.progress import backoff_s, warn, write_with_retry
from rayrelay_workloads.train_state import (
    METRIC,
    Optimization,
    Position,
    batch_plan,
    build_optimization,
    checkpoint_due,
    eta_seconds,
    evaluate,
    fault_step,
    load_state,
    resume_folder,
    save_state,
    steps_per_epoch,
    train_step,
)

FAULT_ENV = "RAYRELAY_FAULT_AT_STEP"


class TrainWorker:
    """What the shared loop (:func:`run_loop`) needs of one worker, whatever the task.

    A task's worker (a dataclass) subclasses this, sets the attributes below and writes
    :meth:`step` (its loss) and :meth:`evaluate` (its validation metrics, the checkpoint
    metric of ``tasks.base.Task.metric`` among them); the other hooks have defaults.
    """

    config: dict[str, Any]  # the loop config (train.base_loop_config plus the task's)
    rank: int
    world: int
    model: Any  # as Ray Train prepared it (DDP-wrapped when world > 1)
    raw_model: Any  # the model inside, what checkpoints hold
    train_rows: Sequence[Any]  # this worker's shard
    opt: Optimization

    @property
    def batch_size(self) -> int:
        return int(self.config["hp"]["batch_size"])

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.train_rows), self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * int(self.config["hp"]["epochs"])

    def step(self, indices: Any) -> float:
        """One optimizer step on the training rows at ``indices``; the batch's loss."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Validation metrics at a checkpoint (every worker takes part: counts are summed)."""
        raise NotImplementedError

    def save_checkpoint(self, folder: Path, position: Position, metrics: dict[str, Any]) -> None:
        """Write a checkpoint's files (rank 0 only): model, optimizer, position, metrics."""
        save_state(folder, self.raw_model, self.opt, position, metrics)

    def checkpoint_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """More of ``progress.json``'s ``lastCheckpoint`` than its step and URI."""
        return {}

    def progress_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """``progress.json`` fields that a checkpoint's metrics update (e.g. a perplexity)."""
        return {}


@dataclass
class Worker(TrainWorker):
    """One classification worker's model, data and optimizer, as :func:`setup_worker` built them."""

    config: dict[str, Any]
    rank: int
    world: int
    device: Any
    tokenizer: Any
    model: Any  # as Ray Train prepared it (DDP-wrapped when world > 1)
    raw_model: Any  # the transformers model inside
    train_rows: list[Example]
    val_rows: list[Example]
    label_ids: dict[str, int]
    opt: Optimization
    # spec.distillation: the teacher's logits of each training row (train_rows' order), scored once.
    teacher_logits: Any = None

    def evaluate(self) -> dict[str, float]:
        accuracy, val_loss = evaluate(self.raw_model, self.encode, self.val_rows, self.label_ids, self.world)
        return {METRIC: accuracy, "val_loss": val_loss}

    def checkpoint_fields(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return {"accuracy": metrics[METRIC]}

    def encode(self, rows: Sequence[Example]) -> dict[str, Any]:
        enc = self.tokenizer(
            [r.text for r in rows],
            padding=True,
            truncation=True,
            max_length=int(self.config["hp"]["max_seq_length"]),
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def target(self, rows: Sequence[Example]) -> Any:
        import torch

        return torch.tensor([self.label_ids[r.label] for r in rows], device=self.device)

    def step(self, indices: Any) -> float:
        """One optimizer step on the training rows at ``indices`` (an index array): cross-entropy, or with a
        teacher the distillation loss (``distill.distill_step``); the batch's loss."""
        rows = [self.train_rows[i] for i in indices]
        inputs, target = self.encode(rows), self.target(rows)
        distillation = self.config.get("distillation")
        if self.teacher_logits is None or not distillation:
            return train_step(self.model, self.opt, inputs, target)
        import torch

        from rayrelay_workloads.distill import distill_step

        teacher = torch.from_numpy(self.teacher_logits[list(indices)])
        return distill_step(
            self.model,
            self.opt,
            inputs,
            target,
            teacher,
            float(distillation["temperature"]),
            float(distillation["alpha"]),
        )


# ------------------------------------------------------------------ set-up


def seed_everything(seed: int, threads: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, threads))


def load_rows(config: dict[str, Any], rank: int, world: int) -> tuple[list[Example], list[Example]]:
    """This worker's training shard (equal sizes, as DDP needs) and validation share."""
    from rayrelay_workloads.data import read_examples, shard

    data, endpoint = config["data"], config["endpoint_url"]
    fields = (data["format"], data["textField"], data["labelField"], endpoint)
    train = shard(read_examples(data["train"], *fields).examples, rank, world)
    validation = read_examples(data["validation"], *fields).examples
    return train, validation[rank::world]  # evaluation sums counts, so shares need not be equal


def setup_worker(config: dict[str, Any]) -> Worker:
    import ray.train
    import ray.train.torch

    from rayrelay_workloads.modeling import load_model, load_tokenizer, resolve_source

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(int(config["hp"]["seed"]), int(config["cpus_per_worker"]))
    device = ray.train.torch.get_device()
    labels: list[str] = config["labels"]
    model_path = resolve_source(config["source"], config["endpoint_url"])
    train_rows, val_rows = load_rows(config, rank, world)
    model = ray.train.torch.prepare_model(load_model(model_path, labels, config.get("num_layers")))
    raw_model = model.module if hasattr(model, "module") else model
    total = steps_per_epoch(len(train_rows), int(config["hp"]["batch_size"])) * int(config["hp"]["epochs"])
    return Worker(
        config=config,
        rank=rank,
        world=world,
        device=device,
        tokenizer=load_tokenizer(model_path),
        model=model,
        raw_model=raw_model,
        train_rows=train_rows,
        val_rows=val_rows,
        label_ids={name: i for i, name in enumerate(labels)},
        opt=build_optimization(raw_model, config["hp"], total, device.type, config["precision"]),
        teacher_logits=score_teacher(config, train_rows, labels, rank),
    )


def score_teacher(config: dict[str, Any], rows: list[Example], labels: list[str], rank: int) -> Any:
    """With ``spec.distillation``: the teacher's logits of this worker's training rows (else None)."""
    teacher = config.get("distillation")
    if not teacher:
        return None
    from rayrelay_workloads.distill import score_shard

    logits, seconds = score_shard(
        teacher, [r.text for r in rows], labels, config["endpoint_url"], int(config["cpus_per_worker"])
    )
    if rank == 0:
        print(f"[rayrelay] teacher logits of {len(rows)} training rows in {seconds:.2f}s", flush=True)
    return logits


def restore(worker: TrainWorker) -> tuple[Position, str]:
    """The position to start at, and how (``scratch`` or ``restart:<checkpoint>``)."""
    import ray.train

    config = worker.config
    store = open_store(config["checkpoints_uri"], config["endpoint_url"])
    with resume_folder(ray.train.get_checkpoint(), store, config["checkpoints_uri"]) as found:
        if found is None:
            return Position(), "scratch"
        folder, name = found
        return load_state(folder, worker.raw_model, worker.opt), f"restart:{name}"


# ------------------------------------------------------------------ rank 0's records


class StepRecorder:
    """The steps this worker group executed (``steps/attempt-<n>-<id>.json``)."""

    def __init__(
        self,
        run_uri: str,
        endpoint_url: str | None,
        attempt: int,
        start: Position,
        how: str,
        store: Store | None = None,
    ) -> None:
        self.store = store or open_store(run_uri, endpoint_url)
        self.uri = join(run_uri, "steps", f"attempt-{attempt}-{uuid.uuid4().hex[:8]}.json")
        self.doc: dict[str, Any] = {
            "attempt": attempt,
            "startedAtStep": start.step,
            "resumedFrom": how,
            "startTime": time.time(),
            "steps": [],
        }

    def add(self, step: int) -> None:
        self.doc["steps"].append(step)

    def _write(self) -> None:
        self.store.write_bytes(self.uri, json.dumps(self.doc).encode())

    def flush(self) -> bool:
        """Write the record as it stands (the whole of it: the next flush retries a failed one)."""
        try:
            self._write()
        except StoreError as exc:
            warn(f"step record {self.uri} not written: {exc}")
            return False
        return True

    def close(self) -> bool:
        """The last write, retried with backoff; never raises (see the module docstring)."""
        try:
            return write_with_retry(self._write, f"step record {self.uri}")
        except Exception as exc:  # not a store error: still never mask the loop's own
            warn(f"step record {self.uri} not written: {type(exc).__name__}: {exc}")
            return False


class RankZeroLog:
    """Rank 0's progress.json (throttled) and step record; throughput since this group started."""

    def __init__(self, worker: TrainWorker, start: Position, how: str) -> None:
        from rayrelay_workloads.progress import ProgressWriter

        config, attempt = worker.config, int(worker.config["attempt"])
        self.worker = worker
        self.progress = ProgressWriter(config["run_uri"], config["endpoint_url"], attempt=attempt)
        self.recorder = StepRecorder(config["run_uri"], config["endpoint_url"], attempt, start, how)
        self.recorder.flush()
        self.started, self.samples = time.monotonic(), 0
        self.last_checkpoint: dict[str, Any] | None = None

    def stepped(self, position: Position, loss: float, rows: int) -> None:
        w = self.worker
        self.samples += rows * w.world
        self.recorder.add(position.step)
        rate = self.samples / max(time.monotonic() - self.started, 1e-6)
        self._write(
            position, loss, rate, eta_seconds(w.total_steps - position.step, w.batch_size * w.world, rate)
        )

    def checkpointed(
        self,
        position: Position,
        loss: float,
        checkpoint: dict[str, Any],
        fields: dict[str, Any] | None = None,
    ) -> None:
        """A checkpoint was reported: written at once, with ``fields`` of the progress document set."""
        self.last_checkpoint = checkpoint
        for name, value in (fields or {}).items():
            setattr(self.progress.doc, name, value)
        self._write(position, loss, force=True)
        if not self.progress.wrote_last:  # the store refused progress.json: keep the record anyway
            self.recorder.flush()

    def _write(
        self,
        position: Position,
        loss: float,
        rate: float | None = None,
        eta: float | None = None,
        force: bool = False,
    ) -> None:
        w = self.worker
        self.progress.training(
            step=position.step,
            total_steps=w.total_steps,
            epoch=position.step / w.steps_per_epoch,
            loss=loss,
            samples_per_second=rate,
            eta_seconds=eta,
            last_checkpoint=self.last_checkpoint,
            force=force,
        )
        if self.progress.wrote_last:
            self.recorder.flush()

    def close(self) -> bool:
        return self.recorder.close()


# ------------------------------------------------------------------ the loop

# How long rank 0 holds a checkpoint upload while the S3 store does not answer.
STORE_WAIT_S = float(os.environ.get("RAYRELAY_STORE_WAIT_SECONDS", "300"))


def wait_for_store(
    store: Store,
    uri: str,
    budget_s: float = STORE_WAIT_S,
    sleep: Any = time.sleep,
    clock: Any = time.monotonic,
) -> bool:
    """Hold until the store answers a HEAD of ``uri`` (backoff 1 s doubling to 15 s), up to ``budget_s``.

    Called by rank 0 before it hands a checkpoint to Ray Train, so that an upload does
    not start into an outage that has already begun. An outage that begins during the
    upload, or during the controller's write of its checkpoint record, is held by Ray
    Train's storage filesystem itself (``holdfs.py``, the same budget). False when the
    budget ran out: the upload then goes ahead and fails, and the run's FailureConfig
    and the operator's attempts take over.
    """
    deadline, failures = clock() + budget_s, 0
    while True:
        try:
            store.exists(uri)
        except StoreError as exc:
            failures += 1
            delay = backoff_s(failures, 1.0, 15.0)
            if clock() + delay > deadline:
                warn(f"checkpoint upload: the store still does not answer after {budget_s:.0f}s: {exc}")
                return False
            warn(f"checkpoint upload held: {exc}; checking again in {delay:.1f}s")
            sleep(delay)
            continue
        if failures:
            warn(f"checkpoint upload: the store answers again after {failures} failed checks")
        return True


def save_and_report(
    worker: TrainWorker, position: Position, loss: float, store: Store | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate, checkpoint (rank 0 writes it) and report to Ray Train: (the checkpoint's record, its metrics).

    ``store`` (rank 0's) is checked before an S3 upload: see :func:`wait_for_store`.
    """
    import ray.train

    metrics = {**worker.evaluate(), "loss": loss, "step": position.step, "epoch": position.epoch}
    dir_name = f"step-{position.step:07d}"
    with tempfile.TemporaryDirectory(prefix="rr-ckpt-") as tmp:
        checkpoint = None
        if worker.rank == 0:
            if store is not None and is_s3(worker.config["checkpoints_uri"]):
                wait_for_store(store, worker.config["checkpoints_uri"])
            worker.save_checkpoint(Path(tmp), position, metrics)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=dir_name)
    record = {"step": position.step, "uri": join(worker.config["checkpoints_uri"], dir_name)}
    return record | worker.checkpoint_fields(metrics), metrics


def run_steps(worker: TrainWorker, start: Position, log: RankZeroLog | None, fault_at: int | None) -> None:
    """Every planned batch from ``start``: a step each, a checkpoint when due."""
    config, hp = worker.config, worker.config["hp"]
    plan = batch_plan(
        start, len(worker.train_rows), worker.batch_size, int(hp["epochs"]), int(hp["seed"]), worker.rank
    )
    worker.model.train()
    for position, indices in plan:
        if fault_at is not None and position.step == fault_at:
            raise RuntimeError(f"injected fault before step {fault_at} ({FAULT_ENV} test hook)")
        loss = worker.step(indices)
        if log:
            log.stepped(position, loss, len(indices))
        epoch_end = position.batch == 0
        if checkpoint_due(position.step, int(config["every_n_steps"]), epoch_end):
            checkpoint, metrics = save_and_report(worker, position, loss, log.recorder.store if log else None)
            if log:
                log.checkpointed(position, loss, checkpoint, worker.progress_fields(metrics))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's entry on each classification worker: set up, then the shared loop."""
    run_loop(setup_worker(config))


def run_loop(worker: TrainWorker) -> None:
    """Every task's loop on one worker: restore, run the remaining steps, close rank 0's records."""
    config = worker.config
    start, how = restore(worker)
    fault_at = fault_step(config.get("fault_at_step"), int(config["attempt"]), restored=how != "scratch")
    log = RankZeroLog(worker, start, how) if worker.rank == 0 else None
    try:
        run_steps(worker, start, log, fault_at)
    finally:
        if log:
            log.close()
