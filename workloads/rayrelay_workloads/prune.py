"""Structured pruning of a trained BERT-family classifier (``spec.optimization.pruning``).

``pipeline.py`` runs :func:`prune_checkpoint` between training and export, as
the ``Pruning`` stage, on the driver (the process that exports): it loads the
best checkpoint, scores every attention head and FFN neuron on a few training
batches, removes the least important ones for real, fine-tunes the smaller
model for ``recoverySteps`` steps on the training data and saves it as a
checkpoint folder that ``export.py`` exports like any other. Everything after
(ONNX export, fusion, int8, parity against PyTorch, the quality gate) sees only
the pruned model.

- Importance (:func:`importance`): the first-order estimate of how much the
  loss changes when a unit is removed, |activation x gradient| summed over the
  unit's outputs and the tokens of an example, then over the examples. For a
  head, the activation is its slice of the attention context (the input of
  ``attention.output.dense``); for an FFN neuron, its activation after GELU
  (the input of ``output.dense``).
- Structure: every layer keeps the same number of heads and of FFN neurons
  (each layer keeps its own most important ones). A uniform count lets
  the config describe the model (``num_attention_heads`` is the heads per
  layer after pruning, ``intermediate_size`` the neurons per layer), and
  onnxruntime's attention fusion takes one head count for the whole graph.
  At least one head per layer is kept.
- Slicing (:func:`prune_heads`, :func:`prune_ffn`): the rows of the query, key
  and value projections of the removed heads and the matching columns of the
  attention output projection go; the rows of ``intermediate.dense`` and the
  columns of ``output.dense`` of the removed neurons go. The Linear layers
  are smaller, so the exported graph is smaller and its MatMuls cheaper
  (zeroed weights would not be: CPU kernels multiply zeros as fast as any).
- Loading (:func:`load_pruned`): transformers no longer knows pruned heads, so
  the config carries ``rayrelay_pruning`` (the head size, the head count
  before, the heads kept per layer); the model is built at the original head
  count, sliced to the saved shapes and then given the saved weights.

Why on the driver and not in the Ray Train workers: scoring takes a few
batches and recovery a few dozen steps of a model that just got smaller,
single-process work where a second worker group would cost more to start
than it saves; the driver already loads the checkpoint to export it, and
the training loop's checkpoints (and resumption) keep one model shape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrelay_workloads.data import Example

CONFIG_KEY = "rayrelay_pruning"


class PruningError(ValueError):
    """The model or the settings cannot be pruned; the message says which and why."""


@dataclass
class PruningReport:
    """What pruning did: recorded in the manifest (``rayrelay_core.runs.PruningInfo``)."""

    heads_fraction: float
    ffn_fraction: float
    heads_per_layer_before: int
    heads_per_layer_after: int
    heads_kept: list[list[int]]  # per layer, the original indices of the heads kept
    ffn_per_layer_before: int
    ffn_per_layer_after: int
    parameters_before: int
    parameters_after: int
    importance_batches: int
    recovery_steps: int
    accuracy_before_recovery: float | None = None
    accuracy_after_recovery: float | None = None
    seconds: float = 0.0
    recovery_losses: list[float] = field(default_factory=list)


# ------------------------------------------------------------------ structure


def encoder_layers(model: Any) -> list[Any]:
    """The encoder layers of a BERT-family model; PruningError for any other architecture."""
    model_type = getattr(model.config, "model_type", "?")
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = list(getattr(encoder, "layer", None) or [])
    parts = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
    if not layers or not all(_has(layer, p) for layer in layers for p in parts):
        raise PruningError(
            f"optimization.pruning: model type {model_type!r} is not a BERT-family encoder "
            "(layers with attention.self.query/key/value, attention.output.dense, intermediate.dense, "
            "output.dense); pruning supports BERT-family models only"
        )
    return layers


def _has(obj: Any, dotted: str) -> bool:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return False
    return True


def kept_count(total: int, fraction: float) -> int:
    """Units kept of ``total`` when ``fraction`` of them go (rounded; never fewer than one)."""
    return max(1, total - round(total * fraction))


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _select(linear: Any, index: Any, dim: int) -> Any:
    """A copy of ``linear`` keeping the output rows (dim 0) or input columns (dim 1) in ``index``."""
    import torch

    weight = linear.weight.detach().index_select(dim, index).clone()
    has_bias = linear.bias is not None
    out_features, in_features = weight.shape
    new = torch.nn.Linear(in_features, out_features, bias=has_bias)
    new.weight = torch.nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if has_bias:
        bias = linear.bias.detach()
        new.bias = torch.nn.Parameter(
            (bias.index_select(0, index) if dim == 0 else bias).clone(),
            requires_grad=linear.bias.requires_grad,
        )
    return new.to(linear.weight.device)


def prune_heads(layer: Any, keep: Sequence[int]) -> None:
    """Keep the heads ``keep`` of ``layer``'s self-attention (sorted original indices)."""
    import torch

    attn = layer.attention.self
    size = int(attn.attention_head_size)
    index = torch.tensor([h * size + i for h in keep for i in range(size)], dtype=torch.long)
    attn.query = _select(attn.query, index, 0)
    attn.key = _select(attn.key, index, 0)
    attn.value = _select(attn.value, index, 0)
    layer.attention.output.dense = _select(layer.attention.output.dense, index, 1)
    attn.num_attention_heads = len(keep)
    attn.all_head_size = len(keep) * size


