"""Waiting out an S3 outage (issue 14, case 4): ``rayrelay_workloads.storewait`` and the status meanwhile.

``hold`` retries only an outage (the store not reachable, 5xx / 429 / 408), with
backoff and jitter, within its budget; a ModelDeployment whose replicas start
while the store does not answer says so (``WaitingForArtifactStore``). The real
outages (moto's server stopped) are in ``tests/faults/test_s3_outage_*.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_reconcile_deployment import Driver, cond

from rayrelay_core.conditions import find_condition
from rayrelay_core.store import LocalStore, NotFound, StoreError
from rayrelay_workloads.storewait import StoreWait, hold, is_outage, wait_budget_s

DOWN = "s3://b/k: cannot reach the S3 store: EndpointConnectionError"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def failing(times: int, error: StoreError) -> Any:
    calls = {"n": 0}

    def op() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "done"

    op.calls = calls  # type: ignore[attr-defined]
    return op


def test_an_outage_is_waited_out_with_backoff_and_jitter() -> None:
    clock, wait = Clock(), StoreWait()
    op = failing(5, StoreError(DOWN))
    assert hold(op, "x", wait=wait, budget_s=300, sleep=clock.sleep, clock=clock) == "done"
    assert wait.retries == 5 and op.calls["n"] == 6
    for n, slept in enumerate(clock.sleeps, start=1):
        exact = min(15.0, 2 ** (n - 1))
        assert 0.8 * exact <= slept <= 1.2 * exact
    assert wait.waited_s == pytest.approx(sum(clock.sleeps))


def test_past_the_budget_the_error_propagates() -> None:
    clock = Clock()
    with pytest.raises(StoreError, match="cannot reach"):
        hold(failing(100, StoreError(DOWN)), "x", budget_s=20, sleep=clock.sleep, clock=clock)
    assert clock.now <= 20


@pytest.mark.parametrize(
    "error",
    [
        NotFound("s3://b/k: no such object"),
        StoreError("s3://b/k: the S3 store answered AccessDenied (HTTP 403)"),
    ],
)
def test_what_is_not_an_outage_fails_at_once(error: StoreError) -> None:
    clock = Clock()
    with pytest.raises(type(error)):
        hold(failing(1, error), "x", budget_s=300, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []


def test_outages_and_the_budget_knob() -> None:
    assert is_outage(StoreError("s3://b/k: the S3 store answered SlowDown (HTTP 503)"))
    assert is_outage(StoreError("s3://b/k: the S3 store answered an error (HTTP 429)"))
    assert not is_outage(StoreError("/x: Permission denied"))
    assert wait_budget_s({}) == 300.0
    assert wait_budget_s({"RAYRELAY_STORE_WAIT_SECONDS": "45"}) == 45.0


class DownStore(LocalStore):
    def exists(self, uri: str) -> bool:
        raise StoreError(DOWN)


def test_replicas_starting_while_the_store_is_down_say_so(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    assert d.step().phase == "Deploying"
    d.serve("Deploying")
    d.ctx.store_for = lambda uri, endpoint: DownStore()  # type: ignore[assignment]
    s = d.step()
    assert s.phase == "Deploying" and cond(s, "Ready") == ("False", "WaitingForArtifactStore")
    ready = find_condition(s.conditions, "Ready")
    assert (
        ready is not None
        and "wait for the artifact store" in ready.message
        and "cannot reach" in ready.message
    )
    d.ctx.store_for = lambda uri, endpoint: LocalStore()  # type: ignore[assignment]
    assert cond(d.step(), "Ready") == ("False", "Deploying")
    d.serve("Running")
    assert d.step().phase == "Ready"
