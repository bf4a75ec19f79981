"""The resources of one `rayrelay run`, in memory, standing in for the Kubernetes API."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import DeploymentPhase, TrainingPhase

NAMESPACE = "default"
TJ = "TrainingJob"
MD = "ModelDeployment"


@dataclass
class LocalObjects:
    """The resources of one run, by kind and name."""

    objects: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.objects:
            meta = obj["metadata"]
            if obj["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
                return obj
        return None

    def get_trainingjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(TJ, namespace, name)


@dataclass
class Tracked:
    """What the loop knows about one resource beyond its status."""

    obj: dict[str, Any]
    error: str | None = None  # a permanent failure, or one of the loop's own (deploy timeout)
    last_temporary: str | None = None
    temporary_failures: int = 0
    not_before: float = 0.0  # the pass's backoff after a temporary error (clock seconds)
    submitted: bool = False  # a training job was submitted during this run
    ready_since: float | None = None
    waiting_since: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})


def training_done(t: Tracked) -> bool:
    return t.error is not None or t.status.get("phase") in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)


def deployment_done(t: Tracked, objects: LocalObjects) -> bool:
    if t.error is not None:
        return True
    phase = t.status.get("phase")
    if phase in (DeploymentPhase.READY, DeploymentPhase.FAILED):
        return True
    return referenced_training_failed(t, objects) is not None


def done(t: Tracked, objects: LocalObjects) -> bool:
    if t.kind == TJ:
        return training_done(t) or referenced_training_failed(t, objects) is not None
    return deployment_done(t, objects)


def referenced_training_failed(t: Tracked, objects: LocalObjects, depth: int = 0) -> str | None:
    """Why a ModelDeployment will never get its model, or a student TrainingJob its teacher
    (``spec.distillation.teacher.trainingJobRef``): that TrainingJob failed, or waits for
    a teacher that failed."""
    spec = t.obj["spec"]
    if depth > len(objects.objects):  # a cycle of teachers: none of them ever runs
        return "its TrainingJobs name each other as teachers"
    if t.kind == TJ:
        teacher = ((spec.get("distillation") or {}).get("teacher") or {}).get("trainingJobRef") or {}
        ref, what = teacher.get("name"), "teacher TrainingJob"
    else:
        ref, what = ((spec.get("model") or {}).get("trainingJobRef") or {}).get("name"), "TrainingJob"
    tj = objects.get_trainingjob(NAMESPACE, ref) if ref else None
    if tj is None:
        return None
    status = tj.get("status") or {}
    if status.get("phase") == TrainingPhase.FAILED:
        return f"its {what} {ref} failed"
    upstream = referenced_training_failed(Tracked(tj), objects, depth + 1)
    return f"its {what} {ref} will not run: {upstream}" if upstream else None


def condition_message(status: dict[str, Any], type_: str) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("message") or "")[:160]
    return ""
