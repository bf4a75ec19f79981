"""Issue 12 on the operator side, against real endpoints: a hostile tenant gets nothing.

The operator's store is moto's S3 server (``verbose``: werkzeug logs one line per
request, which is the request log asserted on). A black-hole endpoint accepts TCP
connections, records them and never answers. A TrainingJob and a ModelDeployment
written to try findings 1 (another image, another namespace's Secret), 3 (a
tenant-chosen S3 endpoint), 4 (``file://``, another namespace's run) and 6 (a
Serve application of another namespace's name) at once are refused with
conditions saying why; the store and the black hole see no request and no child
is created. A well-behaved resource in the same setting does reach the store
(the request log works), and the operator's own store client gives up on a
black-hole endpoint quickly (short timeouts, few attempts: finding 3).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from rayrelay_core.conditions import find_condition
from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.handlers import operator_store_opener
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.reconcile.context import cached_store_for
from rayrelay_operator.reconcile.driver import MODELDEPLOYMENT, TRAININGJOB
from rayrelay_operator.settings import Settings
from tests.unit.reconcile_fakes import Clock, FakeBackend
from tests.unit.test_security_operator_names import ServeDouble, md, serve_state

WORKLOADS = "registry.example/rayrelay-workloads:1.0"


class BlackHole:
    """A TCP endpoint that accepts, records and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.held: list[socket.socket] = []
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self.held.append(conn)

    def close(self) -> None:
        self.stop = True
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


class RequestLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def store() -> Iterator[dict[str, Any]]:
    """moto's S3 server with a victim namespace's finished run in the operator's store."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=True)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="rr-art")
    s3.put_object(Bucket="rr-art", Key="runs/victim/sst2/run-x/manifest.json", Body=b"{}")
    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.addHandler(log)
    old_level = werkzeug.level
    werkzeug.setLevel(logging.INFO)
    yield {"endpoint": endpoint, "log": log}
    werkzeug.removeHandler(log)
    werkzeug.setLevel(old_level)
    server.stop()


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "operator")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")


SECRETS = {
    ("victim", "victim-creds"): {"rayrelay.dev/credentials": "true"},
    ("tenant", "victim-creds"): {},  # a look-alike the tenant made, without the opt-in
    ("tenant", "tenant-creds"): {"rayrelay.dev/credentials": "true"},
}


def make_ctx(endpoint: str, **settings: Any) -> tuple[ReconcileContext, FakeBackend]:
    cfg = Settings(
        artifacts_uri="s3://rr-art/runs",
        s3_endpoint_url=endpoint,
        workload_image=WORKLOADS,
        **settings,
    )
    backend = FakeBackend()
    ctx = ReconcileContext(
        settings=cfg,
        backends={"kuberay": backend},
        now=Clock(),
        store_for=cached_store_for(operator_store_opener(cfg)),
        get_trainingjob=lambda ns, name: None,
        enforce_policy=True,
        secret_labels=lambda ns, name: SECRETS.get((ns, name)),
    )
    return ctx, backend


def resource(kind: str, name: str, spec: dict[str, Any], namespace: str = "tenant") -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def test_a_hostile_tenant_is_refused_and_nothing_is_contacted(
    store: dict[str, Any], black_hole: BlackHole
) -> None:
    ctx, backend = make_ctx(store["endpoint"])
    hostile_tj = resource(
        TRAININGJOB,
        "grab",
        {
            "image": "evil.example/miner:latest",  # finding 1
            "model": {"source": "s3://rr-art/runs/victim/sst2/run-x/hf", "numLabels": 2},  # finding 4
            "data": {"train": "file:///etc/passwd", "validation": "s3://rr-art/runs/victim/val.jsonl"},
            "artifacts": {"endpointUrl": black_hole.url, "credentialsSecret": "victim-creds"},  # 3, 1
        },
    )
    hostile_md = resource(
        MODELDEPLOYMENT,
        "sentiment",  # the victim's deployment name (finding 6)
        {
            "image": "evil.example/x:1",
            "model": {"manifestUri": "s3://rr-art/runs/victim/sst2/run-x/manifest.json"},  # finding 4
            "artifacts": {"endpointUrl": black_hole.url + "/"},  # finding 3
        },
    )
    results = {
        kind: run_pass(kind, obj, ctx)
        for kind, obj in ((TRAININGJOB, hostile_tj), (MODELDEPLOYMENT, hostile_md))
    }

    tj = results[TRAININGJOB]
    assert tj.permanent and tj.status.phase == "Failed"
    failed = find_condition(tj.status.conditions, "Failed")
    assert failed is not None and failed.reason == "ImageNotAllowed"
    for why in (
        "spec.image",
        "spec.artifacts.endpointUrl",
        "RAYRELAY_ALLOWED_S3_ENDPOINTS",
        "spec.data.train: local paths and file:// are not allowed",
        "spec.data.validation",
        "spec.model.source",
        "outside this namespace's folder s3://rr-art/runs/tenant/",
        "Secret 'victim-creds' in namespace tenant",
    ):
        assert why in failed.message, (why, failed.message)

    mdr = results[MODELDEPLOYMENT]
    assert mdr.permanent and mdr.status.phase == "Failed"
    ready = find_condition(mdr.status.conditions, "Ready")
    assert ready is not None and ready.reason == "ImageNotAllowed" and ready.status == "False"
    for why in ("spec.image", "spec.model.manifestUri", "spec.artifacts.endpointUrl"):
        assert why in ready.message, (why, ready.message)

    # Nothing read, written or contacted; no child.
    assert store["log"].lines == []
    assert black_hole.connections == 0
    assert backend.calls == []

    # Finding 6 on its own (a deployment the policy lets through): another namespace's Serve
    # application of the same name is refused, never replaced.
    serve = ServeDouble(serve_state("victim"))
    from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work

    work = serving_work(
        md("tenant"), DesiredModel("s3://rr-art/runs/tenant/m.json", "sha256:1", "int8"), ctx.settings
    )
    with pytest.raises(BackendRejected, match="belongs to namespace victim"):
        serve.deploy_serving(work)
    assert serve.puts == []


def test_a_well_behaved_tenant_reaches_the_store(store: dict[str, Any]) -> None:
    """The control: the same setting with a resource that asks for nothing it may not have."""
    ctx, backend = make_ctx(store["endpoint"])
    tj = resource(
        TRAININGJOB,
        "ok",
        {
            "image": WORKLOADS,
            "model": {"source": "bert-base-uncased", "numLabels": 2},
            "data": {"train": "s3://rr-art/runs/tenant/t.jsonl", "validation": "s3://tenant-data/v.jsonl"},
            "artifacts": {"credentialsSecret": "tenant-creds"},
        },
    )
    result = run_pass(TRAININGJOB, tj, ctx)
    assert not result.permanent and not result.temporary, result.problem
    assert backend.verbs() == ["submit"]
    assert any("/rr-art" in line for line in store["log"].lines), store["log"].lines


def test_the_operators_store_gives_up_on_a_black_hole_quickly(black_hole: BlackHole) -> None:
    """An allowed endpoint that stops answering costs a pass seconds, not minutes (finding 3)."""
    ctx, backend = make_ctx(
        black_hole.url, store_max_attempts=2, store_connect_timeout_seconds=1, store_read_timeout_seconds=1
    )
    tj = resource(
        TRAININGJOB,
        "slow",
        {
            "model": {"source": "bert-base-uncased", "numLabels": 2},
            "data": {
                "train": "s3://rr-art/runs/tenant/t.jsonl",
                "validation": "s3://rr-art/runs/tenant/v.jsonl",
            },
        },
    )
    started = time.monotonic()
    result = run_pass(TRAININGJOB, tj, ctx)
    elapsed = time.monotonic() - started
    assert result.temporary and result.error is not None and result.error.reason == "StoreUnavailable"
    assert black_hole.connections >= 1
    # 3 documents x 2 attempts x 1 s at most, plus slack; botocore's defaults would take minutes.
    assert elapsed < 15, elapsed
    assert backend.calls == []
    cond = find_condition(result.status.conditions, "Reconciled")
    assert cond is not None and len(cond.message) <= 1000
    json.dumps(result.patch)  # writable as is
