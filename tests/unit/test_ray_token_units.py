"""Ray's token authentication, the pure parts (issue 26, part 2).

The real Ray head refusing unauthenticated calls is tests/integration/test_ray_token_head.py;
KubeRay's CRDs on a real API server (1.5.0 without ``authOptions``, and with the field)
are tests/cluster/test_ray_auth_kuberay.py. Here: the builders' ``authOptions``, reading
the field from a CRD, the ``RayAuthenticated`` condition's wording, the settings and chart
values, the token lookup of `rayrelay run --ray-address`, and the head's environment.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayrelay_operator.backends.kuberay import KubeRayBackend, crd_has_auth_options, ray_auth_status
from rayrelay_operator.builders.kuberay import build_rayjob, build_rayservice
from rayrelay_operator.local.command import ray_token
from rayrelay_operator.localray import LocalRay
from rayrelay_operator.settings import Settings
from tests.unit.test_kuberay_builders import SETTINGS, md, tj

ROOT = Path(__file__).resolve().parents[2]


def test_authoptions_only_when_asked() -> None:
    from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
    from rayrelay_operator.reconcile.training import training_work

    job = training_work(tj(), SETTINGS, generation=2, attempt=3)
    common = {"image": "reg/rr:1", "endpoint_url": None, "credentials_secret": None}
    assert build_rayjob(job, **common, ray_auth=True)["spec"]["rayClusterSpec"]["authOptions"] == {
        "mode": "token"
    }
    assert "authOptions" not in build_rayjob(job, **common)["spec"]["rayClusterSpec"]
    served = serving_work(md(), DesiredModel("s3://b/m.json", "sha256:abc", "int8"), SETTINGS)
    assert build_rayservice(served, **common, ray_auth=True)["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token"
    }
    assert "authOptions" not in build_rayservice(served, **common)["spec"]["rayClusterConfig"]


def crd(cluster_field: str, with_auth: bool, version: str = "v1") -> dict[str, Any]:
    cluster: dict[str, Any] = {"rayVersion": {"type": "string"}}
    if with_auth:
        cluster["authOptions"] = {"type": "object", "properties": {"mode": {"type": "string"}}}
    schema = {"properties": {"spec": {"properties": {cluster_field: {"properties": cluster}}}}}
    return {"spec": {"versions": [{"name": version, "schema": {"openAPIV3Schema": schema}}]}}


def test_the_field_is_read_from_the_crd_schema() -> None:
    assert crd_has_auth_options(crd("rayClusterSpec", True), "rayClusterSpec")
    assert not crd_has_auth_options(crd("rayClusterSpec", False), "rayClusterSpec")
    assert not crd_has_auth_options(crd("rayClusterConfig", True), "rayClusterSpec")
    assert not crd_has_auth_options(crd("rayClusterSpec", True, version="v1alpha1"), "rayClusterSpec")
    assert not crd_has_auth_options({}, "rayClusterSpec")


def test_kuberay_150s_crds_have_no_authoptions() -> None:
    """The CRDs of KubeRay 1.5.0 that the cluster tests install (../shared/envtest/crds)."""
    folder = ROOT.parent / "shared" / "envtest" / "crds"
    if not folder.is_dir():
        pytest.skip(f"{folder} not here (the envtest bundle)")
    for plural, field in (("rayjobs", "rayClusterSpec"), ("rayservices", "rayClusterConfig")):
        doc = yaml.safe_load((folder / f"ray.io_{plural}.yaml").read_text())
        assert not crd_has_auth_options(doc, field), plural


def child(field: str, mode: str | None) -> dict[str, Any]:
    cluster = {"authOptions": {"mode": mode}} if mode else {}
    return {"spec": {field: cluster}}


def test_the_condition_says_on_or_why_not() -> None:
    on = ray_auth_status(
        child("rayClusterSpec", "token"), "rayClusterSpec", wanted=True, installed=True, network_policy=True
    )
    assert (on.on, on.reason) == (True, "TokenAuthentication")
    old = ray_auth_status(
        child("rayClusterSpec", None), "rayClusterSpec", wanted=True, installed=False, network_policy=True
    )
    assert (old.on, old.reason) == (False, "NotSupportedByKubeRay")
    assert "KubeRay < 1.5.1" in old.message and "NetworkPolicy" in old.message
    off = ray_auth_status(
        child("rayClusterConfig", None),
        "rayClusterConfig",
        wanted=False,
        installed=True,
        network_policy=False,
    )
    assert (off.on, off.reason) == (False, "Disabled") and "nothing guards" in off.message
    earlier = ray_auth_status(
        child("rayClusterSpec", "disabled"),
        "rayClusterSpec",
        wanted=True,
        installed=True,
        network_policy=True,
    )
    assert (earlier.on, earlier.reason) == (False, "CreatedWithoutAuth")


class Extensions:
    """ApiextensionsV1Api's CRD read, counted."""

    def __init__(self, with_auth: bool) -> None:
        self.with_auth, self.reads = with_auth, 0

    def read_custom_resource_definition(self, name: str, **kwargs: Any) -> Any:
        self.reads += 1
        field = "rayClusterSpec" if name == "rayjobs.ray.io" else "rayClusterConfig"

        class Response:
            data = json.dumps(crd(field, self.with_auth)).encode()

        return Response()


