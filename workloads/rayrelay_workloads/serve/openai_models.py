"""``GET /v1/models`` in the shared gateway: the models served on OpenAI's routes, of every task.

OpenAI's clients list the models (``client.models.list()``) whatever route they
call next, so the list belongs to no one task: it names every model whose task
answers one of OpenAI's routes (text generation's completions, sentence
embedding's ``/v1/embeddings``) and leaves out those that answer KServe's
routes only (classifiers). Which tasks those are, the registry says
(``tasks.Entry.openai_models``, read by :func:`tasks.lists_openai_models`), so
a new task joins the list with its entry, not with a branch here. The gateway
learns each model's task from its replicas once per deployment
(``Gateway._info``), so a model scaled to zero that the gateway has not met
since it started is woken by a list.

It is a model route: a model with ``spec.auth`` is listed only to a request
carrying one of its keys, and a request that may see none of the listed models
while one of them asks for a key gets 401. A model that does not answer (info,
key digests) is left out and logged, not a failure of the list. Listed: every
model with a replica or scaled to zero, sorted by name, ``created`` its
deployment time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from rayrelay_workloads.serve import ingress
from rayrelay_workloads.tasks import lists_openai_models

log = logging.getLogger("ray.serve")

PATHS = ("/v1/models", "/v1/models/")
OWNED_BY = "rayrelay"


def model_list(models: dict[str, float]) -> dict[str, Any]:
    """OpenAI's list of model objects, ``{name: deployed at (epoch s)}`` sorted by name."""
    data = [
        {"id": name, "object": "model", "created": int(created), "owned_by": OWNED_BY}
        for name, created in sorted(models.items())
    ]
    return {"object": "list", "data": data}


async def route(gateway: Any, request: Request) -> Response:
    """``GET /v1/models``: the OpenAI-served models this request may see (see the module docstring)."""
    ingress.require(request.method, "GET")
    states = [s for s in (await gateway._states()).values() if s.servable]
    header = request.headers.get("authorization")
    seen = await asyncio.gather(*(_visible(gateway, s, header) for s in states))
    listed = {s.name: s.deployed_at for s, (_, allowed) in zip(states, seen, strict=True) if allowed}
    if not listed and any(listable for listable, _ in seen):
        raise ingress.Unauthorized
    return ingress.json_response(200, model_list(listed))


async def _visible(gateway: Any, state: Any, header: str | None) -> tuple[bool, bool]:
    """(a model of a task that OpenAI's list names, one this request may see)."""
    try:
        info = await gateway._info(state)
        if not lists_openai_models(info.get("task")):
            return False, False
        check = await gateway._key_check(state)
    except Exception as exc:  # one model that does not answer must not hide the others
        log.warning("gateway: /v1/models leaves out %s: %s", state.name, ingress.describe(exc))
        return False, False
    return True, check is None or check.allows(header)
