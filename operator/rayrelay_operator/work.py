"""The typed values that pass between the reconcilers, the builders and the backends.

``reconcile`` computes a ``TrainingWork`` / ``ServingWork`` (what should run,
under which deterministic names: ``naming``); ``builders.kuberay`` turns them
into KubeRay manifests; a backend (``backends``) runs them and reports back a
``TrainingObservation`` / ``ServingObservation`` in backend-neutral terms
(``WorkState`` / ``ServingState``). Plain data only: nothing here talks to
anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_core.runs import JobDocument
from rayrelay_core.variants import VariantChoice


class WorkState(str, enum.Enum):
    """What a backend observes of a training run."""

    ABSENT = "Absent"  # nothing submitted (or it was deleted)
    WAITING = "Waiting"  # submitted, waiting for resources / pods / cluster start
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"  # the driver exited 0
    FAILED = "Failed"
    STOPPED = "Stopped"  # stopped on request (suspend)


class ServingState(str, enum.Enum):
    """What a backend observes of a deployment's Serve application."""

    ABSENT = "Absent"  # no application (or no RayService)
    DEPLOYING = "Deploying"  # replicas starting, or a new version rolling out
    RUNNING = "Running"
    UNHEALTHY = "Unhealthy"  # deployed, but replicas fail their health checks
    DEPLOY_FAILED = "DeployFailed"  # the application could not be deployed


# Serve's application status (REST API and KubeRay's RayService status alike).
_SERVE_APP_STATES = {
    "NOT_STARTED": ServingState.DEPLOYING,
    "DEPLOYING": ServingState.DEPLOYING,
    "RUNNING": ServingState.RUNNING,
    "DEPLOY_FAILED": ServingState.DEPLOY_FAILED,
    "UNHEALTHY": ServingState.UNHEALTHY,
    "DELETING": ServingState.DEPLOYING,
}


def serving_state(serve_app_status: str) -> ServingState:
    """A Serve application status (``RUNNING``, ``DEPLOY_FAILED``, ...) as a ``ServingState``.

    An unknown or empty status counts as deploying: Serve is on its way somewhere.
    """
    return _SERVE_APP_STATES.get(serve_app_status, ServingState.DEPLOYING)


@dataclass(frozen=True)
class TrainingWork:
    """A submission of one attempt of one generation of a TrainingJob."""

    submission_id: str  # deterministic: rayrelay-{ns}-{name}-{hash}-g{generation}-a{attempt}
    child_name: str  # RayJob name (kuberay), same as submission_id where it fits
    job: JobDocument
    owner: dict[str, Any]  # ownerReference of the TrainingJob (kuberay)
    labels: dict[str, str]


@dataclass(frozen=True)
class RayAuth:
    """Whether the Ray cluster of a piece of work runs with Ray's token authentication.

    Reported by the kuberay backend (the cluster's ``authOptions`` as KubeRay kept them);
    ``reason`` / ``message`` become the resource's ``RayAuthenticated`` condition.
    """

    on: bool
    reason: str
    message: str


@dataclass
class TrainingObservation:
    state: WorkState
    reason: str = ""  # CamelCase, e.g. ImagePullFailed, Unschedulable, DriverDied
    message: str = ""
    dashboard_url: str | None = None
    started_at: str | None = None  # RFC 3339; for StuckInitializing
    ray_auth: RayAuth | None = None  # the cluster's token authentication, where the backend knows


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
    # While a new model rolls out: the replicas running the previous one, so that Serve gets
    # room for one new replica beside them (rayrelay_core.serveconfig.surge_autoscaling).
    surge_from: int | None = None
    # spec.auth: sha256 digests of the endpoint's API keys (rayrelay_core.apikeys), read from
    # the Secret this pass; they go into Serve's user_config, never into app_args.
    key_digests: tuple[str, ...] | None = None

    @property
    def key_digest_list(self) -> list[str] | None:
        return None if self.key_digests is None else list(self.key_digests)


@dataclass
class ServingObservation:
    state: ServingState
    url: str | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    message: str = ""
    serving_args: dict[str, Any] | None = None  # the args of the version that serves now
    target_replicas: int | None = None  # what the autoscaler wants now (None: not reported)
    ongoing_requests: float | None = None  # in flight or queued across the replicas, when known
    variant: VariantChoice | None = None  # what a running replica serves and why, when it reports it
    # The API key digests in the deployed config (user_config; None: none there or not known).
    serving_key_digests: list[str] | None = None
    ray_auth: RayAuth | None = None  # the cluster's token authentication, where the backend knows
