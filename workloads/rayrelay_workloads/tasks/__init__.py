"""The registry of tasks: ``spec.model.task`` -> the task's module, chosen in this one place.

Each entry names the module that holds the task's ``TASK`` (an object satisfying
``tasks.base.Task``) as a string, so nothing here imports a task: the registry is
how shared code (``pipeline.py``, ``serve/app.py``, ``serve/gateway.py``) reaches a
task without an import arrow pointing up into a task's folder, and a replica loads
only its own task's code. Registering a task is one entry in :data:`REGISTRY`;
``tasks/base.py`` says what the module must provide.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rayrelay_workloads.failures import UnsupportedSpec

if TYPE_CHECKING:  # not at run time: base imports the trainer's driver, which the gateway needs not
    from rayrelay_workloads.tasks.base import Task

DEFAULT_TASK = "sequence-classification"


@dataclass(frozen=True)
class Entry:
    """Where one task lives."""

    module: str  # holds TASK
    # Routes of the shared gateway that name no model in their path (OpenAI's), which the
    # gateway hands to ``gateway_module.route(gateway, request, path)``.
    gateway_module: str | None = None
    gateway_paths: tuple[str, ...] = ()
    # Its models answer one of OpenAI's routes, so the gateway's ``GET /v1/models`` names them.
    openai_models: bool = False


REGISTRY: dict[str, Entry] = {
    "sequence-classification": Entry("rayrelay_workloads.classification.task"),
    "text-generation": Entry(
        "rayrelay_workloads.textgen.task",
        gateway_module="rayrelay_workloads.textgen.openai_gateway",
        gateway_paths=("/v1/completions", "/v1/chat/completions"),
        openai_models=True,
    ),
    "sentence-embedding": Entry(
        "rayrelay_workloads.embedding.task",
        gateway_module="rayrelay_workloads.embedding.openai_gateway",
        gateway_paths=("/v1/embeddings", "/v1/embeddings/"),
        openai_models=True,
    ),
}


class UnknownTask(UnsupportedSpec):
    """A task name no entry of the registry carries (a run fails with reason ``InvalidSpec``)."""


def entry_for(name: str | None) -> Entry:
    key = str(name) if name else DEFAULT_TASK
    try:
        return REGISTRY[key]
    except KeyError:
        raise UnknownTask(f"model.task {key!r} is not one of {sorted(REGISTRY)}") from None


def task_for(name: str | None) -> Task:
    """The task of ``spec.model.task`` (or a manifest's ``task``; None: sequence-classification)."""
    task: Task = importlib.import_module(entry_for(name).module).TASK
    return task


def lists_openai_models(name: object) -> bool:
    """Whether ``GET /v1/models`` names the models of task ``name`` (a replica's ``info()["task"]``).

    None is a classifier (its replica reports no task); a name no entry carries is not listed."""
    entry = REGISTRY.get(str(name) if name else DEFAULT_TASK)
    return entry is not None and entry.openai_models


def gateway_module_for(path: str) -> str | None:
    """The module answering ``path`` in the shared gateway for some task, or None."""
    for entry in REGISTRY.values():
        if path in entry.gateway_paths:
            return entry.gateway_module
    return None
