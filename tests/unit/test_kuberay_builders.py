"""KubeRay RayJob / RayService builders (``rayrelay_operator.builders.kuberay``), field by field.

Also runs the shared manifest checks of ``tests/k8s_checks.py`` on every pod
template inside them: the restricted Pod Security Standard and resource
requests/limits. (RayJob/RayService have no schema in kubernetes-validate;
their pod templates are checked as Pods.)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import k8s_checks
from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_core.runs import JobDocument
from rayrelay_operator.backends.kuberay import serving_observation, training_observation
from rayrelay_operator.builders.kuberay import build_rayjob, build_rayservice
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingState, WorkState

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs", s3_endpoint_url="http://minio:9000")


def tj(gpus: int = 0) -> TrainingJob:
    resources: dict[str, Any] = {"numWorkers": 3, "cpusPerWorker": 4, "memory": "16Gi", "gpusPerWorker": gpus}
    if gpus:
        resources["precision"] = "bf16"
    return TrainingJob.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": "sst2", "namespace": "ml", "uid": "u-1", "generation": 2},
            "spec": {
                "model": {"source": "bert-base-uncased"},
                "data": {"train": "s3://d-bkt/t.jsonl", "validation": "s3://d-bkt/v.jsonl"},
                "resources": resources,
                "failurePolicy": {"activeDeadlineSeconds": 3600},
                "artifacts": {"credentialsSecret": "s3-creds"},
            },
        }
    )


def rayjob(gpus: int = 0) -> dict[str, Any]:
    work = training_work(tj(gpus), SETTINGS, generation=2, attempt=3)
    return build_rayjob(
        work, image="reg/rr:1", endpoint_url="http://minio:9000", credentials_secret="s3-creds"
    )


def md(gpus: float = 0) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u-2"},
            "spec": {
                "model": {"manifestUri": "s3://rr-art/runs/ml/sst2/run-x/manifest.json"},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 4},
                "resources": {"cpus": 2, "gpus": gpus, "memory": "3Gi"},
            },
        }
    )


def rayservice(gpus: float = 0) -> dict[str, Any]:
    desired = DesiredModel("s3://rr-art/runs/ml/sst2/run-x/manifest.json", "sha256:abc", "int8")
    work = serving_work(md(gpus), desired, SETTINGS)
    return build_rayservice(work, image="reg/rr:1", endpoint_url="http://minio:9000", credentials_secret=None)


def test_rayjob_cpu_fields() -> None:
    obj = rayjob()
    assert obj["apiVersion"] == "ray.io/v1" and obj["kind"] == "RayJob"
    meta = obj["metadata"]
    assert meta["name"] == "sst2-g2-a3" and meta["namespace"] == "ml"
    assert meta["labels"]["rayrelay.dev/trainingjob"] == "sst2"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "rayrelay"
    assert meta["labels"]["rayrelay.dev/attempt"] == "3"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "sst2",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = obj["spec"]
    assert spec["jobId"] == "rayrelay-ml-sst2-74f1c81c-g2-a3"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["backoffLimit"] == 0
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {
        "env_vars": {"RAYRELAY_S3_ENDPOINT_URL": "http://minio:9000"}
    }
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "rayrelay_workloads.train_job", "--job-json"]
    doc = JobDocument.model_validate(json.loads(argv[4]))
    assert (doc.attempt, doc.generation, doc.run_uri.startswith("s3://rr-art/runs/ml/sst2/run-")) == (
        3,
        2,
        True,
    )
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (worker,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (3, 3, 3)
    assert worker["rayStartParams"] == {"num-cpus": "4"}
    container = worker["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/rr:1"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "4", "memory": "16Gi"},
    }
    assert "tolerations" not in worker["template"]["spec"]
    secret_env = [e for e in container["env"] if "valueFrom" in e]
    assert secret_env == [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": k}}}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]


def test_rayjob_gpu_fields() -> None:
    (worker,) = rayjob(gpus=2)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert worker["rayStartParams"] == {"num-cpus": "4", "num-gpus": "2"}
    assert worker["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_rayservice_fields() -> None:
    obj = rayservice()
    assert obj["kind"] == "RayService" and obj["metadata"]["name"] == "sentiment"
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    args = json.loads(obj["metadata"]["annotations"]["rayrelay.dev/app-args"])
    assert args["manifestUri"].endswith("manifest.json") and args["digest"] == "sha256:abc"
    config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    names = [app["name"] for app in config["applications"]]
    assert names == ["rayrelay-gateway", "sentiment"]
    assert config["applications"][1]["args"] == args
    cluster = obj["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    (worker,) = cluster["workerGroupSpecs"]
    assert (worker["replicas"], worker["minReplicas"], worker["maxReplicas"]) == (1, 1, 4)
    container = worker["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "2500m", "memory": "3Gi"}
    assert not [e for e in container["env"] if "valueFrom" in e]  # no secret configured


def test_rayservice_gpu() -> None:
    (worker,) = rayservice(gpus=1)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize("build", [rayjob, lambda: rayjob(2), rayservice, lambda: rayservice(1)])
def test_pods_are_restricted_with_resources_and_valid(build: Any) -> None:
    obj = build()
    assert k8s_checks.restricted_pss_errors([obj]) == []
    assert k8s_checks.resources_errors([obj]) == []
    # Every pod template is a valid PodSpec under Kubernetes' strict schema.
    for where, pod in k8s_checks.pod_specs(obj):
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}
        assert k8s_checks.schema_errors(manifest) == [], where


def test_builders_are_deterministic() -> None:
    assert rayjob() == rayjob() and rayservice() == rayservice()


# ------------------------------------------------------------------ status mapping


def _rj(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": status}


def test_rayjob_status_mapping() -> None:
    assert training_observation(_rj(), [], None).state == WorkState.WAITING
    assert training_observation(_rj(jobDeploymentStatus="Initializing"), [], None).started_at == (
        "2026-01-01T00:00:00Z"
    )
    assert training_observation(_rj(jobStatus="RUNNING"), [], None).state == WorkState.RUNNING
    assert training_observation(_rj(jobStatus="SUCCEEDED"), [], None).state == WorkState.SUCCEEDED
    failed = training_observation(_rj(jobDeploymentStatus="Failed", reason="DeadlineExceeded"), [], None)
    assert (failed.state, failed.reason) == (WorkState.FAILED, "DeadlineExceeded")
    assert training_observation(_rj(jobDeploymentStatus="Suspended"), [], None).state == WorkState.STOPPED


def test_pod_reasons_and_driver_death() -> None:
    pull = {
        "metadata": {"name": "h"},
        "status": {
            "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull", "message": "no"}}}]
        },
    }
    obs = training_observation(_rj(jobDeploymentStatus="Initializing"), [pull], None)
    assert (obs.reason, "pod h" in obs.message) == ("ImagePullFailed", True)
    pending = {
        "metadata": {"name": "w"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]},
    }
    assert training_observation(_rj(), [pending], None).reason == "Unschedulable"
    submitter = {
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    }
    died = training_observation(_rj(jobStatus="RUNNING"), [], submitter)
    assert (died.state, died.reason) == (WorkState.RUNNING, "DriverDied")
    head = {"metadata": {"name": "h", "labels": {"ray.io/node-type": "head"}}, "status": {"phase": "Failed"}}
    assert training_observation(_rj(jobStatus="RUNNING"), [head], None).reason == "DriverDied"


def test_rayservice_status_mapping() -> None:
    rs = {
        "metadata": {"annotations": {"rayrelay.dev/app-args": json.dumps({"name": "m"})}},
        "status": {
            "activeServiceStatus": {
                "applicationStatuses": {"m": {"status": "DEPLOY_FAILED", "message": "checksum mismatch"}},
                "rayClusterStatus": {"desiredWorkerReplicas": 2, "availableWorkerReplicas": 1},
            }
        },
    }
    obs = serving_observation(rs, "m", "http://m-serve-svc.ml.svc:8000")
    assert (obs.state, obs.message, obs.url) == (ServingState.DEPLOY_FAILED, "checksum mismatch", None)
    assert (obs.replicas, obs.ready_replicas, obs.serving_args) == (2, 1, {"name": "m"})
    rs["status"]["activeServiceStatus"]["applicationStatuses"]["m"]["status"] = "RUNNING"
    assert serving_observation(rs, "m", "http://u").url == "http://u"
