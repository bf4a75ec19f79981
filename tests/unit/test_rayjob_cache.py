"""The RayJobs the operator's watch has seen, read by a pass instead of a GET each timer tick.

``RayJobCache`` is pure (a clock passed in). ``KubeRayBackend.observe_training`` is run
with a stand-in for ``CustomObjectsApi`` that counts its GETs (it stands in for the API
server; the watch that feeds the cache in the operator is kopf's, on a real API server
in tests/cluster and bench/control_plane.py): a RayJob the watch has seen costs no GET,
one it has not (or not for ``refresh_s``) costs one, a DELETED event makes the next pass
ask the API server -- and find it absent -- again.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes.client.exceptions import ApiException
from reconcile_fakes import NoRayAuthCRD

from rayrelay_core.api import TrainingJob
from rayrelay_operator.backends.kuberay import KubeRayBackend, RayJobCache, rayjob_summary
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import WorkState

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs")


def rayjob(name: str = "sst2-g1-a1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": "ml",
            "creationTimestamp": "2026-01-01T12:00:00Z",
            "managedFields": [{"manager": "rayrelay", "fieldsV1": {"f:spec": {}}}],
            "labels": {"rayrelay.dev/trainingjob": "sst2"},
        },
        "spec": {
            "entrypoint": "python -m rayrelay_workloads.train",
            "rayClusterSpec": {"authOptions": {"mode": "token"}, "headGroupSpec": {"template": {"spec": {}}}},
        },
        "status": status,
    }


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Custom:
    """CustomObjectsApi's RayJob GET, counted; the RayJobs it holds are what the server has."""

    def __init__(self, *items: dict[str, Any]) -> None:
        self.items = {i["metadata"]["name"]: i for i in items}
        self.gets = 0

    def get_namespaced_custom_object(self, group: str, version: str, ns: str, plural: str, name: str) -> Any:
        self.gets += 1
        if name not in self.items:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.items[name])


def backend(custom: Custom, clock: Clock) -> KubeRayBackend:
    b = KubeRayBackend(None, SETTINGS)
    b.custom = custom
    b.extensions = NoRayAuthCRD()
    b.rayjobs = RayJobCache(refresh_s=120, clock=clock)
    return b


def work() -> Any:
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
    w = training_work(tj, SETTINGS, generation=1, attempt=1)
    assert w.child_name == "sst2-g1-a1"
    return w


def test_summary_keeps_what_a_pass_reads_and_drops_the_cluster_spec() -> None:
    body = rayjob(jobDeploymentStatus="Initializing", rayClusterName="rc")
    summary = rayjob_summary(body)
    assert summary == {
        "metadata": {"name": "sst2-g1-a1", "namespace": "ml", "creationTimestamp": "2026-01-01T12:00:00Z"},
        "status": {"jobDeploymentStatus": "Initializing", "rayClusterName": "rc"},
        "spec": {"rayClusterSpec": {"authOptions": {"mode": "token"}}},
    }
    body["status"]["jobStatus"] = "RUNNING"  # later changes to the event's body do not leak in
    assert "jobStatus" not in summary["status"]


def test_cache_follows_events_and_expires() -> None:
    clock = Clock()
    cache = RayJobCache(refresh_s=120, clock=clock)
    assert cache.get("ml", "sst2-g1-a1") is None
    cache.seen(None, rayjob(jobDeploymentStatus="Initializing"))  # kopf's initial listing
    assert cache.get("ml", "sst2-g1-a1")["status"] == {"jobDeploymentStatus": "Initializing"}
    cache.seen("MODIFIED", rayjob(jobDeploymentStatus="Running", jobStatus="RUNNING"))
    assert cache.get("ml", "sst2-g1-a1")["status"]["jobStatus"] == "RUNNING"
    assert cache.get("other", "sst2-g1-a1") is None
    clock.t += 121
    assert cache.get("ml", "sst2-g1-a1") is None  # not heard of for refresh_s: ask again
    cache.put(rayjob(jobDeploymentStatus="Running"))
    assert cache.get("ml", "sst2-g1-a1") is not None
    cache.seen("DELETED", rayjob())
    assert cache.get("ml", "sst2-g1-a1") is None and len(cache) == 0


