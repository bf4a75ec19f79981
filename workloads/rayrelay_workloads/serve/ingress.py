"""HTTP pieces shared by the two ingresses: the gateway and a model replica's own route.

A request reaches a model in one of two ways (``rayrelay_core.serveconfig``):
``POST /v2/models/{name}/infer`` goes from Serve's proxy straight to the model
application, whose route prefix is exactly that path (one hop, the hot path);
everything else (health, metadata, readiness, KServe v1, ``/metrics``, and any
model named in a path whose application has no route) goes to the shared
gateway (``gateway.py``), which calls the model through a handle. Both answer
with the same bodies, statuses and error mapping, so they take them from here:
the JSON and error responses, the bounded body read, and the classification of
Serve's transient errors (503 with ``Retry-After``) against real faults (500).
A replica that died while answering (``RayActorError``: SIGKILLed, its node
gone, out of memory) is transient too: Serve starts another one, and the
request can be sent again (the gateway does that once itself, ``REPLICA_GONE``).
With ``spec.auth`` both check the API key the same way too (:func:`unauthorized`:
401 with ``WWW-Authenticate: Bearer``, a body that names no key), before a body is read.
"""

from __future__ import annotations

import math
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse

from rayrelay_core.api import RequestLimits
from rayrelay_core.apikeys import UNAUTHORIZED_MESSAGE, WWW_AUTHENTICATE, KeyCheck
from rayrelay_workloads.serve import protocol
from rayrelay_workloads.serve.protocol import ProtocolError

INFER_TIMEOUT_S = 60.0
RETRY_AFTER_S = 1

# A replica's actor died or cannot be reached (ActorDiedError, ActorUnavailableError).
REPLICA_GONE = (RayActorError,)
# Serve errors that mean "the model cannot take this request right now", not a fault.
TRANSIENT = (BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError, *REPLICA_GONE)


def json_response(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def error_response(status: int, message: str) -> JSONResponse:
    return json_response(status, protocol.error_body(message))


class Unauthorized(Exception):
    """A model request without a valid API key: answered 401 (:func:`unauthorized_response`)."""


def unauthorized_response() -> JSONResponse:
    """401 for a model request without a valid API key: the same for every such request."""
    response = error_response(401, UNAUTHORIZED_MESSAGE)
    response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def unauthorized(check: KeyCheck | None, request: Request) -> JSONResponse | None:
    """The 401 to answer when ``check`` (None: no ``spec.auth``) refuses the request's key, else None.

    The header is neither logged nor echoed; ``KeyCheck.allows`` compares in constant time."""
    if check is None or check.allows(request.headers.get("authorization")):
        return None
    return unauthorized_response()


def unavailable_response(
    message: str, retry_after_s: float | None = None, body: dict[str, Any] | None = None
) -> JSONResponse:
    """503 with ``Retry-After``; ``body`` replaces the usual error body (OpenAI's shape, say)."""
    response = error_response(503, message) if body is None else json_response(503, body)
    response.headers["Retry-After"] = str(max(1, math.ceil(retry_after_s or RETRY_AFTER_S)))
    return response


def transient(exc: BaseException) -> BaseException | None:
    """The Serve overload/unavailability error in ``exc`` (or its causes), if any."""
    seen: BaseException | None = exc
    for _ in range(4):  # a RayTaskError may wrap it; do not loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, TRANSIENT):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, BackPressureError):
        return f"the model is overloaded (its request queue is full); retry later: {exc}"
    if isinstance(exc, REPLICA_GONE):
        # Ray's text of a dead actor runs to many lines (its pid, node, exit detail): the first.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"a replica of the model stopped while answering; retry later: {first}"
    message = getattr(exc, "message", None) or str(exc)
    return f"the model is temporarily unavailable; retry later: {message}"


def require(method: str, wanted: str) -> None:
    if method != wanted:
        raise ProtocolError(405, f"method {method} not allowed here; use {wanted}")


async def read_body(request: Request, limits: RequestLimits) -> bytes:
    """The body, refused (413) as soon as it is known to pass ``limits.maxBodyBytes``."""
    protocol.check_content_length(request.headers.get("content-length"), limits)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            # Stop reading: a client must not make the server buffer an unbounded body.
            raise ProtocolError(413, f"request body is over {limits.max_body_bytes} bytes (the limit)")
        chunks.append(chunk)
    return b"".join(chunks)


def full_path(request: Request) -> str:
    """The request's path as the client sent it, whichever way Serve split off the route prefix."""
    scope = request.scope
    path = str(scope.get("path") or "/")
    root = str(scope.get("root_path") or "")
    if root and not path.startswith(root):
        path = root.rstrip("/") + path
    return path
