"""What a TrainingJob costs the API server, piece by piece (issue 24).

- The finalizer: kopf adds ``rayrelay.dev/finalizer`` (a metadata PATCH and one more watch
  event per TrainingJob) only to a TrainingJob whose work nothing else removes (the ray
  backend); a kuberay one's RayJobs are owned by it and garbage-collected. Checked with
  kopf's own registry decisions (``requires_finalizer`` for the causes kopf's reactor
  builds); its timer, which ``kopf.timer`` ties to a finalizer, is stopped instead by the
  DELETED event (the handler kopf would call, then the timer's filter as kopf re-checks it).
  tests/integration/test_operator_kuberay.py runs the same through kopf and an emulator.
- One status write per submit: the submit's status already carries the
  ``RayAuthenticated`` condition the kuberay backend will report of the new RayJob and a
  waiting message that the first observation of it keeps, so the first tick writes nothing
  (``FakeBackend`` stands in for a backend; the kuberay backend's own answer is checked
  against the RayJob it builds, with stand-ins for the Kubernetes APIs that hold it).
- A running RayJob's pods and submitter Job are read once per ``POD_RECHECK_S`` while the
  RayJob's status stays the same (a stand-in for CoreV1Api/BatchV1Api counting reads).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
from kopf._cogs.structs import bodies, patches
from kopf._core.intents import causes
from reconcile_fakes import Clock, FakeBackend, artifacts_dir, make_ctx, tj_dict, with_status

from rayrelay_core.api import Backend, TrainingJob
from rayrelay_operator import handlers
from rayrelay_operator.backends.kuberay import POD_RECHECK_S, KubeRayBackend
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import RayAuth, TrainingObservation, WorkState

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs")


# ------------------------------------------------------------------ the finalizer and the timer


def body(backend: str | None = None, uid: str = "uid-1", observed: int | None = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"source": "bert"}}
    if backend:
        spec["backend"] = backend
    raw: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "sst2", "namespace": "ml", "uid": uid, "generation": 1},
        "spec": spec,
    }
    if observed is not None:
        raw["status"] = {"observedGeneration": observed, "phase": "Pending"}
    return raw


def memo(settings: Settings = SETTINGS) -> kopf.Memo:
    m = kopf.Memo()
    m["settings"] = settings
    return m


def changing_cause(raw: dict[str, Any], m: kopf.Memo) -> Any:
    resource = kopf.Resource("rayrelay.dev", "v1alpha1", "trainingjobs", namespaced=True)
    return causes.detect_changing_cause(
        finalizer="rayrelay.dev/finalizer",
        raw_event={"type": "ADDED", "object": raw},
        resource=resource,
        indices={},
        logger=None,
        patch=patches.Patch(),
        body=bodies.Body(raw),
        memo=m,
    )


def spawning_cause(raw: dict[str, Any], m: kopf.Memo) -> Any:
    resource = kopf.Resource("rayrelay.dev", "v1alpha1", "trainingjobs", namespaced=True)
    return causes.detect_spawning_cause(
        resource=resource,
        indices={},
        logger=None,
        patch=patches.Patch(),
        body=bodies.Body(raw),
        memo=m,
        reset=False,
    )


def test_only_the_ray_backend_needs_a_finalizer() -> None:
    registry = handlers.build_registry(SETTINGS)
    m = memo()
    for raw, needed in (
        (body(), False),  # the default backend: kuberay
        (body("kuberay"), False),
        (body("ray"), True),
    ):
        assert registry._changing.requires_finalizer(cause=changing_cause(raw, m)) is needed, raw["spec"]
        # The timer runs (observedGeneration reached) and asks for none either.
        assert not registry._spawning.requires_finalizer(cause=spawning_cause(raw, m))
        assert [h.id for h in registry._spawning.get_handlers(cause=spawning_cause(raw, m))] == [
            handlers.TJ_TIMER
        ]
    # An operator whose default backend is ray: a TrainingJob without spec.backend needs it.
    ray_default = memo(
        Settings(artifacts_uri="s3://rr-art/runs", default_backend=Backend.RAY, ray_address="x")
    )
    assert registry._changing.requires_finalizer(cause=changing_cause(body(), ray_default))


def test_the_deleted_event_stops_the_timer() -> None:
    registry = handlers.build_registry(SETTINGS)
    m = memo()
    raw = body()
    (gone,) = [h for h in registry._watching.get_all_handlers() if h.id == handlers.TJ_GONE]
    assert gone.when is not None
    assert not gone.when(type="MODIFIED") and not gone.when(type=None) and gone.when(type="DELETED")
    assert registry._spawning.get_handlers(cause=spawning_cause(raw, m))
    asyncio.run(gone.fn(body=bodies.Body(raw)))
    # kopf re-matches its timers in the same cycle as the DELETED event: this one no longer matches.
    assert not registry._spawning.get_handlers(cause=spawning_cause(raw, m))
    # Another TrainingJob's timer is untouched.
    assert registry._spawning.get_handlers(cause=spawning_cause(body(uid="uid-2"), m))


def test_deleted_objects_are_bounded() -> None:
    gone = handlers.DeletedObjects(limit=2)
    for uid in ("a", "b", "c"):
        gone.add(uid)
    assert "a" not in gone and "b" in gone and "c" in gone


# ------------------------------------------------------------------ one status write per submit


@dataclass
class AuthBackend(FakeBackend):
    """A backend that knows the token authentication of what it creates (as kuberay does)."""

    auth: RayAuth = RayAuth(True, "TokenAuthentication", "the Ray cluster requires Ray's token")

    def planned_training_auth(self) -> RayAuth:
        return self.auth


def test_the_first_tick_after_a_submit_writes_nothing(tmp_path: Path) -> None:
    backend = AuthBackend()
    ctx, events = make_ctx(backend, Clock(), artifacts_dir(tmp_path))
    obj = tj_dict()
    first = run_pass("TrainingJob", obj, ctx)
    auth = next(c for c in first.status.conditions if c.type == "RayAuthenticated")
    assert (auth.status, auth.reason) == ("True", "TokenAuthentication")
    running = next(c for c in first.status.conditions if c.type == "Running")
    assert running.reason == "WaitingForResources" and running.message.startswith("submitted ")
    obj = with_status(obj, first.status)
    sid = backend.submitted[0].submission_id
    # The backend's first look at the new child: waiting, nothing specific to say, the same auth.
    backend.training[sid] = TrainingObservation(
        WorkState.WAITING, "WaitingForResources", "", ray_auth=backend.auth
    )
    ctx.now.advance(10)  # type: ignore[attr-defined]
    tick = run_pass("TrainingJob", obj, ctx)
    assert tick.error is None and tick.patch == {}
    # News from the backend still reaches the status.
    backend.training[sid] = TrainingObservation(
        WorkState.WAITING, "Unschedulable", "pod x: 0/3 nodes", ray_auth=backend.auth
    )
    news = run_pass("TrainingJob", obj, ctx)
    assert news.patch["conditions"] and "0/3 nodes" in json.dumps(news.patch)


class CRD:
    """ApiextensionsV1Api's read of KubeRay's RayJob CRD, with or without ``authOptions``."""

    def __init__(self, with_auth: bool) -> None:
        self.with_auth = with_auth

    def read_custom_resource_definition(self, name: str, **_: Any) -> Any:
        cluster: dict[str, Any] = {
            "properties": {"authOptions": {"type": "object"}} if self.with_auth else {}
        }
        schema = {"properties": {"spec": {"properties": {"rayClusterSpec": cluster}}}}
        doc = {"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": schema}}]}}

        class Response:
            data = json.dumps(doc).encode()

        return Response()


class Custom:
    """CustomObjectsApi's RayJob create, keeping what was created."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> None:
        self.created.append(args[4])


