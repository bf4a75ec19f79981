"""The loop of `rayrelay run`: ``reconcile.run_pass`` on every resource until each is done.

The pass is the operator's (``rayrelay_operator.reconcile.driver``): its patch
is written into the in-memory object, a permanent problem ends the resource,
and a temporary one holds it back for the pass's delay (the same jittered
exponential backoff the operator uses), while the status says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from rayrelay_core.api import DeploymentPhase, TrainingPhase
from rayrelay_operator.backends.base import WorkBackend
from rayrelay_operator.local.display import Display
from rayrelay_operator.local.objects import (
    MD,
    TJ,
    LocalObjects,
    Tracked,
    condition_message,
    done,
    training_done,
)
from rayrelay_operator.reconcile import Event, PassResult, ReconcileContext, delete_pass, run_pass
from rayrelay_operator.settings import Settings

POLL_SECONDS = 1.0
# Whole run (training included) and the deployment after its model exists; both
# can be raised through the environment for big models on slow machines.
RUN_TIMEOUT_S = float(os.environ.get("RAYRELAY_RUN_TIMEOUT_SECONDS", 4 * 3600))
DEPLOY_TIMEOUT_S = float(os.environ.get("RAYRELAY_RUN_DEPLOY_TIMEOUT_SECONDS", 600))
# A cluster still starting fails a few calls: a temporary problem is told from this many on.
QUIET_TEMPORARY_FAILURES = 5


class RunError(RuntimeError):
    """A user-facing failure of `rayrelay run`; the message is printed as is."""


class LocalRun:
    """One `rayrelay run`: passes until done (report and smoke test: ``local.report``)."""

    def __init__(
        self,
        objects: LocalObjects,
        backend: WorkBackend,
        settings: Settings,
        display: Display,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        ctx: ReconcileContext | None = None,
    ) -> None:
        self.objects = objects
        self.backend = backend
        self.settings = settings
        self.display = display
        self.clock = clock
        self.sleep = sleep
        self.tracked = [Tracked(o) for o in objects.of(TJ)] + [Tracked(o) for o in objects.of(MD)]
        self._current: Tracked | None = None
        self.ctx = ctx or ReconcileContext(settings=settings, backends={"ray": backend})
        self.ctx.get_trainingjob = objects.get_trainingjob
        self._forward = self.ctx.emit  # a caller's own receiver (tests) still gets every event
        self.ctx.emit = self._event

    def _event(self, event: Event) -> None:
        self._forward(event)
        t = self._current
        if t is not None and event.reason == "Submitted":
            t.submitted = True
        if event.type == "Warning" and t is not None:
            self.display.note(f"{t.label}: warning: {event.reason}: {event.message}")

    def step(self, t: Tracked) -> PassResult | None:
        """One pass of one resource (None: skipped, it failed or is backing off)."""
        if t.error is not None or self.clock() < t.not_before:
            return None
        self._current = t
        try:
            result = run_pass(t.kind, t.obj, self.ctx)
        finally:
            self._current = None
        if result.patch:
            t.obj["status"] = result.status.wire()
        if result.permanent:
            t.error = result.problem
        elif result.temporary:
            self._temporary(t, result)
        else:
            t.last_temporary, t.temporary_failures, t.not_before = None, 0, 0.0
        return result

    def _temporary(self, t: Tracked, result: PassResult) -> None:
        t.temporary_failures += 1
        t.not_before = self.clock() + (result.delay or 0.0)
        quiet = t.temporary_failures < QUIET_TEMPORARY_FAILURES
        if not quiet and (
            t.temporary_failures == QUIET_TEMPORARY_FAILURES or result.problem != t.last_temporary
        ):
            self.display.note(f"{t.label}: retrying in {result.delay or 0:.0f}s: {result.problem}")
        t.last_temporary = result.problem

    def drive(self, deadline: float) -> None:
        """Pass over every resource until each is finished (or the deadline passes)."""
        announced: set[str] = set()
        while True:
            for t in self.tracked:
                if not done(t, self.objects):
                    self.step(t)
                self.display.update(t)
                if t.kind == TJ and t.label not in announced and training_done(t):
                    announced.add(t.label)
                    self._announce_training(t)
                if t.kind == MD and t.status.get("phase") == DeploymentPhase.READY and t.ready_since is None:
                    t.ready_since = self.clock()
            if all(done(t, self.objects) for t in self.tracked):
                return
            now = self.clock()
            if now > deadline:
                raise RunError(f"timed out after {RUN_TIMEOUT_S:.0f}s: {self._pending()}")
            self._check_deploy_timeouts(now)
            self.sleep(POLL_SECONDS)

    def _check_deploy_timeouts(self, now: float) -> None:
        for t in self.tracked:
            if t.kind != MD or done(t, self.objects):
                continue
            if t.status.get("phase") != DeploymentPhase.DEPLOYING:
                t.waiting_since = now
            elif now - t.waiting_since > DEPLOY_TIMEOUT_S:
                t.error = (
                    f"not Ready within {DEPLOY_TIMEOUT_S:.0f}s of deploying "
                    f"({condition_message(t.status, 'Ready') or 'no message from Serve'})"
                )

    def _pending(self) -> str:
        return ", ".join(
            f"{t.label} is {t.status.get('phase', 'Pending')}"
            for t in self.tracked
            if not done(t, self.objects)
        )

    def _announce_training(self, t: Tracked) -> None:
        status = t.status
        if status.get("phase") == TrainingPhase.SUCCEEDED and not t.submitted:
            manifest = (status.get("artifacts") or {}).get("manifestUri", "")
            self.display.note(
                f"{t.label}: reusing the finished run {status.get('runId')} (same spec; not retrained): {manifest}"
            )

    def teardown(self, remove_serving: bool) -> None:
        """Take this run's Serve applications down (on a cluster we do not own)."""
        if not remove_serving:
            return
        for t in self.tracked:
            if t.kind == MD and t.obj.get("status"):
                try:
                    delete_pass(MD, t.obj, self.ctx)
                except Exception as exc:  # best effort at exit: say so, do not mask the result
                    self.display.note(f"{t.label}: could not remove its Serve application: {exc}")
