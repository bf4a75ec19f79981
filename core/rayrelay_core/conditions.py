"""Pure helpers for Kubernetes-style conditions on rayrelay status objects.

Conditions are replaced by type. ``lastTransitionTime`` only moves when the
condition's ``status`` changes, so a reconcile pass that recomputes the same
condition (perhaps with a fresher message) never looks like a new transition.
The clock is passed in; nothing here reads it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from rayrelay_core.api import Condition, ConditionStatus


def rfc3339(moment: datetime) -> str:
    """Kubernetes' timestamp form: UTC, second precision, trailing Z."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    for condition in conditions:
        if condition.type == type_:
            return condition
    return None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus | str | bool,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int | None = None,
) -> list[Condition]:
    """Return a new list with the condition of ``type_`` set; the input is untouched."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status = ConditionStatus(status)
    previous = find_condition(conditions, type_)
    changed = previous is None or ConditionStatus(previous.status) != status
    transition = rfc3339(now) if changed or previous is None else previous.last_transition_time
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    out = [c for c in conditions if c.type != type_]
    out.append(new)
    # Stable order by type keeps the written status identical across passes.
    return sorted(out, key=lambda c: c.type)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = find_condition(conditions, type_)
    return condition is not None and ConditionStatus(condition.status) == ConditionStatus.TRUE