def tjob() -> Any:
    tj = TrainingJob.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "sst2", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {
                "model": {"source": "bert-base-uncased"},
                "data": {"train": "s3://d-bkt/t.jsonl", "validation": "s3://d-bkt/v.jsonl"},
            },
        }
    )
    return training_work(tj, SETTINGS, generation=1, attempt=1)


def test_the_kuberay_backend_plans_the_auth_its_rayjob_will_show() -> None:
    for with_auth, auth_setting, reason in (
        (True, "token", "TokenAuthentication"),
        (False, "token", "NotSupportedByKubeRay"),
        (True, "disabled", "Disabled"),
    ):
        settings = Settings(
            artifacts_uri="s3://rr-art/runs", network_policy=False, ray_cluster_auth=auth_setting
        )
        b = KubeRayBackend(None, settings)
        b.extensions, b.custom = CRD(with_auth), Custom()
        planned = b.planned_training_auth()
        work = tjob()
        b.submit_training(work)
        (created,) = b.custom.created
        b.rayjobs.put({**created, "status": {"jobDeploymentStatus": "Initializing"}})
        seen = b.observe_training(work)
        assert planned is not None and planned == seen.ray_auth and planned.reason == reason
        assert (
            seen.state is WorkState.WAITING and seen.message == ""
        )  # nothing specific: the status keeps its own


