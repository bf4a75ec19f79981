"""How soon Serve's controller learns of a request held at zero replicas (issue 25, cold start).

A handle records its queued requests every ``look_back_period_s`` x
``RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR`` and pushes them every
``metrics_interval_s``; rayrelay shortens both for scale-to-zero (serveconfig). These check
that the settings reach every place rayrelay deploys: the Serve config (both paths take it
from ``model_deployment_options``), the head ``rayrelay run`` starts
(``localray.autoscaling_env``) and every RayService pod. The measured effect is the
``sent->decision`` step of ``python -m bench.autoscaling --cold-only``.
"""

from __future__ import annotations

import warnings

import pytest

from rayrelay_core import serveconfig
from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_operator.localray import autoscaling_env
from tests.unit.test_rayservice_upgrade_strategy import build
from tests.unit.test_serve_haproxy import pod_envs

FACTOR = "RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR"


def spec(**autoscaling: object) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"manifestUri": "s3://bucket/m/manifest.json"}, "autoscaling": autoscaling}
    )


@pytest.mark.parametrize("window", [1, 4, 10, 600])
def test_scale_to_zero_pushes_often_and_serve_takes_it_without_warning(window: int) -> None:
    from ray.serve.config import AutoscalingConfig

    options = serveconfig.model_deployment_options(spec(minReplicas=0, metricsWindowSeconds=window))
    config = options["autoscaling_config"]
    assert config["metrics_interval_s"] == serveconfig.SCALE_FROM_ZERO_PUSH_INTERVAL_S
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # look_back_period_s <= metrics_interval_s
        parsed = AutoscalingConfig(**config)
    assert parsed.metrics_interval_s < parsed.look_back_period_s


def test_a_deployment_that_keeps_replicas_pushes_a_quarter_of_its_window() -> None:
    for window, interval in ((10, 2.5), (4, 1.0), (1, 0.5), (600, 10.0)):
        options = serveconfig.model_deployment_options(spec(minReplicas=1, metricsWindowSeconds=window))
        assert options["autoscaling_config"]["metrics_interval_s"] == interval


def test_the_record_factor_is_set_on_the_local_head_unless_the_caller_set_it() -> None:
    assert autoscaling_env({}) == {FACTOR: serveconfig.SERVE_AUTOSCALING_ENV[FACTOR]}
    assert float(serveconfig.SERVE_AUTOSCALING_ENV[FACTOR]) < 0.2  # Serve's default
    assert autoscaling_env({FACTOR: "0.2"}) == {}


@pytest.mark.parametrize("haproxy", [True, False])
def test_every_rayservice_pod_records_often(haproxy: bool) -> None:
    wanted = {"name": FACTOR, "value": serveconfig.SERVE_AUTOSCALING_ENV[FACTOR]}
    envs = pod_envs(build(haproxy=haproxy))
    assert envs and all(wanted in env for env in envs)
