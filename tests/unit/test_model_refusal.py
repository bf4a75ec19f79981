"""A rollout's new replica refusing its model, told before Serve gives up (issue 14, item 6).

Serve 2.58 marks a deployment DEPLOY_FAILED only after several failed starts,
and then answers its requests 503 even while old replicas run. The replica's own
refusals (digest, checksum, warm-up) never pass on a retry, so the operator
refuses the model at the first one: the ``ray`` backend passes Serve's
"A replica failed to start" message on while the deployment is still updating,
and the state machine refuses on it. The real thing: ``tests/faults/test_bad_model.py``.
"""

from __future__ import annotations

from pathlib import Path

from test_reconcile_deployment import Driver, cond

from rayrelay_operator.backends.ray import SERVE_REPLICA_FAILED, observe_app
from rayrelay_operator.reconcile.deployment import REPLICA_REFUSALS
from rayrelay_operator.work import ServingObservation, ServingState

REPO = Path(__file__).resolve().parents[2]
# What Serve's deployment says on a replica's first failed start (shortened).
SERVE_RETRY = (
    "A replica failed to start with exception. Retrying 5 more time(s). Error:\n"
    'Traceback (most recent call last):\n  File "model.py", line 1, in __init__\n'
    "rayrelay_workloads.serve.artifacts.ArtifactError: checksum mismatch for onnx/model.onnx: "
    "expected sha256 aa, got bb; the file was altered after the manifest was published, refusing to serve it"
)


def test_the_backend_passes_a_replica_failure_on_while_the_deployment_updates() -> None:
    instance = {
        "applications": {
            "m": {
                "status": "DEPLOYING",
                "message": "",
                "deployments": {
                    "ModelServer": {"status": "UPDATING", "message": SERVE_RETRY, "replicas": []}
                },
            }
        }
    }
    obs = observe_app(instance, "m", None)
    assert obs.state is ServingState.DEPLOYING
    assert "checksum mismatch for onnx/model.onnx" in obs.message and SERVE_REPLICA_FAILED in obs.message


def test_a_new_replica_refusing_its_model_is_refused_at_once(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    d.serve("Running")
    old = d.step().model
    assert old is not None
    d.publish("run-2")
    d.step()  # rolling out, with a surge
    d.backend.serving = ServingObservation(
        state=ServingState.DEPLOYING, url="http://x:8000", replicas=2, ready_replicas=1, message=SERVE_RETRY
    )
    s = d.step()
    assert s.phase == "Degraded" and cond(s, "Progressing") == ("False", "ModelRefused")
    assert cond(s, "Ready") == ("True", "ServingPrevious") and s.model == old
    assert d.backend.deployed[-1].app_args["digest"] == old.digest  # run-1's config again
    assert d.backend.deployed[-1].surge_from is None


def test_a_failure_that_may_pass_waits_for_serve() -> None:
    """Only the replica's own refusals count: a store that timed out may answer next time."""
    assert not any(m in "cannot fetch onnx/model.onnx: read timed out" for m in REPLICA_REFUSALS)


def test_the_refusals_are_the_replicas_own_words() -> None:
    sources = "".join(
        (REPO / "workloads" / "rayrelay_workloads" / "serve" / name).read_text()
        for name in ("artifacts.py", "model.py")
    )
    for marker in REPLICA_REFUSALS:
        assert marker in sources, f"{marker!r} is no longer what the replica says"
