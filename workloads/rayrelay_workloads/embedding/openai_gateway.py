"""OpenAI's ``POST /v1/embeddings`` in the shared gateway (``serve.gateway`` calls :func:`route`).

The path names no model (the body does), so Serve's proxy sends it to the gateway
application at ``/``. The gateway reads the body (bounded by the default
``RequestLimits``), finds the model it names (400 without one, 404 for an unknown one),
checks that model's API keys (``spec.auth``: 401) and that it is a sentence-embedding
model (400 otherwise), and forwards the body by handle to the replica's
``EmbeddingServer.embeddings``, which judges it against the model's own limits and
answers; its refusals come back as data with their 4xx.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.embedding import openai_api as oa
from rayrelay_workloads.serve import ingress
from rayrelay_workloads.serve.protocol import ProtocolError

TASK = "sentence-embedding"
PATHS = (oa.PATH, oa.PATH + "/")


async def route(gateway: Any, request: Request, path: str) -> tuple[Response, str]:
    """(the answer, the model label for the gateway's metrics) of ``POST /v1/embeddings``.

    Refusals here (no model, unknown model, a body that is no JSON object) get OpenAI's error
    shape like the replica's; the gateway's own answers (401, 503) keep the gateway's."""
    try:
        return await _forward(gateway, request)
    except ProtocolError as exc:
        return ingress.json_response(exc.status, oa.error_body(exc.status, exc.message)), "_none"


async def _forward(gateway: Any, request: Request) -> tuple[Response, str]:
    ingress.require(request.method, "POST")
    body = await ingress.read_body(request, RequestLimits())
    name = oa.model_of(body)
    state = await gateway._state(name)
    await gateway._authorize(request, state)
    info = await gateway._info(state)
    if info.get("task") != TASK:
        raise ProtocolError(400, f"model {name!r} is not a sentence-embedding model; {oa.PATH} needs one")
    handle = await gateway._handle(state)
    with gateway.metrics.held(state.name, state.scaled_to_zero):
        out = await asyncio.wait_for(handle.embeddings.remote(body), ingress.INFER_TIMEOUT_S)
    return ingress.json_response(int(out["status"]), out["body"]), name
