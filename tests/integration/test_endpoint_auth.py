"""Endpoint API keys on a real endpoint (ModelDeployment.spec.auth, issue 26 section 3).

One deployment, deployed once by the operator's own reconcile pass (``run_pass``
with the ray backend, against the session's real Ray head and Serve, the
Secret read through ``ReconcileContext.secret_data`` as the operator reads it
from the API server), then checked over HTTP:

- every model route answers 401 (``WWW-Authenticate: Bearer``, one body for all)
  without a key, with a wrong key or without the ``Bearer`` scheme, and 200 with
  a right one: OIP v2 infer on the replica's own route (the one-hop path) and
  through the gateway (``/versions/1/infer``), model metadata and readiness,
  KServe v1 predict and status; health and ``/metrics`` stay open;
- a stock client, ``tritonclient.http``, with ``headers={"Authorization": ...}``;
- rotation: the Secret's key replaced, one reconcile pass (what the operator's
  timer runs every ``timer_interval_seconds``), and the old key gets 401 and the
  new one 200 on both paths within ``PROPAGATION_BOUND_S``, served by the same
  replica process (Serve's ``reconfigure`` in place, no restart).

The OpenAI client (``api_key``) against ``/v1/completions`` of a text-generation
model is in ``test_textgen_run.py`` (the ``rayrelay run -f FILE`` path, with the
Secret in FILE).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from rayrelay_core.api import Backend
from rayrelay_core.apikeys import UNAUTHORIZED_MESSAGE
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.reconcile import ReconcileContext, delete_pass, run_pass
from rayrelay_operator.settings import Settings

KEY_A = f"rr-test-{uuid.uuid4().hex}"
KEY_B = f"rr-test-{uuid.uuid4().hex}"
# Rotation, from the pass that read the new Secret to both paths answering with the new keys:
# Serve applying the new user_config (controller -> replica reconfigure) plus the gateway's
# KEYS_TTL_S. Measured 1-3 s on a 2-core machine; the bound leaves room for a loaded one.
PROPAGATION_BOUND_S = 15.0
TEXTS = ["my order arrived broken", "thanks, all good"]


class SecretStore:
    """``secret_data`` over a mutable Secret, standing in for the API server."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data

    def __call__(self, namespace: str, name: str) -> dict[str, str] | None:
        return dict(self.data) if name == "endpoint-keys" else None


def v2_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


@pytest.fixture(scope="module")
def endpoint(ray_cluster: Any, tiny_run: Any) -> Iterator[tuple[str, str, Any, dict[str, Any], SecretStore]]:
    name = f"auth-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        default_backend=Backend.RAY, ray_address=ray_cluster.dashboard_url, artifacts_uri="file:///unused"
    )
    backend = RayBackend(
        ray_cluster.dashboard_url,
        serve_host="127.0.0.1",
        serve_port=ray_cluster.serve_port,
        url_host="127.0.0.1",
    )
    keys = SecretStore({"ci": KEY_A})
    ctx = ReconcileContext(settings=settings, backends={"ray": backend}, secret_data=keys)
    md: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default", "uid": "u-auth", "generation": 1},
        "spec": {
            "model": {"manifestUri": tiny_run.manifest_uri, "variant": "fp32"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            "resources": {"cpus": 0.5},
            "auth": {"apiKeysSecret": "endpoint-keys"},
        },
        "status": {},
    }
    deadline = time.monotonic() + 300
    while True:
        result = run_pass("ModelDeployment", md, ctx)
        md["status"] = result.status.wire()
        if md["status"].get("phase") == "Ready":
            break
        assert md["status"].get("phase") != "Failed", json.dumps(md["status"], indent=1)
        assert time.monotonic() < deadline, json.dumps(md["status"], indent=1)
        time.sleep(1.0)
    try:
        yield f"http://127.0.0.1:{ray_cluster.serve_port}", name, ctx, md, keys
    finally:
        delete_pass("ModelDeployment", md, ctx)


