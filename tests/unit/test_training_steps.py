"""Unit tests of the training loop's steps without Ray (rayrelay_workloads.train_state).

The data position and batch plan (what a resumed worker runs), checkpoint
save/restore round trips on a tiny BERT, one optimizer step and evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rayrelay_workloads.data import Example
from rayrelay_workloads.train import build_config
from rayrelay_workloads.train_state import (
    Position,
    TrainingError,
    batch_plan,
    build_optimization,
    checkpoint_due,
    epoch_batches,
    eta_seconds,
    evaluate,
    fault_step,
    load_state,
    save_state,
    steps_per_epoch,
    train_step,
)

HP = {"learning_rate": 1e-2, "weight_decay": 0.01, "warmup_ratio": 0.1, "max_grad_norm": 1.0}
LABELS = {"a": 0, "b": 1}

# ------------------------------------------------------------------ data position


def test_position_rolls_over_at_the_epochs_last_batch() -> None:
    assert Position(0, 0, 0).after_step(3) == Position(1, 0, 1)
    assert Position(2, 0, 2).after_step(3) == Position(3, 1, 0)
    assert Position(5, 1, 0).after_step(1) == Position(6, 2, 0)


def test_batch_plan_covers_every_row_once_per_epoch() -> None:
    plan = list(batch_plan(Position(), rows=10, batch_size=4, epochs=2, seed=7, rank=0))
    assert [p for p, _ in plan] == [
        Position(1, 0, 1),
        Position(2, 0, 2),
        Position(3, 1, 0),
        Position(4, 1, 1),
        Position(5, 1, 2),
        Position(6, 2, 0),
    ]
    assert [len(b) for _, b in plan] == [4, 4, 2, 4, 4, 2]
    for epoch in range(2):
        rows = sorted(int(i) for _, b in plan[3 * epoch : 3 * epoch + 3] for i in b)
        assert rows == list(range(10))
    # A fresh shuffle per epoch, and per rank.
    assert [list(b) for _, b in plan[:3]] != [list(b) for _, b in plan[3:]]
    assert [list(b) for b in epoch_batches(10, 4, 7, 0, 1)] != [list(b) for _, b in plan[:3]]


@pytest.mark.parametrize("done", [0, 1, 2, 3, 4, 5, 6])
def test_a_resumed_worker_runs_exactly_the_batches_left(done: int) -> None:
    """Resuming at any checkpoint's position repeats no step and skips none."""
    full = list(batch_plan(Position(), rows=10, batch_size=4, epochs=2, seed=7, rank=1))
    start = full[done - 1][0] if done else Position()
    resumed = list(batch_plan(start, rows=10, batch_size=4, epochs=2, seed=7, rank=1))
    assert [(p, list(b)) for p, b in resumed] == [(p, list(b)) for p, b in full[done:]]


def test_a_position_past_the_epochs_end_moves_to_the_next_epoch() -> None:
    plan = list(batch_plan(Position(3, 0, 5), rows=10, batch_size=4, epochs=2, seed=7, rank=0))
    assert [p for p, _ in plan] == [Position(4, 1, 1), Position(5, 1, 2), Position(6, 2, 0)]


def test_step_arithmetic() -> None:
    assert steps_per_epoch(96, 16) == 6 and steps_per_epoch(97, 16) == 7
    assert checkpoint_due(4, 2, False) and checkpoint_due(5, 0, True) and not checkpoint_due(5, 2, False)
    assert not checkpoint_due(4, 0, False)
    assert fault_step(5, attempt=1, restored=False) == 5
    assert fault_step(5, attempt=1, restored=True) is None and fault_step(5, 2, False) is None
    assert eta_seconds(10, 32, 64.0) == 5.0 and eta_seconds(10, 32, 0.0) is None


def test_the_worker_config_carries_no_resume_point() -> None:
    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import JobDocument

    spec = TrainingJobSpec.model_validate(
        {"model": {"source": "m"}, "data": {"train": "t", "validation": "v"}}
    )
    # A submitter that still sends the removed field is accepted (ignored), not refused.
    job = JobDocument.model_validate(
        {
            "namespace": "n",
            "name": "x",
            "runId": "r",
            "runUri": "file:///r",
            "spec": spec.wire(),
            "resumeFrom": "s3://b/c",
        }
    )
    config = build_config(job, ["a", "b"])
    assert "resume_from" not in config and config["checkpoints_uri"] == "file:///r/checkpoints/train"


# ------------------------------------------------------------------ checkpoints, step, evaluation


def tiny_model(seed: int) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=64,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,  # deterministic steps: the round trip compares two of them
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def encode(rows: Any) -> dict[str, Any]:
    """A stand-in tokenizer: one id per character, padded to the longest text."""
    import torch

    longest = max(len(r.text) for r in rows)
    ids = [[1 + ord(c) % 60 for c in r.text] + [0] * (longest - len(r.text)) for r in rows]
    mask = [[1] * len(r.text) + [0] * (longest - len(r.text)) for r in rows]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


ROWS = [Example("aaaa", "a", 1), Example("bbb", "b", 2), Example("abab", "a", 3), Example("bb", "b", 4)]


def step(model: Any, opt: Any) -> float:
    import torch

    return train_step(model, opt, encode(ROWS), torch.tensor([LABELS[r.label] for r in ROWS]))


