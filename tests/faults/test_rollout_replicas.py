"""A new model rolled out under load while 2 replicas serve (issue 14, item 6, with more than one replica).

``test_bad_model.py`` measures the rollout with one running replica. Here the
ModelDeployment (``trainingJobRef``, the product's own pass on the real ``ray``
backend and the shared Ray head) runs 2 replicas (``minReplicas`` =
``maxReplicas`` = 2) of run A under a closed loop of 4 clients on the one-hop
v2 route; then its TrainingJob names run C (a good copy). The operator deploys
C with room for one replica more than those running
(``serveconfig.surge_autoscaling``: 3), and the spec's own autoscaling once C
runs. What must hold: the ModelDeployment is Ready with C's digest and no
request fails through the switch. Figures: the requests and their statuses,
seconds to Ready with C, the slowest answer, the most replicas (any state, any
version) Serve listed at once, the replicas running at the end, and the passes
after the rollout whose status said not Ready while the surge replica stopped
(measured, not promised: the application is DEPLOYING again then).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import sha256_file
from tests.faults.results import record
from tests.faults.serving import ClosedLoad, Deployment, codes, copy_run, failures

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
REPLICAS = 2
CLIENTS = 4


def running(d: Deployment) -> int:
    return sum(1 for r in d.replicas() if r.get("state") == "RUNNING")


def test_a_good_model_rolls_out_over_two_replicas_without_errors(
    ray_cluster: Any, tiny_run: Any, tmp_path: Path
) -> None:
    a = copy_run(tiny_run.manifest_uri, tmp_path / "a", "run-a00000000003")
    good = copy_run(tiny_run.manifest_uri, tmp_path / "c", "run-c00000000003")
    digest_c = f"sha256:{sha256_file(good)}"
    d = Deployment(ray_cluster, "rr-rollout2", a, replicas=REPLICAS)
    most = 0
    try:
        d.ready_with(f"sha256:{sha256_file(a)}")
        d.until(f"{REPLICAS} replicas running", lambda s: running(d) == REPLICAS, 240)
        with ClosedLoad(d.infer_url, clients=CLIENTS) as load:
            load.wait_answers(20, timeout=60)
            switch = time.monotonic()
            d.publish(good)

            def ready_with_c(status: dict[str, Any]) -> bool:
                nonlocal most
                most = max(most, len(d.replicas()))
                return (
                    status.get("phase") == "Ready" and (status.get("model") or {}).get("digest") == digest_c
                )

            d.until("Ready serving C", ready_with_c, 240)
            rolled_s = time.monotonic() - switch
            time.sleep(2.0)  # answers after the switch count too
            end = time.monotonic()
        during = load.since(switch, end)
        lost = failures(during)

        # After the rollout the spec's own autoscaling is deployed again and the surge replica
        # stops: count the passes whose status says not Ready meanwhile (and how long).
        not_ready: list[float] = []

        def settled(status: dict[str, Any]) -> bool:
            if (d.condition("Ready") or {}).get("status") != "True":
                not_ready.append(time.monotonic())
            return running(d) == REPLICAS and len(d.replicas()) == REPLICAS

        d.until(f"{REPLICAS} replicas of C, no others", settled, 120)
        for _ in range(6):  # a few passes more: the status settles
            time.sleep(0.5)
            settled(d.step())
        after = running(d)
    finally:
        d.remove()
    record(
        "rollout_2_replicas",
        figures={
            "running_replicas_before": REPLICAS,
            "requests_through_switch": len(during),
            "failed_requests": len(lost),
            "answers_by_status": codes(during),
            "ready_with_new_model_after_seconds": round(rolled_s, 1),
            "slowest_answer_seconds": round(max(x.seconds for x in during), 2),
            "most_replicas_listed_at_once": most,
            "running_replicas_after": after,
            "passes_not_ready_after_rolled_out": len(not_ready),
            "not_ready_after_rolled_out_seconds": round(not_ready[-1] - not_ready[0], 1) if not_ready else 0,
        },
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_rollout_replicas.py",
        notes=f"ray backend, shared Ray head (4 CPUs), {REPLICAS} replicas (0.5 CPU each), tiny BERT (fp32); "
        f"closed loop of {CLIENTS} clients on the one-hop v2 route; passes every 0.5 s. Replicas listed: "
        "Serve's application details, sampled at each pass, every state and version.",
    )
    assert not lost, f"{len(lost)} of {len(during)} requests failed through the switch: {lost[:5]}"
