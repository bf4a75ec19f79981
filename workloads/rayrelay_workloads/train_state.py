"""Training state without Ray: where training stands, checkpoints of it, one step, one evaluation.

``train_worker.py`` (the Ray Train per-worker loop) is built from these pieces;
none of them needs Ray, so the unit tests run them on a tiny model:

- :class:`Position` and :func:`batch_plan`: which batch comes next. A worker's
  order of batches is a function of (seed, epoch, rank) alone, so a worker
  resumed at a position runs exactly the batches an uninterrupted one had left:
  no step runs twice, none is skipped.
- :func:`save_state` / :func:`load_state`: a checkpoint folder holds the model
  (``model/``, save_pretrained), the optimizer, scheduler and grad scaler
  (``training_state.pt``) and the position (``meta.json``).
- :func:`train_step` and :func:`evaluate`: one optimizer step, and the
  validation accuracy and loss summed over every worker.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

METRIC = "val_accuracy"
MODEL_DIR = "model"
STATE_FILE = "training_state.pt"
META_FILE = "meta.json"
EVAL_BATCH = 64


class TrainingError(RuntimeError):
    """Training did not finish; the message carries the worker's error."""


# ------------------------------------------------------------------ data position


@dataclass(frozen=True)
class Position:
    """Where training stands: optimizer steps done, the epoch, the index of its next batch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0

    def after_step(self, batches_in_epoch: int) -> Position:
        """The position once the batch at ``self.batch`` ran; an epoch's last batch rolls over."""
        if self.batch + 1 >= batches_in_epoch:
            return Position(self.step + 1, self.epoch + 1, 0)
        return Position(self.step + 1, self.epoch, self.batch + 1)


def steps_per_epoch(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)


def epoch_batches(rows: int, batch_size: int, seed: int, epoch: int, rank: int) -> list[np.ndarray]:
    """The row indices of each batch of ``epoch`` on ``rank``: a fresh shuffle per epoch."""
    order = np.random.default_rng(seed + 1000 * epoch + rank).permutation(rows)
    return [order[i : i + batch_size] for i in range(0, rows, batch_size)]


def batch_plan(
    start: Position, rows: int, batch_size: int, epochs: int, seed: int, rank: int
) -> Iterator[tuple[Position, np.ndarray]]:
    """Each batch still to run from ``start``, with the position once it ran."""
    pos = start
    batches: list[np.ndarray] = []
    shuffled_for = -1
    while pos.epoch < epochs:
        if shuffled_for != pos.epoch:
            batches, shuffled_for = epoch_batches(rows, batch_size, seed, pos.epoch, rank), pos.epoch
        if pos.batch >= len(batches):  # a checkpoint past this epoch's end: the next epoch
            pos = Position(pos.step, pos.epoch + 1, 0)
            continue
        after = pos.after_step(len(batches))
        yield after, batches[pos.batch]
        pos = after


def checkpoint_due(step: int, every_n_steps: int, epoch_end: bool) -> bool:
    """A checkpoint (and an evaluation) at every epoch end, and every N steps when N > 0."""
    return epoch_end or (every_n_steps > 0 and step % every_n_steps == 0)


def fault_step(configured: int | None, attempt: int, restored: bool) -> int | None:
    """The step the test hook fails before: only in attempt 1's first worker group from scratch."""
    return configured if attempt == 1 and not restored else None


def eta_seconds(steps_left: int, samples_per_step: int, samples_per_second: float) -> float | None:
    return steps_left * samples_per_step / samples_per_second if samples_per_second > 0 else None


# ------------------------------------------------------------------ optimisation and checkpoints


@dataclass
class Optimization:
    """What one optimizer step needs besides the model."""

    optimizer: Any
    scheduler: Any
    scaler: Any = None  # torch.amp.GradScaler, for fp16 on CUDA only
    autocast_dtype: Any = None  # torch dtype of mixed precision; None = full precision
    max_grad_norm: float = 1.0


def parameter_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and LayerNorm weights."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if not any(x in n for x in no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(x in n for x in no_decay)], "weight_decay": 0.0},
    ]


def build_optimization(
    model: Any, hp: dict[str, Any], total_steps: int, device_type: str, precision: str
) -> Optimization:
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(
        parameter_groups(model, float(hp["weight_decay"])), lr=float(hp["learning_rate"])
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(float(hp["warmup_ratio"]) * total_steps), max(total_steps, 1)
    )
    use_amp = device_type == "cuda" and precision in ("bf16", "fp16")
    return Optimization(
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if use_amp and precision == "fp16" else None,
        autocast_dtype=(torch.bfloat16 if precision == "bf16" else torch.float16) if use_amp else None,
        max_grad_norm=float(hp["max_grad_norm"]),
    )


def save_state(
    folder: Path, model: Any, opt: Optimization, position: Position, metrics: dict[str, Any]
) -> None:
    import torch

    model.save_pretrained(folder / MODEL_DIR)
    torch.save(
        {
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
        },
        folder / STATE_FILE,
    )
    # "position" is the batch index: the key checkpoints have always used. "files" (each
    # other file's size) lets a reader tell a whole upload from a cut one (stored_checkpoint).
    files = {
        f.relative_to(folder).as_posix(): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()
    }
    meta = {
        "step": position.step,
        "epoch": position.epoch,
        "position": position.batch,
        "metrics": metrics,
        "files": files,
    }
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


CHECKPOINT_DIR = re.compile(r"^step-\d{7}$")


