"""Issue 12, finding 2: the ray backend never hands the operator's credentials to a job.

The operator builds its ray backend in ``handlers.default_context``; a job it
submits carries no variable of the operator's environment (its AWS keys would be
listed by Ray's job API without authentication), only the keys of the
resource's own opted-in Secret. The backend is refused outside
``RAYRELAY_RAY_BACKEND_NAMESPACES``.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_security_operator import refused

from rayrelay_core.api import TrainingJob
from rayrelay_operator.handlers import default_context
from rayrelay_operator.reconcile.driver import MODELDEPLOYMENT, TRAININGJOB
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings
from tests.unit.reconcile_fakes import tj_dict

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs", ray_address="http://ray-head:8265")


class JobClient:
    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def submit_job(self, **kw: Any) -> str:
        self.jobs.append(kw)
        return str(kw["submission_id"])


class FakeSecrets:
    """The ray backend's credentials getter, standing in for the Kubernetes API."""

    def __init__(self) -> None:
        self.read: list[tuple[str, str]] = []

    def __call__(self, namespace: str, name: str) -> dict[str, str]:
        self.read.append((namespace, name))
        return {"AWS_ACCESS_KEY_ID": f"{namespace}-key", "AWS_SECRET_ACCESS_KEY": f"{namespace}-secret"}


def operator_ray_backend(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, JobClient, FakeSecrets]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "OPERATOR-KEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "OPERATOR-SECRET")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "OPERATOR-TOKEN")
    ctx = default_context(SETTINGS, api_client=object())
    backend = ctx.backends["ray"]
    client, secrets = JobClient(), FakeSecrets()
    backend._client = client
    backend._credentials = secrets
    return backend, client, secrets


def work_for(**spec: Any) -> Any:
    tj = TrainingJob.model_validate(tj_dict(backend="ray", **spec))
    return training_work(tj, SETTINGS, 1, 1)


def test_the_operators_environment_never_reaches_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, client, secrets = operator_ray_backend(monkeypatch)
    backend.submit_training(work_for())
    (job,) = client.jobs
    env = (job.get("runtime_env") or {}).get("env_vars") or {}
    assert "OPERATOR" not in repr(job)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
    assert secrets.read == []


def test_a_job_gets_its_resources_own_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, client, secrets = operator_ray_backend(monkeypatch)
    backend.submit_training(work_for(artifacts={"credentialsSecret": "ml-s3"}))
    (job,) = client.jobs
    env = job["runtime_env"]["env_vars"]
    assert env["AWS_ACCESS_KEY_ID"] == "ml-key" and env["AWS_SECRET_ACCESS_KEY"] == "ml-secret"
    assert "OPERATOR" not in repr(job)
    assert secrets.read == [("ml", "ml-s3")]


@pytest.mark.parametrize("kind", [TRAININGJOB, MODELDEPLOYMENT])
def test_the_ray_backend_only_in_listed_namespaces(kind: str) -> None:
    from test_security_operator import SETTINGS as POLICY_SETTINGS
    from test_security_operator import md_dict

    obj = tj_dict(backend="ray") if kind == TRAININGJOB else md_dict(backend="ray")
    message = refused(kind, obj, "BackendNotAllowed")
    assert "RAYRELAY_RAY_BACKEND_NAMESPACES" in message and "ml" in message
    # Listed: no refusal from the policy.
    from rayrelay_core.api import ModelDeployment
    from rayrelay_operator import policy

    allowed = Settings(**{**POLICY_SETTINGS.__dict__, "ray_backend_namespaces": "dev, ml"})
    if kind == TRAININGJOB:
        assert policy.check_trainingjob(TrainingJob.model_validate(obj), "ray", allowed, None) is None
    else:
        assert policy.check_modeldeployment(ModelDeployment.model_validate(obj), "ray", allowed, None) is None
