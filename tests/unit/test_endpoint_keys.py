"""Endpoint API keys (ModelDeployment.spec.auth, issue 26 section 3): the pure parts.

The key check (``rayrelay_core.apikeys``), the API model and its schema, the
tenant policy's opt-in, what the reconciler hands Serve (digests in
``user_config``, never a key, a rotation deployed without new args), the status
of an unusable Secret, and both HTTP ingresses' answers (the gateway with a fake
model handle, the replica's own route through ``ingress``). The same behaviour on
a real endpoint: ``tests/integration/test_endpoint_auth.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from starlette.requests import Request

from rayrelay_core import apikeys
from rayrelay_core.api import ModelDeployment, ModelDeploymentSpec
from rayrelay_core.apikeys import ApiKeysProblem, KeyCheck, digest, digests_from_secret
from rayrelay_core.serveconfig import application_configs, deployed_key_digests
from rayrelay_core.validation import validate_document
from rayrelay_operator import policy
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingObservation, ServingState

sys.path.insert(0, str(Path(__file__).parent))
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, write_manifest
from textgen_replica import http_request

REPO = Path(__file__).resolve().parents[2]
KEY_A = "a" * 8 + "-key-alpha-0123456789"
KEY_B = "b" * 8 + "-key-bravo-0123456789"


# ------------------------------------------------------------------ the check


def test_the_check_needs_a_bearer_header_with_one_of_the_keys() -> None:
    check = KeyCheck([digest(KEY_A), digest(KEY_B)])
    assert not check.allows(None)  # no header
    assert not check.allows("")
    assert not check.allows(f"Basic {KEY_A}")  # another scheme
    assert not check.allows(KEY_A)  # no scheme
    assert not check.allows("Bearer ")  # no token
    assert not check.allows("Bearer wrong-key-0123456789")
    assert not check.allows(f"Bearer {KEY_A}x")
    assert check.allows(f"Bearer {KEY_A}")
    assert check.allows(f"bearer {KEY_B}")  # the scheme is case-insensitive (RFC 7235)
    assert check.allows(f"  Bearer   {KEY_B}  ")
    assert not KeyCheck([]).allows(f"Bearer {KEY_A}")  # auth on, no key: everything refused


def test_the_check_compares_every_digest_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest over the sha256 digests, all of them, whichever matches (no early exit)."""
    compared: list[tuple[bytes, bytes]] = []
    real = apikeys.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(apikeys.hmac, "compare_digest", spy)
    keys = [KEY_A, KEY_B, "c" * 20, "d" * 20]
    check = KeyCheck([digest(k) for k in keys])
    for header in (f"Bearer {KEY_A}", f"Bearer {keys[-1]}", "Bearer nothing-like-it-0000", None):
        compared.clear()
        check.allows(header)
        assert len(compared) == len(keys)
        presented = {a for a, _ in compared}
        token = (header or "").removeprefix("Bearer ")
        assert presented == {hashlib.sha256(token.encode() if header else b"").digest()}
        assert all(len(a) == len(b) == 32 for a, b in compared)  # digests, never the keys


def test_digests_not_keys_and_problems_name_no_key() -> None:
    digests = digests_from_secret("keys", {"ci": f"{KEY_A}\n", "alice": KEY_B, "old": "", "dup": KEY_A})
    assert digests == sorted({digest(KEY_A), digest(KEY_B)})
    for data, reason in [
        (None, apikeys.SECRET_NOT_FOUND),
        ({}, apikeys.SECRET_EMPTY),
        ({"ci": "   "}, apikeys.SECRET_EMPTY),
        ({"ci": "short-key"}, apikeys.SECRET_INVALID),
        ({"ci": "a key with spaces 0123456789"}, apikeys.SECRET_INVALID),
    ]:
        with pytest.raises(ApiKeysProblem) as info:
            digests_from_secret("keys", data)
        assert info.value.reason == reason
        assert "keys" in info.value.message
        for value in (data or {}).values():
            if value.strip():
                assert value not in info.value.message


# ------------------------------------------------------------------ API model and schema


def md_doc(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": {"manifestUri": "s3://bucket/x/manifest.json"}, **spec},
    }


