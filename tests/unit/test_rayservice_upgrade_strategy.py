"""The RayService names KubeRay's upgrade strategy (issue 14): ``spec.upgradeStrategy.type``.

KubeRay 1.5 falls back to its operator-wide ``ENABLE_ZERO_DOWNTIME`` flag when a
RayService names none; the builder names one, ``NewCluster`` unless
``RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY`` says ``None``. The incremental strategy
(Gateway API, a KubeRay feature gate) is refused where the setting is read.
``tests/cluster/test_rayservice_upgrade_strategy.py`` has the real API server and
KubeRay controller accept it.
"""

from __future__ import annotations

from typing import Any

import pytest

from rayrelay_core.api import ModelDeployment
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.builders.kuberay import build_rayservice
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingWork

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs", s3_endpoint_url="http://minio:9000")


def work(settings: Settings = SETTINGS) -> ServingWork:
    md = ModelDeployment.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u-2"},
            "spec": {"model": {"manifestUri": "s3://rr-art/runs/ml/sst2/run-x/manifest.json"}},
        }
    )
    desired = DesiredModel("s3://rr-art/runs/ml/sst2/run-x/manifest.json", "sha256:abc", "int8")
    return serving_work(md, desired, settings)


def build(**kwargs: Any) -> dict[str, Any]:
    return build_rayservice(work(), image="reg/rr:1", endpoint_url=None, credentials_secret=None, **kwargs)


def test_the_default_is_a_new_cluster() -> None:
    assert build()["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_none_is_named_too() -> None:
    assert build(upgrade_strategy="None")["spec"]["upgradeStrategy"] == {"type": "None"}


@pytest.mark.parametrize("strategy", ["NewClusterWithIncrementalUpgrade", "newcluster", ""])
def test_other_strategies_are_refused(strategy: str) -> None:
    with pytest.raises(ValueError, match="upgrade strategy"):
        build(upgrade_strategy=strategy)


def test_the_backend_builds_with_the_setting() -> None:
    settings = Settings.from_env(
        {"RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY": "None", "RAYRELAY_ARTIFACTS_URI": "s3://rr-art/runs"}
    )
    body = KubeRayBackend(None, settings)._rayservice_body(work(settings))
    assert body["spec"]["upgradeStrategy"] == {"type": "None"}
    default = KubeRayBackend(None, SETTINGS)._rayservice_body(work())
    assert default["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


def test_the_setting_refuses_the_incremental_upgrade() -> None:
    with pytest.raises(ValueError, match="RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY.*Gateway API"):
        Settings.from_env({"RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY": "NewClusterWithIncrementalUpgrade"})
