"""Issue 15, part 4, on the control plane: how the encryption key reaches Ray, and never anything else.

- KubeRay builders: every container gets ``RAYRELAY_ENCRYPTION_KEY`` by
  ``secretKeyRef`` (literal expected value), nothing when encryption is off;
- policy: the key Secret must opt in like a credentials Secret (``CredentialsNotAllowed``);
- ModelDeployment reconcile: an encrypted manifest without ``encryption.keySecret``
  is ``EncryptionKeyRequired`` (permanent, nothing deployed);
- ray backend: the key goes into the job's and the model application's
  ``runtime_env`` only (not the entrypoint, not the gateway), and an error Ray
  returns that quotes it is redacted;
- `rayrelay run`'s v1 Secrets in FILE.

The fake Ray job client and Serve REST stand in for Ray's Job Submission API and
Serve's REST API (they record what would be sent).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, tj_dict, write_manifest
from rich.console import Console
from test_security_operator import MODELDEPLOYMENT, TRAININGJOB, md_dict, refused

from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_core.runs import EncryptionInfo
from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.builders.kuberay import build_rayjob, build_rayservice
from rayrelay_operator.local.inputs import LocalSecrets, read_resources
from rayrelay_operator.reconcile import run_pass
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings

KEY = "ab" * 32
KEY_REF = {
    "name": "RAYRELAY_ENCRYPTION_KEY",
    "valueFrom": {"secretKeyRef": {"name": "model-key", "key": "RAYRELAY_ENCRYPTION_KEY"}},
}
S3 = Settings(artifacts_uri="s3://rr-art/runs")
ENCRYPTED = {"encryption": {"keySecret": "model-key"}}


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "containers" in node:
                found.extend(node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(manifest)
    return found


def test_kuberay_children_get_the_key_by_secret_key_ref_only() -> None:
    tj = TrainingJob.model_validate(tj_dict(artifacts=ENCRYPTED))
    job = build_rayjob(
        training_work(tj, S3, 1, 1), image="img", endpoint_url=None, credentials_secret=None,
        encryption_secret="model-key",
    )  # fmt: skip
    md = ModelDeployment.model_validate(md_dict(artifacts=ENCRYPTED))
    svc = build_rayservice(
        serving_work(md, DesiredModel("s3://b/m/manifest.json", "sha256:" + "0" * 64, "fp32"), Settings()),
        image="img", endpoint_url=None, credentials_secret=None, encryption_secret="model-key",
    )  # fmt: skip
    for manifest in (job, svc):
        found = containers(manifest)
        assert found and all(KEY_REF in c["env"] for c in found)
    plain = build_rayjob(
        training_work(TrainingJob.model_validate(tj_dict()), S3, 1, 1),
        image="img", endpoint_url=None, credentials_secret=None,
    )  # fmt: skip
    assert all(e["name"] != "RAYRELAY_ENCRYPTION_KEY" for c in containers(plain) for e in c["env"])


@pytest.mark.parametrize("kind", [TRAININGJOB, MODELDEPLOYMENT])
@pytest.mark.parametrize("secret", ["not-opted-in", "missing"])
def test_a_key_secret_that_does_not_opt_in_is_refused(kind: str, secret: str) -> None:
    arts = {"encryption": {"keySecret": secret}}
    obj = tj_dict(artifacts=arts) if kind == TRAININGJOB else md_dict(artifacts=arts)
    message = refused(kind, obj, "CredentialsNotAllowed")
    assert "spec.artifacts.encryption.keySecret" in message and repr(secret) in message


def test_an_encrypted_manifest_without_a_key_is_never_deployed(tmp_path: Path) -> None:
    manifest = sample_manifest("run-enc")
    manifest.encryption = EncryptionInfo(scheme="AES-256-GCM/envelope-v1", wrapped_data_key="eA==")
    uri = str(tmp_path / "run-enc" / "manifest.json")
    write_manifest(uri, manifest)
    backend = FakeBackend()
    ctx, _ = make_ctx(backend, Clock(), str(tmp_path))
    obj = md_dict(model={"manifestUri": uri})
    result = run_pass(MODELDEPLOYMENT, obj, ctx)
    ready = {c.type: c for c in result.status.conditions}["Ready"]
    assert result.status.phase == "Failed" and ready.reason == "EncryptionKeyRequired"
    assert "spec.artifacts.encryption.keySecret" in ready.message and backend.deployed == []
    keyed = run_pass(MODELDEPLOYMENT, md_dict(model={"manifestUri": uri}, artifacts=ENCRYPTED), ctx)
    assert keyed.status.phase == "Deploying" and len(backend.deployed) == 1


class FakeJobs:
    """Stands in for ray.job_submission.JobSubmissionClient: records submissions, may refuse."""

    def __init__(self, refuse_with: str | None = None) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.refuse_with = refuse_with

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        if self.refuse_with:
            raise RuntimeError(self.refuse_with)
        return str(kwargs["submission_id"])


def ray_backend(jobs: FakeJobs) -> RayBackend:
    return RayBackend(
        "http://127.0.0.1:1",
        environ={},
        client_factory=lambda url: jobs,
        encryption_key=lambda ns, name: KEY if (ns, name) == ("ml", "model-key") else "",
    )


def test_ray_backend_puts_the_key_in_runtime_env_never_the_entrypoint() -> None:
    jobs = FakeJobs()
    work = training_work(TrainingJob.model_validate(tj_dict(artifacts=ENCRYPTED)), S3, 1, 1)
    ray_backend(jobs).submit_training(work)
    sent = jobs.submitted[0]
    assert sent["runtime_env"]["env_vars"]["RAYRELAY_ENCRYPTION_KEY"] == KEY
    assert KEY not in sent["entrypoint"] and KEY not in json.dumps(sent["metadata"])


def test_ray_backend_redacts_the_key_from_a_refusal() -> None:
    jobs = FakeJobs(refuse_with=f"bad runtime_env {{'RAYRELAY_ENCRYPTION_KEY': '{KEY}'}}")
    work = training_work(TrainingJob.model_validate(tj_dict(artifacts=ENCRYPTED)), S3, 1, 1)
    with pytest.raises(BackendRejected) as err:
        ray_backend(jobs).submit_training(work)
    assert KEY not in str(err.value) and "[redacted]" in str(err.value)


def test_ray_backend_gives_the_key_to_the_model_application_only(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ray_backend(FakeJobs())
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(backend, "serve_instance", lambda: {"applications": {}})
    monkeypatch.setattr(backend, "_rest", lambda method, body=None: sent.append(body or {}) or {})
    md = ModelDeployment.model_validate(md_dict(artifacts=ENCRYPTED))
    work = serving_work(md, DesiredModel("s3://b/m/manifest.json", "sha256:" + "0" * 64, "fp32"), Settings())
    backend.deploy_serving(work)
    apps = {app["name"]: app for app in sent[0]["applications"]}
    assert apps["sentiment"]["runtime_env"] == {"env_vars": {"RAYRELAY_ENCRYPTION_KEY": KEY}}
    assert "runtime_env" not in apps["rayrelay-gateway"]
    assert KEY not in json.dumps(apps["sentiment"]["args"])


def test_rayrelay_run_reads_v1_secrets_from_file(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    b64 = base64.b64encode(KEY.encode()).decode()
    path.write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: k1}\nstringData: {RAYRELAY_ENCRYPTION_KEY: x1}\n---\n"
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: k2}}\ndata: {{RAYRELAY_ENCRYPTION_KEY: {b64}}}\n---\n"
        "apiVersion: rayrelay.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec: {model: {manifestUri: /x/manifest.json}, artifacts: {encryption: {keySecret: k2}}}\n"
    )
    secrets = LocalSecrets(environ={})
    console = Console(file=open(tmp_path / "out.txt", "w"))  # noqa: SIM115
    docs = read_resources(str(path), console, secrets)
    assert docs is not None and [d["kind"] for d in docs] == ["ModelDeployment"]
    assert secrets.encryption_key("default", "k1") == "x1" and secrets.encryption_key("default", "k2") == KEY
    with pytest.raises(BackendRejected, match="no Secret k3 in FILE"):
        secrets.encryption_key("default", "k3")
    assert LocalSecrets(environ={"RAYRELAY_ENCRYPTION_KEY": KEY}).encryption_key("default", "k3") == KEY
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\ndata: {{K: '{KEY}!'}}\n")
    console.file.close()
    console = Console(file=open(tmp_path / "bad.txt", "w"))  # noqa: SIM115
    assert read_resources(str(bad), console, LocalSecrets()) is None
    console.file.close()
    text = (tmp_path / "bad.txt").read_text()
    assert "Secret/k: data.K: not base64" in text and KEY not in text


def test_rayrelay_validate_passes_over_v1_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rayrelay_operator.cli import main

    path = tmp_path / "f.yaml"
    path.write_text(
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: k}}\nstringData: {{RAYRELAY_ENCRYPTION_KEY: {KEY}}}\n---\n"
        "apiVersion: rayrelay.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: m}\n"
        "spec: {model: {manifestUri: /x/manifest.json}, artifacts: {encryption: {keySecret: k}}}\n"
    )
    assert main(["validate", "-f", str(path)]) == 0
    out = capsys.readouterr()
    assert "ModelDeployment/m" in out.out + out.err and KEY not in out.out + out.err


def test_a_replica_traceback_is_condensed_to_its_reason_first() -> None:
    from rayrelay_operator.backends.ray import condense, observe_app

    serve_text = (
        "The deployment failed to start 3 times in a row. This may be due to a problem with its "
        "constructor or initial health check failing. See controller logs for details. Error:\n"
        'ray::ServeReplica:m:ModelServer.initialize() (pid=1)\n  File "replica.py", line 1\n'
        'RuntimeError: Traceback (most recent call last):\n  File "model.py", line 9, in __init__\n    x()\n'
        "rayrelay_workloads.serve.artifacts.ArtifactError: the encryption key does not unwrap this "
        "artifact set's data key\n"
    )
    short = condense(serve_text)
    assert short.startswith("rayrelay_workloads.serve.artifacts.ArtifactError: the encryption key does not")
    assert "failed to start 3 times" in short and "File " not in short and "ray::" not in short
    assert condense("plain words") == "plain words"
    instance = {
        "applications": {
            "m": {
                "status": "DEPLOY_FAILED",
                "message": "Failed to update the deployments ['ModelServer'].",
                "deployments": {"ModelServer": {"status": "DEPLOY_FAILED", "message": serve_text}},
            }
        }
    }
    obs = observe_app(instance, "m", None)
    assert "does not unwrap" in obs.message[:160]
