"""An artifact store that stops answering, then answers again: the TrainingJob says so, then runs.

moto's real S3 server (its own, not the session's: this test stops it) holds
the artifact store. While it is down, each ``run_pass`` of a TrainingJob ends
in ``Reconciled=False`` with reason ``StoreUnavailable`` naming the store's
URI, one Warning event and a growing delay; nothing is submitted. Started
again on the same port, the next pass submits the job, and the status keeps
everything it had.
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from rayrelay_core.conditions import find_condition
from rayrelay_core.store import S3Settings, S3Store
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.settings import Settings
from tests.unit.reconcile_fakes import Clock, FakeBackend, tj_dict, with_status


def start(port: int) -> ThreadedMotoServer:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@pytest.fixture
def moto_server() -> Any:
    server = start(0)
    host, port = server.get_host_and_port()
    holder = {"server": server, "endpoint": f"http://{host}:{port}", "port": port}
    yield holder
    holder["server"].stop()


def test_store_down_then_up(moto_server: dict[str, Any]) -> None:
    endpoint = moto_server["endpoint"]
    bucket = f"rr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    artifacts = f"s3://{bucket}/runs"
    backend, clock, events = FakeBackend(), Clock(), []
    ctx = ReconcileContext(
        settings=Settings(artifacts_uri=artifacts, s3_endpoint_url=endpoint),
        backends={"kuberay": backend},
        now=clock,
        # Two attempts per call keep a pass against a dead endpoint short here.
        store_for=lambda uri, ep: S3Store(S3Settings(endpoint_url=ep, max_attempts=2)),
        emit=events.append,
        jitter=lambda: 0.5,
    )
    obj = tj_dict()

    moto_server["server"].stop()
    delays = []
    for _ in range(3):
        result = run_pass("TrainingJob", obj, ctx)
        assert result.temporary and result.delay is not None
        obj = with_status(obj, result.status)
        delays.append(result.delay)
        clock.advance(result.delay)
    cond = find_condition(result.status.conditions, "Reconciled")
    assert cond is not None and (cond.status, cond.reason) == ("False", "StoreUnavailable")
    assert f"artifact store {artifacts}/ml/sst2/" in cond.message
    assert delays == [5.0, 10.0, 20.0]
    assert [(e.type, e.reason) for e in events] == [("Warning", "StoreUnavailable")]
    assert backend.calls == []

    moto_server["server"] = start(moto_server["port"])  # the same endpoint answers again
    result = run_pass("TrainingJob", obj, ctx)
    assert result.error is None, result.problem
    assert backend.calls == [("submit", "rayrelay-ml-sst2-74f1c81c-g1-a1")]
    status = result.status
    assert status.phase == "Pending" and status.attempt == 1 and status.ray_job is not None
    cond = find_condition(status.conditions, "Reconciled")
    assert cond is not None and cond.status == "True"
    assert backend.submitted[0].job.run_uri.startswith(f"{artifacts}/ml/sst2/")
