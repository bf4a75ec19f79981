"""Unit tests of the ``ray`` backend's pure parts (``rayrelay_operator.backends.ray``).

Serve's REST PUT replaces every application of a cluster, so the merge that
puts one ModelDeployment's apps next to the others' is where an app gets lost
if it is wrong. Also: Ray job details → TrainingObservation, Serve details →
ServingObservation, and the entrypoint's quoting.
"""

from __future__ import annotations

import shlex

import pytest

from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.backends.ray import (
    GATEWAY_APP,
    current_applications,
    deploy_body,
    merge_applications,
    observe_app,
    passthrough_env,
    remove_application,
    train_entrypoint,
    training_observation,
)
from rayrelay_operator.work import ServingState, WorkState


def app(name: str, version: int = 1, import_path: str = "rayrelay_workloads.serve.app:build") -> dict:
    return {
        "name": name,
        "route_prefix": None,
        "import_path": import_path,
        "args": {"name": name, "v": version},
    }


def gateway(version: int = 1) -> dict:
    return {
        "name": GATEWAY_APP,
        "route_prefix": "/",
        "import_path": "rayrelay_workloads.serve.gateway:build",
        "args": {"v": version},
    }


def names(apps: list[dict]) -> list[str]:
    return [a["name"] for a in apps]


def test_merge_inserts_a_second_model_and_keeps_one_gateway() -> None:
    current = [gateway(), app("a")]
    merged = merge_applications(current, [gateway(), app("b")])
    assert names(merged) == [GATEWAY_APP, "a", "b"]
    assert current == [gateway(), app("a")], "inputs must not be modified"


def test_merge_replaces_the_same_app_in_place_and_updates_the_gateway() -> None:
    current = [app("x", import_path="other.module:app"), gateway(1), app("a", 1), app("b", 1)]
    merged = merge_applications(current, [gateway(2), app("a", 2)])
    assert names(merged) == ["x", GATEWAY_APP, "a", "b"]
    assert merged[1]["args"]["v"] == 2 and merged[2]["args"]["v"] == 2 and merged[3]["args"]["v"] == 1


def test_merge_into_an_empty_cluster_and_duplicates_dropped() -> None:
    assert names(merge_applications([], [gateway(), app("a")])) == [GATEWAY_APP, "a"]
    assert names(merge_applications([app("a"), app("a")], [])) == ["a"]


def test_remove_keeps_other_models_and_the_gateway_until_the_last_one() -> None:
    current = [gateway(), app("a"), app("b"), app("x", import_path="other.module:app")]
    after_a = remove_application(current, "a")
    assert names(after_a) == [GATEWAY_APP, "b", "x"]
    after_b = remove_application(after_a, "b")
    assert names(after_b) == ["x"], "the gateway goes with the last rayrelay model; foreign apps stay"
    assert remove_application([], "a") == []


def test_imperative_apps_are_refused_with_a_reason() -> None:
    instance = {"applications": {"mine": {"deployed_app_config": app("mine")}, "py": {"status": "RUNNING"}}}
    with pytest.raises(BackendRejected, match="deployed from Python.*py"):
        current_applications(instance)
    # An app being deleted (after our own PUT) has no config either: it is simply left out.
    leaving = {"applications": {"mine": {"deployed_app_config": app("mine")}, "old": {"status": "DELETING"}}}
    assert names(current_applications(leaving)) == ["mine"]


def test_deploy_body_keeps_the_running_proxy_port() -> None:
    fresh = deploy_body({"applications": {}}, [app("a")], "127.0.0.1", 8123)
    assert fresh["http_options"] == {"host": "127.0.0.1", "port": 8123}
    running = {
        "controller_info": {"actor_id": "abc"},
        "http_options": {"host": "0.0.0.0", "port": 9000},
        "proxy_location": "HeadOnly",
        "applications": {},
    }
    body = deploy_body(running, [app("a")], "127.0.0.1", 8123)
    assert body["http_options"] == {"host": "0.0.0.0", "port": 9000}
    assert body["proxy_location"] == "HeadOnly"


def details(status: str, replicas: list[str], config: dict | None = None, message: str = "") -> dict:
    return {
        "status": status,
        "message": message,
        "deployed_app_config": config,
        "deployments": {"Model": {"status": "HEALTHY", "replicas": [{"state": s} for s in replicas]}},
    }


def test_observe_app_states_and_replicas() -> None:
    url = "http://127.0.0.1:8000"
    assert observe_app({"applications": {}}, "a", url).state is ServingState.ABSENT
    instance = {
        "applications": {
            "a": details("RUNNING", ["RUNNING", "STARTING"], app("a", 3)),
            GATEWAY_APP: details("RUNNING", ["RUNNING"]),
        }
    }
    obs = observe_app(instance, "a", url)
    assert (obs.state, obs.url, obs.replicas, obs.ready_replicas) == (ServingState.RUNNING, url, 2, 1)
    assert obs.serving_args == {"name": "a", "v": 3}
    instance["applications"][GATEWAY_APP] = details("DEPLOYING", [])
    assert observe_app(instance, "a", url).state is ServingState.DEPLOYING, (
        "not Running before the gateway is"
    )
    failed = {"applications": {"a": details("DEPLOY_FAILED", [], message="sha256 mismatch: onnx/model.onnx")}}
    obs = observe_app(failed, "a", url)
    assert obs.state is ServingState.DEPLOY_FAILED and "sha256 mismatch" in obs.message and obs.url is None


def test_training_observation_maps_every_status() -> None:
    dash = "http://127.0.0.1:8265"
    assert training_observation({"status": "PENDING"}, "", dash).state == WorkState.WAITING
    running = training_observation({"status": "RUNNING", "start_time": 1_700_000_000_000}, "", dash)
    assert running.state == WorkState.RUNNING and running.started_at == "2023-11-14T22:13:20Z"
    assert training_observation({"status": "SUCCEEDED"}, "", dash).state == WorkState.SUCCEEDED
    assert training_observation({"status": "STOPPED"}, "", dash).state == WorkState.STOPPED
    failed = training_observation(
        {"status": "FAILED", "message": "Job entrypoint command failed with exit code 1"},
        "Traceback\nValueError: boom",
        dash,
    )
    assert failed.state == WorkState.FAILED and failed.reason == "DriverFailed"
    assert "exit code 1" in failed.message and "ValueError: boom" in failed.message


def test_entrypoint_survives_the_shell_and_env_passthrough_is_selective() -> None:
    doc = '{"name": "it\'s", "text": "a b; rm -rf /"}'
    argv = shlex.split(train_entrypoint(doc))
    assert argv == ["python", "-m", "rayrelay_workloads.train_job", "--job-json", doc]
    env = {"AWS_ACCESS_KEY_ID": "k", "HF_HUB_OFFLINE": "1", "HOME": "/root", "AWS_SESSION_TOKEN": ""}
    assert passthrough_env(env) == {"AWS_ACCESS_KEY_ID": "k", "HF_HUB_OFFLINE": "1"}


def test_configs_serve_hands_back_normalised_count_as_unchanged() -> None:
    from rayrelay_operator.backends.ray import _same

    ours = [gateway(), {**app("a"), "deployments": [{"name": "M", "ray_actor_options": {"num_cpus": 0}}]}]
    theirs = [{**app("a"), "deployments": [{"name": "M", "ray_actor_options": {"num_cpus": 0.0}}]}, gateway()]
    assert _same(ours, theirs)
    assert not _same(ours, [gateway(), app("a", 2)])