def prune_ffn(layer: Any, keep: Sequence[int]) -> None:
    """Keep the FFN neurons ``keep`` of ``layer`` (sorted original indices)."""
    import torch

    index = torch.tensor(list(keep), dtype=torch.long)
    layer.intermediate.dense = _select(layer.intermediate.dense, index, 0)
    layer.output.dense = _select(layer.output.dense, index, 1)


def apply_pruning(model: Any, heads_kept: list[list[int]], ffn_kept: list[list[int]]) -> None:
    """Slice every layer and make the config describe the result (and how to load it back)."""
    layers = encoder_layers(model)
    if len(heads_kept) != len(layers) or len(ffn_kept) != len(layers):
        raise PruningError(f"pruning plan for {len(heads_kept)} layers, the model has {len(layers)}")
    if len({len(k) for k in heads_kept}) != 1 or len({len(k) for k in ffn_kept}) != 1:
        raise PruningError("every layer must keep the same number of heads and of FFN neurons")
    config = model.config
    before = getattr(config, CONFIG_KEY, None) or {}
    head_size = int(layers[0].attention.self.attention_head_size)
    heads_before = int(before.get("num_attention_heads_before", config.num_attention_heads))
    for layer, heads, neurons in zip(layers, heads_kept, ffn_kept, strict=True):
        prune_heads(layer, heads)
        prune_ffn(layer, neurons)
    config.num_attention_heads = len(heads_kept[0])
    config.intermediate_size = len(ffn_kept[0])
    setattr(
        config,
        CONFIG_KEY,
        {
            "attention_head_size": head_size,
            "num_attention_heads_before": heads_before,
            "heads_kept": heads_kept,
        },
    )


def load_pruned(folder: str | Path) -> Any | None:
    """The pruned classifier saved in ``folder`` (eval mode), or None when it is not a pruned one."""
    if not is_pruned(folder):
        return None
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder))
    info = getattr(config, CONFIG_KEY)
    heads_after = int(config.num_attention_heads)
    # Built at the head count its head size comes from, then sliced to the saved shapes.
    config.num_attention_heads = int(info["num_attention_heads_before"])
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    layers = encoder_layers(model)
    for layer in layers:
        prune_heads(layer, list(range(heads_after)))
    config.num_attention_heads = heads_after
    from rayrelay_workloads.train_state import load_weights

    weights = load_file(str(Path(folder) / "model.safetensors"))
    load_weights(model, weights, f"pruned model {folder}", PruningError)
    model.eval()
    return model


def is_pruned(folder: str | Path) -> bool:
    import json

    config = Path(folder) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(CONFIG_KEY))


# ------------------------------------------------------------------ importance


