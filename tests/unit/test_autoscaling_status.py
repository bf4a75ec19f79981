"""Autoscaling as the operator and the gateway report it (issue 17), without Ray.

- ``status.scaling`` pass by pass: the reconciler (``run_pass``, a fake backend
  standing in for what Serve reports) records each change of the autoscaler's
  target as a decision with its reason, and nothing on a steady pass;
- the ``ray`` backend's pure pieces: the target read from Serve's REST details,
  ongoing requests read from the gateway's exposition;
- the gateway's view of a model scaled to zero (servable and ready, so a request
  is held, not refused) and its /metrics series.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, with_status, write_manifest

from rayrelay_core.api import Autoscaling, ModelDeploymentStatus
from rayrelay_operator.backends.ray import GATEWAY_APP, observe_app, ongoing_requests
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.reconcile.deployment import scaling_reason, scaling_status
from rayrelay_operator.work import ServingObservation, ServingState
from rayrelay_workloads.serve.gateway import ModelState
from rayrelay_workloads.serve.metrics import EndpointMetrics, merge_expositions

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def obs(target: int | None, ready: int = 1, ongoing: float | None = None) -> ServingObservation:
    return ServingObservation(
        ServingState.RUNNING,
        url="http://x:8000",
        replicas=ready,
        ready_replicas=ready,
        target_replicas=target,
        ongoing_requests=ongoing,
    )


def test_decisions_are_target_changes_with_reasons() -> None:
    scaling = Autoscaling.model_validate(
        {"minReplicas": 0, "maxReplicas": 3, "targetOngoingRequests": 2, "scaleToZeroAfterSeconds": 5}
    )
    first = scaling_status(None, obs(1, ongoing=0.0), scaling, NOW)
    assert first is not None and first.target_replicas == 1 and first.last_decision is None
    assert scaling_status(first, obs(1, ongoing=0.0), scaling, NOW) == first  # steady: no change
    up = scaling_status(first, obs(3, ongoing=9.0), scaling, NOW)
    assert up is not None and (up.last_decision, up.last_from_replicas, up.last_to_replicas) == (
        "ScaledUp",
        1,
        3,
    )
    assert "9 requests in flight or queued at 1 replica(s)" in (up.last_reason or "")
    assert (
        "targetOngoingRequests 2" in (up.last_reason or "") and up.last_scale_time == "2026-11-29T12:00:00Z"
    )
    down = scaling_status(up, obs(1, ongoing=0.0), scaling, NOW)
    assert down is not None and down.last_decision == "ScaledDown" and "below" in (down.last_reason or "")
    zero = scaling_status(down, obs(0, ready=0, ongoing=None), scaling, NOW)
    assert zero is not None and zero.last_decision == "ScaledToZero" and "5s" in (zero.last_reason or "")
    assert zero.ongoing_requests is None
    back = scaling_status(zero, obs(1), scaling, NOW)
    assert back is not None and back.last_decision == "ScaledFromZero" and "held" in (back.last_reason or "")
    # A backend without a target (KubeRay's status) keeps what was there.
    assert scaling_status(back, obs(None), scaling, NOW) is back


def test_reason_without_a_load_figure() -> None:
    decision, reason = scaling_reason(2, 4, None, Autoscaling())
    assert decision == "ScaledUp" and reason.startswith("load at 2 replica(s) above")


def test_reconciler_writes_the_decision_once(tmp_path: Path) -> None:
    backend = FakeBackend()
    ctx, _events = make_ctx(backend, Clock(), str(tmp_path))
    uri = str(tmp_path / "run-1" / "manifest.json")
    write_manifest(uri, sample_manifest("run-1"))
    md: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"manifestUri": uri}, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}},
    }

    def step(observed: ServingObservation | None) -> tuple[ModelDeploymentStatus, bool]:
        nonlocal md
        if observed is not None:
            observed.serving_args = backend.deployed[-1].app_args
            backend.serving = observed
        result = run_pass("ModelDeployment", md, ctx)
        if result.patch:
            md = with_status(md, result.status)
        assert isinstance(result.status, ModelDeploymentStatus)
        return result.status, bool(result.patch)

    step(None)  # deploys
    s, _ = step(obs(1, ongoing=0.0))
    assert s.phase == "Ready" and s.scaling is not None and s.scaling.target_replicas == 1
    s, _ = step(obs(2, ready=1, ongoing=12.0))
    assert s.scaling is not None and s.scaling.last_decision == "ScaledUp" and s.replicas == 1
    s, wrote = step(obs(2, ready=1, ongoing=12.0))
    assert not wrote, "a steady pass writes nothing"
    s, _ = step(obs(2, ready=2, ongoing=12.0))
    assert (s.replicas, s.ready_replicas) == (2, 2) and s.scaling is not None
    assert s.scaling.last_decision == "ScaledUp"  # replicas catching up is no new decision
    assert s.model_dump(by_alias=True, exclude_none=True)["scaling"]["lastToReplicas"] == 2


def test_ray_backend_reads_the_target_and_the_gateways_ongoing_requests() -> None:
    def details(target: int, states: list[str]) -> dict[str, Any]:
        return {
            "status": "RUNNING",
            "deployments": {
                "ModelServer": {
                    "status": "HEALTHY",
                    "target_num_replicas": target,
                    "replicas": [{"state": s} for s in states],
                }
            },
        }

    instance = {"applications": {"m": details(0, []), GATEWAY_APP: details(1, ["RUNNING"])}}
    o = observe_app(instance, "m", "http://x")
    assert (o.state, o.target_replicas, o.replicas, o.ready_replicas) == (ServingState.RUNNING, 0, 0, 0)
    assert o.url == "http://x", "scaled to zero is still an endpoint that answers"
    metrics = EndpointMetrics()
    metrics.set_ongoing({"m": {"r1": 3, "r2": 4}, "other": {"r3": 9}})
    text = generate_latest(metrics.registry).decode()
    assert ongoing_requests(text, "m") == 7.0
    assert ongoing_requests(text, "absent") is None
    assert ongoing_requests("<html>502</html>", "m") is None


def test_gateway_holds_requests_for_a_model_scaled_to_zero() -> None:
    zero = ModelState("m", "RUNNING", "", 1.0, 0, "HEALTHY", {})
    assert zero.scaled_to_zero and zero.servable and zero.ready
    waking = ModelState("m", "RUNNING", "", 1.0, 0, "UPSCALING", {"STARTING": 1})
    assert waking.scaled_to_zero and waking.servable
    failed = ModelState("m", "DEPLOY_FAILED", "boom", 1.0, 0, "DEPLOY_FAILED", {})
    assert not failed.servable and not failed.ready
    deploying = ModelState("m", "DEPLOYING", "", 1.0, 0, "UPDATING", {"STARTING": 1})
    assert not deploying.servable, "a first deployment still starting is not held (503 says so)"
    running = ModelState("m", "RUNNING", "", 1.0, 2, "HEALTHY", {"RUNNING": 2})
    assert running.servable and not running.scaled_to_zero


def test_endpoint_metrics_series() -> None:
    metrics = EndpointMetrics()
    metrics.set_replicas({"m": {}, "n": {"RUNNING": 2, "STARTING": 1}})
    with metrics.held("m", scaled_to_zero=True):
        inside = generate_latest(metrics.registry).decode()
        assert 'rayrelay_held_requests{model="m"} 1.0' in inside
    with metrics.held("n", scaled_to_zero=False):
        pass
    text = merge_expositions([generate_latest(metrics.registry).decode()])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("rayrelay_replicas", (("model", "m"), ("state", "RUNNING")))] == 0
    assert samples[("rayrelay_replicas", (("model", "n"), ("state", "STARTING")))] == 1
    assert samples[("rayrelay_held_requests", (("model", "m"),))] == 0
    assert samples[("rayrelay_cold_start_requests_total", (("model", "m"),))] == 1
    assert ("rayrelay_cold_start_requests_total", (("model", "n"),)) not in samples
    metrics.set_replicas({"n": {"RUNNING": 1}})  # m deleted: its series go
    names = {s.labels.get("model") for s in metrics.replicas.collect()[0].samples}
    assert names == {"n"}
