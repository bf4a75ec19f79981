"""Clean shutdown of ``rayrelay operator`` (issue 14, item 8) on a real API server.

The operator runs as the chart's Deployment runs it (``chart_operator``) and
is reconciling -- a TrainingJob has just been turned into a RayJob and its
timer observes it -- when it gets SIGTERM, as the kubelet sends it when the pod
is deleted. It must exit by itself with status 0 well inside the pod's grace
period (the chart's ``terminationGracePeriodSeconds``), saying why in its log,
with no traceback. The time to exit is recorded as a fault-suite figure.
"""

from __future__ import annotations

import signal
import time

import pytest
import yaml

from tests.cluster.chart_operator import CHART, Operators, rayjobs_of, s3_values, trainingjob, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.test_operator import start_chart_operator
from tests.faults.results import record

pytestmark = pytest.mark.faults


def grace_period_s() -> float:
    text = (CHART / "templates" / "deployment.yaml").read_text()
    line = next(ln for ln in text.splitlines() if "terminationGracePeriodSeconds:" in ln)
    return float(yaml.safe_load(line.strip())["terminationGracePeriodSeconds"])


def test_operator_exits_cleanly_on_sigterm_within_the_grace_period(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    plane = crds_installed
    _release, op = start_chart_operator(
        plane, operators, release_namespace, s3_values(s3_server, f"{s3_bucket}/runs")
    )
    plane.apply(trainingjob("busy", gpus=0, workers=1), "-n", namespace)
    wait_for("the RayJob of busy", lambda: rayjobs_of(plane, namespace, "busy"), 90)
    assert op.proc is not None
    before = len(op.log)

    t0 = time.monotonic()
    op.proc.send_signal(signal.SIGTERM)
    grace = grace_period_s()
    code = op.proc.wait(timeout=grace + 30)
    exit_s = time.monotonic() - t0
    after = op.log[before:]
    assert code == 0, f"exit {code}:\n{after[-4000:]}"
    assert exit_s < grace, f"{exit_s:.1f}s to exit; the pod is SIGKILLed after {grace:.0f}s"
    assert "Signal SIGTERM is received. Operator is stopping." in after, after[-4000:]
    assert "Traceback" not in after, after[-4000:]
    record(
        "shutdown_operator",
        figures={"exit_code": code, "exit_seconds": round(exit_s, 2), "grace_period_seconds": grace},
        command="pytest tests/cluster/test_operator_shutdown.py",
    )