def test_auth_is_optional_and_names_a_secret() -> None:
    assert ModelDeploymentSpec.model_validate(md_doc()["spec"]).auth is None  # off by default
    spec = ModelDeploymentSpec.model_validate(md_doc(auth={"apiKeysSecret": "sentiment-keys"})["spec"])
    assert spec.auth is not None and spec.auth.api_keys_secret == "sentiment-keys"
    for bad, gist in [
        ({}, "spec.auth.apiKeysSecret"),
        ({"apiKeysSecret": "Not_A_Name"}, "spec.auth.apiKeysSecret"),
        ({"apiKeysSecret": "k", "keys": ["x"]}, "spec.auth.keys"),
    ]:
        issues = validate_document(md_doc(auth=bad))
        assert any(gist in i.path for i in issues), (bad, issues)


def test_the_crd_explains_auth() -> None:
    crd = yaml.safe_load((REPO / "crds" / "modeldeployments.rayrelay.dev.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    auth = spec["properties"]["auth"]
    assert "default" not in auth and "auth" not in spec.get("required", [])
    secret = auth["properties"]["apiKeysSecret"]
    assert auth["required"] == ["apiKeysSecret"]
    for words in ("rayrelay.dev/credentials", "one data entry per key", "401", "/v2/health", "sha256"):
        assert words in secret["description"], words


# ------------------------------------------------------------------ policy


def test_the_api_keys_secret_must_opt_in() -> None:
    md = ModelDeployment.model_validate(md_doc(auth={"apiKeysSecret": "sentiment-keys"}))
    settings = Settings(allowed_s3_endpoints="*")
    labels: dict[str, dict[str, str] | None] = {"sentiment-keys": {"app": "x"}}

    def secret_labels(ns: str, name: str) -> dict[str, str] | None:
        assert ns == "ml"
        return labels.get(name)

    refusal = policy.check_modeldeployment(md, "kuberay", settings, secret_labels)
    assert refusal is not None and refusal.reason == policy.CREDENTIALS_NOT_ALLOWED
    assert "spec.auth.apiKeysSecret" in refusal.message
    labels["sentiment-keys"] = None  # missing
    assert policy.check_modeldeployment(md, "kuberay", settings, secret_labels) is not None
    labels["sentiment-keys"] = {policy.LABEL_CREDENTIALS: "true"}
    assert policy.check_modeldeployment(md, "kuberay", settings, secret_labels) is None
    keyless = ModelDeployment.model_validate(md_doc())
    assert policy.check_modeldeployment(keyless, "kuberay", settings, lambda ns, n: None) is None


# ------------------------------------------------------------------ reconcile and Serve config


class Keys:
    """A Secret store for ``ReconcileContext.secret_data``."""

    def __init__(self, data: dict[str, str] | None) -> None:
        self.data = data
        self.reads = 0

    def __call__(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        assert (namespace, name) == ("ml", "sentiment-keys")
        return None if self.data is None else dict(self.data)


def deployment(tmp_path: Path, keys: Keys) -> tuple[dict[str, Any], FakeBackend, Any]:
    uri = str(tmp_path / "run" / "manifest.json")
    write_manifest(uri, sample_manifest("run-a"))
    backend = FakeBackend()
    ctx, _ = make_ctx(backend, Clock(), str(tmp_path), secret_data=keys)
    md = md_doc(auth={"apiKeysSecret": "sentiment-keys"})
    md["spec"]["model"] = {"manifestUri": uri}
    return md, backend, ctx


def test_the_replicas_get_digests_in_user_config_and_a_rotation_deploys_in_place(tmp_path: Path) -> None:
    keys = Keys({"ci": KEY_A})
    md, backend, ctx = deployment(tmp_path, keys)
    run_pass("ModelDeployment", md, ctx)
    work = backend.deployed[-1]
    assert work.key_digests == (digest(KEY_A),)
    apps = application_configs(work.app_args, work.surge_from, work.key_digest_list)
    text = json.dumps(apps)
    assert KEY_A not in text and KEY_A not in json.dumps(work.app_args)
    model = apps[1]
    assert model["deployments"][0]["user_config"][apikeys.USER_CONFIG_KEY] == [digest(KEY_A)]
    assert apikeys.USER_CONFIG_KEY not in json.dumps(model["args"])  # args unchanged by keys
    assert deployed_key_digests(model) == [digest(KEY_A)]

    # KubeRay: the RayService's serveConfigV2 carries the digests, not the keys.
    from rayrelay_operator.builders.kuberay import serve_config

    config = serve_config(work)
    assert digest(KEY_A) in config and KEY_A not in config

    # Serving with those digests: nothing to deploy.
    running = ServingObservation(
        ServingState.RUNNING,
        url="http://x",
        replicas=1,
        ready_replicas=1,
        serving_args=work.app_args,
        serving_key_digests=[digest(KEY_A)],
    )
    backend.serving = running
    md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
    backend.deployed.clear()
    md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
    assert backend.deployed == []
    assert md["status"]["phase"] == "Ready"

    # Rotation: B added, A removed; the same args (no rollout, no surge), the new digests.
    keys.data = {"ci-2": KEY_B}
    md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
    assert len(backend.deployed) == 1
    rotated = backend.deployed[0]
    assert rotated.app_args == work.app_args and rotated.surge_from is None
    assert rotated.key_digests == (digest(KEY_B),)
    assert md["status"]["phase"] == "Ready"
    assert keys.reads >= 4  # the Secret is read on every pass


@pytest.mark.parametrize(
    ("data", "reason"),
    [(None, "ApiKeysSecretNotFound"), ({}, "ApiKeysSecretEmpty"), ({"ci": "short"}, "ApiKeysSecretInvalid")],
)
def test_an_unusable_secret_deploys_nothing_and_says_why(
    tmp_path: Path, data: dict[str, str] | None, reason: str
) -> None:
    md, backend, ctx = deployment(tmp_path, Keys(data))
    status = run_pass("ModelDeployment", md, ctx).status.wire()
    assert backend.deployed == []
    assert status["phase"] == "Pending"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == reason
    for value in (data or {}).values():
        assert value not in ready["message"]  # the problem is named, never a key


def test_a_serving_deployment_keeps_its_last_keys_when_the_secret_goes(tmp_path: Path) -> None:
    keys = Keys({"ci": KEY_A})
    md, backend, ctx = deployment(tmp_path, keys)
    run_pass("ModelDeployment", md, ctx)
    work = backend.deployed[-1]
    backend.serving = ServingObservation(
        ServingState.RUNNING,
        url="http://x",
        replicas=1,
        ready_replicas=1,
        serving_args=work.app_args,
        serving_key_digests=[digest(KEY_A)],
    )
    md["status"] = run_pass("ModelDeployment", md, ctx).status.wire()
    assert md["status"]["phase"] == "Ready"
    backend.deployed.clear()
    keys.data = None
    status = run_pass("ModelDeployment", md, ctx).status.wire()
    assert backend.deployed == [] and backend.verbs().count("undeploy") == 0  # never keyless
    assert status["phase"] == "Degraded"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ApiKeysSecretNotFound" and "given last" in ready["message"]


# ------------------------------------------------------------------ HTTP: gateway and replica


def req(path: str, headers: dict[str, str], body: bytes = b"", method: str = "POST") -> Request:
    return cast(Request, http_request(path, body, method, headers))


def test_the_gateway_answers_401_on_every_model_route_and_leaves_health_open() -> None:
    from test_gateway_resilience import BODY, NAME, FakeHandle, _Method, make_gateway, running

    handle = FakeHandle()
    asked = 0

    async def key_digests() -> list[str]:
        nonlocal asked
        asked += 1
        return [digest(KEY_A)]

    handle.key_digests = _Method(key_digests)
    v1 = json.dumps({"instances": ["great"]}).encode()
    routes = [
        ("POST", f"/v2/models/{NAME}/infer", BODY),
        ("GET", f"/v2/models/{NAME}", b""),
        ("GET", f"/v2/models/{NAME}/ready", b""),
        ("POST", f"/v1/models/{NAME}:predict", v1),
        ("GET", f"/v1/models/{NAME}", b""),
    ]

    async def scenario() -> None:
        gateway = make_gateway(handle, running)
        for method, path, body in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY_A}):
                response = await gateway(req(path, headers, body, method))
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert json.loads(response.body) == {"error": apikeys.UNAUTHORIZED_MESSAGE}
            response = await gateway(req(path, {"Authorization": f"Bearer {KEY_A}"}, body, method))
            assert response.status_code == 200, (path, response.body)
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert (await gateway(req(path, {}, b"", "GET"))).status_code == 200
        # /v1/embeddings names its model in the body: the key is checked before the task is.
        embed = json.dumps({"model": NAME, "input": "great"}).encode()
        refused = await gateway(req("/v1/embeddings", {}, embed, "POST"))
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        keyed = await gateway(req("/v1/embeddings", {"Authorization": f"Bearer {KEY_A}"}, embed, "POST"))
        assert keyed.status_code == 400 and b"not a sentence-embedding model" in keyed.body  # a classifier

    asyncio.run(scenario())
    assert 1 <= asked <= 3  # cached for KEYS_TTL_S, not asked per request


def test_the_gateway_takes_a_rotation_within_its_ttl() -> None:
    from test_gateway_resilience import BODY, NAME, FakeHandle, _Method, make_gateway, running

    from rayrelay_workloads.serve import gateway as gw

    handle = FakeHandle()
    current = [digest(KEY_A)]

    async def key_digests() -> list[str]:
        return list(current)

    handle.key_digests = _Method(key_digests)

    async def scenario() -> None:
        gateway = make_gateway(handle, running)
        path = f"/v2/models/{NAME}/infer"
        assert (await gateway(req(path, {"Authorization": f"Bearer {KEY_A}"}, BODY))).status_code == 200
        current[:] = [digest(KEY_B)]
        stamp, deployed, check = gateway._keys[NAME]
        gateway._keys[NAME] = (stamp - 2 * gw.KEYS_TTL_S, deployed, check)  # the TTL passed
        assert (await gateway(req(path, {"Authorization": f"Bearer {KEY_A}"}, BODY))).status_code == 401
        assert (await gateway(req(path, {"Authorization": f"Bearer {KEY_B}"}, BODY))).status_code == 200

    asyncio.run(scenario())


def test_the_replica_route_refuses_before_reading_the_body() -> None:
    from rayrelay_workloads.serve import ingress
    from rayrelay_workloads.serve.model import set_keys

    class Server:
        name = "sentiment"
        spec = ModelDeploymentSpec.model_validate(md_doc(auth={"apiKeysSecret": "k"})["spec"])
        keys: Any = None
        _key_digests: Any = []

    server = Server()
    set_keys(server, {"maxBatchSize": 8})  # auth on, no digests delivered: refuse everything
    assert ingress.unauthorized(server.keys, req("/x", {"Authorization": f"Bearer {KEY_A}"})) is not None
    set_keys(server, {apikeys.USER_CONFIG_KEY: [digest(KEY_A)]})
    assert ingress.unauthorized(server.keys, req("/x", {"Authorization": f"Bearer {KEY_A}"})) is None
    refused = ingress.unauthorized(server.keys, req("/x", {}))
    assert refused is not None and refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == apikeys.WWW_AUTHENTICATE
    assert ingress.unauthorized(None, req("/x", {})) is None  # no spec.auth: open


# ------------------------------------------------------------------ what the backends observe


def test_both_backends_report_the_deployed_digests(tmp_path: Path) -> None:
    """A rotation is noticed by comparing the Secret's digests with the deployed config's."""
    from rayrelay_operator.backends.kuberay import serving_observation
    from rayrelay_operator.backends.ray import observe_app
    from rayrelay_operator.builders.kuberay import serve_config

    md, backend, ctx = deployment(tmp_path, Keys({"ci": KEY_A, "alice": KEY_B}))
    run_pass("ModelDeployment", md, ctx)
    work = backend.deployed[-1]
    wanted = sorted([digest(KEY_A), digest(KEY_B)])

    rayservice = {"metadata": {}, "spec": {"serveConfigV2": serve_config(work)}, "status": {}}
    assert serving_observation(rayservice, "sentiment", "http://x").serving_key_digests == wanted

    model_app = application_configs(work.app_args, None, work.key_digest_list)[1]
    instance = {"applications": {"sentiment": {"status": "RUNNING", "deployed_app_config": model_app}}}
    assert observe_app(instance, "sentiment", "http://x").serving_key_digests == wanted
    keyless = application_configs(work.app_args)[1]
    keyless["deployments"][0]["user_config"].pop(apikeys.USER_CONFIG_KEY, None)
    instance["applications"]["sentiment"]["deployed_app_config"] = keyless
    assert observe_app(instance, "sentiment", "http://x").serving_key_digests is None


def test_rayrelay_run_takes_keys_from_file_and_prints_none() -> None:
    from rayrelay_operator.local.inputs import LocalSecrets
    from rayrelay_operator.local.report import curl_examples

    secrets = LocalSecrets(by_name={"keys": {"ci": KEY_A}}, environ={})
    assert secrets.data("default", "keys") == {"ci": KEY_A}
    assert secrets.data("default", "other") is None
    lines = curl_examples("http://127.0.0.1:8000", "sentiment", auth=True)
    assert all('-H "Authorization: Bearer $API_KEY"' in line for line in lines)
    assert not any(KEY_A in line for line in lines)
    assert not any("Authorization" in line for line in curl_examples("http://x", "sentiment"))
