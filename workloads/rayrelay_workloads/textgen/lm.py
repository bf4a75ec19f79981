"""Causal-LM pieces without Ray: encoding, one training step, validation loss and perplexity.

``textgen.worker`` (the Ray Train loop) is built from these and from the
task-neutral pieces of ``train_state`` (position, batch plan, optimizer,
checkpoints); the unit tests run them on a tiny GPT-2.

- :func:`encode_examples`: token ids of prompt + completion + EOS, cut to the
  maximum sequence length, padded on the right; ``labels`` are -100 on the
  prompt and on padding, so only what the model should write counts.
- :func:`lm_train_step`: forward, loss, backward, clip, optimizer and
  scheduler step.
- :func:`evaluate_lm`: token-weighted mean loss over the validation rows,
  summed over every worker, and ``perplexity = exp(loss)``; plus next-token
  accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayrelay_workloads.textgen.data import LmExample

IGNORE = -100
EVAL_BATCH = 32
# exp() of a loss above this overflows a float; such a model is reported as inf.
_MAX_LOG = 700.0

METRIC = "val_perplexity"  # what selects the best checkpoint (lower is better)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < _MAX_LOG else math.inf


def encode_examples(tokenizer: Any, rows: Sequence[LmExample], max_len: int) -> dict[str, Any]:
    """input_ids, attention_mask and labels (torch tensors) of ``rows``."""
    import torch

    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    seqs: list[tuple[list[int], list[int]]] = []
    for row in rows:
        prompt = tokenizer(row.prompt, add_special_tokens=False)["input_ids"] if row.prompt else []
        completion = tokenizer(row.completion, add_special_tokens=False)["input_ids"] + [eos]
        ids = (prompt + completion)[:max_len]
        labels = ([IGNORE] * len(prompt) + completion)[:max_len]
        seqs.append((ids, labels))
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels_t = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, (ids, labels) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels_t[i, : len(labels)] = torch.tensor(labels)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels_t}


def token_loss_sums(logits: Any, labels: Any) -> tuple[Any, Any, Any]:
    """(summed loss, counted tokens, correct next-token predictions) of a batch."""
    import torch

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    counted = shift_labels != IGNORE
    correct = ((shift_logits.argmax(-1) == shift_labels) & counted).sum()
    return loss, counted.sum(), correct


def lm_train_step(model: Any, opt: Any, batch: dict[str, Any]) -> float:
    """One optimizer step on ``batch`` (``train_state.Optimization``); the mean token loss."""
    import torch

    device_type = batch["input_ids"].device.type
    with torch.autocast(
        device_type=device_type, dtype=opt.autocast_dtype, enabled=opt.autocast_dtype is not None
    ):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count, _ = token_loss_sums(logits, batch["labels"])
    loss = total / count.clamp(min=1)
    from rayrelay_workloads.train_state import optimizer_step

    return optimizer_step(model, opt, loss)


@dataclass(frozen=True)
class LmEval:
    loss: float
    perplexity: float
    token_accuracy: float
    tokens: int


def evaluate_lm(
    model: Any, tokenizer: Any, rows: Sequence[LmExample], max_len: int, world: int = 1
) -> LmEval:
    """Validation loss, perplexity and next-token accuracy, summed over every worker's rows."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for i in range(0, len(rows), EVAL_BATCH):
            batch = {
                k: v.to(device)
                for k, v in encode_examples(tokenizer, rows[i : i + EVAL_BATCH], max_len).items()
            }
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, count, correct = token_loss_sums(logits, batch["labels"])
            sums += torch.stack([loss.double(), count.double(), correct.double()])
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums)
    if was_training:
        model.train()
    tokens = max(float(sums[1]), 1.0)
    loss = float(sums[0]) / tokens
    return LmEval(loss, perplexity(loss), float(sums[2]) / tokens, int(sums[1]))
