"""A reconcile pass in flight when the delete handler runs cannot bring the work back.

kopf runs an object's delete handler while the object's timer may still be running a tick
in a worker thread (it stops timers and runs on-deletion handlers side by side). Here the
handlers kopf would call (taken from ``build_registry``'s registry) are called from two
threads as kopf's executor would; ``ServeLike`` stands in for the ray backend's Serve
applications (a deploy adds one, a delete removes it) and can hold a deploy midway.
tests/integration/test_operator_ray.py runs the whole path through kopf and a real Ray.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, write_manifest

from rayrelay_operator import handlers, metrics
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingObservation, ServingState, ServingWork


@dataclass
class ServeLike(FakeBackend):
    apps: set[str] = field(default_factory=set)
    hold: bool = False
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def deploy_serving(self, work: ServingWork) -> None:
        super().deploy_serving(work)
        if self.hold:
            self.entered.set()
            assert self.release.wait(10), "the test never released the deploy"
        self.apps.add(work.app_name)

    def observe_serving(self, work: ServingWork) -> ServingObservation:
        state = ServingState.RUNNING if work.app_name in self.apps else ServingState.ABSENT
        return ServingObservation(state, url="http://serve:8000" if state is ServingState.RUNNING else None)

    def delete_serving(self, work: ServingWork) -> None:
        super().delete_serving(work)
        self.apps.discard(work.app_name)


def md(uri: str, uid: str = "uid-md") -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "uid": uid, "generation": 1},
        "spec": {"model": {"manifestUri": uri}},
        "status": {},
    }


def handler(registry: kopf.OperatorRegistry, handler_id: str) -> Any:
    for group in (registry._spawning, registry._changing):
        for h in group.get_all_handlers():
            if h.id == handler_id:
                return h.fn
    raise AssertionError(f"no handler {handler_id}")


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ServeLike, kopf.Memo, dict[str, Any], Any, Any]:
    uri = str(tmp_path / "run" / "manifest.json")
    write_manifest(uri, sample_manifest("run"))
    backend = ServeLike()
    ctx, _events = make_ctx(backend, Clock(), str(tmp_path / "store"))
    monkeypatch.setattr(handlers.kopf, "event", lambda *a, **k: None)  # no kopf loop to post to
    monkeypatch.setattr(handlers.kopf, "info", lambda *a, **k: None)
    registry = handlers.build_registry(Settings(artifacts_uri=str(tmp_path / "store")))
    tick = handler(registry, handlers.MD_TIMER)
    delete = handler(registry, handlers.MD_DELETE)
    yield backend, kopf.Memo(ctx=ctx), md(uri), tick, delete
    for name in ("sentiment", "other"):  # the process-wide metrics: leave no phase behind
        metrics.record_phase("ModelDeployment", f"ml/{name}", None)


def test_a_tick_in_flight_cannot_redeploy_what_the_delete_removed(setup: Any) -> None:
    backend, memo, raw, tick, delete = setup
    backend.hold = True
    errors: list[BaseException] = []

    def run(fn: Any, **kw: Any) -> None:
        try:
            fn(body=kopf.Body(raw), memo=memo, **kw)
        except BaseException as exc:
            errors.append(exc)

    ticking = threading.Thread(target=run, args=(tick,), kwargs={"patch": kopf.Patch()})
    ticking.start()
    assert backend.entered.wait(10), "the tick never reached its deploy"
    deleting = threading.Thread(target=run, args=(delete,), kwargs={"retry": 0})
    deleting.start()
    deleting.join(0.3)
    waited = deleting.is_alive()
    backend.release.set()
    ticking.join(10)
    deleting.join(10)
    assert not errors, errors
    assert waited, "the delete handler ran while the tick was deploying"
    assert backend.verbs() == ["deploy", "undeploy"]
    assert backend.apps == set(), "the Serve application outlived its ModelDeployment"


def test_a_tick_after_the_delete_began_does_nothing(setup: Any) -> None:
    backend, memo, raw, tick, delete = setup
    delete(body=kopf.Body(raw), memo=memo, retry=0)
    tick(body=kopf.Body(raw), patch=(patch := kopf.Patch()), memo=memo)
    assert backend.verbs() == ["undeploy"] and backend.apps == set()
    assert not patch
    # Another ModelDeployment's tick still deploys.
    other = dict(raw, metadata=dict(raw["metadata"], uid="uid-other", name="other"))
    tick(body=kopf.Body(other), patch=kopf.Patch(), memo=memo)
    assert backend.apps == {"other"}


def test_the_gate_holds_only_the_object_being_deleted() -> None:
    gate = handlers.ObjectGate()
    a, b = "ModelDeployment/uid-a/ml/a", "ModelDeployment/uid-b/ml/b"
    assert gate._lock(a) is not gate._lock(b)  # these two keys fall on different stripes
    with gate.deleting(a), gate.passing(b) as live:
        assert live
    with gate.passing(a) as live:
        assert not live
