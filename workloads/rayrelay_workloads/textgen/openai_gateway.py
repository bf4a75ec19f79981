"""Text generation's OpenAI routes in the shared gateway: /v1/completions, /v1/chat/completions.

Neither path names a model (the body does), so Serve's proxy sends them to the
gateway application at ``/`` (``serve.gateway``, which calls :func:`route`: ``tasks.REGISTRY``
names this module for ``PATHS``), not to a
model application's own route prefix. The gateway reads the body (bounded by the default ``RequestLimits``), finds the
model it names (400 without one, 404 for an unknown one), checks the API key
of that model (``spec.auth``: 401), checks that it is a text-generation model
(400) and forwards the body by handle to the replica's ``complete`` or
``complete_stream`` with the route's kind; the replica parses and judges it
(``textgen.openai_api``) and its refusals come back as data with their 4xx.
``GET /v1/models``, which lists these models beside every other task's
OpenAI-served ones, is the gateway's own (``serve.openai_models``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.serve import ingress
from rayrelay_workloads.serve.protocol import ProtocolError
from rayrelay_workloads.textgen import openai_api as oa
from rayrelay_workloads.textgen import protocol as gp

TASK = "text-generation"
KINDS = {path: kind for kind, path in oa.PATHS.items()}
PATHS = tuple(KINDS)  # what the gateway hands to route()


async def route(gateway: Any, request: Request, path: str) -> tuple[Response, str]:
    """(the answer, the model label for the gateway's metrics) of one of ``PATHS``."""
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
