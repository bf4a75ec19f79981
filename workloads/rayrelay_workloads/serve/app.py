"""Typed application builders: what ``serve.run`` and Serve's declarative config import.

``rayrelay_core.serveconfig`` names these builders in the config it emits
(``rayrelay_workloads.serve.app:model_app`` and ``:gateway_app``); Serve
validates the config's ``args`` into the pydantic models below (the "typed
application builder" pattern), so a malformed spec fails at deploy time with a
field path, before a replica starts. The deployment options come from the same
``serveconfig.model_deployment_options`` the declarative path uses; options in
a config's ``deployments`` list override them, as Serve documents. The model
application's replica is the task's (``tasks.task_for(task).replica()``), so this
module names no task.
"""

# No ``from __future__ import annotations`` here: Serve reads the builders'
# parameter annotations at runtime to validate ``args`` into the typed model.
from typing import cast

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from ray.serve import Application, Deployment

from rayrelay_core.api import ModelDeploymentSpec
from rayrelay_core.serveconfig import GATEWAY_OPTIONS, model_deployment_options
from rayrelay_workloads.serve.gateway import Gateway
from rayrelay_workloads.tasks import task_for


class ModelAppArgs(BaseModel):
    """``rayrelay_core.runs.serve_app_args`` plus an optional cache folder."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1, max_length=63)
    namespace: str = "default"
    manifest_uri: str = Field(min_length=1)
    variant: str = "auto"
    endpoint_url: str | None = Field(default=None, description="S3 endpoint of the artifact store.")
    spec: ModelDeploymentSpec
    digest: str | None = Field(
        default=None,
        description=(
            "sha256 of the manifest as the operator resolved it ('sha256:<hex>'); the replica refuses "
            "a manifest with another digest, and a new model changes the args."
        ),
    )
    cache_dir: str | None = Field(
        default=None, description="Local artifact cache; default $RAYRELAY_CACHE_DIR or ~/.cache/rayrelay."
    )
    task: str | None = Field(default=None, description="The manifest's task when not classification.")


class GatewayArgs(BaseModel):
    """The gateway takes no settings yet; the model carries its own limits."""

    model_config = ConfigDict(extra="forbid")


def model_app(args: ModelAppArgs) -> Application:
    options = model_deployment_options(args.spec, task=args.task)
    wire = args.model_dump(by_alias=True, exclude_none=True, mode="json")
    # The manifest's task picks the replica (tasks.REGISTRY; classification's is serve.model.ModelServer).
    return cast(Deployment, task_for(args.task).replica()).options(**options).bind(wire)


def gateway_app(args: GatewayArgs) -> Application:
    return cast(Deployment, Gateway).options(**GATEWAY_OPTIONS).bind(args.model_dump())
