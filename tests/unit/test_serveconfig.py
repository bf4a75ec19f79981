"""Unit tests of the Serve declarative config built from a ModelDeployment (rayrelay_core.serveconfig)."""

from __future__ import annotations

from typing import Any

import pytest

from rayrelay_core import serveconfig
from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_core.runs import serve_app_args


def args(**spec_extra: Any) -> dict[str, Any]:
    spec = ModelDeploymentSpec.model_validate(
        {"model": {"manifestUri": "s3://bucket/ns/job/run-1/manifest.json"}, **spec_extra}
    )
    return serve_app_args("sentiment", "default", "s3://bucket/ns/job/run-1/manifest.json", spec, None)


def test_gateway_and_model_entries() -> None:
    gateway, model = serveconfig.application_configs(
        args(
            autoscaling={
                "minReplicas": 2,
                "maxReplicas": 5,
                "targetOngoingRequests": 3,
                "upscaleDelaySeconds": 1,
            },
            resources={"cpus": 2, "gpus": 1, "memory": "2Gi"},
            batching={"maxBatchSize": 32, "batchWaitTimeoutMs": 7},
        )
    )
    assert gateway["name"] == "rayrelay-gateway" and gateway["route_prefix"] == "/"
    assert gateway["import_path"] == "rayrelay_workloads.serve.app:gateway_app"
    assert model["name"] == "sentiment" and model["route_prefix"] == "/v2/models/sentiment/infer"
    assert model["import_path"] == "rayrelay_workloads.serve.app:model_app"
    assert model["args"]["manifestUri"].endswith("manifest.json")
    (dep,) = model["deployments"]
    assert dep["name"] == "ModelServer"
    assert dep["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 5,
        "initial_replicas": 2,
        "target_ongoing_requests": 3,
        "upscale_delay_s": 1,
        "downscale_delay_s": 120,
        "look_back_period_s": 10,
        "metrics_interval_s": 2.5,
    }
    assert dep["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1, "memory": 2 * 2**30}
    assert dep["user_config"] == {"maxBatchSize": 32, "batchWaitTimeoutMs": 7}
    # A full batch must fit, and more than the autoscaling target.
    assert dep["max_ongoing_requests"] >= 32


def test_defaults_scale_to_zero_and_ongoing_above_target() -> None:
    (dep,) = serveconfig.model_application(args(autoscaling={"minReplicas": 0, "targetOngoingRequests": 40}))[
        "deployments"
    ]
    assert dep["autoscaling_config"]["min_replicas"] == 0
    assert dep["autoscaling_config"]["initial_replicas"] == 1
    assert dep["autoscaling_config"]["downscale_to_zero_delay_s"] == 300
    assert dep["ray_actor_options"] == {"num_cpus": 1}
    assert dep["max_ongoing_requests"] == 80


@pytest.mark.parametrize(
    ("quantity", "expected"), [("512Mi", 512 * 2**20), ("1G", 10**9), ("1000", 1000), ("1.5Gi", 3 * 2**29)]
)
def test_quantity_bytes(quantity: str, expected: int) -> None:
    assert serveconfig.quantity_bytes(quantity) == expected


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a memory quantity"):
        serveconfig.quantity_bytes("lots")
    with pytest.raises(ValueError, match="lack 'manifestUri'"):
        serveconfig.model_application({"name": "x", "spec": {}})
    bad = args()
    bad["name"] = "rayrelay-gateway"
    with pytest.raises(ValueError, match="reserved"):
        serveconfig.model_application(bad)


def test_entries_pass_serves_own_schema() -> None:
    """The same dicts go to PUT /api/serve/applications/ and to serveConfigV2."""
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        {
            "http_options": {"host": "127.0.0.1", "port": 8000},
            "applications": serveconfig.application_configs(args()),
        }
    )
    model = next(app for app in config.applications if app.name == "sentiment")
    assert model.route_prefix == "/v2/models/sentiment/infer"
    assert model.deployments[0].user_config == {"maxBatchSize": 16, "batchWaitTimeoutMs": 5}


