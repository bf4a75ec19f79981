"""Shared test fixtures: real servers, started for the session.

- ``s3_server``: moto's threaded S3 server on loopback (a real HTTP S3 endpoint).
- ``s3_bucket``: a fresh bucket in it, as an ``s3://`` base URI.
- ``ray_cluster``: a real local Ray head (``ray start --head --block``) with the
  dashboard, so that the Job Submission API and Serve's REST API work. Its
  ports are picked free, so several test sessions can run side by side, and it
  is torn down by SIGTERM (not ``ray stop``, which would kill every Ray on the
  machine).
- ``ray_session``: this process connected to that cluster as a driver.
- ``serve_port``: the HTTP port Serve listens on in this session.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rayrelay_operator.localray import autoscaling_env, haproxy_env

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Session fixtures producing real training artifacts (tiny_run), shared by training and
# serving tests. The repo root goes on sys.path so "tests.…" imports under bare `pytest` too.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
pytest_plugins = ["tests.pipeline_fixtures"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# moto accepts any credentials; real ones must never be needed by a test.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: injects a real fault (tests/faults, docs/reliability.md)")
    config.addinivalue_line("markers", "faults_long: a longer fault case, run only by `make faults`")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # reported at the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["RAYRELAY_S3_ENDPOINT_URL"] = endpoint
    yield endpoint
    os.environ.pop("RAYRELAY_S3_ENDPOINT_URL", None)
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    import boto3

    name = f"rr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@dataclass
class RayCluster:
    address: str  # GCS address, for ray.init
    dashboard_url: str  # Job Submission and Serve REST API
    serve_port: int
    temp_dir: str


def _term_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL (Linux).

    The teardown below stops the head on a normal exit; this covers a killed pytest,
    whose Ray head (and its workers, which ``ray start --block`` stops on SIGTERM)
    would otherwise run on and load the machine for every later test run.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def ray_cluster(s3_server: str) -> Iterator[RayCluster]:
    gcs_port, dash_port, serve_port = free_port(), free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rrray-", dir="/tmp")
    log = open(Path(temp_dir) / "head.log", "w")  # noqa: SIM115 - closed at teardown
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "core"), str(REPO / "operator"), str(REPO / "workloads")])
    # On a loaded 2-core machine the dashboard's modules take longer than Ray's 30 s / 60 s
    # defaults to come up, and the head gives up; the fixture waits up to 300 s anyway.
    env.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "240")
    env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
    # Serve's HAProxy ingress, as `rayrelay run`'s head has it (localray.haproxy_env).
    env.update(haproxy_env(env, temp_dir))
    env.update(autoscaling_env(env))  # and its Serve autoscaling settings (fast scale from zero)
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        f"--dashboard-port={dash_port}",
        "--dashboard-host=127.0.0.1",
        # The job agent's HTTP port defaults to a fixed 52365: a second head on this
        # machine then has no job agent and every job submission gets a 500.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--include-dashboard=true",
        "--num-cpus=4",
        "--object-store-memory=500000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_term_with_parent,
    )
    dashboard = f"http://127.0.0.1:{dash_port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited: {(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
        with urllib.request.urlopen(f"{dashboard}/api/version", timeout=2) as resp:
            return resp.status == 200

    try:
        wait_until(up, timeout=300, what="the Ray head's dashboard")
        yield RayCluster(f"127.0.0.1:{gcs_port}", dashboard, serve_port, temp_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session(ray_cluster: RayCluster) -> Iterator[RayCluster]:
    import ray

    ray.init(address=ray_cluster.address, log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster: RayCluster) -> int:
    return ray_cluster.serve_port
