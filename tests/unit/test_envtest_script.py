"""hack/envtest.sh: finds or unpacks the control plane's binaries, and never unpacks a corrupt archive.

Runs the real script on a copy of the repository layout with a small fake
archive (a ``bin/kube-apiserver`` stub), so it takes milliseconds and needs
neither the real 47 MB archive nor a network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "envtest.sh"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(a repository copy holding hack/envtest.sh, a shared folder with archive + VERSIONS + crds/)."""
    repo = tmp_path / "repo"
    (repo / "hack").mkdir(parents=True)
    shutil.copy2(SCRIPT, repo / "hack" / "envtest.sh")
    shared = tmp_path / "shared"
    staging = tmp_path / "staging" / "bin"
    staging.mkdir(parents=True)
    stub = staging / "kube-apiserver"
    stub.write_text("#!/bin/sh\necho stub\n")
    stub.chmod(0o755)
    shared.mkdir()
    archive = shared / "envtest-linux-amd64.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(staging, arcname="bin")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (shared / "VERSIONS").write_text(f"kubernetes v1.35.4\nsha256 {digest}  envtest-linux-amd64.tar.xz\n")
    (shared / "crds").mkdir()
    (shared / "crds" / "ray.io_rayjobs.yaml").write_text("kind: CustomResourceDefinition\n")
    return repo, shared


def run(repo: Path, shared: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    environ.update(RAYRELAY_ENVTEST_DIR=str(shared), **env)
    return subprocess.run(
        ["bash", str(repo / "hack" / "envtest.sh")], capture_output=True, text=True, env=environ, timeout=60
    )


def test_unpacks_a_checked_archive_then_reuses_it(layout: tuple[Path, Path]) -> None:
    repo, shared = layout
    first = run(repo, shared)
    assert first.returncode == 0, first.stderr
    assets = Path(first.stdout.strip())
    assert assets == repo / ".venv" / "envtest" / "bin"
    assert (assets / "kube-apiserver").is_file()
    assert (assets.parent / "kuberay-crds" / "ray.io_rayjobs.yaml").is_file()
    # Second call: the unpacked copy carries the archive's sha256, nothing is unpacked again.
    marker = assets / "marker"
    marker.write_text("kept")
    second = run(repo, shared)
    assert second.returncode == 0 and Path(second.stdout.strip()) == assets
    assert marker.exists()


def test_a_corrupt_archive_is_an_error_not_a_skip(layout: tuple[Path, Path]) -> None:
    repo, shared = layout
    versions = shared / "VERSIONS"
    versions.write_text(versions.read_text().replace("sha256 ", "sha256 0", 1))
    proc = run(repo, shared)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "sha256" in proc.stderr and "VERSIONS" in proc.stderr
    assert not (repo / ".venv" / "envtest" / "bin").exists()


def test_kubebuilder_assets_wins(layout: tuple[Path, Path], tmp_path: Path) -> None:
    repo, shared = layout
    own = tmp_path / "own"
    own.mkdir()
    (own / "kube-apiserver").write_text("")
    (own / "kube-apiserver").chmod(0o755)
    proc = run(repo, shared, KUBEBUILDER_ASSETS=str(own))
    assert proc.returncode == 0 and proc.stdout.strip() == str(own)
