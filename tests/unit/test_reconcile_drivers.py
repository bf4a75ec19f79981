"""Every driver runs the same pass: the kopf handlers, `rayrelay run`'s loop and the bench driver.

One fake backend script -- the Serve application absent, the dashboard not
answering once, deploying, running -- is played to each driver on a fake
clock. A spy on ``run_pass`` (patched where each driver looks it up) records
every pass; the three drivers must produce the very same status sequence,
including the temporary error's condition and its backoff delay, and the same
events.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, write_manifest
from rich.console import Console

from bench import serving as bench_serving
from rayrelay_operator import handlers
from rayrelay_operator import reconcile as reconcile_pkg
from rayrelay_operator.backends.base import BackendUnavailable
from rayrelay_operator.local import loop as local_loop
from rayrelay_operator.local.display import Display
from rayrelay_operator.local.objects import LocalObjects
from rayrelay_operator.reconcile import PassResult, ReconcileContext, run_pass
from rayrelay_operator.work import ServingObservation, ServingState

Seen = tuple[str, str, str, float | None]


def script() -> list[ServingObservation | Exception]:
    return [
        ServingObservation(ServingState.ABSENT),
        BackendUnavailable("Serve REST API at http://ray:8265 is not reachable: connection refused"),
        ServingObservation(ServingState.DEPLOYING, replicas=1, ready_replicas=0, message="replica starting"),
        ServingObservation(ServingState.RUNNING, url="http://127.0.0.1:8000", replicas=1, ready_replicas=1),
    ]


EXPECTED: list[Seen] = [
    ("Deploying", "Deploying", "", None),
    ("Deploying", "Deploying", "False:BackendUnavailable", 5.0),
    ("Deploying", "Deploying", "True:Reconciled", None),
    ("Ready", "Serving", "True:Reconciled", None),
]
EXPECTED_EVENTS = ["Deploying", "BackendUnavailable", "Ready"]


def seen(result: PassResult) -> Seen:
    conds = {c.type: c for c in result.status.conditions}
    rec = conds.get("Reconciled")
    return (
        str(result.status.phase),
        conds["Ready"].reason,
        f"{rec.status}:{rec.reason}" if rec else "",
        result.delay,
    )


class Scenario:
    """One driver's world: the resource, a scripted fake backend, a fake clock, a spy on run_pass."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        uri = str(tmp_path / "run" / "manifest.json")
        write_manifest(uri, sample_manifest("run"))
        self.obj: dict[str, Any] = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "sentiment", "namespace": "default", "uid": "u", "generation": 1},
            "spec": {"model": {"manifestUri": uri}, "backend": "ray"},
        }
        self.backend = FakeBackend(name="ray", script=script())
        self.clock = Clock()
        self.ctx, self.events = make_ctx(self.backend, self.clock, str(tmp_path))
        self.ctx.backends = {"ray": self.backend}
        self.passes: list[Seen] = []
        for module in (handlers, local_loop, reconcile_pkg):  # where each driver finds run_pass
            monkeypatch.setattr(module, "run_pass", self.spy)

    def spy(self, kind: str, obj: Any, ctx: ReconcileContext) -> PassResult:
        result = run_pass(kind, obj, ctx)
        self.passes.append(seen(result))
        return result

    def seconds(self) -> float:
        return (self.clock() - datetime(2026, 1, 1, 12, tzinfo=self.clock().tzinfo)).total_seconds()

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def event_reasons(self) -> list[str]:
        return [e.reason for e in self.events]


def drive_kopf_handler(sc: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler kopf calls (create/update/resume and the timer share it), patch applied as kopf does."""
    monkeypatch.setattr(
        handlers.kopf,
        "event",
        lambda body, *, type, reason, message: sc.ctx.emit(handlers.Event(type, reason, message)),
    )
    memo = kopf.Memo(ctx=sc.ctx)
    gate = handlers.ObjectGate()
    raw = dict(sc.obj, status={})
    while not sc.passes or sc.passes[-1][0] != "Ready":
        patch = kopf.Patch()
        try:
            handlers._reconcile("ModelDeployment", kopf.Body(raw), patch, memo, timer=True, gate=gate)
        except kopf.TemporaryError as exc:
            sc.sleep(float(exc.delay or 0))
        raw["status"] = {**raw["status"], **dict(patch.get("status") or {})}


def drive_local_run(sc: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    display = Display(Console(file=io.StringIO(), width=200))
    run = local_loop.LocalRun(
        LocalObjects([sc.obj]),
        sc.backend,
        sc.ctx.settings,
        display,
        clock=sc.seconds,
        sleep=sc.sleep,
        ctx=sc.ctx,
    )
    run.drive(deadline=sc.seconds() + 3600)


def drive_bench(sc: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = bench_serving.Cluster(ray=None, backend=sc.backend, serve_port=8000, settings=sc.ctx.settings)
    bench_serving.deploy(cluster, sc.obj, clock=sc.seconds, sleep=sc.sleep, ctx=sc.ctx)


DRIVERS: dict[str, Callable[[Scenario, pytest.MonkeyPatch], None]] = {
    "kopf-handler": drive_kopf_handler,
    "rayrelay-run": drive_local_run,
    "bench": drive_bench,
}


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_every_driver_runs_the_same_pass(
    driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = Scenario(tmp_path, monkeypatch)
    DRIVERS[driver](sc, monkeypatch)
    assert sc.passes == EXPECTED
    assert sc.event_reasons() == EXPECTED_EVENTS
    # Deploy again while the backend cannot tell which version runs (no args observed): idempotent.
    assert sc.backend.verbs() == ["deploy", "deploy", "deploy"]
    # Each waited out the pass's backoff before the next pass (none hammered the backend).
    assert sc.seconds() >= 5.0