def fetch_whole_checkpoint(store: Any, uri: str, dest: Path) -> bool:
    """Download checkpoint folder ``uri`` into ``dest``; False unless every file its meta lists
    is there with its size (a folder whose upload was cut short, or one without the list)."""
    from rayrelay_core.store import StoreError, join

    try:
        meta = json.loads(store.read_bytes(join(uri, META_FILE)))
        files = meta.get("files")
        if not isinstance(files, dict) or not files:
            return False
        for rel, size in files.items():
            target = dest / rel
            store.download(join(uri, rel), target)
            if target.stat().st_size != size:
                return False
    except (StoreError, OSError, ValueError):
        return False
    (dest / META_FILE).write_text(json.dumps(meta))
    return True


@contextmanager
def resume_folder(checkpoint: Any, store: Any, checkpoints_uri: str) -> Iterator[tuple[Path, str] | None]:
    """The checkpoint folder to resume from and its name, or None to start from scratch.

    Ray Train hands a new worker group the latest checkpoint its controller registered
    (``checkpoint``). The controller takes in one report per worker each time it polls
    them (every 2 s), so a worker killed just after an upload leaves a newer, whole
    checkpoint in storage that was never registered. The newest whole one of those wins:
    the steps redone then stay within the checkpoint interval.
    """
    registered = Path(checkpoint.path).name if checkpoint is not None else ""
    prefix = checkpoints_uri.rstrip("/") + "/"
    try:
        names = {u[len(prefix) :].split("/", 1)[0] for u in store.list(prefix) if u.startswith(prefix)}
    except Exception:  # the registered checkpoint is still a good start
        names = set()
    for name in sorted((n for n in names if CHECKPOINT_DIR.match(n) and n > registered), reverse=True):
        with tempfile.TemporaryDirectory(prefix="rr-resume-") as tmp:
            if fetch_whole_checkpoint(store, prefix + name, Path(tmp)):
                yield Path(tmp), f"{name} (uploaded, not yet registered by Ray Train)"
                return
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder), registered


def load_weights(
    model: Any, weights: dict[str, Any], what: str, error: type[Exception] = TrainingError
) -> None:
    """Load ``weights`` into ``model``; ``error`` naming ``what`` unless every real parameter fits."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise error(f"{what} does not fit the model: {exc}") from exc
    # position_ids-like buffers are not saved; real parameters must all be there.
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise error(
            f"{what} does not fit the model: missing {real_missing[:5]}, unexpected {list(unexpected)[:5]}"
        )


def load_state(folder: Path, model: Any, opt: Optimization) -> Position:
    """Restore model, optimizer, scheduler (and scaler) from ``folder``; the position it holds."""
    import torch
    from safetensors.torch import load_file

    load_weights(model, load_file(str(folder / MODEL_DIR / "model.safetensors")), f"checkpoint {folder}")
    # weights_only: the state file comes from the store, and a full unpickler runs
    # whatever code a writer of the checkpoint path put in it. The optimizer,
    # scheduler and scaler state dicts are tensors, numbers, strings and containers,
    # which the restricted unpickler accepts; anything else is refused.
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TrainingError(
            f"checkpoint {folder}: {STATE_FILE} holds more than tensors and plain values; "
            "refusing to load it (only weights_only state is accepted)"
        ) from exc
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    if opt.scaler is not None and state.get("scaler"):
        opt.scaler.load_state_dict(state["scaler"])
    meta = json.loads((folder / META_FILE).read_text())
    return Position(int(meta["step"]), int(meta["epoch"]), int(meta["position"]))


# ------------------------------------------------------------------ one step, one evaluation

Encode = Callable[[Sequence[Any]], dict[str, Any]]


def optimizer_step(model: Any, opt: Optimization, loss: Any) -> float:
    """Backward (scaled under fp16), clip, optimizer and scheduler step for ``loss``; its value."""
    import torch

    if opt.scaler is not None:
        opt.scaler.scale(loss).backward()
        opt.scaler.unscale_(opt.optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
    if opt.scaler is not None:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_step(model: Any, opt: Optimization, inputs: dict[str, Any], target: Any) -> float:
    """Forward, backward, clip, optimizer and scheduler step; the batch's loss."""
    import torch

    device_type = target.device.type
    with torch.autocast(
        device_type=device_type, dtype=opt.autocast_dtype, enabled=opt.autocast_dtype is not None
    ):
        logits = model(**inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    return optimizer_step(model, opt, loss)


def evaluate(
    model: Any, encode: Encode, rows: Sequence[Any], label_ids: dict[str, int], world: int = 1
) -> tuple[float, float]:
    """(accuracy, mean loss) over this worker's ``rows``, summed over all ``world`` workers."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    # On the model's device: NCCL reduces GPU tensors only (gloo takes either).
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i in range(0, len(rows), EVAL_BATCH):
            chunk = rows[i : i + EVAL_BATCH]
            target = torch.tensor([label_ids[r.label] for r in chunk], device=device)
            logits = model(**encode(chunk)).logits.float()
            sums[0] += float((logits.argmax(-1) == target).sum())
            sums[1] += len(chunk)
            sums[2] += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
    if world > 1:  # validation shards differ in size: sum the counts, not the ratios
        import torch.distributed as dist

        dist.all_reduce(sums)
    model.train()
    count = max(float(sums[1]), 1.0)
    return float(sums[0]) / count, float(sums[2]) / count
