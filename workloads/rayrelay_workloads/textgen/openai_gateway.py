"""The OpenAI routes in the shared gateway: /v1/completions, /v1/chat/completions, /v1/models.

None of these paths names a model (the completions routes name it in their
body, the list names none), so Serve's proxy sends them to the gateway
application at ``/`` (``serve.gateway``, which calls :func:`route`: ``tasks.REGISTRY``
names this module for ``PATHS``), not to a
model application's own route prefix. For the two completions routes the
gateway reads the body (bounded by the default ``RequestLimits``), finds the
model it names (400 without one, 404 for an unknown one), checks the API key
of that model (``spec.auth``: 401), checks that it is a text-generation model
(400) and forwards the body by handle to the replica's ``complete`` or
``complete_stream`` with the route's kind; the replica parses and judges it
(``textgen.openai_api``) and its refusals come back as data with their 4xx.

``GET /v1/models`` lists every text-generation model that has a replica or
is scaled to zero, in OpenAI's list shape. It is a model route: a model with
``spec.auth`` is listed only to a request carrying one of its keys, and a
request that may see none of the text-generation models while one of them asks
for a key gets 401. A model that does not answer (info, key digests) is left
out and logged, not a failure of the list. The gateway learns each model's task
from its replicas once per deployment (``Gateway._info``), so a model scaled to
zero that the gateway has not met since it started is woken by a list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.serve import ingress
from rayrelay_workloads.serve.protocol import ProtocolError
from rayrelay_workloads.textgen import openai_api as oa
from rayrelay_workloads.textgen import protocol as gp

log = logging.getLogger("ray.serve")

TASK = "text-generation"
MODELS_PATHS = ("/v1/models", "/v1/models/")
KINDS = {path: kind for kind, path in oa.PATHS.items()}
PATHS = (*KINDS, *MODELS_PATHS)  # what the gateway hands to route()


async def route(gateway: Any, request: Request, path: str) -> tuple[Response, str]:
    """(the answer, the model label for the gateway's metrics) of one of ``PATHS``."""
    if path in MODELS_PATHS:
        return await models(gateway, request), "_none"
    return await forward(gateway, request, KINDS[path])


async def forward(gateway: Any, request: Request, kind: str) -> tuple[Response, str]:
    """``POST /v1/completions`` or ``/v1/chat/completions``: find the model, forward by handle."""
    ingress.require(request.method, "POST")
    body = await ingress.read_body(request, RequestLimits())
    name = gp.model_of_completion(body)
    state = await gateway._state(name)
    await gateway._authorize(request, state)
    info = await gateway._info(state)
    if info.get("task") != TASK:
        raise ProtocolError(400, f"model {name!r} is not a text-generation model; {oa.PATHS[kind]} needs one")
    handle = await gateway._handle(state)
    if not gp.stream_flag(gp.load_json(body)):
        out = await asyncio.wait_for(handle.complete.remote(body, kind), ingress.INFER_TIMEOUT_S)
        return ingress.json_response(int(out["status"]), out["body"]), name
    stream = handle.options(stream=True).complete_stream.remote(body, kind)
    head = await stream.__anext__()
    if int(head["status"]) != 200:
        return ingress.json_response(int(head["status"]), head["body"]), name

    async def chunks() -> AsyncIterator[bytes]:
        async for chunk in stream:
            yield chunk

    return StreamingResponse(chunks(), media_type="text/event-stream"), name


async def models(gateway: Any, request: Request) -> Response:
    """``GET /v1/models``: the text-generation models this request may see (see the module docstring)."""
    ingress.require(request.method, "GET")
    states = [s for s in (await gateway._states()).values() if s.servable]
    header = request.headers.get("authorization")
    seen = await asyncio.gather(*(_visible(gateway, s, header) for s in states))
    listed = {s.name: s.deployed_at for s, (textgen, allowed) in zip(states, seen, strict=True) if allowed}
    if not listed and any(textgen for textgen, _ in seen):
        raise ingress.Unauthorized
    return ingress.json_response(200, oa.model_list(listed))


async def _visible(gateway: Any, state: Any, header: str | None) -> tuple[bool, bool]:
    """(a text-generation model, one this request may see)."""
    try:
        info = await gateway._info(state)
        if info.get("task") != TASK:
            return False, False
        check = await gateway._key_check(state)
    except Exception as exc:  # one model that does not answer must not hide the others
        log.warning("gateway: /v1/models leaves out %s: %s", state.name, ingress.describe(exc))
        return False, False
    return True, check is None or check.allows(header)
