"""Serve's HAProxy ingress (Ray's high-throughput mode) where rayrelay starts or builds Ray.

``localray.haproxy_env`` for the head `rayrelay run` starts (and the test suite's
head), and the RayService builder's pod environment for the kuberay backend. The
serving tests (tests/integration/test_serving.py) check that a real head started
this way has HAProxy on its serve port.
"""

from __future__ import annotations

import os
import resource
import tempfile
from pathlib import Path

import pytest

from rayrelay_operator import localray
from rayrelay_operator.backends.kuberay import KubeRayBackend
from rayrelay_operator.localray import haproxy_env
from rayrelay_operator.settings import Settings
from tests.unit.test_rayservice_upgrade_strategy import SETTINGS, build, work

HAPROXY = {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"}


def pod_envs(body: dict) -> list[list[dict]]:
    cluster = body["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    return [c["env"] for pod in pods for c in pod["spec"]["containers"]]


def test_on_by_default_with_ports_and_files_of_this_head() -> None:
    temp_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")  # as LocalRay makes it
    try:
        env = haproxy_env({}, temp_dir)
    finally:
        os.rmdir(temp_dir)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    # Ray's fixed defaults (8404, 9101) would clash between two heads on one machine.
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_BASE"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith(temp_dir + "/"), key
    # Ray puts "/<node id>" (57 characters) before each file's name; a socket path has < 108 bytes.
    for key in ("SOCKET_PATH", "METRICS_SOCKET_PATH"):
        path = Path(env[f"RAY_SERVE_HAPROXY_{key}"])
        assert len(f"{path.parent}/{'n' * 56}/{path.name}.12345.tmp") < 108, path


def test_maxconn_fits_the_file_descriptor_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy needs ~2.5 descriptors per connection and exits at start when the hard limit
    is lower (seen with its default 20000 under a 20000 limit: 'Cannot raise FD limit')."""
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 20000))
    assert int(haproxy_env({}, str(tmp_path))["RAY_SERVE_HAPROXY_MAXCONN"]) * 2.5 + 100 < 20000
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 1_048_576))
    assert haproxy_env({}, str(tmp_path))["RAY_SERVE_HAPROXY_MAXCONN"] == "20000"


@pytest.mark.parametrize("off", ["0", "false", "off"])
def test_switched_off(tmp_path: Path, off: str) -> None:
    assert haproxy_env({"RAYRELAY_SERVE_HAPROXY": off}, str(tmp_path)) == {}


def test_an_explicit_ray_setting_is_left_alone(tmp_path: Path) -> None:
    assert haproxy_env({"RAY_SERVE_ENABLE_HA_PROXY": "0"}, str(tmp_path)) == {}


def test_no_binary_no_haproxy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(localray, "haproxy_available", lambda: False)
    assert haproxy_env({}, str(tmp_path)) == {}


def test_rayservice_pods_run_haproxy_unless_switched_off() -> None:
    assert all(HAPROXY in env for env in pod_envs(build()))
    assert not any(HAPROXY in env for env in pod_envs(build(haproxy=False)))
    off = Settings.from_env({"RAYRELAY_SERVE_HAPROXY": "false", "RAYRELAY_ARTIFACTS_URI": "s3://rr-art/runs"})
    assert not any(HAPROXY in env for env in pod_envs(KubeRayBackend(None, off)._rayservice_body(work(off))))
    default = KubeRayBackend(None, SETTINGS)._rayservice_body(work())
    assert all(HAPROXY in env for env in pod_envs(default))


def test_the_replicas_request_path_settings_go_with_haproxy(tmp_path: Path) -> None:
    """Serve's user code on the replica's main loop and batched access-log writes (measured
    on the one-hop route: docs/performance.md, request path levers), where HAProxy is on."""
    env = haproxy_env({}, str(tmp_path))
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert env["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1000"
    mine = haproxy_env({"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1"}, str(tmp_path))
    assert "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD" not in mine  # the caller's own value stays
    assert mine["RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE"] == "1000"
    assert haproxy_env({"RAYRELAY_SERVE_HAPROXY": "0"}, str(tmp_path)) == {}
    same_loop = {"name": "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "value": "0"}
    assert all(same_loop in env for env in pod_envs(build()))
    assert not any(same_loop in env for env in pod_envs(build(haproxy=False)))


def test_a_stopped_ingress_replica_drains_for_seconds_not_half_a_minute(tmp_path: Path) -> None:
    """Behind HAProxy nothing points at an ingress replica's port but HAProxy, which drops it
    at its next reload: the head of `rayrelay run` and the RayService pods shorten Serve's
    30 s minimum drain (a replica released to zero kept its CPU 30 s after Serve's
    decision), unless the caller set it; without HAProxy Serve's default stays."""
    key = "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"
    assert 0 < float(haproxy_env({}, str(tmp_path))[key]) <= 10
    assert key not in haproxy_env({key: "30"}, str(tmp_path))
    drain = {"name": key, "value": haproxy_env({}, str(tmp_path))[key]}
    assert all(drain in env for env in pod_envs(build()))
    assert not any(key in str(env) for env in pod_envs(build(haproxy=False)))
