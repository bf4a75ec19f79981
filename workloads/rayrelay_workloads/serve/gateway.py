"""The shared HTTP gateway: KServe v2 / v1 endpoints in front of every model application.

Serve gives each application one route prefix, and several ModelDeployments
share one cluster and port, so one application, ``rayrelay-gateway`` at ``/``,
owns the whole endpoint contract of DESIGN.md and forwards to the model
application named in the path (``serve.get_app_handle(name)``; the model
applications have no route of their own, see ``rayrelay_core.serveconfig``).

The gateway is where client input is judged: it reads each model's limits
from the model (``ModelServer.info``), refuses oversized bodies before reading
them, parses and validates with ``protocol.py``, and only then calls
``ModelServer.predict`` with a list of strings. So a client can get a 4xx and
never a 5xx, and never reach a replica with something it cannot take. 503 is
kept for a model that exists but has no ready replica; 404 for a name that is
no model application. Metrics: ``metrics.GatewayMetrics`` plus the replicas'
series at ``GET /metrics``.

A raw Starlette handler (no FastAPI) on purpose: routes like
``/v1/models/{name}:predict`` and OIP's error shape are simpler to state by hand
than to bend a framework's validation errors into.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rayrelay_core.api import RequestLimits
from rayrelay_core.serveconfig import GATEWAY_APP_NAME, GATEWAY_DEPLOYMENT, MODEL_DEPLOYMENT
from rayrelay_workloads.serve import protocol
from rayrelay_workloads.serve.metrics import GatewayMetrics, merge_expositions
from rayrelay_workloads.serve.protocol import ProtocolError

log = logging.getLogger("ray.serve")

_V2_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?P<rest>/ready|/infer)?/?$")
_V1_MODEL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?P<verb>:predict)?/?$")

STATUS_TTL_S = 1.0
INFER_TIMEOUT_S = 60.0


@dataclass
class ModelState:
    name: str
    status: str  # Serve application status: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...
    message: str
    deployed_at: float
    running_replicas: int

    @property
    def servable(self) -> bool:
        # During a rolling update the app is DEPLOYING while old replicas still serve.
        return self.running_replicas > 0

    @property
    def ready(self) -> bool:
        return self.status == "RUNNING" and self.running_replicas > 0

    def reason(self) -> str:
        detail = f": {self.message}" if self.message else ""
        return f"model {self.name!r} is not ready ({self.status}{detail})"


def _json(status: int, body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, status_code=status)


def _error(status: int, message: str) -> JSONResponse:
    return _json(status, protocol.error_body(message))


@serve.deployment(name=GATEWAY_DEPLOYMENT)
class Gateway:
    def __init__(self, args: dict[str, Any] | None = None) -> None:
        self.args = dict(args or {})
        self.metrics = GatewayMetrics()
        self._status_cache: tuple[float, dict[str, ModelState]] = (0.0, {})
        self._handles: dict[tuple[str, float], Any] = {}
        self._infos: dict[tuple[str, float], dict[str, Any]] = {}

    # ------------------------------------------------------------------ model lookup

    def _read_states(self) -> dict[str, ModelState]:
        states: dict[str, ModelState] = {}
        for name, app in serve.status().applications.items():
            dep = app.deployments.get(MODEL_DEPLOYMENT)
            if name == GATEWAY_APP_NAME or dep is None:
                continue  # not a rayrelay model application: never forward to it
            running = sum(n for st, n in dep.replica_states.items() if getattr(st, "value", st) == "RUNNING")
            message = app.message or dep.message
            states[name] = ModelState(name, str(app.status.value), message, app.last_deployed_time_s, running)
        return states

    async def _states(self, fresh: bool = False) -> dict[str, ModelState]:
        stamp, states = self._status_cache
        if fresh or time.monotonic() - stamp > STATUS_TTL_S:
            states = await asyncio.to_thread(self._read_states)
            self._status_cache = (time.monotonic(), states)
        return states

    async def _state(self, name: str) -> ModelState:
        state = (await self._states()).get(name)
        if state is None:
            # Maybe deployed within the last second: look once more before a 404.
            state = (await self._states(fresh=True)).get(name)
        if state is None:
            raise ProtocolError(404, f"model {name!r} not found")
        return state

    async def _handle(self, state: ModelState) -> Any:
        key = (state.name, state.deployed_at)
        if key not in self._handles:
            self._handles = {k: v for k, v in self._handles.items() if k[0] != state.name}
            self._handles[key] = await asyncio.to_thread(serve.get_app_handle, state.name)
        return self._handles[key]

    async def _info(self, state: ModelState) -> dict[str, Any]:
        if not state.servable:
            raise ProtocolError(503, state.reason())
        key = (state.name, state.deployed_at)
        if key not in self._infos:
            handle = await self._handle(state)
            info = await asyncio.wait_for(handle.info.remote(), INFER_TIMEOUT_S)
            self._infos = {k: v for k, v in self._infos.items() if k[0] != state.name}
            self._infos[key] = info
        return self._infos[key]

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        path = request.url.path
        protocol_name, model_label = "other", "_none"
        try:
            if path.startswith("/v2"):
                protocol_name = "v2"
            elif path.startswith("/v1"):
                protocol_name = "v1"
            response, model_label = await self._route(request, path)
        except ProtocolError as exc:
            response = _error(exc.status, exc.message)
        except asyncio.TimeoutError:
            response = _error(504, f"the model did not answer within {INFER_TIMEOUT_S:.0f} s")
        except Exception as exc:  # a server fault, never a client's: say so, keep serving
            log.exception("gateway: %s %s failed", request.method, path)
            response = _error(500, f"internal error: {type(exc).__name__}: {exc}")
        if path != "/metrics":
            self.metrics.observe(
                model_label, protocol_name, response.status_code, time.perf_counter() - start
            )
        return response

    async def _route(self, request: Request, path: str) -> tuple[Response, str]:
        method = request.method
        if path == "/v2/health/live":
            return _json(200, {"live": True}), "_none"
        if path == "/v2/health/ready":
            return await self._server_ready(), "_none"
        if path in ("/v2", "/v2/"):
            return _json(200, {"name": "rayrelay", "version": "v1alpha1", "extensions": []}), "_none"
        if path == "/metrics":
            return await self._metrics(), "_none"
        match = _V2_MODEL.match(path)
        if match:
            name, rest = match.group("name"), match.group("rest") or ""
            state = await self._state(name)
            if rest == "/infer":
                self._require(method, "POST")
                return await self._v2_infer(request, state), name
            self._require(method, "GET")
            if rest == "/ready":
                return self._model_ready(state), name
            info = await self._info(state)
            return _json(200, protocol.model_metadata(name, info["version"], len(info["labels"]))), name
        match = _V1_MODEL.match(path)
        if match:
            name = match.group("name")
            state = await self._state(name)
            if match.group("verb"):
                self._require(method, "POST")
                return await self._v1_predict(request, state), name
            self._require(method, "GET")
            return _json(200, {"name": name, "ready": state.ready}), name
        raise ProtocolError(404, f"no such endpoint: {method} {path}")

    @staticmethod
    def _require(method: str, wanted: str) -> None:
        if method != wanted:
            raise ProtocolError(405, f"method {method} not allowed here; use {wanted}")

    async def _server_ready(self) -> Response:
        states = await self._states(fresh=True)
        if not states:
            return _json(503, {"ready": False, "error": "no model is deployed"})
        not_ready = [s.reason() for s in states.values() if not s.ready]
        if not_ready:
            return _json(503, {"ready": False, "error": "; ".join(not_ready)})
        return _json(200, {"ready": True})

    @staticmethod
    def _model_ready(state: ModelState) -> Response:
        if state.ready:
            return _json(200, {"name": state.name, "ready": True})
        return _json(503, {"name": state.name, "ready": False, "error": state.reason()})

    async def _read_body(self, request: Request, limits: RequestLimits) -> bytes:
        protocol.check_content_length(request.headers.get("content-length"), limits)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                # Stop reading: a client must not make the gateway buffer an unbounded body.
                raise ProtocolError(413, f"request body is over {limits.max_body_bytes} bytes (the limit)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _predict(self, state: ModelState, texts: list[str]) -> list[protocol.Prediction]:
        handle = await self._handle(state)
        result: list[protocol.Prediction] = await asyncio.wait_for(
            handle.predict.remote(texts), INFER_TIMEOUT_S
        )
        return result

    async def _v2_infer(self, request: Request, state: ModelState) -> Response:
        info = await self._info(state)
        limits = RequestLimits.model_validate(info["limits"])
        body = await self._read_body(request, limits)
        req = protocol.parse_v2_infer(body, limits, request.headers.get("inference-header-content-length"))
        self.metrics.texts.labels(state.name, "v2").observe(len(req.texts))
        predictions = await self._predict(state, req.texts)
        return _json(200, protocol.v2_response(state.name, info["version"], req, predictions, info["labels"]))

    async def _v1_predict(self, request: Request, state: ModelState) -> Response:
        info = await self._info(state)
        limits = RequestLimits.model_validate(info["limits"])
        body = await self._read_body(request, limits)
        texts = protocol.parse_v1_predict(body, limits)
        self.metrics.texts.labels(state.name, "v1").observe(len(texts))
        predictions = await self._predict(state, texts)
        return _json(200, protocol.v1_response(predictions, info["labels"]))

    async def _metrics(self) -> Response:
        from prometheus_client import generate_latest

        texts = [generate_latest(self.metrics.registry).decode()]
        for state in (await self._states()).values():
            if not state.servable:
                continue
            try:
                handle = await self._handle(state)
                texts.append(await asyncio.wait_for(handle.metrics_text.remote(), 5.0))
            except Exception as exc:  # one model's metrics must not hide the others'
                log.warning("gateway: no metrics from %s: %s", state.name, exc)
        return Response(merge_expositions(texts), media_type="text/plain; version=0.0.4")
