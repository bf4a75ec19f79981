"""End-to-end test on a kind cluster: runs hack/kind-e2e.sh.

The script creates a kind cluster, builds and loads both images, installs
KubeRay and rayrelay with Helm, starts MinIO, trains and serves the example
model, runs a v2 inference and checks that deletion leaves no children.

It needs a Docker engine and the kind binary; without them the test skips
and says which one is missing. It takes tens of minutes (image builds, one
training epoch on CPU). KEEP_CLUSTER=1 keeps the cluster for debugging.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "kind-e2e.sh"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _tool_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _skip_reason() -> str | None:
    path = _tool_path()
    if shutil.which("docker", path=path) is None:
        return "no docker client on PATH (kind e2e needs a Docker engine)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`docker info` failed ({e}): no Docker engine, kind cannot run here"
    if info.returncode != 0:
        detail = (info.stderr or info.stdout).strip().splitlines()
        return (
            f"`docker info` failed: no Docker engine, kind cannot run here ({detail[-1] if detail else ''})"
        )
    for tool in ("kind", "helm", "kubectl", "curl"):
        if shutil.which(tool, path=path) is None:
            return f"{tool} not found on PATH (needed by hack/kind-e2e.sh)"
    return None


def test_script_is_complete_shell() -> None:
    """Runs everywhere: the script parses, is executable and does each step the test relies on."""
    assert os.access(SCRIPT, os.X_OK), f"{SCRIPT} is not executable"
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    for step in (
        "kind create cluster",
        "kind load docker-image",
        "helm install kuberay-operator",
        "helm install rayrelay charts/rayrelay",
        "minio.yaml",
        "--for=jsonpath='{.status.phase}'",
        "Succeeded",
        "Ready",
        "port-forward",
        "/infer",
        "rayjobs,rayservices",
    ):
        assert step in text, f"hack/kind-e2e.sh lacks {step!r}"
    for manifest in ("minio.yaml", "minio-setup.yaml", "rayrelay-values.yaml", "trainingjob.yaml",
                     "modeldeployment.yaml", "kind-config.yaml"):  # fmt: skip
        assert (ROOT / "tests" / "e2e" / "manifests" / manifest).is_file(), manifest


def test_e2e_manifests_are_valid_and_restricted() -> None:
    """The MinIO manifests the script applies pass the same checks as the chart."""
    sys.path.insert(0, str(ROOT / "tests"))
    import k8s_checks

    objs = []
    for name in ("minio.yaml", "minio-setup.yaml"):
        objs += k8s_checks.load_manifests((ROOT / "tests" / "e2e" / "manifests" / name).read_text())
    errors = [e for o in objs for e in k8s_checks.schema_errors(o)]
    errors += k8s_checks.restricted_pss_errors(objs) + k8s_checks.resources_errors(objs)
    assert not errors, "\n".join(errors)


def test_kind_end_to_end(tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PATH": _tool_path(), "ARTIFACTS_DIR": str(tmp_path)}
    proc = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, timeout=2 * 3600)
    assert proc.returncode == 0, f"hack/kind-e2e.sh failed (rc={proc.returncode}); diagnostics in {tmp_path}"