def test_the_backend_reads_each_crd_once_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    backend = KubeRayBackend(None, SETTINGS)
    backend.extensions = Extensions(with_auth=False)
    with caplog.at_level(logging.WARNING):
        assert [backend._ray_auth_wanted("rayjobs") for _ in range(3)] == [False] * 3
    assert backend.extensions.reads == 1
    assert sum("has no spec.rayClusterSpec.authOptions" in r.getMessage() for r in caplog.records) == 1

    newer = KubeRayBackend(None, SETTINGS)
    newer.extensions = Extensions(with_auth=True)
    assert newer._ray_auth_wanted("rayjobs") and newer._ray_auth_wanted("rayservices")
    off = KubeRayBackend(None, Settings(artifacts_uri="s3://rr-art/runs", ray_cluster_auth="disabled"))
    off.extensions = Extensions(with_auth=True)
    assert not off._ray_auth_wanted("rayjobs") and off.extensions.reads == 0


def test_settings() -> None:
    env = {"RAYRELAY_RAY_AUTH_TOKEN": "s3cr3t-token", "RAYRELAY_RAY_CLUSTER_AUTH": "disabled"}
    settings = Settings.from_env(env)
    assert settings.ray_auth_token == "s3cr3t-token" and settings.ray_cluster_auth == "disabled"
    assert "s3cr3t-token" not in repr(settings)
    assert Settings.from_env({}).ray_cluster_auth == "token"
    with pytest.raises(ValueError, match="RAYRELAY_RAY_CLUSTER_AUTH must be token or disabled"):
        Settings.from_env({"RAYRELAY_RAY_CLUSTER_AUTH": "on"})


def test_chart_values() -> None:
    helm = ROOT / ".venv" / "bin" / "helm"
    if not helm.exists():
        pytest.skip("helm is installed into .venv by `make venv`")

    def operator_env(*sets: str) -> dict[str, Any]:
        args = [str(helm), "template", "rr", str(ROOT / "charts" / "rayrelay")]
        for s in sets:
            args += ["--set", s]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        (dep,) = [d for d in yaml.safe_load_all(out) if d and d.get("kind") == "Deployment"]
        return {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}

    default = operator_env()
    assert default["RAYRELAY_RAY_CLUSTER_AUTH"]["value"] == "token"
    assert "RAYRELAY_RAY_AUTH_TOKEN" not in default
    with_secret = operator_env("rayAuthTokenSecret=ray-token", "rayClusterAuth=disabled")
    assert with_secret["RAYRELAY_RAY_CLUSTER_AUTH"]["value"] == "disabled"
    assert with_secret["RAYRELAY_RAY_AUTH_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "ray-token", "key": "auth_token"}
    }


def test_the_token_of_an_existing_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ray_token({}) is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert ray_token({}) == "from-home"
    (tmp_path / "file").write_text("from-path")
    assert ray_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "file")}) == "from-path"
    assert (
        ray_token({"RAY_AUTH_TOKEN": "ray-env", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "file")}) == "ray-env"
    )
    assert ray_token({"RAYRELAY_RAY_AUTH_TOKEN": "ours", "RAY_AUTH_TOKEN": "ray-env"}) == "ours"


def test_the_heads_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAYRELAY_RAY_AUTH", raising=False)
    ray = LocalRay(num_cpus=1)
    ray.temp_dir = str(tmp_path)
    env = {"RAY_AUTH_TOKEN": "someone-elses", "RAY_AUTH_TOKEN_PATH": "/elsewhere", "PATH": "/bin"}
    ray._auth_env(env)
    path = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
    assert path.parent == tmp_path and path.read_text() == ray.auth_token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert ray.auth_headers() == {"Authorization": f"Bearer {ray.auth_token}"}
    assert LocalRay(num_cpus=1).auth_token != ray.auth_token, "one token per head"

    monkeypatch.setenv("RAYRELAY_RAY_AUTH", "0")
    off = LocalRay(num_cpus=1)
    env = {"RAY_AUTH_TOKEN": "someone-elses"}
    off._auth_env(env)
    assert off.auth_token is None and env == {"RAY_AUTH_MODE": "disabled"} and off.auth_headers() == {}