Batch = tuple[dict[str, Any], Any]  # (model inputs, label ids)


def importance(model: Any, batches: Sequence[Batch]) -> tuple[Any, Any]:
    """Per layer: |activation x gradient| of each head (layers x heads) and FFN neuron (layers x neurons)."""
    import torch

    layers = encoder_layers(model)
    heads = int(layers[0].attention.self.num_attention_heads)
    size = int(layers[0].attention.self.attention_head_size)
    neurons = int(layers[0].intermediate.dense.out_features)
    head_scores = torch.zeros(len(layers), heads, dtype=torch.float64)
    ffn_scores = torch.zeros(len(layers), neurons, dtype=torch.float64)

    def watch(scores: Any, row: int, per_unit: int) -> Callable[..., None]:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0]
            if not x.requires_grad:
                return

            def on_grad(grad: Any) -> None:
                # d loss / d (a mask on the unit) per example: sum over tokens and the unit's outputs.
                contrib = (x.detach() * grad).reshape(x.shape[0], x.shape[1], -1, per_unit)
                scores[row] += contrib.sum(dim=(1, 3)).abs().sum(0).double()

            x.register_hook(on_grad)

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(watch(head_scores, i, size)))
        handles.append(layer.output.dense.register_forward_pre_hook(watch(ffn_scores, i, 1)))
    was_training = model.training
    model.eval()  # no dropout: the scores of the model as it will run
    try:
        with torch.enable_grad():
            for inputs, target in batches:
                logits = model(**inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), target)
                model.zero_grad(set_to_none=True)
                loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return head_scores, ffn_scores


def most_important(scores: Any, keep: int) -> list[list[int]]:
    """Per row (layer), the indices of the ``keep`` highest scores, in their original order."""
    return [sorted(int(i) for i in row.topk(keep).indices) for row in scores]


# ------------------------------------------------------------------ the stage


@dataclass
class PruneSettings:
    heads: float
    ffn: float
    importance_batches: int
    recovery_steps: int


