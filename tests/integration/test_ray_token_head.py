"""Ray's token authentication on the Ray head `rayrelay run` starts, on real Ray (issue 26, part 2).

``test_the_head_refuses_whoever_lacks_its_token``: the shipped ``LocalRay`` (the
head of `rayrelay run`, token authentication on by default) is started as the
command starts it; the dashboard, the Job API and Serve's REST API answer 401
without a token and 403 with another one, the GCS refuses a gRPC call without
the token, and the product's own clients -- ``RayBackend`` (the ray backend and
the local loop) and `rayrelay run --ray-address` -- get through with the token
and say what is wrong without it. Each assertion fails with the head's
authentication off (``LocalRay(auth=False)``, which
``test_switched_off_the_head_answers_anyone`` shows answers everyone).

``test_rayrelay_run_trains_and_serves_on_its_authenticated_head``: the whole
`rayrelay run -f FILE --once` flow, exactly as a user runs it (a subprocess,
no ``--ray-address``: its own head, with the token), trains, deploys and
answers its smoke request.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rayrelay_operator.backends.base import RayAuthFailed
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.localray import LocalRay, bearer
from tests.run_files import BIN, model_deployment_yaml, training_job_yaml

DASHBOARD_PATHS = ("/api/version", "/api/jobs/", "/api/serve/applications/")


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def gcs_answer(address: str, token: str | None) -> str:
    """'ok', or the gRPC status code name, of one GCS call (node list) with or without the token."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return "ok"


@pytest.fixture(scope="module")
def head() -> Iterator[LocalRay]:
    env = {k: v for k, v in os.environ.items() if k != "RAYRELAY_RAY_AUTH"}
    assert "RAYRELAY_RAY_AUTH" not in env  # the default, as `rayrelay run` has it
    ray = LocalRay(num_cpus=1)
    ray.start()
    try:
        yield ray
    finally:
        ray.stop()


def test_the_head_refuses_whoever_lacks_its_token(head: LocalRay, tmp_path: Path) -> None:
    assert head.auth and head.auth_token and len(head.auth_token) >= 32
    token_file = Path(head.temp_dir) / "auth_token"
    assert token_file.stat().st_mode & 0o077 == 0, "the token file is the user's alone"

    for path in DASHBOARD_PATHS:
        url = head.dashboard_url + path
        assert status_of(url) == 401, f"{path} without a token"
        assert status_of(url, bearer("not-the-token")) == 403, f"{path} with another token"
        assert status_of(url, head.auth_headers()) == 200, f"{path} with the token"

    assert gcs_answer(head.address, None) == "UNAUTHENTICATED"
    assert gcs_answer(head.address, "not-the-token") == "UNAUTHENTICATED"
    assert gcs_answer(head.address, head.auth_token) == "ok"

    # The product's client of the Job API and Serve's REST API: refused without the token,
    # with a message that names the cause and no token; through with it.
    anonymous = RayBackend(head.dashboard_url)
    with pytest.raises(RayAuthFailed, match="wants token authentication and got no token") as refused:
        anonymous.serve_instance()
    assert head.auth_token not in str(refused.value)
    with pytest.raises(RayAuthFailed, match="got no token"):
        anonymous._call("list jobs", lambda: anonymous._jobs().list_jobs())
    wrong = RayBackend(head.dashboard_url, auth_token="not-the-token")
    with pytest.raises(RayAuthFailed, match="a token that it refused"):
        wrong.serve_instance()
    trusted = RayBackend(head.dashboard_url, auth_token=head.auth_token)
    assert isinstance(trusted.serve_instance(), dict)
    assert trusted._call("list jobs", lambda: trusted._jobs().list_jobs()) == []

    # `rayrelay run --ray-address` of a cluster that wants a token it was not given.
    manifest = tmp_path / "t.yaml"
    manifest.write_text(training_job_yaml("auth", "pkg://x/model", "t.jsonl", "v.jsonl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAYRELAY_RAY_AUTH"))}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token
    run = subprocess.run(
        [str(BIN / "rayrelay"), "run", "-f", str(manifest), "--once", "--ray-address", head.dashboard_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "wants token authentication and got no token" in out, out[-2000:]
    assert "RAYRELAY_RAY_AUTH_TOKEN" in out and "Traceback" not in out


def test_switched_off_the_head_answers_anyone() -> None:
    """The control for the test above: without authentication the same calls get through."""
    ray = LocalRay(num_cpus=1, auth=False)
    ray.start()
    try:
        assert ray.auth_token is None and ray.auth_headers() == {}
        assert [status_of(ray.dashboard_url + p) for p in DASHBOARD_PATHS] == [200, 200, 200]
        assert gcs_answer(ray.address, None) == "ok"
    finally:
        ray.stop()


@pytest.mark.slow
def test_rayrelay_run_trains_and_serves_on_its_authenticated_head(
    tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    name = f"auth-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "run.yaml"
    path.write_text(training_job_yaml(name, tiny_model, *tiny_data) + "---\n" + model_deployment_yaml(name))
    # A user's shell: no test-session Ray settings, no token of another cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAYRELAY_", "RAY_AUTH"))}
    run = subprocess.run(
        [str(BIN / "rayrelay"), "run", "-f", str(path), "--once", "--artifacts", str(tmp_path / "artifacts")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "(token authentication on)" in out, out[-4000:]
    assert "smoke request (v2 infer)" in out and "->" in out, out[-4000:]
