"""Fixtures of the cluster layer: a real kube-apiserver + etcd for the session.

``control_plane`` starts ``tests/cluster/controlplane.ControlPlane`` from
``KUBEBUILDER_ASSETS`` (``make test`` sets it from ``hack/envtest.sh``). Without
assets every test here skips with one line saying how to get them; with
assets that do not start, the tests fail (a broken control plane is never a
silent skip). ``namespace`` gives each test a fresh namespace; ``crds_installed``
applies ``crds/`` with the real kubectl, once per session. Every test here
carries the ``cluster`` marker (``pytest -m cluster``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.chart_operator import Operators, namespace_fixture, operators_fixture
from tests.cluster.controlplane import REPO, ControlPlane

NO_ASSETS = (
    "no envtest binaries: run `hack/envtest.sh` and export KUBEBUILDER_ASSETS=<the folder it prints> "
    "(make test does this), see docs/install.md"
)


def assets_dir() -> Path | None:
    value = os.environ.get("KUBEBUILDER_ASSETS")
    if value and Path(value, "kube-apiserver").exists():
        return Path(value)
    fallback = REPO / ".venv" / "envtest" / "bin"
    return fallback if (fallback / "kube-apiserver").exists() else None


CLUSTER_DIR = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real control plane of tests/cluster (envtest)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/cluster/ is marked ``cluster`` (``-m cluster`` / ``-m 'not cluster'``)."""
    for item in items:
        if CLUSTER_DIR in item.path.parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    assets = assets_dir()
    if assets is None:
        pytest.skip(NO_ASSETS)
    plane = ControlPlane(assets).start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crds_installed(control_plane: ControlPlane) -> ControlPlane:
    """``kubectl apply -f crds/`` exactly as docs/install.md tells users."""
    control_plane.kubectl("apply", "-f", str(REPO / "crds"))
    control_plane.wait_crds_established(["trainingjobs.rayrelay.dev", "modeldeployments.rayrelay.dev"])
    return control_plane


@pytest.fixture(scope="session")
def kuberay_crds(control_plane: ControlPlane) -> ControlPlane:
    control_plane.install_kuberay_crds()
    return control_plane


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def operators() -> Iterator[Operators]:
    """Operator subprocesses started by a test, stopped when it ends."""
    yield from operators_fixture()


@pytest.fixture
def release_namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A namespace for the chart's release (the operator's own), apart from the jobs'."""
    yield from namespace_fixture(control_plane)
