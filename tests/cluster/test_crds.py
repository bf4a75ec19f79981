"""The CRDs on a real API server, used the way docs/install.md tells users to, with the real kubectl.

``kubectl apply -f crds/`` (the ``crds_installed`` fixture) and ``kubectl apply -f
examples/...``; printer columns in ``kubectl get``; descriptions in ``kubectl
explain``; the status subresource (a status written through it is what
``kubectl wait --for=jsonpath`` and the printer columns see, and the main
resource cannot write it).
"""

from __future__ import annotations

import json
import time

import pytest

from rayrelay_core.api import ModelDeployment, TrainingJob
from tests.cluster.controlplane import REPO, ControlPlane

EXAMPLES = REPO / "examples"


def header(table: str) -> list[str]:
    return table.splitlines()[0].split()


def test_both_crds_are_established_with_their_names(crds_installed: ControlPlane) -> None:
    for resource in (TrainingJob, ModelDeployment):
        crd = crds_installed.get("crd", f"{resource.PLURAL}.rayrelay.dev")
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        assert crd["status"]["acceptedNames"]["shortNames"] == list(resource.SHORT_NAMES)
    # Applying again is a no-op, as a user re-running the install step expects.
    out = crds_installed.kubectl("apply", "-f", str(REPO / "crds")).stdout
    assert "unchanged" in out


def test_examples_apply_and_show_printer_columns(crds_installed: ControlPlane, namespace: str) -> None:
    kubectl = crds_installed.kubectl
    out = kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        str(EXAMPLES / "trainingjob.yaml"),
        "-f",
        str(EXAMPLES / "modeldeployment.yaml"),
        "-f",
        str(EXAMPLES / "quickstart.yaml"),
    ).stdout
    assert out.count("created") == 4, out

    assert header(kubectl("get", "-n", namespace, "tj").stdout) == ["NAME", "PHASE", "PROGRESS", "AGE"]
    assert header(kubectl("get", "-n", namespace, "tj", "-o", "wide").stdout) == [
        "NAME",
        "PHASE",
        "PROGRESS",
        "ATTEMPT",
        "RUN",
        "AGE",
    ]
    assert header(kubectl("get", "-n", namespace, "md").stdout) == [
        "NAME",
        "PHASE",
        "URL",
        "READY",
        "VARIANT",
        "AGE",
    ]
    both = kubectl("get", "-n", namespace, "tj,md").stdout
    assert "trainingjob.rayrelay.dev/support-tickets" in both
    assert "modeldeployment.rayrelay.dev/quickstart" in both
    # The category: `kubectl get rayrelay` lists both kinds.
    listed = kubectl("get", "-n", namespace, "rayrelay", "-o", "name").stdout.split()
    assert sorted(listed) == [
        "modeldeployment.rayrelay.dev/quickstart",
        "modeldeployment.rayrelay.dev/support-tickets",
        "trainingjob.rayrelay.dev/quickstart",
        "trainingjob.rayrelay.dev/support-tickets",
    ]


def test_every_shipped_example_is_accepted_by_the_real_api_server(
    crds_installed: ControlPlane, namespace: str
) -> None:
    """Each file in examples/ as a user applies it: the server's schema and CEL rules accept
    every document (a server-side dry run, so no operator acts on them). A new task's example
    (text generation, embeddings, distillation, pruning) is checked here, not only by the
    client-side ``rayrelay validate``."""
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert len(paths) >= 7, paths
    for path in paths:
        out = crds_installed.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path)).stdout
        documents = sum(1 for line in path.read_text().splitlines() if line.startswith("kind:"))
        assert out.count("(server dry run)") == documents, (path.name, out)


def test_server_defaults_are_the_models_defaults(crds_installed: ControlPlane, namespace: str) -> None:
    crds_installed.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "quickstart.yaml"))
    for kind in ("trainingjob", "modeldeployment"):
        stored = crds_installed.get(kind, "quickstart", "-n", namespace)
        model = (TrainingJob if kind == "trainingjob" else ModelDeployment).model_validate(stored)
        assert stored["spec"] == model.spec.wire()


@pytest.mark.parametrize(
    "path,texts",
    [
        (
            "trainingjob.spec.resources",
            ["Ray Train workers.", "numWorkers", "Number of Ray Train workers.", "enum: fp32, bf16, fp16"],
        ),
        ("trainingjob.spec.export.quantize", ["Also produce a dynamic int8 model"]),
        ("modeldeployment.spec.autoscaling.minReplicas", ["Fewest replicas. 0 scales to zero"]),
        ("tj.status.phase", ["Lifecycle phase."]),
    ],
)
def test_kubectl_explain_shows_descriptions(
    crds_installed: ControlPlane, path: str, texts: list[str]
) -> None:
    # Established CRDs can still be missing from the server's discovery for a moment
    # (a test run alone comes here right after the install): ask again, briefly.
    deadline = time.monotonic() + 30
    while True:
        proc = crds_installed.kubectl("explain", path, check=False)
        if proc.returncode == 0 or "couldn't find resource" not in proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for text in texts:
        assert text in out, out


def test_status_subresource_and_kubectl_wait(crds_installed: ControlPlane, namespace: str) -> None:
    kubectl = crds_installed.kubectl
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "trainingjob.yaml"))
    name = "trainingjob/support-tickets"

    # The main resource cannot write status (the status subresource owns it).
    kubectl("patch", "-n", namespace, name, "--type=merge", "-p", '{"status": {"phase": "Failed"}}')
    assert crds_installed.get(name, "-n", namespace).get("status", {}).get("phase") != "Failed"

    status = {"status": {"phase": "Training", "attempt": 1, "progress": {"percent": 42.5}}}
    kubectl("patch", "-n", namespace, name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    kubectl("wait", "-n", namespace, name, "--for=jsonpath={.status.phase}=Training", "--timeout=20s")
    row = kubectl("get", "-n", namespace, name, "--no-headers").stdout.split()
    assert row[:3] == ["support-tickets", "Training", "42.5"], row

    # The schema guards status too: a phase outside the enum is refused.
    bad = kubectl(
        "patch",
        "-n",
        namespace,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Bogus"}}',
        check=False,
    )
    assert bad.returncode != 0 and "status.phase" in bad.stderr, bad.stderr

    # A wait for a phase that never comes times out with an error, not a hang.
    late = kubectl(
        "wait", "-n", namespace, name, "--for=jsonpath={.status.phase}=Succeeded", "--timeout=1s", check=False
    )
    assert late.returncode != 0