def encoder_for(tokenizer: Any, max_len: int) -> Callable[[Sequence[Example]], dict[str, Any]]:
    def encode(rows: Sequence[Example]) -> dict[str, Any]:
        enc = tokenizer(
            [r.text for r in rows], padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return dict(enc)

    return encode


def training_batches(rows: Sequence[Example], batch_size: int, seed: int, count: int) -> list[list[Example]]:
    """``count`` training batches in the order training shuffles them (epochs repeat as needed)."""
    from rayrelay_workloads.train_state import epoch_batches

    out: list[list[Example]] = []
    epoch = 0
    while len(out) < count and rows:
        for index in epoch_batches(len(rows), batch_size, seed, epoch, 0):
            out.append([rows[int(i)] for i in index])
            if len(out) == count:
                break
        epoch += 1
    return out


def prune_model(
    model: Any,
    settings: PruneSettings,
    encode: Callable[[Sequence[Example]], dict[str, Any]],
    train_rows: Sequence[Example],
    label_ids: dict[str, int],
    hp: dict[str, Any],
    validation: Sequence[Example] = (),
    on_step: Callable[[int, int, float], None] | None = None,
) -> PruningReport:
    """Score, slice and recover ``model`` in place; what was done."""
    import torch

    from rayrelay_workloads.train_state import evaluate

    start = time.monotonic()
    layers = encoder_layers(model)
    heads_before = int(layers[0].attention.self.num_attention_heads)
    ffn_before = int(layers[0].intermediate.dense.out_features)
    params_before = count_parameters(model)

    def batch(rows: Sequence[Example]) -> Batch:
        return encode(rows), torch.tensor([label_ids[r.label] for r in rows])

    batch_size, seed = int(hp["batch_size"]), int(hp["seed"])
    scoring = [
        batch(rows) for rows in training_batches(train_rows, batch_size, seed, settings.importance_batches)
    ]
    head_scores, ffn_scores = importance(model, scoring)
    heads_kept = most_important(head_scores, kept_count(heads_before, settings.heads))
    ffn_kept = most_important(ffn_scores, kept_count(ffn_before, settings.ffn))
    apply_pruning(model, heads_kept, ffn_kept)
    report = PruningReport(
        heads_fraction=settings.heads,
        ffn_fraction=settings.ffn,
        heads_per_layer_before=heads_before,
        heads_per_layer_after=len(heads_kept[0]),
        heads_kept=heads_kept,
        ffn_per_layer_before=ffn_before,
        ffn_per_layer_after=len(ffn_kept[0]),
        parameters_before=params_before,
        parameters_after=count_parameters(model),
        importance_batches=len(scoring),
        recovery_steps=settings.recovery_steps,
    )
    if validation:
        report.accuracy_before_recovery = round(evaluate(model, encode, validation, label_ids)[0], 6)
    if settings.recovery_steps > 0:
        report.recovery_losses = recover(model, settings, batch, train_rows, hp, on_step)
    model.eval()
    if validation:
        report.accuracy_after_recovery = round(evaluate(model, encode, validation, label_ids)[0], 6)
        model.eval()
    report.seconds = round(time.monotonic() - start, 3)
    return report


def recover(
    model: Any,
    settings: PruneSettings,
    batch: Callable[[Sequence[Example]], Batch],
    train_rows: Sequence[Example],
    hp: dict[str, Any],
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Fine-tune the pruned ``model`` for ``settings.recovery_steps`` steps; each step's loss.

    The training loop's own optimizer and step (train_state), on the smaller model, on batches
    past the scoring ones, so recovery starts on data scoring did not see.
    """
    from rayrelay_workloads.train_state import build_optimization, train_step

    batch_size, seed = int(hp["batch_size"]), int(hp["seed"])
    model.train()
    opt = build_optimization(model, hp, settings.recovery_steps, "cpu", "fp32")
    plan = training_batches(
        train_rows, batch_size, seed, settings.importance_batches + settings.recovery_steps
    )[settings.importance_batches :]
    plan = plan or training_batches(train_rows, batch_size, seed, settings.recovery_steps)
    losses: list[float] = []
    for step in range(settings.recovery_steps):
        inputs, target = batch(plan[step % len(plan)])
        loss = train_step(model, opt, inputs, target)
        losses.append(round(loss, 6))
        if on_step is not None:
            on_step(step + 1, settings.recovery_steps, loss)
    return losses


def prune_checkpoint(
    checkpoint_dir: str | Path,
    tokenizer_source: str,
    out_dir: str | Path,
    settings: PruneSettings,
    train_rows: Sequence[Example],
    validation: Sequence[Example],
    labels: list[str],
    hp: dict[str, Any],
    threads: int = 1,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Path, PruningReport]:
    """Prune the checkpoint in ``checkpoint_dir``; a checkpoint folder (``model/``) of the result."""
    import torch

    from rayrelay_workloads.modeling import load_tokenizer, load_trained_classifier

    torch.set_num_threads(max(1, threads))
    torch.manual_seed(int(hp["seed"]))
    # The trained, unpruned checkpoint (a pruned base model is refused before training).
    model = load_trained_classifier(checkpoint_dir)
    tokenizer = load_tokenizer(tokenizer_source)
    report = prune_model(
        model,
        settings,
        encoder_for(tokenizer, int(hp["max_seq_length"])),
        train_rows,
        {name: i for i, name in enumerate(labels)},
        hp,
        validation,
        on_step,
    )
    out = Path(out_dir)
    model.save_pretrained(out / "model")
    return out, report


def check_prunable(model_path: str) -> None:
    """PruningError now (before training) when ``model_path`` is not a BERT-family encoder.

    The model is built on the meta device from its config: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    encoder_layers(model)


def manifest_info(report: PruningReport, accuracy_unpruned: float | None) -> Any:
    """The manifest's record of ``report`` (``rayrelay_core.runs.PruningInfo``)."""
    from rayrelay_core.runs import PruningInfo

    fields = {k: v for k, v in vars(report).items() if k != "recovery_losses"}
    return PruningInfo(**fields, accuracy_unpruned=accuracy_unpruned)