def test_checkpoint_round_trip_continues_exactly(tmp_path: Path) -> None:
    import torch

    model = tiny_model(seed=0)
    opt = build_optimization(model, HP, total_steps=10, device_type="cpu", precision="fp32")
    step(model, opt)
    save_state(tmp_path, model, opt, Position(1, 0, 1), {"val_accuracy": 0.5})

    restored = tiny_model(seed=1)  # other initial weights: everything must come from the checkpoint
    restored_opt = build_optimization(restored, HP, total_steps=10, device_type="cpu", precision="fp32")
    assert load_state(tmp_path, restored, restored_opt) == Position(1, 0, 1)
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert restored_opt.scheduler.get_last_lr() == opt.scheduler.get_last_lr()
    # The next step of the restored copy is the next step of the original (optimizer moments included).
    assert step(restored, restored_opt) == pytest.approx(step(model, opt), abs=1e-6)
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize(
    ("change", "words"), [({"num_hidden_layers": 2}, "missing"), ({"hidden_size": 12}, "size mismatch")]
)
def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path, change: dict[str, int], words: str) -> None:
    from transformers import BertForSequenceClassification

    model = tiny_model(seed=0)
    save_state(tmp_path, model, build_optimization(model, HP, 10, "cpu", "fp32"), Position(), {})
    config = model.config.to_dict() | change
    other = BertForSequenceClassification(type(model.config).from_dict(config))
    with pytest.raises(TrainingError, match="does not fit the model") as err:
        load_state(tmp_path, other, build_optimization(other, HP, 10, "cpu", "fp32"))
    assert words in str(err.value)


class Registered:
    """Stands in for the ray.train.Checkpoint Ray Train hands a new worker group (a folder)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def as_directory(self) -> Any:
        from contextlib import nullcontext

        return nullcontext(self.path)


def saved(root: Path, step_no: int) -> Path:
    """A real checkpoint folder (save_state of the tiny BERT) at checkpoints/step-<n>."""
    model = tiny_model(seed=step_no)
    folder = root / f"step-{step_no:07d}"
    save_state(folder, model, build_optimization(model, HP, 10, "cpu", "fp32"), Position(step_no, 0, 0), {})
    return folder


def test_resume_takes_a_whole_checkpoint_ray_train_had_not_registered_yet(tmp_path: Path) -> None:
    """A worker killed just after its upload: storage holds a newer checkpoint than Ray Train's."""
    from rayrelay_core.store import open_store
    from rayrelay_workloads.train_state import resume_folder

    uri = f"file://{tmp_path}"
    store = open_store(uri)
    registered = Registered(saved(tmp_path, 5))
    saved(tmp_path, 10)
    with resume_folder(registered, store, uri) as found:
        assert found is not None and found[1] == "step-0000010 (uploaded, not yet registered by Ray Train)"
        model = tiny_model(seed=99)
        assert load_state(found[0], model, build_optimization(model, HP, 10, "cpu", "fp32")).step == 10


def test_resume_skips_a_cut_upload_and_older_folders(tmp_path: Path) -> None:
    from rayrelay_core.store import open_store
    from rayrelay_workloads.train_state import resume_folder

    uri = f"file://{tmp_path}"
    store = open_store(uri)
    saved(tmp_path, 3)  # older than the registered one: never taken
    registered = Registered(saved(tmp_path, 5))
    cut = saved(tmp_path, 10)
    weights = cut / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # the upload was cut short
    with resume_folder(registered, store, uri) as found:
        assert found == (Path(registered.path), "step-0000005")
    with resume_folder(None, open_store(f"file://{tmp_path}/none"), f"file://{tmp_path}/none") as found:
        assert found is None


def test_train_step_learns_and_evaluate_counts() -> None:
    model = tiny_model(seed=0)
    opt = build_optimization(
        model, {**HP, "warmup_ratio": 0.0}, total_steps=100, device_type="cpu", precision="fp32"
    )
    first = step(model, opt)
    for _ in range(30):
        last = step(model, opt)
    assert last < first
    accuracy, loss = evaluate(model, encode, ROWS, LABELS)
    assert accuracy == 1.0 and loss < first and model.training  # back in training mode
    wrong = [Example(r.text, "b" if r.label == "a" else "a", r.row) for r in ROWS]
    assert evaluate(model, encode, wrong, LABELS)[0] == 0.0


# ------------------------------------------------------------------ checkpoints from an untrusted store


class _SideEffect:
    """Unpickling this object creates a file: what an attacker's payload would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_state_file_holding_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    """Issue 12, finding 7: the state file is unpickled with weights_only (no code execution)."""
    import torch

    model = tiny_model(seed=0)
    opt = build_optimization(model, HP, 10, "cpu", "fp32")
    save_state(tmp_path, model, opt, Position(1, 0, 1), {})
    marker = tmp_path / "payload-ran"
    state = torch.load(tmp_path / "training_state.pt", weights_only=True)
    state["scheduler"]["evil"] = _SideEffect(marker)  # someone with write access to the checkpoint path
    torch.save(state, tmp_path / "training_state.pt")

    other = tiny_model(seed=1)
    with pytest.raises(TrainingError, match="refusing to load it"):
        load_state(tmp_path, other, build_optimization(other, HP, 10, "cpu", "fp32"))
    assert not marker.exists(), "the pickled payload ran while the checkpoint was loaded"


def test_a_grad_scaler_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    """The scaler's state (fp16 runs) is plain numbers: weights_only loads it."""
    import torch

    from rayrelay_workloads.train_state import Optimization

    model = tiny_model(seed=0)
    base = build_optimization(model, HP, 10, "cpu", "fp32")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    opt = Optimization(base.optimizer, base.scheduler, scaler=scaler)
    save_state(tmp_path, model, opt, Position(2, 0, 2), {})

    other = tiny_model(seed=1)
    other_base = build_optimization(other, HP, 10, "cpu", "fp32")
    other_opt = Optimization(other_base.optimizer, other_base.scheduler, scaler=torch.amp.GradScaler("cpu"))
    assert load_state(tmp_path, other, other_opt) == Position(2, 0, 2)
    assert other_opt.scaler.state_dict() == scaler.state_dict()
