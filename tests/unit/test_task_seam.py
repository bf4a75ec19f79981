"""The task seam: the registry picks each task once, and the shared run calls a task's steps in order.

``run_pipeline`` is driven here with a recording task (it stands in for a real
task's data, export and publication) and a recording ``fit_best_checkpoint`` (it
stands in for the Ray Train driver, tested on a real Ray in the integration tests):
what is checked is the shared part, the order of the steps, the stages written to
``progress.json`` and the failure records, on a real ``file://`` store.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from rayrelay_core.runs import RunLayout
from rayrelay_workloads import pipeline
from rayrelay_workloads.failures import PipelineError, classify
from rayrelay_workloads.tasks import REGISTRY, UnknownTask, entry_for, gateway_module_for, task_for
from rayrelay_workloads.tasks.base import Prepared, Run
from rayrelay_workloads.train import TrainResult
from tests.pipeline_fixtures import tiny_job, tiny_spec


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_registered_task_is_found_by_its_name_and_has_every_step(name: str) -> None:
    task = task_for(name)
    assert task.name == name
    assert task.order in ("max", "min") and isinstance(task.metric, str) and task.metric
    for step in ("prepare", "train_loop", "loop_config", "check_trained", "export", "publish", "replica"):
        assert callable(getattr(task, step)), f"{name}: {step}"


def test_no_task_means_classification_and_an_unknown_one_is_an_invalid_spec() -> None:
    assert task_for(None).name == "sequence-classification"
    with pytest.raises(UnknownTask, match="'summarization' is not one of"):
        entry_for("summarization")
    with pytest.raises(UnknownTask) as caught:
        task_for("summarization")
    assert classify(caught.value) == ("InvalidSpec", False)


def test_the_trainers_and_replicas_are_each_tasks_own() -> None:
    from rayrelay_workloads.serve.model import ModelServer
    from rayrelay_workloads.textgen import lm
    from rayrelay_workloads.textgen.serving import TextGenServer
    from rayrelay_workloads.textgen.worker import lm_train_loop_per_worker
    from rayrelay_workloads.train_worker import train_loop_per_worker

    classification, textgen = task_for("sequence-classification"), task_for("text-generation")
    assert (classification.metric, classification.order) == ("val_accuracy", "max")
    assert (textgen.metric, textgen.order) == (lm.METRIC, "min")
    assert classification.train_loop() is train_loop_per_worker
    assert textgen.train_loop() is lm_train_loop_per_worker
    assert classification.replica() is ModelServer and textgen.replica() is TextGenServer


def test_the_gateway_sends_openai_paths_to_the_module_that_answers_them() -> None:
    from rayrelay_workloads.textgen import openai_gateway

    for path in openai_gateway.PATHS:
        assert gateway_module_for(path) == "rayrelay_workloads.textgen.openai_gateway"
    assert set(REGISTRY["text-generation"].gateway_paths) == set(openai_gateway.PATHS)
    assert gateway_module_for("/v2/models/m/infer") is None


class Refused(ValueError):
    """The recording task's own failure, with a reason of its own."""


