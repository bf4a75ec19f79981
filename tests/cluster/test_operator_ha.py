"""HA: two ``rayrelay operator`` replicas as the chart runs them (``replicaCount: 2``), on a real API server.

The chart starts every replica with ``--peering=rayrelay --peering-lifetime=N``
and creates the ``ClusterKopfPeering``. Each replica derives a distinct
priority from its pod name, so exactly one (the highest) reconciles and the
other pauses -- with equal priorities kopf pauses them all. The leader is then
SIGKILLed (no goodbye in the peering object): the standby resumes once the
leader's last keep-alive expires. The test measures the takeover as the time
from the SIGKILL to the RayJob of a TrainingJob created right after it, prints
it, and checks that no RayJob was made twice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.cluster.chart_operator import (
    FAST_TIMERS,
    OperatorProcess,
    Operators,
    create_s3_secret,
    install_chart,
    rayjobs_of,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane

TAKEOVER_LIMIT_S = 15.0
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"


def pause_state(op: OperatorProcess) -> str:
    """``paused`` or ``running``, from kopf's peering messages in the log (last one wins).

    With mandatory peering kopf starts *paused* and resumes only when no live peer outranks
    it; so a standby that starts after the leader never logs a pause at all.
    """
    state = "paused"
    for line in op.log.splitlines():
        if PAUSED in line or "Pausing all operators" in line:
            state = "paused"
        elif RESUMED in line:
            state = "running"
    return state


def handled(op: OperatorProcess, tj_name: str) -> bool:
    """The operator ran a handler of TrainingJob ``tj_name`` (kopf logs each with the object)."""
    return any(
        "Handler 'reconcile-trainingjob'" in line and f'"name": "{tj_name}"' in line
        for line in op.log.splitlines()
    )


@pytest.mark.parametrize("scope", ["all-namespaces", "watch-namespaces"])
def test_two_replicas_one_leader_standby_takes_over_after_sigkill(
    scope: str,
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plane = crds_installed
    create_s3_secret(plane, release_namespace)
    values = {**s3_values(s3_server, f"{s3_bucket}/runs"), **FAST_TIMERS, "replicaCount": 2}
    if scope == "watch-namespaces":
        values["watchNamespaces"] = [namespace]  # a KopfPeering in that namespace, not a cluster one
    release = install_chart(plane, release_namespace, values)
    args = release.args
    assert "--peering=rayrelay" in args and "--standalone" not in args, args
    lifetime = next(int(a.split("=", 1)[1]) for a in args if a.startswith("--peering-lifetime="))
    assert lifetime == 10, args  # the chart's default, leaderElection.lifetimeSeconds

    # Two pods of the Deployment (names as a ReplicaSet gives them).
    first, second = operators.start(release, "7c9d4"), operators.start(release, "x2k8q")
    first.wait_ready()
    second.wait_ready()

    def peers() -> dict[str, Any] | None:
        where = (
            ("clusterkopfpeering", "rayrelay")
            if scope == "all-namespaces"
            else ("kopfpeering", "rayrelay", "-n", namespace)
        )
        peering = plane.get(*where) or {}
        status = dict(peering.get("status") or {})
        return status if {first.pod_name, second.pod_name} <= set(status) else None

    status = wait_for("both replicas in the peering object", peers, 150)
    priorities = {pod: status[pod]["priority"] for pod in (first.pod_name, second.pod_name)}
    assert len(set(priorities.values())) == 2, f"equal priorities pause every replica: {priorities}"
    leader, standby = sorted((first, second), key=lambda op: priorities[op.pod_name], reverse=True)
    wait_for(f"the leader {leader.pod_name} to run", lambda: pause_state(leader) == "running", 60)
    wait_for(f"the standby {standby.pod_name} to pause", lambda: pause_state(standby) == "paused", 60)

    # Exactly one reconciles.
    plane.apply(trainingjob("ha-one", gpus=1, workers=2), "-n", namespace)
    (rj_one,) = wait_for("the RayJob of ha-one", lambda: rayjobs_of(plane, namespace, "ha-one"), 90)
    wait_for("the leader to handle ha-one", lambda: handled(leader, "ha-one"), 30)
    assert not handled(standby, "ha-one"), standby.log[-3000:]

    # The leader dies without a goodbye; a TrainingJob arrives right after.
    killed = time.monotonic()
    leader.kill()
    plane.apply(trainingjob("ha-two", gpus=0, workers=1), "-n", namespace)
    wait_for("the standby to create ha-two's RayJob", lambda: rayjobs_of(plane, namespace, "ha-two"), 60, 0.1)
    takeover = time.monotonic() - killed
    with capsys.disabled():
        print(
            f"\nHA takeover ({scope}): the standby created a RayJob {takeover:.1f} s after the leader was "
            f"SIGKILLed (peering lifetime {lifetime} s, limit {TAKEOVER_LIMIT_S:.0f} s)"
        )
    assert pause_state(standby) == "running", standby.log[-3000:]
    assert takeover <= TAKEOVER_LIMIT_S

    # The new leader also resumes ha-one, and makes nothing twice.
    wait_for("the new leader to resume ha-one", lambda: handled(standby, "ha-one"), 60)
    (still_one,) = rayjobs_of(plane, namespace, "ha-one")
    assert still_one["metadata"]["uid"] == rj_one["metadata"]["uid"]
    names = sorted(rj["metadata"]["name"] for rj in plane.get("rayjobs", "-n", namespace)["items"])
    assert names == ["ha-one-g1-a1", "ha-two-g1-a1"], names
    standby.alive()
