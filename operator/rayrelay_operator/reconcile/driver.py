"""One reconcile pass, the same for every driver: ``run_pass(kind, obj, ctx) -> PassResult``.

The kopf handlers (``rayrelay_operator.handlers``), ``rayrelay run``'s loop
(``rayrelay_operator.local.loop``), the benchmarks (``bench/serving.py``) and
the tests call this and nothing below it. A pass:

1. plans: parse the resource, observe (store, backend), compute the status and
   the actions (``training.plan_trainingjob`` / ``deployment.plan_modeldeployment``);
2. applies the actions through the backend, then emits the events;
3. returns the status to write as a merge patch, and what went wrong.

No exception leaves a pass: every error ends in the status, so a resource
never sits in ``Pending`` without a reason.

- A *permanent* error (the backend refused the work: ``BackendRejected``, a
  4xx from the API) leaves the resource ``Failed`` with a condition whose
  reason is the error class's (``BackendRejected``) and whose message carries
  the backend's words, plus a Warning event. An invalid spec is permanent too,
  and so reported before anything is tried.
- A *temporary* error (the artifact store or the backend unreachable, a
  missing permission) keeps the previous status and sets ``Reconciled`` False
  with the reason (``StoreUnavailable``, ``BackendUnavailable``,
  ``MissingPermission``) and a message naming what failed (the store's URI),
  with one Warning event when it starts; ``PassResult.delay`` says when to try
  again: exponential from when the problem began, jittered, capped
  (``errors.backoff_delay``). The computed status of a pass whose apply failed
  temporarily is dropped: the next pass recomputes it and the actions are
  idempotent.

A driver writes ``result.patch`` (when not empty), then stops retrying on
``result.permanent`` or waits ``result.delay`` on ``result.temporary``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import ModelDeploymentStatus, TrainingJobStatus
from rayrelay_core.conditions import find_condition
from rayrelay_operator.reconcile.context import Event, Plan, ReconcileContext, apply_actions, emit
from rayrelay_operator.reconcile.deployment import delete_modeldeployment, plan_modeldeployment
from rayrelay_operator.reconcile.errors import ErrorClass, classify, retries_since
from rayrelay_operator.reconcile.status import (
    COND_RECONCILED,
    Status,
    bound_messages,
    bounded,
    failed_status,
    meta_of,
    parse_time,
    permanent_failure,
    previous_status,
    problem_status,
    reconciled_status,
    status_patch,
)
from rayrelay_operator.reconcile.training import delete_trainingjob, plan_trainingjob

TRAININGJOB = "TrainingJob"
MODELDEPLOYMENT = "ModelDeployment"

_PLANNERS: dict[str, Callable[[Mapping[str, Any], ReconcileContext], Plan]] = {
    TRAININGJOB: plan_trainingjob,
    MODELDEPLOYMENT: plan_modeldeployment,
}
_STATUS_MODELS: dict[str, type[TrainingJobStatus] | type[ModelDeploymentStatus]] = {
    TRAININGJOB: TrainingJobStatus,
    MODELDEPLOYMENT: ModelDeploymentStatus,
}
_DELETERS: dict[str, Callable[[Mapping[str, Any], ReconcileContext], None]] = {
    TRAININGJOB: delete_trainingjob,
    MODELDEPLOYMENT: delete_modeldeployment,
}


@dataclass(frozen=True)
class PassResult:
    """What one pass did, for its driver."""

    status: Status  # the resource's status after this pass
    patch: dict[str, Any] = field(default_factory=dict)  # merge patch from the stored status ({}: none)
    problem: str | None = None  # "Reason: message" of what went wrong, None when nothing did
    error: ErrorClass | None = None  # the problem's class: permanent or temporary (with its delay)
    delay: float | None = None  # seconds before the next pass: set on temporary errors

    @property
    def permanent(self) -> bool:
        return self.error is not None and self.error.permanent

    @property
    def temporary(self) -> bool:
        return self.error is not None and not self.error.permanent


def run_pass(kind: str, obj: Mapping[str, Any], ctx: ReconcileContext) -> PassResult:
    """Observe, compute and apply one pass of ``obj`` (a dict with its stored status)."""
    model: Any = _STATUS_MODELS[kind]
    previous = previous_status(obj, model)
    try:
        plan = _PLANNERS[kind](obj, ctx)
    except Exception as exc:  # classified: every error ends in the status
        return _failed_pass(obj, previous, exc, ctx)
    try:
        apply_actions(plan.actions, ctx, plan.backend)
    except Exception as exc:
        return _failed_pass(obj, plan.status, exc, ctx, previous)
    _ns, _name, gen = meta_of(obj)
    status = bound_messages(reconciled_status(plan.status, ctx.now(), gen))
    problem = permanent_failure(status)
    error = ErrorClass(True, problem.split(":", 1)[0], 0) if problem else None
    return PassResult(status, status_patch(obj.get("status"), status), problem, error)


def delete_pass(kind: str, obj: Mapping[str, Any], ctx: ReconcileContext) -> None:
    """Remove the resource's children (the finalizer's job); errors propagate: always retry."""
    _DELETERS[kind](obj, ctx)


def _failed_pass(
    obj: Mapping[str, Any],
    planned: Any,  # TrainingJobStatus | ModelDeploymentStatus
    exc: Exception,
    ctx: ReconcileContext,
    previous: Any = None,
) -> PassResult:
    """The pass's error, written into the status (permanent: Failed; temporary: Reconciled False)."""
    now = ctx.now()
    _ns, _name, gen = meta_of(obj)
    stored = previous if previous is not None else planned
    stored_problem = find_condition(stored.conditions, COND_RECONCILED)
    ongoing = stored_problem is not None and stored_problem.status == "False"
    since = parse_time(stored_problem.last_transition_time) if ongoing and stored_problem else None
    # Retries counted from when the problem began: the schedule needs no counter, survives restarts.
    err = classify(exc, retries_since(since, now, ctx.settings), ctx.settings, ctx.jitter())
    message = bounded(str(exc) or type(exc).__name__)
    if err.permanent:
        status = bound_messages(failed_status(planned, err.reason, message, now, gen))
        emit(ctx, Event("Warning", err.reason, message[:1000]))
        return PassResult(status, status_patch(obj.get("status"), status), f"{err.reason}: {message}", err)
    # Temporary: what the resource was doing is still what it does; say what stops the pass.
    status = bound_messages(
        problem_status(stored, err.reason, f"{message}; retrying in {err.delay:.0f}s", now, gen)
    )
    if not ongoing or (stored_problem is not None and stored_problem.reason != err.reason):
        emit(ctx, Event("Warning", err.reason, message[:1000]))
    patch = status_patch(obj.get("status"), status)
    return PassResult(status, patch, f"{err.reason}: {message}", err, err.delay)