# ------------------------------------------------------------------ a running RayJob's pods


class Reads:
    """CoreV1Api's pod list and BatchV1Api's Job read, counted."""

    def __init__(self) -> None:
        self.pods = self.jobs = 0

    def list_namespaced_pod(self, ns: str, **_: Any) -> Any:
        self.pods += 1

        class Response:
            data = json.dumps({"items": []}).encode()

        return Response()

    def read_namespaced_job(self, name: str, ns: str, **_: Any) -> Any:
        self.jobs += 1

        class Response:
            data = json.dumps({"status": {}}).encode()

        return Response()


def test_a_running_rayjobs_pods_are_read_once_per_recheck_while_it_stays_the_same() -> None:
    b = KubeRayBackend(None, Settings(artifacts_uri="s3://rr-art/runs", ray_cluster_auth="disabled"))
    reads = Reads()
    b.core = b.batch = reads  # type: ignore[assignment]
    now = [1000.0]
    b.clock = lambda: now[0]
    work = tjob()
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": "rc-1"}
    meta = {"name": work.child_name, "namespace": "ml", "creationTimestamp": "2026-01-01T12:00:00Z"}
    b.rayjobs.seen("ADDED", {"metadata": meta, "status": running})
    for _ in range(5):
        assert b.observe_training(work).state is WorkState.RUNNING
        now[0] += 10
    assert (reads.pods, reads.jobs) == (1, 1)
    now[0] += POD_RECHECK_S
    b.observe_training(work)
    assert (reads.pods, reads.jobs) == (2, 2)
    # KubeRay changed the RayJob's status: read again at once.
    b.rayjobs.seen("MODIFIED", {"metadata": meta, "status": {**running, "message": "job is running"}})
    b.observe_training(work)
    assert (reads.pods, reads.jobs) == (3, 3)


# ------------------------------------------------------------------ kopf's work per RayJob event


def test_no_diff_base_is_built_for_a_watched_rayjob() -> None:
    """kopf asks the diff-base storage about every event, RayJobs' too: ours answers None for
    them (nothing copied), and still builds one for a TrainingJob."""
    from rayrelay_operator.persistence import GenerationDiffBaseStorage

    storage = GenerationDiffBaseStorage()
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "sst2-g1-a1", "namespace": "ml", "generation": 1},
        "spec": {"rayClusterSpec": {"headGroupSpec": {"template": {"spec": {"containers": []}}}}},
    }
    assert storage.fetch(body=bodies.Body(rayjob)) is None
    assert storage.build(body=bodies.Body(rayjob), extra_fields=[]) is None
    tj = body()
    assert storage.fetch(body=bodies.Body(tj)) is not None  # handled: observedGeneration 1
    assert storage.build(body=bodies.Body(tj), extra_fields=[("spec",)])["spec"] == tj["spec"]


def test_the_rayjob_create_reads_its_echo_without_decoding_it() -> None:
    """The create's response (the whole RayJob, echoed) is read as bytes, which hands its
    connection back to the pool, and never decoded: nothing reads it (the watch brings the
    RayJob). Stands in for CustomObjectsApi and urllib3's response."""

    class Response:
        read = False

        @property
        def data(self) -> bytes:
            Response.read = True
            return b'{"kind": "RayJob"}'

    class Creating:
        kwargs: dict[str, Any] = {}

        def create_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Response:
            Creating.kwargs = kwargs
            return Response()

    b = KubeRayBackend(None, Settings(artifacts_uri="s3://rr-art/runs", network_policy=False))
    b.extensions, b.custom = CRD(True), Creating()
    b.submit_training(tjob())
    assert Creating.kwargs.get("_preload_content") is False and Response.read
    assert Creating.kwargs.get("field_validation") == "Strict"
