"""The ``ray`` backend against the real shared Ray head (``ray_cluster``).

Training: the Job Submission API with deterministic submission ids (a second
submit is a no-op, never a second job), the states a job goes through, stop and
delete. The driver here is a trivial Python command, not the training pipeline:
the backend's ``python`` setting is the interpreter part of the entrypoint, so
``python -c '...'`` runs a snippet and ignores the pipeline arguments after it.

Serving: Serve's REST API with the real serving apps (``rayrelay_workloads.serve``)
on the training fixture's tiny model: two ModelDeployments keep each other and
one gateway; deleting one keeps the other.
"""

from __future__ import annotations

import uuid

import pytest

from conftest import free_port, wait_until
from rayrelay_core.api import TrainingJobSpec
from rayrelay_core.runs import JobDocument
from rayrelay_operator.backends.base import BackendUnavailable
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.work import TrainingWork, WorkState

NS = "it"


def work(name: str, attempt: int = 1) -> TrainingWork:
    spec = TrainingJobSpec.model_validate(
        {"model": {"source": "tiny"}, "data": {"train": "/tmp/t.jsonl", "validation": "/tmp/v.jsonl"}}
    )
    job = JobDocument(
        namespace=NS, name=name, run_id="run-x", run_uri=f"/tmp/{name}", attempt=attempt, spec=spec
    )
    return TrainingWork(
        submission_id=f"rayrelay-{NS}-{name}-g1-a{attempt}",
        child_name=f"{name}-g1-a{attempt}",
        job=job,
        owner={},
        labels={},
    )


def backend(cluster, snippet: str) -> RayBackend:
    return RayBackend(
        cluster.dashboard_url,
        serve_host="127.0.0.1",
        serve_port=cluster.serve_port,
        python=f"python -c {snippet!r}",
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def submit(be: RayBackend, w: TrainingWork) -> None:
    # A head that just started may have no job agent yet (a temporary error).
    wait_until(lambda: _try(be.submit_training, w), 60, interval=1, what="the submission to be taken")


def _try(fn, *args) -> bool:
    try:
        fn(*args)
    except BackendUnavailable:
        return False
    return True


def state_of(be: RayBackend, w: TrainingWork, *states: WorkState):
    obs = be.observe_training(w)
    return obs if obs.state in states else None


def test_submit_twice_is_one_job_and_it_succeeds(ray_cluster) -> None:
    be = backend(ray_cluster, "import sys; print('ARGS', len(sys.argv))")
    w = work(unique("ok"))
    assert be.observe_training(w).state == WorkState.ABSENT
    submit(be, w)
    be.submit_training(w)  # a repeated reconcile: Ray refuses the id, the backend shrugs
    jobs = [j for j in be._jobs().list_jobs() if j.submission_id == w.submission_id]
    assert len(jobs) == 1
    assert jobs[0].metadata.get("rayrelay.dev/name") == w.job.name
    obs = wait_until(lambda: state_of(be, w, WorkState.SUCCEEDED), 60, what="the job to succeed")
    assert obs.started_at and obs.dashboard_url == ray_cluster.dashboard_url
    # Deleted once it has been over a few seconds, and confirmed gone by a later listing.
    wait_until(lambda: _try(be.delete_training, NS, w.job.name), 60, interval=1, what="the deletion")
    assert be.observe_training(w).state == WorkState.ABSENT


def test_failed_job_says_why_with_its_last_log_lines(ray_cluster) -> None:
    be = backend(ray_cluster, "import sys; print('bad data in row 7', file=sys.stderr); sys.exit(3)")
    w = work(unique("bad"))
    submit(be, w)
    obs = wait_until(lambda: state_of(be, w, WorkState.FAILED), 60, what="the job to fail")
    assert obs.reason == "DriverFailed"
    assert "bad data in row 7" in obs.message, obs.message
    wait_until(lambda: _try(be.delete_training, NS, w.job.name), 60, interval=1, what="the deletion")


def test_stop_then_delete_every_attempt(ray_cluster) -> None:
    be = backend(ray_cluster, "import time; time.sleep(120)")
    name = unique("long")
    first, second = work(name, 1), work(name, 2)
    other = work(unique("other"))
    for w in (first, second, other):
        submit(be, w)
    wait_until(lambda: state_of(be, first, WorkState.RUNNING), 60, what="the job to run")
    be.stop_training(first)
    obs = wait_until(lambda: state_of(be, first, WorkState.STOPPED), 60, what="the job to stop")
    assert obs.state == WorkState.STOPPED

    # The second attempt may still run: delete stops it and asks to be called again.
    wait_until(
        lambda: _try(be.delete_training, NS, name),
        60,
        interval=1,
        what="every job of the TrainingJob to be deleted",
    )
    assert be.observe_training(first).state == WorkState.ABSENT
    assert be.observe_training(second).state == WorkState.ABSENT
    assert be.observe_training(other).state != WorkState.ABSENT, "another TrainingJob's job was deleted"
    be.stop_training(other)
    wait_until(lambda: _try(be.delete_training, NS, other.job.name), 60, interval=1, what="cleanup")


def test_unreachable_cluster_is_temporary() -> None:
    be = RayBackend(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable, match="not reachable"):
        be.observe_training(work("nowhere"))
    with pytest.raises(BackendUnavailable, match="not reachable"):
        be.serve_instance()
