"""The backend interface: where a resource's work runs.

Reconcilers (``rayrelay_operator.reconcile``) decide *what* should exist; a
backend makes it so and reports what it sees, in the values of
``rayrelay_operator.work``. Two implementations:

- ``kuberay``: KubeRay ``RayJob`` / ``RayService`` objects in the cluster.
- ``ray``: an existing Ray cluster, through the Job Submission API and Serve's
  REST API (the local one for ``rayrelay run``).

Every method is idempotent and keyed by deterministic names (``TrainingWork``
and ``ServingWork`` carry them), so calling ``submit_training`` twice for the
same generation and attempt never starts a second job. Methods raise
``BackendUnavailable`` when the backend cannot be reached (temporary: retry
with backoff), ``MissingPermission`` when the operator lacks a permission
(temporary: fixed by RBAC, not by the spec) and ``BackendRejected`` when it
refuses the work for a reason retrying will not fix (permanent; the resource
fails with the backend's words).

``WorkBackend`` is the protocol; ``rayrelay_core.api.Backend`` is the spec's
``backend`` field (``kuberay`` | ``ray``) that picks one.
"""

from __future__ import annotations

from typing import Protocol

from rayrelay_operator.work import ServingObservation, ServingWork, TrainingObservation, TrainingWork


class BackendUnavailable(RuntimeError):
    """The backend is not reachable yet (temporary); ``reason`` is the status condition's reason."""

    reason = "BackendUnavailable"


class RayUnavailable(BackendUnavailable):
    """The Ray cluster does not answer at all (its head stopped, restarting, or not started)."""

    reason = "RayUnavailable"


class RayAuthFailed(BackendUnavailable):
    """The Ray cluster refused the operator's token, or wanted one it was not given
    (``RAY_AUTH_MODE=token``); temporary: fixing the operator's token ends it."""

    reason = "RayAuthenticationFailed"


class MissingPermission(BackendUnavailable):
    """The operator may not do or read something it needs (temporary: an RBAC fix ends it)."""

    reason = "MissingPermission"


class BackendRejected(RuntimeError):
    """The backend refused the work (permanent)."""


class WorkBackend(Protocol):
    name: str

    def submit_training(self, work: TrainingWork) -> None: ...
    def observe_training(self, work: TrainingWork) -> TrainingObservation: ...
    def stop_training(self, work: TrainingWork) -> None: ...
    def delete_training(self, namespace: str, name: str) -> None: ...

    def deploy_serving(self, work: ServingWork) -> None: ...
    def observe_serving(self, work: ServingWork) -> ServingObservation: ...
    def delete_serving(self, work: ServingWork) -> None: ...
