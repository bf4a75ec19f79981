"""Operator SIGKILLed mid-reconcile, over and over (issue 14, case 3), on a real API server.

The operator runs as the chart runs it (``chart_operator``, kuberay backend).
Each round starts a fresh operator process (a new pod name, as a restarted pod
gets), creates a few TrainingJobs the moment it is up, and SIGKILLs it after a
random delay drawn from a seeded generator -- while it lists, submits RayJobs,
or writes statuses. A last operator then runs undisturbed. What must hold: every
TrainingJob ends with exactly one RayJob, the first attempt's (0 duplicates:
the names are deterministic, a create that finds its child adopts it), and a
recorded ``status.rayJob`` naming it (0 lost). Figures: rounds, kill points,
TrainingJobs, duplicates, lost, and the time the last operator took to settle
everything.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from tests.cluster.chart_operator import (
    FAST_TIMERS,
    Operators,
    create_s3_secret,
    install_chart,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane
from tests.faults.results import record

ROUNDS = 6
PER_ROUND = 3
SEED = 14
pytestmark = [
    pytest.mark.faults,
    pytest.mark.faults_long,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("RAYRELAY_FAULTS_LONG") != "1",
        reason="a longer fault case: runs under `make faults` (RAYRELAY_FAULTS_LONG=1)",
    ),
]


def test_operator_sigkilled_at_random_points_duplicates_and_loses_nothing(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    plane = crds_installed
    create_s3_secret(plane, release_namespace)
    release = install_chart(
        plane, release_namespace, {**FAST_TIMERS, **s3_values(s3_server, f"{s3_bucket}/runs")}
    )
    rng = random.Random(SEED)
    names: list[str] = []
    kill_points: list[float] = []
    for r in range(ROUNDS):
        op = operators.start(release, pod_suffix=f"r{r}")
        op.wait_ready()
        batch = [f"k{r}-{i}" for i in range(PER_ROUND)]
        for name in batch:
            plane.apply(trainingjob(name, gpus=0, workers=1), "-n", namespace)
        names += batch
        delay = rng.uniform(0.0, 3.0)  # the fault's timing, not a synchronisation
        time.sleep(delay)
        op.alive()
        op.kill()
        kill_points.append(round(delay, 2))

    t0 = time.monotonic()
    last = operators.start(release, pod_suffix="last")
    last.wait_ready()

    def state() -> tuple[dict[str, dict], dict[str, list[str]]]:
        tjs = {t["metadata"]["name"]: t for t in plane.get("trainingjobs", "-n", namespace)["items"]}
        jobs: dict[str, list[str]] = {}
        for rj in plane.get("rayjobs", "-n", namespace)["items"]:
            owner = rj["metadata"]["labels"].get("rayrelay.dev/trainingjob", "")
            jobs.setdefault(owner, []).append(rj["metadata"]["name"])
        return tjs, jobs

    def settled() -> bool:
        tjs, jobs = state()
        recorded = all(((tjs[n].get("status") or {}).get("rayJob") or {}).get("name") for n in names)
        return recorded and all(n in jobs for n in names)

    wait_for(f"all {len(names)} TrainingJobs to have their RayJob", settled, 180)
    settle_s = time.monotonic() - t0
    tjs, jobs = state()
    assert set(tjs) == set(names), sorted(tjs)
    duplicates = sum(len(jobs.get(n, [])) - 1 for n in names if jobs.get(n))
    lost = [n for n in names if sorted(jobs.get(n, [])) != [f"{n}-g1-a1"]]
    for name in names:
        status = tjs[name]["status"]
        assert status["rayJob"]["name"] == f"{name}-g1-a1" and status["attempt"] == 1, status
    assert duplicates == 0 and lost == [], (duplicates, lost, jobs)
    record(
        "operator_killed",
        figures={
            "rounds": ROUNDS,
            "trainingjobs": len(names),
            "kill_points_seconds_after_create": kill_points,
            "duplicate_rayjobs": duplicates,
            "lost_trainingjobs": len(lost),
            "settle_seconds_after_last_restart": round(settle_s, 2),
        },
        command="pytest tests/cluster/test_operator_killed.py",
        notes="kuberay backend (RayJob objects; KubeRay's controller not running). Seeded kill points.",
    )
