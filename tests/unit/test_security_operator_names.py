"""Issue 12, finding 6: names that cannot collide across namespaces, and no adoption.

Submission ids carry a hash of namespace and name (``naming.owner_hash``); a Ray
job or Serve application that already holds our name but belongs to someone else
is refused (``BackendRejected``: permanent), never adopted, replaced or deleted.
"""

from __future__ import annotations

from typing import Any

import pytest

from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_core.serveconfig import application_configs
from rayrelay_operator import naming
from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.backends.ray import META_NAME, META_NAMESPACE, RayBackend
from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
from rayrelay_operator.reconcile.training import training_work
from rayrelay_operator.settings import Settings

SETTINGS = Settings(artifacts_uri="s3://rr-art/runs")


def test_submission_ids_of_ambiguous_joins_differ() -> None:
    # "team" + "a-job" and "team-a" + "job" joined with "-" are the same text.
    a = naming.training_submission_id("team", "a-job", 1, 1)
    b = naming.training_submission_id("team-a", "job", 1, 1)
    assert a != b
    assert a.startswith("rayrelay-team-a-job-") and a.endswith("-g1-a1")
    # Long names are shortened and still differ.
    long_a = naming.training_submission_id("n" * 60, "x-" + "y" * 60, 3, 2)
    long_b = naming.training_submission_id("n" * 60 + "-x", "y" * 60, 3, 2)
    assert long_a != long_b and len(long_a) <= 63 and len(long_b) <= 63


def tj(namespace: str, name: str) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name, "namespace": namespace, "uid": "u", "generation": 1},
            "spec": {
                "model": {"source": "bert-base-uncased", "numLabels": 2},
                "data": {"train": "s3://d-bkt/t.jsonl", "validation": "s3://d-bkt/v.jsonl"},
            },
        }
    )


class JobClient:
    """A JobSubmissionClient double: one job already holds every id, owned by ``owner``."""

    def __init__(self, owner: dict[str, str] | None) -> None:
        self.owner = owner
        self.submitted: list[str] = []

    def submit_job(self, **kw: Any) -> str:
        self.submitted.append(kw["submission_id"])
        raise RuntimeError(f"Job with submission_id {kw['submission_id']} already exists.")

    def get_job_info(self, sid: str) -> dict[str, Any]:
        return {"submission_id": sid, "status": "RUNNING", "metadata": self.owner}


def backend(client: Any) -> RayBackend:
    return RayBackend("http://ray:8265", environ={}, client_factory=lambda url: client)


def test_an_existing_job_of_the_same_owner_is_a_resubmission() -> None:
    work = training_work(tj("ml", "sst2"), SETTINGS, 1, 1)
    client = JobClient({META_NAMESPACE: "ml", META_NAME: "sst2"})
    backend(client).submit_training(work)  # no error: the attempt was submitted before
    assert client.submitted == [work.submission_id]


@pytest.mark.parametrize("owner", [{META_NAMESPACE: "other", META_NAME: "sst2"}, {}, None])
def test_a_job_with_our_id_but_another_owner_is_refused(owner: dict[str, str] | None) -> None:
    work = training_work(tj("ml", "sst2"), SETTINGS, 1, 1)
    with pytest.raises(BackendRejected, match="refusing to adopt"):
        backend(JobClient(owner)).submit_training(work)


def md(namespace: str) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "sentiment", "namespace": namespace, "uid": "u"},
            "spec": {"model": {"manifestUri": f"s3://rr-art/runs/{namespace}/m/run/manifest.json"}},
        }
    )


def serve_state(namespace: str) -> dict[str, Any]:
    """Serve running another namespace's ``sentiment`` (same name as ours)."""
    work = serving_work(md(namespace), DesiredModel("s3://x/m.json", "sha256:ab", "int8"), SETTINGS)
    apps = application_configs(work.app_args)
    return {
        "controller_info": {"actor_id": "a"},
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": {
            app["name"]: {"status": "RUNNING", "deployed_app_config": app, "deployments": {}} for app in apps
        },
    }


class ServeDouble(RayBackend):
    def __init__(self, state: dict[str, Any]) -> None:
        super().__init__("http://ray:8265", environ={})
        self.state = state
        self.puts: list[dict[str, Any]] = []

    def _rest(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if method == "PUT":
            self.puts.append(body or {})
            return {}
        return self.state


def test_a_serve_app_of_another_namespace_is_neither_replaced_nor_deleted() -> None:
    be = ServeDouble(serve_state("team-b"))
    ours = serving_work(md("team-a"), DesiredModel("s3://y/m.json", "sha256:cd", "int8"), SETTINGS)
    with pytest.raises(BackendRejected, match="belongs to namespace team-b"):
        be.deploy_serving(ours)
    be.delete_serving(ours)
    assert be.puts == []


def test_our_own_serve_app_is_updated_and_deleted() -> None:
    be = ServeDouble(serve_state("team-a"))
    ours = serving_work(md("team-a"), DesiredModel("s3://y/m.json", "sha256:cd", "int8"), SETTINGS)
    be.deploy_serving(ours)
    be.delete_serving(ours)
    assert len(be.puts) == 2
