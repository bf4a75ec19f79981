"""The backend interface: where a resource's work runs.

Reconcilers (``rayrelay_operator.reconcile``) decide *what* should exist; a
backend makes it so and reports what it sees. Two implementations:

- ``kuberay``: KubeRay ``RayJob`` / ``RayService`` objects in the cluster.
- ``ray``: an existing Ray cluster, through the Job Submission API and Serve's
  REST API (the local one for ``rayrelay run``).

Every method is idempotent and keyed by deterministic names (``TrainingWork``
and ``ServingWork`` carry them), so calling ``submit_training`` twice for the
same generation and attempt never starts a second job. Methods raise
``BackendUnavailable`` when the backend cannot be reached (temporary: retry
with backoff) and ``BackendRejected`` when it refuses the work for a reason
retrying will not fix (permanent).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_core.runs import JobDocument


class BackendUnavailable(RuntimeError):
    """The backend is not reachable yet (temporary)."""


class BackendRejected(RuntimeError):
    """The backend refused the work (permanent)."""


class WorkState(str, enum.Enum):
    """What a backend observes of a training run, in backend-neutral terms."""

    ABSENT = "Absent"  # nothing submitted (or it was deleted)
    WAITING = "Waiting"  # submitted, waiting for resources / pods / cluster start
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # the driver exited 0
    FAILED = "Failed"
    STOPPED = "Stopped"  # stopped on request (suspend)


@dataclass(frozen=True)
class TrainingWork:
    """A submission of one attempt of one generation of a TrainingJob."""

    submission_id: str  # deterministic: rayrelay-{ns}-{name}-g{generation}-a{attempt}
    child_name: str  # RayJob name (kuberay), same as submission_id where it fits
    job: JobDocument
    owner: dict[str, Any]  # ownerReference of the TrainingJob (kuberay)
    labels: dict[str, str]


@dataclass
class TrainingObservation:
    state: WorkState
    reason: str = ""  # CamelCase, e.g. ImagePullFailed, Unschedulable, DriverDied
    message: str = ""
    dashboard_url: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True)
class ServingWork:
    """One ModelDeployment's Serve application."""

    app_name: str  # Serve application name (= metadata.name)
    child_name: str  # RayService name (kuberay)
    namespace: str
    spec: ModelDeploymentSpec
    app_args: dict[str, Any]  # rayrelay_core.runs.serve_app_args(...)
    owner: dict[str, Any]
    labels: dict[str, str]


@dataclass
class ServingObservation:
    state: str  # Absent | Deploying | Running | Unhealthy | DeployFailed
    url: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    message: str = ""
    serving_args: dict[str, Any] | None = None  # the args of the version that serves now
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def submit_training(self, work: TrainingWork) -> None: ...
    def observe_training(self, work: TrainingWork) -> TrainingObservation: ...
    def stop_training(self, work: TrainingWork) -> None: ...
    def delete_training(self, namespace: str, name: str) -> None: ...

    def deploy_serving(self, work: ServingWork) -> None: ...
    def observe_serving(self, work: ServingWork) -> ServingObservation: ...
    def delete_serving(self, work: ServingWork) -> None: ...
