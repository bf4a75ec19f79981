"""Condition helpers: replace by type, and lastTransitionTime moves only on change."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rayrelay_core.api import Condition, ConditionStatus
from rayrelay_core.conditions import find_condition, is_true, rfc3339, set_condition

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def test_rfc3339_is_utc_seconds_with_z() -> None:
    assert rfc3339(T0) == "2024-05-01T12:00:00Z"
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert rfc3339(plus_two) == "2024-05-01T12:00:00Z"


def test_new_condition_gets_the_time() -> None:
    out = set_condition([], "Ready", False, "Deploying", "starting", T0, observed_generation=3)
    [ready] = out
    assert ready.status == "False"
    assert ready.last_transition_time == "2024-05-01T12:00:00Z"
    assert ready.observed_generation == 3


def test_same_status_keeps_transition_time_but_updates_message() -> None:
    first = set_condition([], "Ready", False, "Deploying", "starting", T0)
    second = set_condition(first, "Ready", ConditionStatus.FALSE, "Deploying", "2 of 3 replicas", T1, 4)
    [ready] = second
    assert ready.last_transition_time == rfc3339(T0)
    assert ready.message == "2 of 3 replicas"
    assert ready.observed_generation == 4


def test_status_change_moves_transition_time() -> None:
    first = set_condition([], "Ready", False, "Deploying", "starting", T0)
    second = set_condition(first, "Ready", "True", "Ready", "serving", T1)
    assert second[0].last_transition_time == rfc3339(T1)
    assert is_true(second, "Ready")
    assert not is_true(first, "Ready")


def test_input_list_is_not_modified() -> None:
    first = set_condition([], "Ready", False, "Deploying", "starting", T0)
    snapshot = [c.model_copy() for c in first]
    set_condition(first, "Ready", True, "Ready", "serving", T1)
    assert first == snapshot


def test_conditions_are_replaced_by_type_and_sorted() -> None:
    out = set_condition([], "Succeeded", "Unknown", "Running", "", T0)
    out = set_condition(out, "Ready", False, "Waiting", "", T0)
    out = set_condition(out, "Succeeded", True, "Done", "", T1)
    assert [c.type for c in out] == ["Ready", "Succeeded"]
    succeeded = find_condition(out, "Succeeded")
    assert succeeded is not None and succeeded.reason == "Done"
    assert find_condition(out, "Missing") is None
    assert not is_true(out, "Missing")


def test_condition_wire_form_is_camel_case() -> None:
    [c] = set_condition([], "Ready", True, "Ready", "ok", T0, 1)
    assert c.wire() == {
        "type": "Ready",
        "status": "True",
        "reason": "Ready",
        "message": "ok",
        "lastTransitionTime": "2024-05-01T12:00:00Z",
        "observedGeneration": 1,
    }
    assert Condition.model_validate(c.wire()) == c
