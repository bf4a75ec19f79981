"""Test doubles shared by the reconciler unit tests: a recording backend and documents.

``FakeBackend`` implements the ``WorkBackend`` protocol in memory: tests set
what it observes (or script it: ``script`` holds what the next calls observe,
an exception to raise, ``refuse`` an exception per verb) and read back what the
reconcilers asked of it. The document
helpers write progress/failure/manifest documents the way the workloads do,
into a local folder store, so the reconcilers' small I/O step runs for real.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import (
    FailureDoc,
    FileEntry,
    Lineage,
    Manifest,
    Parity,
    ProgressDoc,
    RunLayout,
    TokenizerInfo,
    VariantInfo,
    run_id_for,
)
from rayrelay_core.store import LocalStore
from rayrelay_operator.reconcile import Event, ReconcileContext
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import (
    ServingObservation,
    ServingState,
    ServingWork,
    TrainingObservation,
    TrainingWork,
    WorkState,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@dataclass
class FakeBackend:
    name: str = "kuberay"
    training: dict[str, TrainingObservation] = field(default_factory=dict)  # by submission id
    serving: ServingObservation = field(default_factory=lambda: ServingObservation(ServingState.ABSENT))
    calls: list[tuple[str, str]] = field(default_factory=list)
    submitted: list[TrainingWork] = field(default_factory=list)
    deployed: list[ServingWork] = field(default_factory=list)
    # What the next observe_serving calls see, in order (an exception is raised); then ``serving``.
    script: list[ServingObservation | Exception] = field(default_factory=list)
    # verb ("submit", "deploy", ...) -> the exception that call raises (after being recorded).
    refuse: dict[str, Exception] = field(default_factory=dict)

    def _refused(self, verb: str) -> None:
        if verb in self.refuse:
            raise self.refuse[verb]

    def submit_training(self, work: TrainingWork) -> None:
        self.calls.append(("submit", work.submission_id))
        self._refused("submit")
        self.submitted.append(work)
        self.training.setdefault(work.submission_id, TrainingObservation(WorkState.WAITING))

    def observe_training(self, work: TrainingWork) -> TrainingObservation:
        return self.training.get(work.submission_id, TrainingObservation(WorkState.ABSENT))

    def stop_training(self, work: TrainingWork) -> None:
        self.calls.append(("stop", work.submission_id))

    def delete_training(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", f"{namespace}/{name}"))

    def deploy_serving(self, work: ServingWork) -> None:
        self.calls.append(("deploy", work.app_name))
        self._refused("deploy")
        self.deployed.append(work)

    def observe_serving(self, work: ServingWork) -> ServingObservation:
        if self.script:
            nxt = self.script.pop(0)
            if isinstance(nxt, Exception):
                raise nxt
            self.serving = nxt
        return self.serving

    def delete_serving(self, work: ServingWork) -> None:
        self.calls.append(("undeploy", work.app_name))

    def verbs(self) -> list[str]:
        return [verb for verb, _ in self.calls]


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def make_ctx(
    backend: FakeBackend, clock: Clock, artifacts: str, **kw: Any
) -> tuple[ReconcileContext, list[Event]]:
    events: list[Event] = []
    # store_poll_seconds=0: every pass reads a running attempt's progress (the scenarios step
    # through stages without time passing); test_training_store_reads.py tests the pacing.
    settings = Settings(artifacts_uri=artifacts, stuck_initializing_seconds=600, store_poll_seconds=0)
    ctx = ReconcileContext(
        settings=settings,
        backends={"kuberay": backend},
        now=clock,
        store_for=lambda uri, endpoint: LocalStore(),
        emit=events.append,
        jitter=lambda: 0.5,  # the middle of the spread: delays are exact
        **kw,
    )
    return ctx, events


def tj_dict(name: str = "sst2", generation: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"source": "bert-base-uncased", "numLabels": 2},
        "data": {"train": "s3://data-bkt/train.jsonl", "validation": "s3://data-bkt/val.jsonl"},
    }
    body.update(spec)
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-1", "generation": generation},
        "spec": body,
    }


def layout_of(obj: dict[str, Any], artifacts: str) -> RunLayout:
    spec = TrainingJobSpec.model_validate(obj["spec"])
    return RunLayout.for_job(artifacts, "ml", obj["metadata"]["name"], run_id_for(spec))


def write_progress(layout: RunLayout, stage: str, step: int = 10, total: int = 100, attempt: int = 1) -> None:
    doc = ProgressDoc(
        stage=stage,
        attempt=attempt,
        epoch=0.5,
        step=step,
        total_steps=total,
        loss=0.42,
        update_time="2026-01-01T12:00:30Z",
    )
    doc.last_checkpoint = None if step < 50 else doc.last_checkpoint
    LocalStore().write_bytes(layout.progress, doc.to_json().encode())


def write_failure(
    layout: RunLayout, reason: str, message: str, retryable: bool, attempt: int | None = None
) -> None:
    doc = FailureDoc(reason=reason, message=message, retryable=retryable, attempt=attempt)
    LocalStore().write_bytes(layout.failure, doc.to_json().encode())


def sample_manifest(run_id: str = "run-x", int8_accepted: bool = True) -> Manifest:
    return Manifest(
        run_id=run_id,
        created_at="2026-01-01T12:05:00Z",
        files=[FileEntry(path="onnx/model.onnx", sha256="a" * 64, size=10)],
        variants={
            "pytorch": VariantInfo(accuracy=0.91),
            "fp32": VariantInfo(file="onnx/model.onnx", accuracy=0.91),
            "int8": VariantInfo(file="onnx/model.int8.onnx", accuracy=0.90, accepted=int8_accepted),
        },
        recommended_variant="int8" if int8_accepted else "fp32",
        parity=Parity(max_abs_logit_diff_fp32=0.0004, tolerance=0.001, passed=True, samples=8),
        labels=["neg", "pos"],
        tokenizer=TokenizerInfo(max_seq_length=128),
        lineage=Lineage(spec_hash="h", base_model="bert-base-uncased", package_version="0.1.0"),
        metrics={"eval_accuracy": 0.91},
    )


def write_manifest(uri: str, manifest: Manifest | None = None) -> None:
    LocalStore().write_bytes(uri, (manifest or sample_manifest()).to_json().encode())


def with_status(obj: dict[str, Any], status: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["status"] = status.wire()
    return out


def artifacts_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


class NoRayAuthCRD:
    """ApiextensionsV1Api without KubeRay's CRDs (404): a KubeRayBackend then creates its
    children without ``authOptions``, as with a KubeRay older than 1.5.1
    (test_ray_token_units.py covers the field itself)."""

    def read_custom_resource_definition(self, name: str, **kwargs: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        raise ApiException(status=404, reason="Not Found")
