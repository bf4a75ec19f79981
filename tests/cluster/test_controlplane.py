"""The control plane of this layer starts and answers the real kubectl (a smoke test)."""

from __future__ import annotations

from tests.cluster.controlplane import ControlPlane


def test_control_plane_answers_kubectl(control_plane: ControlPlane, namespace: str) -> None:
    version = control_plane.kubectl("version", "-o", "json").stdout
    assert '"serverVersion"' in version
    assert control_plane.get("namespace", namespace)["metadata"]["name"] == namespace
