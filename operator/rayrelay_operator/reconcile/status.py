"""Status helpers shared by both state machines and the driver; all pure.

Condition types, the merge patch a driver writes (``status_patch``), the
permanent failure it stops on (``permanent_failure``), and the three statuses
that explain a problem rather than progress: ``invalid_spec_status`` (the spec
cannot run), ``failed_status`` (the backend refused what we asked, or another
permanent error) and ``problem_status`` (a temporary problem, retried with
backoff: the ``Reconciled`` condition says what and until when). Conditions
come from ``rayrelay_core.conditions`` (the clock passed in).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from rayrelay_core.api import DeploymentPhase, ModelDeploymentStatus, TrainingJobStatus, TrainingPhase
from rayrelay_core.conditions import find_condition, rfc3339, set_condition
from rayrelay_core.validation import InvalidResource, parse_resource
from rayrelay_operator.reconcile.errors import PERMANENT_REASONS
from rayrelay_operator.settings import Settings

# Condition types.
COND_RUNNING = "Running"  # TrainingJob: the Ray job runs (False: why not)
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
COND_CLEANED = "ChildrenDeleted"  # ttlSecondsAfterFinished done
COND_READY = "Ready"  # ModelDeployment: the endpoint answers with a verified model
COND_MODEL_AVAILABLE = "ModelAvailable"  # ModelDeployment: the model to serve is known
COND_PROGRESSING = "Progressing"  # ModelDeployment: a (new) model is being rolled out
# Both kinds, kuberay backend: the Ray cluster runs with Ray's token authentication (False: why
# not, e.g. KubeRay's installed CRDs lack spec.authOptions; the NetworkPolicy still guards it).
COND_RAY_AUTH = "RayAuthenticated"
# Both kinds: False while a temporary problem (store or backend unreachable, a missing
# permission) stops the passes; its reason names the problem, its message what and when.
COND_RECONCILED = "Reconciled"

Status = TrainingJobStatus | ModelDeploymentStatus
StatusT = TypeVar("StatusT", TrainingJobStatus, ModelDeploymentStatus)

# Longest condition message written: messages quote errors of stores, backends and
# the API server, whose text a tenant may choose (issue 12, finding 3).
MESSAGE_MAX_CHARS = 1000


def bounded(message: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``message`` cut to ``limit`` characters (with a marker when cut)."""
    return message if len(message) <= limit else message[: limit - 15] + "... (truncated)"


def bound_messages(status: StatusT) -> StatusT:
    """The status with every condition message at most ``MESSAGE_MAX_CHARS`` long."""
    for cond in status.conditions:
        if len(cond.message or "") > MESSAGE_MAX_CHARS:
            cond.message = bounded(cond.message)
    return status


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def status_patch(old: Mapping[str, Any] | None, new: Status) -> dict[str, Any]:
    """A JSON merge patch from the stored status to ``new`` ({} = nothing to write).

    Keys of ours that ``new`` no longer has are patched to None (= removed);
    keys we do not own (another writer's) are left alone.
    """
    old = dict(old or {})
    wire = new.wire()
    patch = {k: v for k, v in wire.items() if old.get(k) != v}
    for f in type(new).model_fields.values():
        key = f.alias or ""
        if key and key not in wire and old.get(key) is not None:
            patch[key] = None
    return patch


def status_changed(old: Mapping[str, Any] | None, new: Status) -> bool:
    """Whether writing ``new`` changes the stored status."""
    return bool(status_patch(old, new))


def permanent_failure(status: Status) -> str | None:
    """``"Reason: message"`` of a permanent failure (InvalidSpec, BackendRejected, ...) or None."""
    for cond in status.conditions:
        if (
            cond.reason in PERMANENT_REASONS
            and not (cond.type == COND_MODEL_AVAILABLE and cond.status == "True")
            and cond.type in (COND_FAILED, COND_READY, COND_MODEL_AVAILABLE)
        ):
            return f"{cond.reason}: {cond.message}"
    return None


def previous_status(obj: Mapping[str, Any], model: type[StatusT]) -> StatusT:
    try:
        return model.model_validate(obj.get("status") or {})
    except ValidationError:
        # A status we cannot read (hand-edited, older schema): start from scratch.
        return model()


def meta_of(obj: Mapping[str, Any]) -> tuple[str, str, int]:
    """(namespace, name, generation) of a resource as a dict."""
    meta = obj.get("metadata") or {}
    return (
        str(meta.get("namespace") or "default"),
        str(meta.get("name") or ""),
        int(meta.get("generation") or 1),
    )


def backend_name(spec_backend: Any, settings: Settings) -> str:
    return str(spec_backend or settings.default_backend)


def parse_typed(obj: Mapping[str, Any], kind: str) -> tuple[Any, str | None]:
    """The typed resource, or None and the InvalidSpec message."""
    doc = {k: v for k, v in obj.items() if k != "status"}
    try:
        parsed = parse_resource(doc)
    except InvalidResource as exc:
        return None, "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
    if parsed.kind != kind:
        return None, f"expected a {kind}, got {parsed.kind}"
    return parsed, None


def failed_status(previous: StatusT, reason: str, message: str, now: datetime, generation: int) -> StatusT:
    """Failed, with the condition that explains it; set before a driver stops retrying."""
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    if isinstance(status, TrainingJobStatus):
        status.phase = TrainingPhase.FAILED
        status.completion_time = status.completion_time or rfc3339(now)
        for type_, value in ((COND_FAILED, True), (COND_RUNNING, False), (COND_SUCCEEDED, False)):
            if type_ != COND_SUCCEEDED or find_condition(status.conditions, type_) is not None:
                status.conditions = set_condition(
                    status.conditions, type_, value, reason, message, now, generation
                )
    else:
        status.phase = DeploymentPhase.FAILED
        status.url, status.ready_replicas = None, 0
        status.conditions = set_condition(
            status.conditions, COND_READY, False, reason, message, now, generation
        )
        if find_condition(status.conditions, COND_PROGRESSING) is not None:
            status.conditions = set_condition(
                status.conditions, COND_PROGRESSING, False, reason, message, now, generation
            )
    return status


def invalid_spec_status(
    previous: StatusT, message: str, now: datetime, generation: int, reason: str = "InvalidSpec"
) -> StatusT:
    """Failed with InvalidSpec (or a policy refusal's reason); set before the driver raises."""
    return failed_status(previous, reason, message, now, generation)


def problem_status(previous: StatusT, reason: str, message: str, now: datetime, generation: int) -> StatusT:
    """The previous status with ``Reconciled`` False: a temporary problem, retried.

    Nothing else changes: what the resource was doing is still what it does
    (a store that does not answer says nothing about the training job).
    """
    status = previous.model_copy(deep=True)
    status.conditions = set_condition(
        status.conditions, COND_RECONCILED, False, reason, message, now, generation
    )
    return status


def reconciled_status(status: StatusT, now: datetime, generation: int) -> StatusT:
    """``Reconciled`` back to True after a problem (only where a problem was ever reported)."""
    cond = find_condition(status.conditions, COND_RECONCILED)
    if cond is None or cond.status == "True":
        return status
    status.conditions = set_condition(
        status.conditions,
        COND_RECONCILED,
        True,
        "Reconciled",
        f"recovered from {cond.reason}",
        now,
        generation,
    )
    return status