def routes(name: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path, JSON body) of every model route of a classification model."""
    return [
        ("POST", f"/v2/models/{name}/infer", v2_body(TEXTS)),  # the replica's own route
        ("POST", f"/v2/models/{name}/versions/1/infer", v2_body(TEXTS)),  # through the gateway
        ("GET", f"/v2/models/{name}", None),
        ("GET", f"/v2/models/{name}/ready", None),
        ("POST", f"/v1/models/{name}:predict", {"instances": TEXTS}),
        ("GET", f"/v1/models/{name}", None),
    ]


def call(url: str, method: str, path: str, body: Any, key: str | None, scheme: str = "Bearer") -> Any:
    headers = {"Authorization": f"{scheme} {key}"} if key is not None else {}
    return requests.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)


def replicas(dashboard: str, name: str) -> list[tuple[str, int]]:
    """(replica id, pid) of the model's running replicas, as Serve's REST API reports them."""
    doc = requests.get(f"{dashboard}/api/serve/applications/", timeout=30).json()
    deployment = doc["applications"][name]["deployments"]["ModelServer"]
    return sorted((r["replica_id"], int(r["pid"])) for r in deployment["replicas"] if r["state"] == "RUNNING")


def test_every_model_route_wants_a_key_and_a_rotation_takes_effect_in_place(
    endpoint: tuple[str, str, Any, dict[str, Any], SecretStore], ray_cluster: Any
) -> None:
    url, name, ctx, md, keys = endpoint

    refusals = set()
    for method, path, body in routes(name):
        for key, scheme in ((None, "Bearer"), ("wrong-key-0123456789abcdef", "Bearer"), (KEY_A, "Basic")):
            resp = call(url, method, path, body, key, scheme)
            assert resp.status_code == 401, (method, path, key is None, scheme, resp.status_code, resp.text)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer"), path
            refusals.add(resp.text)
        resp = call(url, method, path, body, KEY_A)
        assert resp.status_code == 200, (method, path, resp.text)
    # One answer for every refusal: nothing about which keys exist or what was wrong.
    assert all(json.loads(text) == {"error": UNAUTHORIZED_MESSAGE} for text in refusals)
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert requests.get(f"{url}{path}", timeout=30).status_code == 200, path

    # A stock OIP client, with the key in its headers.
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))
    text = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    result = client.infer(name, [text], headers={"Authorization": f"Bearer {KEY_A}"})
    assert len(result.as_numpy("labels")) == len(TEXTS)
    assert client.is_model_ready(name, headers={"Authorization": f"Bearer {KEY_A}"})
    with pytest.raises(InferenceServerException) as refused:
        client.infer(name, [text], headers={"Authorization": "Bearer wrong-key-0123456789abcdef"})
    assert "401" in str(refused.value.status()) or "API key" in str(refused.value)
    with pytest.raises(InferenceServerException):
        client.infer(name, [text])
    client.close()

    # Rotation: B replaces A in the Secret; one operator pass; no replica restarts.
    before = replicas(ray_cluster.dashboard_url, name)
    assert before
    keys.data = {"ci-2": KEY_B}
    started = time.monotonic()
    md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
    direct, gateway = routes(name)[0], routes(name)[2]

    def rotated() -> bool:
        return all(
            call(url, m, p, b, KEY_A).status_code == 401 and call(url, m, p, b, KEY_B).status_code == 200
            for m, p, b in (direct, gateway)
        )

    while not rotated():
        assert time.monotonic() - started < PROPAGATION_BOUND_S, "the rotation did not reach both paths"
        time.sleep(0.2)
    took = time.monotonic() - started
    print(f"rotation propagated in {took:.2f} s after the pass that read the new Secret")
    for method, path, body in routes(name):
        assert call(url, method, path, body, KEY_A).status_code == 401, path
        assert call(url, method, path, body, KEY_B).status_code == 200, path
    assert replicas(ray_cluster.dashboard_url, name) == before  # same replica, same process
    # The deployment stays Ready through it (Serve applies a user_config in place).
    for _ in range(3):
        md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
        assert md["status"]["phase"] == "Ready", md["status"]
