"""A text-generation replica's caps: in Serve's config and in the ModelDeployment status (issue 25).

``spec.generation``'s ``maxBatchSize`` / ``maxCachedTokens`` / ``maxQueuedRequests`` bound a
replica's decode batch, its cache and its queue; Serve's ``max_ongoing_requests`` must sit
above the batch and the queue, or Serve would hold requests in its own queue before the
replica could answer 429. The status test drives the ModelDeployment reconciler pass by pass
with ``reconcile_fakes.FakeBackend`` standing in for Serve (as ``test_reconcile_deployment``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, with_status, write_manifest

from rayrelay_core.api import ModelDeploymentSpec, ModelDeploymentStatus
from rayrelay_core.serveconfig import (
    TEXTGEN_ONGOING_HEADROOM,
    application_configs,
    generation_caps,
    max_ongoing_requests,
)
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.work import ServingObservation, ServingState

GENERATION = {"maxBatchSize": 6, "maxCachedTokens": 3000, "maxQueuedRequests": 50}


def spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({"model": {"manifestUri": "file:///m/manifest.json"}, **extra})


def test_serve_hands_a_text_generation_replica_its_batch_its_queue_and_headroom() -> None:
    s = spec(generation=GENERATION)
    args = {"name": "writer", "manifestUri": "file:///m/manifest.json", "spec": s.wire()}
    textgen = application_configs({**args, "task": "text-generation"})[1]["deployments"][0]
    classifier = application_configs(args)[1]["deployments"][0]
    assert textgen["max_ongoing_requests"] == 6 + 50 + TEXTGEN_ONGOING_HEADROOM
    # A classifier keeps its bound (twice the target, at least a batch of spec.batching).
    assert classifier["max_ongoing_requests"] == max_ongoing_requests(s) == 16
    # The defaults (batch 8, queue 32) and a large autoscaling target: the larger one wins.
    assert max_ongoing_requests(spec(), "text-generation") == 8 + 32 + TEXTGEN_ONGOING_HEADROOM
    big = spec(autoscaling={"targetOngoingRequests": 100})
    assert max_ongoing_requests(big, "text-generation") == 200


def test_generation_caps_are_the_specs_and_serves_bound() -> None:
    caps = generation_caps(spec(generation=GENERATION))
    assert caps.wire() == {
        "maxBatchSize": 6,
        "maxCachedTokens": 3000,
        "maxQueuedRequests": 50,
        "maxOngoingRequests": 64,
    }
    assert generation_caps(spec()).wire() == {
        "maxBatchSize": 8,
        "maxCachedTokens": 8192,
        "maxQueuedRequests": 32,
        "maxOngoingRequests": 48,
    }


def ready_status(tmp_path: Path, task: str, generation: dict[str, Any] | None) -> ModelDeploymentStatus:
    """Deploy a manifest of ``task`` and let the fake Serve report it running: the Ready status."""
    manifest = sample_manifest(f"run-{task}")
    manifest.task = task
    uri = str(tmp_path / task / "manifest.json")
    write_manifest(uri, manifest)
    backend = FakeBackend()
    ctx, _ = make_ctx(backend, Clock(), str(tmp_path))
    body: dict[str, Any] = {"model": {"manifestUri": uri}}
    if generation is not None:
        body["generation"] = generation
    md: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "writer", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": body,
    }
    md = with_status(md, run_pass("ModelDeployment", md, ctx).status)
    backend.serving = ServingObservation(
        state=ServingState.RUNNING,
        url="http://x:8000",
        replicas=1,
        ready_replicas=1,
        serving_args=backend.deployed[-1].app_args,
    )
    status = run_pass("ModelDeployment", md, ctx).status
    assert isinstance(status, ModelDeploymentStatus) and status.phase == "Ready", status
    return status


def test_a_ready_text_generation_deployment_shows_its_caps(tmp_path: Path) -> None:
    status = ready_status(tmp_path, "text-generation", GENERATION)
    assert status.model is not None and status.model.task == "text-generation"
    assert status.model.generation is not None
    assert status.model.generation.wire() == {
        "maxBatchSize": 6,
        "maxCachedTokens": 3000,
        "maxQueuedRequests": 50,
        "maxOngoingRequests": 64,
    }
    wire = status.wire()["model"]
    assert wire["task"] == "text-generation" and wire["generation"]["maxQueuedRequests"] == 50


def test_a_classifier_shows_no_generation_caps(tmp_path: Path) -> None:
    status = ready_status(tmp_path, "sequence-classification", None)
    assert status.model is not None and status.model.task == "sequence-classification"
    assert status.model.generation is None and "generation" not in status.wire()["model"]
