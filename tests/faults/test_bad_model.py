"""A bad model published while a ModelDeployment serves (issue 14, item 6), and a good one rolled out.

The ModelDeployment (``trainingJobRef``) is reconciled by the product's own pass
on the real ``ray`` backend and the shared Ray head; it serves run A (a copy of
the training fixture's ``tiny_run``) under a closed loop of 2 clients on the
one-hop v2 route. Then its TrainingJob names run B, published with a file whose
bytes changed after the manifest was written (the fast case), or with a label
more than the model has, so that the warm-up inference fails (the long case).
What must hold: B is refused (the ``Progressing`` condition, reason
``ModelRefused``, names B's run and the replica's reason), run A is served again,
``status.model`` stays A, the refused digest is not deployed again, and no
request fails. The long case also rolls a good run C out under the same load and
counts the failed requests through the switch.

Serve 2.58's rolling update stops an old replica before its successor runs when
the target leaves no room (one replica: the only one), so the operator deploys a
new model with room for one replica more than those running (a surge): A's
replica stops only once a new one runs. B's never does; when its application
goes DEPLOY_FAILED the operator deploys A's config again, which A's replica
still matches (``reconcile/deployment.py``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import sha256_file
from tests.faults.results import record
from tests.faults.serving import ClosedLoad, Deployment, codes, copy_run, failures

pytestmark = pytest.mark.slow
REPLICAS = 1


def refuse_under_load(
    d: Deployment, a: Path, bad: Path, why: str, tmp_path: Path
) -> tuple[dict[str, Any], list[Any]]:
    """Publish ``bad`` while ``a`` serves under load; the figures and the failed requests."""
    digest_a, digest_b = f"sha256:{sha256_file(a)}", f"sha256:{sha256_file(bad)}"
    with ClosedLoad(d.infer_url, clients=2) as load:
        load.wait_answers(10, timeout=60)
        switch = time.monotonic()
        d.publish(bad)
        refused = d.until(
            "B refused", lambda s: (d.condition("Progressing") or {}).get("reason") == "ModelRefused", 240
        )
        refused_s = time.monotonic() - switch
        d.until(
            "A served again",
            lambda s: (
                (d.condition("Ready") or {}).get("status") == "True" and d.app().get("status") == "RUNNING"
            ),
            240,
        )
        back_s = time.monotonic() - switch
        time.sleep(2.0)  # answers after the return count too
        end = time.monotonic()
    during = load.since(switch, end)
    progressing = d.condition("Progressing")
    message = progressing.get("message", "")
    assert message.startswith(f"refused {digest_b} "), message
    assert why in message and "run run-b" in message, message
    assert (refused.get("model") or {}).get("digest") == digest_a
    status = d.step()
    assert status["phase"] == "Degraded" and (status.get("model") or {}).get("digest") == digest_a, status
    assert (d.app().get("deployed_app_config") or {}).get("args", {}).get("digest") == digest_a
    assert any(e.reason == "ModelRefused" for e in d.events), d.events
    # A's replica answers again after the refusal.
    lost = failures(during)
    figures = {
        "requests_during_attempt": len(during),
        "failed_requests": len(lost),
        "answers_by_status": codes(during),
        "refused_after_seconds": round(refused_s, 1),
        "old_model_running_again_after_seconds": round(back_s, 1),
        "slowest_answer_seconds": round(max(x.seconds for x in during), 2),
        "old_model_kept": (status.get("model") or {}).get("digest") == digest_a,
        "reason": progressing.get("reason"),
    }
    return figures, lost


def test_a_model_failing_its_digest_check_is_refused_and_the_old_one_serves(
    ray_cluster: Any, tiny_run: Any, tmp_path: Path
) -> None:
    a = copy_run(tiny_run.manifest_uri, tmp_path / "a", "run-a00000000001")
    bad = copy_run(tiny_run.manifest_uri, tmp_path / "b", "run-b00000000001", tamper="bytes")
    d = Deployment(ray_cluster, "rr-badmodel", a, replicas=REPLICAS)
    try:
        d.ready_with(f"sha256:{sha256_file(a)}")
        figures, lost = refuse_under_load(d, a, bad, "checksum mismatch", tmp_path)
        # The refused digest stays refused: more passes deploy nothing new.
        for _ in range(3):
            d.step()
        assert (d.app().get("deployed_app_config") or {}).get("args", {}).get("digest") == (
            f"sha256:{sha256_file(a)}"
        )
    finally:
        d.remove()
    record(
        "bad_model",
        figures={**figures, "failure": "digest check (a file's bytes changed after the manifest)"},
        command="pytest tests/faults/test_bad_model.py",
        notes=f"ray backend, shared Ray head, {REPLICAS} replica (0.5 CPU), tiny BERT (fp32); "
        "closed loop of 2 clients on the one-hop v2 route; passes every 0.5 s.",
    )
    assert not lost, f"{len(lost)} requests failed while the bad model was tried: {lost[:5]}"


@pytest.mark.faults_long
def test_a_model_failing_its_warm_up_is_refused_and_a_good_one_rolls_out(
    ray_cluster: Any, tiny_run: Any, tmp_path: Path
) -> None:
    a = copy_run(tiny_run.manifest_uri, tmp_path / "a", "run-a00000000002")
    bad = copy_run(tiny_run.manifest_uri, tmp_path / "b", "run-b00000000002", tamper="labels")
    good = copy_run(tiny_run.manifest_uri, tmp_path / "c", "run-c00000000002")
    d = Deployment(ray_cluster, "rr-rollout", a, replicas=REPLICAS)
    try:
        d.ready_with(f"sha256:{sha256_file(a)}")
        refusal, refusal_lost = refuse_under_load(d, a, bad, "warm-up inference failed", tmp_path)
        digest_c = f"sha256:{sha256_file(good)}"
        with ClosedLoad(d.infer_url, clients=2) as load:
            load.wait_answers(10, timeout=60)
            switch = time.monotonic()
            d.publish(good)
            d.ready_with(digest_c)
            rolled_s = time.monotonic() - switch
            time.sleep(2.0)
            end = time.monotonic()
        during = load.since(switch, end)
        lost = failures(during)
    finally:
        d.remove()
    record(
        "rollout",
        figures={
            "requests_through_switch": len(during),
            "failed_requests": len(lost),
            "answers_by_status": codes(during),
            "ready_with_new_model_after_seconds": round(rolled_s, 1),
            "slowest_answer_seconds": round(max(x.seconds for x in during), 2),
            "warm_up_refusal_failed_requests": refusal["failed_requests"],
            "warm_up_refusal_requests": refusal["requests_during_attempt"],
        },
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_bad_model.py",
        notes=f"ray backend, shared Ray head, {REPLICAS} replica (0.5 CPU), tiny BERT (fp32); closed loop "
        "of 2 clients on the one-hop v2 route; first a run failing its warm-up (a label more than the "
        "model's outputs) refused, then a good run rolled out.",
    )
    assert not refusal_lost, f"{len(refusal_lost)} requests failed while the bad model was tried"
    assert not lost, f"{len(lost)} of {len(during)} requests failed through the switch: {lost[:5]}"