def test_a_seen_rayjob_costs_no_get() -> None:
    clock, custom = Clock(), Custom(rayjob(jobDeploymentStatus="Initializing"))
    b = backend(custom, clock)
    b.rayjobs.seen("ADDED", rayjob(jobDeploymentStatus="Initializing"))
    for _ in range(5):
        obs = b.observe_training(work())
        assert obs.state is WorkState.WAITING and obs.started_at == "2026-01-01T12:00:00Z"
    assert custom.gets == 0
    # What the watch says next is what the pass sees (KubeRay moved it on).
    b.rayjobs.seen("MODIFIED", rayjob(jobDeploymentStatus="Complete", jobStatus="SUCCEEDED"))
    assert b.observe_training(work()).state is WorkState.SUCCEEDED and custom.gets == 0


def test_an_unseen_rayjob_is_read_once_then_kept_until_refresh() -> None:
    clock, custom = Clock(), Custom(rayjob(jobDeploymentStatus="Initializing"))
    b = backend(custom, clock)
    assert b.observe_training(work()).state is WorkState.WAITING and custom.gets == 1
    assert b.observe_training(work()).state is WorkState.WAITING and custom.gets == 1
    clock.t += 121
    assert b.observe_training(work()).state is WorkState.WAITING and custom.gets == 2


def test_a_deleted_rayjob_is_absent_at_the_next_pass() -> None:
    clock, custom = Clock(), Custom(rayjob(jobDeploymentStatus="Initializing"))
    b = backend(custom, clock)
    b.rayjobs.seen("ADDED", rayjob(jobDeploymentStatus="Initializing"))
    del custom.items["sst2-g1-a1"]
    b.rayjobs.seen("DELETED", rayjob())
    assert b.observe_training(work()).state is WorkState.ABSENT and custom.gets == 1


def test_an_entry_stands_while_the_watch_holds_and_a_relisting_drops_what_it_does_not_show() -> None:
    """No timed refresh by default: a waiting TrainingJob's ticks send nothing, however long it
    waits. A deletion missed while the watch was gone (410, then kopf relists with type None
    events) is caught by the relisting: what it does not show is asked for again."""
    clock = Clock()
    cache = RayJobCache(clock=clock)  # the operator's default
    cache.seen(None, rayjob("a-g1-a1", jobDeploymentStatus="Initializing"))  # the first listing
    cache.seen(None, rayjob("b-g1-a1", jobDeploymentStatus="Initializing"))
    cache.seen("ADDED", rayjob("c-g1-a1", jobDeploymentStatus="Initializing"))
    clock.t += 24 * 3600
    assert all(cache.get("ml", n) is not None for n in ("a-g1-a1", "b-g1-a1", "c-g1-a1"))
    # The watch expired and kopf relists: b was deleted in the gap, so the listing lacks it.
    clock.t += 1
    cache.seen(None, rayjob("a-g1-a1", jobDeploymentStatus="Running"))
    clock.t += 1
    cache.seen(None, rayjob("c-g1-a1", jobDeploymentStatus="Initializing"))
    assert cache.get("ml", "a-g1-a1")["status"]["jobDeploymentStatus"] == "Running"
    assert cache.get("ml", "c-g1-a1") is not None
    assert cache.get("ml", "b-g1-a1") is None  # ask the API server (it answers 404)
    cache.put(rayjob("b-g1-a1", jobDeploymentStatus="Initializing"))  # or what the GET found
    assert cache.get("ml", "b-g1-a1") is not None
    # Watch events after the listing start no epoch of their own.
    cache.seen("MODIFIED", rayjob("c-g1-a1", jobDeploymentStatus="Running"))
    clock.t += 3600
    assert all(cache.get("ml", n) is not None for n in ("a-g1-a1", "b-g1-a1", "c-g1-a1"))


def test_a_waiting_jobs_ticks_send_no_get_for_hours() -> None:
    """Through the backend: the RayJob came on the watch; hours of ticks read it from there."""
    clock = Clock()
    custom = Custom(rayjob(jobDeploymentStatus="Initializing"))
    b = backend(custom, clock)
    b.rayjobs = RayJobCache(clock=clock)
    b.rayjobs.seen("ADDED", rayjob(jobDeploymentStatus="Initializing"))
    for _ in range(3 * 360):  # 3 hours of 10 s ticks
        clock.t += 10
        b.observe_training(work())
    assert custom.gets == 0