class RecordingTask:
    """A task whose steps record what they were given (stands in for a real task's work)."""

    name = "recording"
    metric = "val_score"
    order: Literal["max", "min"] = "min"
    failure_reasons = ((Refused, "RefusedByTask", False),)

    def __init__(self, fail_in: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []  # (step, the stage progress.json held then)
        self.fail_in = fail_in

    def _record(self, step: str, run: Run) -> None:
        self.calls.append((step, run.progress.doc.stage))
        if step == self.fail_in:
            raise Refused(f"{step} refused\nsecond line")

    def prepare(self, run: Run) -> Prepared:
        self._record("prepare", run)
        return Prepared(
            job=run.job.model_copy(update={"name": "prepared"}), data=[1, 2], tokenizer_source="src"
        )

    def train_loop(self) -> Any:
        return "the loop"

    def loop_config(self, run: Run, prepared: Prepared) -> dict[str, Any]:
        self._record("loop_config", run)
        return {"rows": prepared.data}

    def check_trained(self, run: Run, prepared: Prepared, trained: TrainResult) -> None:
        self._record("check_trained", run)

    def export(self, run: Run, prepared: Prepared, trained: TrainResult) -> Any:
        self._record("export", run)
        run.progress.stage("Exporting")
        return {"exported": trained.checkpoint_dir}

    def publish(self, run: Run, prepared: Prepared, trained: TrainResult, exported: Any) -> Any:
        self._record("publish", run)
        assert exported == {"exported": trained.checkpoint_dir}
        return SimpleNamespace(recommended_variant="fp32"), "file:///manifest.json"

    def replica(self) -> Any:
        return None


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    fits: list[dict[str, Any]] = []

    def fake_fit(job: Any, loop: Any, config: Any, metric: str, order: str, scratch: str) -> TrainResult:
        fits.append({"job": job.name, "loop": loop, "config": config, "metric": metric, "order": order})
        return TrainResult(f"{scratch}/best", "file:///ckpt/step-1", {"val_score": 1.0}, "train")

    monkeypatch.setattr(pipeline, "fit_best_checkpoint", fake_fit)
    return fits


def _job(tmp_path: Path) -> Any:
    return tiny_job(tiny_spec("model", "train.jsonl", "validation.jsonl"), f"file://{tmp_path / 'store'}")


def _doc(job: Any, which: str) -> dict[str, Any]:
    layout = RunLayout(job.run_uri)
    path = getattr(layout, which).removeprefix("file://")
    return dict(json.loads(Path(path).read_text()))


def test_the_shared_run_calls_the_steps_in_order_and_trains_through_the_shared_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[dict[str, Any]]
) -> None:
    task = RecordingTask()
    monkeypatch.setattr(pipeline, "task_for", lambda name: task)
    said: list[str] = []
    job = _job(tmp_path)
    manifest = pipeline.run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), log=said.append)
    assert manifest.recommended_variant == "fp32"
    assert task.calls == [
        ("prepare", "Training"),
        ("loop_config", "Training"),
        ("check_trained", "Training"),
        ("export", "Training"),
        ("publish", "Exporting"),
    ]
    # The job the task prepared (e.g. with a resolved teacher) is the one trained.
    assert recorded == [
        {
            "job": "prepared",
            "loop": "the loop",
            "config": {"rows": [1, 2]},
            "metric": "val_score",
            "order": "min",
        }
    ]
    assert _doc(job, "progress")["stage"] == "Succeeded"
    assert said[-1] == "published file:///manifest.json (recommended variant fp32)"


@pytest.mark.parametrize("step", ["prepare", "check_trained", "publish"])
def test_a_tasks_own_failure_reason_reaches_failure_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[dict[str, Any]], step: str
) -> None:
    task = RecordingTask(fail_in=step)
    monkeypatch.setattr(pipeline, "task_for", lambda name: task)
    job = _job(tmp_path)
    with pytest.raises(PipelineError) as caught:
        pipeline.run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), log=lambda _: None)
    assert (caught.value.reason, caught.value.retryable) == ("RefusedByTask", False)
    assert caught.value.message == f"{step} refused"
    failure = _doc(job, "failure")
    assert (failure["reason"], failure["message"], failure["retryable"]) == (
        "RefusedByTask",
        f"{step} refused",
        False,
    )
    assert _doc(job, "progress")["stage"] == "Failed"
    assert len(recorded) == (0 if step == "prepare" else 1)


def test_an_unregistered_task_fails_the_run_as_an_invalid_spec(tmp_path: Path) -> None:
    job = _job(tmp_path)
    job = job.model_copy(
        update={
            "spec": job.spec.model_copy(
                update={"model": job.spec.model.model_copy(update={"task": "summarization"})}
            )
        }
    )
    with pytest.raises(PipelineError) as caught:
        pipeline.run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), log=lambda _: None)
    assert caught.value.reason == "InvalidSpec"
    assert _doc(job, "failure")["reason"] == "InvalidSpec"