def test_the_resolved_digest_travels_to_the_replica() -> None:
    spec = ModelDeploymentSpec.model_validate({"model": {"manifestUri": "s3://bucket/m/manifest.json"}})
    assert "digest" not in serve_app_args("m", "default", "s3://bucket/m/manifest.json", spec, None)
    hexdigest = "ab" * 32
    for given in (hexdigest, f"sha256:{hexdigest}"):
        wire = serve_app_args("m", "default", "s3://bucket/m/manifest.json", spec, None, digest=given)
        assert wire["digest"] == f"sha256:{hexdigest}"
        (_, model) = serveconfig.application_configs(wire)
        assert model["args"]["digest"] == f"sha256:{hexdigest}"


def test_scale_to_zero_and_window_reach_serve_and_serve_accepts_them() -> None:
    """Every key is one Serve's own AutoscalingConfig accepts, with the values of the spec."""
    from ray.serve.config import AutoscalingConfig

    (dep,) = serveconfig.model_application(
        args(
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 3,
                "scaleToZeroAfterSeconds": 4,
                "metricsWindowSeconds": 2,
            }
        )
    )["deployments"]
    config = AutoscalingConfig(**dep["autoscaling_config"])
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (0, 1, 3)
    assert config.downscale_to_zero_delay_s == 4 and config.look_back_period_s == 2
    # Scale to zero: pushed every 0.25 s (a held request's wait), below the window (no warning).
    assert config.metrics_interval_s == serveconfig.SCALE_FROM_ZERO_PUSH_INTERVAL_S < 2
    (dep,) = serveconfig.model_application(
        args(autoscaling={"minReplicas": 1, "scaleToZeroAfterSeconds": 4})
    )["deployments"]
    assert "downscale_to_zero_delay_s" not in dep["autoscaling_config"]  # no scale to zero above 0


def test_a_rollout_leaves_room_for_one_new_replica_beside_the_running_ones() -> None:
    """surge_from: Serve's target becomes the running replicas + 1; min and the args are kept."""
    from ray.serve.schema import ServeDeploySchema

    wire = args(autoscaling={"minReplicas": 1, "maxReplicas": 1})
    _gw, plain = serveconfig.application_configs(wire)
    _gw, surged = serveconfig.application_configs(wire, surge_from=1)
    scaling = surged["deployments"][0]["autoscaling_config"]
    assert scaling["initial_replicas"] == 2 and scaling["max_replicas"] == 2 and scaling["min_replicas"] == 1
    # Only the deployment's options differ: the args (Serve's code version) are the same, so
    # dropping the surge after the rollout restarts nothing.
    assert surged["args"] == plain["args"] and surged["import_path"] == plain["import_path"]
    bigger = serveconfig.application_configs(
        args(autoscaling={"minReplicas": 1, "maxReplicas": 8}), surge_from=3
    )
    assert bigger[1]["deployments"][0]["autoscaling_config"]["max_replicas"] == 8
    assert bigger[1]["deployments"][0]["autoscaling_config"]["initial_replicas"] == 4
    ServeDeploySchema.model_validate({"applications": serveconfig.application_configs(wire, surge_from=1)})


@pytest.mark.parametrize(
    ("task", "prefix"),
    [
        (None, "/v2/models/sentiment/infer"),
        ("text-generation", "/v2/models/sentiment"),
        ("sentence-embedding", "/v2/models/sentiment"),
    ],
)
def test_each_task_gets_its_own_route_prefix(task: str | None, prefix: str) -> None:
    """A classifier's replica takes its infer path only (metadata, readiness and KServe v1 stay
    with the gateway); a text-generation or sentence-embedding replica takes all of
    /v2/models/{name} (its one-hop OpenAI base included, for embeddings)."""
    app_args = {**args(), **({"task": task} if task else {})}
    model = serveconfig.application_configs(app_args)[1]
    assert model["route_prefix"] == prefix == serveconfig.model_route_prefix("sentiment", task)
