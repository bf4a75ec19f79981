"""The shared HTTP gateway: KServe v2 / v1 endpoints in front of every model application.

Serve gives each application one route prefix, and several ModelDeployments
share one cluster and port, so one application, ``rayrelay-gateway`` at ``/``,
owns the endpoint (KServe v2 and v1 routes, health, metrics) and forwards to
the model application named in the path (``serve.get_app_handle(name)``).
The one exception is the hot path: a model application's route prefix is its
own ``/v2/models/{name}/infer`` (``rayrelay_core.serveconfig``), so Serve's
proxy sends those requests to the model replica directly (``ModelServer.__call__``,
the same parsing and answers as here, from ``ingress.py``) and they never pass
through the gateway. The gateway still answers that path for a model
application deployed without a route (an older config).

The gateway is where client input is judged: it reads each model's limits
from the model (``ModelServer.info``), refuses oversized bodies before reading
them, parses and validates with ``protocol.py``, and only then calls
``ModelServer.predict`` with a list of strings. So a client can get a 4xx and
never a 5xx, and never reach a replica with something it cannot take. 404 is
kept for a name that is no model application (only after a fresh status read
succeeded: a failed read is never a 404). 503 is for a model that exists but
has no ready replica (a model scaled to zero by ``minReplicas: 0`` is not
such a model: its request is held, not refused, while Serve starts a
replica, counted in ``rayrelay_held_requests``), and, with a ``Retry-After`` header, for transient
server-side trouble (a model's queue full, i.e. Serve's ``BackPressureError``,
a replica gone, or no model status read yet). A prediction whose replica died while
answering (``RayActorError``) is sent once more before it becomes such a 503. Metrics:
``metrics.GatewayMetrics`` plus the replicas' series at ``GET /metrics``.

OpenAI's routes (``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings``) name no model in their path, so they land here too and go
to the module the task registry names for them (``tasks.REGISTRY``:
``textgen.openai_gateway``, ``embedding.openai_gateway``), imported on first
use. ``GET /v1/models`` belongs to no one task: ``serve.openai_models`` lists
the models of every task whose entry says it is served on OpenAI's routes.

API keys (``spec.auth``, ``rayrelay_core.apikeys``): every model route here
(metadata, ready, infer, KServe v1, the OpenAI routes) answers 401 unless the
request carries one of the model's keys; health, ``/v2`` and ``/metrics`` stay
open. The gateway holds no key and no setting of its own: it asks the model's
replicas which digests they accept (``ModelServer.key_digests``, the ones Serve
handed them in ``user_config``) and keeps the answer ``KEYS_TTL_S``, so a
rotation reaches the gateway at most that long after the replicas (a model
scaled to zero keeps its last known digests until a new config is deployed:
asking would wake it). A model with no replica at all and no digests known yet
answers 503 (not ready) on every route, key or not: there is nothing to reach.

A raw Starlette handler (no FastAPI) on purpose: routes like
``/v1/models/{name}:predict`` and OIP's error shape are simpler to state by hand
than to bend a framework's validation errors into.

Model status (``serve.status()``) is cached for ``STATUS_TTL_S`` and refreshed
by one read at a time: requests that find it stale keep using the last known
state while the refresh runs, and a failed refresh is logged and leaves that
state in place. Concurrent ``serve.status()`` calls in one process are not
safe: parsing the status builds ``AutoscalingPolicy`` objects, whose
constructor registers and then unregisters a module in cloudpickle's
process-global pickle-by-value set, so two threads doing it at once make one
raise ``ValueError: ... is not registered for pickle by value``. That is how a
request got a 500 under load when every stale request started its own read.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from rayrelay_core.api import RequestLimits
from rayrelay_core.apikeys import KeyCheck
from rayrelay_core.serveconfig import GATEWAY_APP_NAME, GATEWAY_DEPLOYMENT, MODEL_DEPLOYMENT
from rayrelay_workloads.serve import ingress, openai_models, protocol
from rayrelay_workloads.serve.ingress import Unauthorized
from rayrelay_workloads.serve.metrics import EndpointMetrics, merge_expositions
from rayrelay_workloads.serve.protocol import ProtocolError
from rayrelay_workloads.tasks import gateway_module_for

log = logging.getLogger("ray.serve")

_V2_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?P<rest>/ready|/infer)?/?$")
_V1_MODEL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?P<verb>:predict)?/?$")

STATUS_TTL_S = 1.0
KEYS_TTL_S = 1.0  # how long the gateway trusts a model's API key digests before asking again
INFER_TIMEOUT_S = ingress.INFER_TIMEOUT_S
RETRY_AFTER_S = ingress.RETRY_AFTER_S


class Unavailable(Exception):
    """Transient server-side trouble: answered 503 with ``Retry-After``."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


@dataclass
class ModelState:
    name: str
    status: str  # Serve application status: RUNNING, DEPLOYING, DEPLOY_FAILED, UNHEALTHY, ...
    message: str
    deployed_at: float
    running_replicas: int
    # The model deployment's own status (HEALTHY, UPSCALING, DOWNSCALING, ...) and its
    # replicas by state (STARTING, RUNNING, STOPPING, ...), for /metrics.
    deployment_status: str = ""
    replica_states: dict[str, int] = field(default_factory=dict)

    @property
    def scaled_to_zero(self) -> bool:
        """Running with no replica (minReplicas 0, idle): a request starts one and is held."""
        return self.running_replicas == 0 and (
            self.status == "RUNNING" or self.deployment_status == "UPSCALING"
        )

    @property
    def servable(self) -> bool:
        # During a rolling update the app is DEPLOYING while old replicas still serve; a
        # deployment scaled to zero serves too: Serve holds the request while a replica starts.
        return self.running_replicas > 0 or self.scaled_to_zero

    @property
    def ready(self) -> bool:
        return self.status == "RUNNING" and (self.running_replicas > 0 or self.scaled_to_zero)

    def reason(self) -> str:
        detail = f": {self.message}" if self.message else ""
        return f"model {self.name!r} is not ready ({self.status}{detail})"


_json = ingress.json_response
_error = ingress.error_response
_unavailable = ingress.unavailable_response
_transient = ingress.transient
_describe = ingress.describe


@serve.deployment(name=GATEWAY_DEPLOYMENT)
class Gateway:
    def __init__(self, args: dict[str, Any] | None = None) -> None:
        self.args = dict(args or {})
        self.metrics = EndpointMetrics()
        # The model a request resolved to (set by ``_state`` in the request's own context), so
        # that a request that raised afterwards counts under its model, not ``_none``. (Here,
        # not a module global: Serve pickles this class by value, and a ContextVar cannot be.)
        self._resolved_model: contextvars.ContextVar[str] = contextvars.ContextVar("model", default="_none")
        self._status_cache: tuple[float, dict[str, ModelState]] = (0.0, {})
        self._status_known = False  # a status read has succeeded at least once
        self._status_error: str | None = None  # why the latest status read failed
        self._refresh: asyncio.Future[dict[str, ModelState]] | None = None
        # Serve's client API is not thread-safe (see the module docstring) and the
        # gateway calls it from worker threads: one call at a time. (An attribute,
        # not a module global: Serve pickles this class by value.)
        self._serve_api = threading.Lock()
        self._handles: dict[tuple[str, float], Any] = {}
        self._infos: dict[tuple[str, float], dict[str, Any]] = {}
        # model -> (when asked, the model's deployed_at, its key check or None without spec.auth)
        self._keys: dict[str, tuple[float, float, KeyCheck | None]] = {}

    # ------------------------------------------------------------------ model lookup

    def _read_states(self) -> dict[str, ModelState]:
        states: dict[str, ModelState] = {}
        with self._serve_api:
            status = serve.status()
        for name, app in status.applications.items():
            dep = app.deployments.get(MODEL_DEPLOYMENT)
            if name == GATEWAY_APP_NAME or dep is None:
                continue  # not a rayrelay model application: never forward to it
            replicas = {str(getattr(st, "value", st)): int(n) for st, n in dep.replica_states.items()}
            message = app.message or dep.message
            states[name] = ModelState(
                name,
                str(app.status.value),
                message,
                app.last_deployed_time_s,
                replicas.get("RUNNING", 0),
                str(getattr(dep.status, "value", dep.status)),
                replicas,
            )
        return states

    async def _states(self, fresh: bool = False) -> dict[str, ModelState]:
        """Model states: cached, refreshed by at most one read at a time.

        A stale cache starts a refresh (or joins the one running) but is
        returned at once if a read ever succeeded; ``fresh`` waits for that
        refresh. A failed refresh keeps the last known state (see
        ``_refresh_states``); with none known yet it raises ``Unavailable``.
        """
        stamp, states = self._status_cache
        if not fresh and time.monotonic() - stamp <= STATUS_TTL_S:
            return states
        refresh = self._refresh
        if refresh is None or refresh.done():
            refresh = self._refresh = asyncio.ensure_future(self._refresh_states())
        if not fresh and self._status_known:
            return states
        # shield: a caller that gives up must not cancel the read the others wait on.
        return await asyncio.shield(refresh)

    async def _refresh_states(self) -> dict[str, ModelState]:
        try:
            states = await asyncio.to_thread(self._read_states)
        except Exception as exc:
            # Retry after another TTL, not on every request; keep serving meanwhile.
            stamp, cached = self._status_cache
            self._status_cache = (time.monotonic(), cached)
            self._status_error = f"{type(exc).__name__}: {exc}"
            if not self._status_known:
                log.exception("gateway: reading the model status failed (no state known yet)")
                raise Unavailable(
                    f"the model status is not available yet; retry later ({self._status_error})"
                ) from exc
            log.warning(
                "gateway: reading the model status failed; serving with the state read %.1f s ago",
                time.monotonic() - stamp,
                exc_info=True,
            )
            return cached
        self._status_cache = (time.monotonic(), states)
        self.metrics.models_seen(states)  # 5xx series at 0: rate() sees a model's first error
        self._status_known = True
        self._status_error = None
        return states

    async def _state(self, name: str) -> ModelState:
        state = (await self._states()).get(name)
        if state is None:
            # Maybe deployed within the last second: look once more before a 404.
            state = (await self._states(fresh=True)).get(name)
        if state is None and self._status_error is not None:
            # The fresh read failed: the model may exist; do not answer 404.
            raise Unavailable(f"the model status could not be read; retry later ({self._status_error})")
        if state is None:
            raise ProtocolError(404, f"model {name!r} not found")
        self._resolved_model.set(name)  # a known model: its errors from here on count under its name
        return state

    async def _handle(self, state: ModelState) -> Any:
        key = (state.name, state.deployed_at)
        if key not in self._handles:
            self._handles = {k: v for k, v in self._handles.items() if k[0] != state.name}
            self._handles[key] = await asyncio.to_thread(self._get_app_handle, state.name)
        return self._handles[key]

    def _get_app_handle(self, name: str) -> Any:
        with self._serve_api:
            return serve.get_app_handle(name)

    async def _info(self, state: ModelState) -> dict[str, Any]:
        if not state.servable:
            raise ProtocolError(503, state.reason())
        key = (state.name, state.deployed_at)
        if key not in self._infos:
            handle = await self._handle(state)
            # Scaled to zero, this call is held while Serve starts a replica (a cold start).
            with self.metrics.held(state.name, state.scaled_to_zero):
                info = await asyncio.wait_for(handle.info.remote(), INFER_TIMEOUT_S)
            self._infos = {k: v for k, v in self._infos.items() if k[0] != state.name}
            self._infos[key] = info
        return self._infos[key]

    async def _key_check(self, state: ModelState) -> KeyCheck | None:
        """The model's API key check (None: no ``spec.auth``), as its replicas report it."""
        cached = self._keys.get(state.name)
        # Scaled to zero: the last known digests (no config was deployed since); asking would wake it.
        fresh = cached is not None and (
            time.monotonic() - cached[0] <= KEYS_TTL_S or state.running_replicas == 0
        )
        if cached is not None and fresh and cached[1] == state.deployed_at:
            return cached[2]
        if not state.servable:
            # No replica to ask: every route of such a model answers 503 (not ready) anyway.
            return cached[2] if cached is not None else None
        handle = await self._handle(state)
        with self.metrics.held(state.name, state.scaled_to_zero):
            digests = await asyncio.wait_for(handle.key_digests.remote(), INFER_TIMEOUT_S)
        check = None if digests is None else KeyCheck(digests)
        self._keys[state.name] = (time.monotonic(), state.deployed_at, check)
        return check

    async def _authorize(self, request: Request, state: ModelState) -> None:
        """Raise ``Unauthorized`` unless the request carries one of the model's keys (when it has any)."""
        check = await self._key_check(state)
        if check is not None and not check.allows(request.headers.get("authorization")):
            raise Unauthorized

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        path = request.url.path
        protocol_name, model_label = "other", None
        self._resolved_model.set("_none")
        try:
            if path.startswith("/v2"):
                protocol_name = "v2"
            elif path.startswith("/v1"):
                protocol_name = "v1"
            response, model_label = await self._route(request, path)
        except ProtocolError as exc:
            response = _error(exc.status, exc.message)
        except Unauthorized:
            response = ingress.unauthorized_response()
        except Unavailable as exc:  # already logged where it arose
            response = _unavailable(exc.message, exc.retry_after_s)
        except asyncio.TimeoutError:
            response = _error(504, f"the model did not answer within {INFER_TIMEOUT_S:.0f} s")
        except Exception as exc:
            transient = _transient(exc)
            if transient is not None:  # overload or a replica going away: retryable
                log.warning("gateway: %s %s: 503: %s", request.method, path, transient)
                response = _unavailable(_describe(transient), getattr(transient, "retry_after_s", None))
            else:  # a server fault, never a client's: say so, keep serving
                log.exception("gateway: %s %s failed", request.method, path)
                response = _error(500, protocol.INTERNAL_ERROR)
        if path != "/metrics":
            self.metrics.observe(
                model_label or self._resolved_model.get(),
                protocol_name,
                response.status_code,
                time.perf_counter() - start,
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
            await self._authorize(request, state)
            if rest == "/infer":
                self._require(method, "POST")
                return await self._v2_infer(request, state), name
            self._require(method, "GET")
            if rest == "/ready":
                return self._model_ready(state), name
            info = await self._info(state)
            # A replica whose outputs are not labels describes itself (info "metadata").
            metadata = info.get("metadata") or protocol.model_metadata(
                name, info["version"], len(info["labels"])
            )
            return _json(200, metadata), name
        match = _V1_MODEL.match(path)
        if match:
            name = match.group("name")
            state = await self._state(name)
            await self._authorize(request, state)
            if match.group("verb"):
                self._require(method, "POST")
                return await self._v1_predict(request, state), name
            self._require(method, "GET")
            return _json(200, {"name": name, "ready": state.ready}), name
        if path in openai_models.PATHS:  # every task's models that OpenAI's routes serve
            return await openai_models.route(self, request), "_none"
        task_routes = gateway_module_for(path)
        if task_routes is not None:  # a task's routes that name no model (OpenAI's), loaded on use
            return await importlib.import_module(task_routes).route(self, request, path)
        raise ProtocolError(404, f"no such endpoint: {method} {path}")

    _require = staticmethod(ingress.require)

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
        return await ingress.read_body(request, limits)

    async def _predict(self, state: ModelState, texts: list[str]) -> list[protocol.Prediction]:
        """The replica's predictions; sent once more if the replica died while answering.

        A prediction changes nothing, so a second try is safe: Serve's router sends it to
        another replica (or holds it while one starts). A second death is answered 503.
        """
        handle = await self._handle(state)
        deadline = time.monotonic() + INFER_TIMEOUT_S
        with self.metrics.held(state.name, state.scaled_to_zero):
            try:
                first: list[protocol.Prediction] = await asyncio.wait_for(
                    handle.predict.remote(texts), INFER_TIMEOUT_S
                )
                return first
            except ingress.REPLICA_GONE as exc:
                log.warning("gateway: %s: %s; sending it again", state.name, _describe(exc))
            again: list[protocol.Prediction] = await asyncio.wait_for(
                handle.predict.remote(texts), max(0.1, deadline - time.monotonic())
            )
            return again

    @staticmethod
    def _require_classifier(state: ModelState, info: dict[str, Any]) -> None:
        """A text-generation model answers generate and /v1/completions, not label predictions."""
        task = info.get("task", "sequence-classification")
        if task != "sequence-classification":
            routes = info.get("routes") or f"/v2/models/{state.name}/generate or /v1/completions"
            raise ProtocolError(400, f"{state.name} is a {task} model: use {routes}")

    async def _v2_infer(self, request: Request, state: ModelState) -> Response:
        info = await self._info(state)
        self._require_classifier(state, info)
        limits = RequestLimits.model_validate(info["limits"])
        body = await self._read_body(request, limits)
        req = protocol.parse_v2_infer(body, limits, request.headers.get("inference-header-content-length"))
        self.metrics.texts.labels(state.name, "v2").observe(len(req.texts))
        predictions = await self._predict(state, req.texts)
        return _json(200, protocol.v2_response(state.name, info["version"], req, predictions, info["labels"]))

    async def _v1_predict(self, request: Request, state: ModelState) -> Response:
        info = await self._info(state)
        self._require_classifier(state, info)
        limits = RequestLimits.model_validate(info["limits"])
        body = await self._read_body(request, limits)
        texts = protocol.parse_v1_predict(body, limits)
        self.metrics.texts.labels(state.name, "v1").observe(len(texts))
        predictions = await self._predict(state, texts)
        return _json(200, protocol.v1_response(predictions, info["labels"]))

    async def _metrics(self) -> Response:
        """The gateway's series, replicas by state, ongoing requests per replica, and the replicas' own."""
        from prometheus_client import generate_latest

        try:
            # Fresh: a stale state could show a replica that scaled to zero since, and calling
            # it for its series would start one.
            states = await self._states(fresh=True)
        except Unavailable:  # logged; the gateway's own series still answer
            states = {}
        self.metrics.set_replicas({s.name: s.replica_states for s in states.values()})
        ongoing = await asyncio.to_thread(replica_ongoing_requests, sorted(states))
        self.metrics.set_ongoing(ongoing)
        texts = [generate_latest(self.metrics.registry).decode()]
        for state in states.values():
            if state.running_replicas == 0:
                continue  # nothing to report, and a call would wake a model scaled to zero
            try:
                handle = await self._handle(state)
                texts.append(await asyncio.wait_for(handle.metrics_text.remote(), 5.0))
            except Exception as exc:  # one model's metrics must not hide the others'
                log.warning("gateway: no metrics from %s: %s", state.name, exc)
        return Response(merge_expositions(texts), media_type="text/plain; version=0.0.4")


def replica_ongoing_requests(models: list[str], timeout_s: float = 2.0) -> dict[str, dict[str, int]]:
    """Ongoing requests (in flight and queued) of every replica of ``models``: {model: {replica: n}}.

    Asked of each replica actor (Serve names them ``SERVE_REPLICA::{app}#ModelServer#{id}`` in
    the ``serve`` namespace) with ``get_num_ongoing_requests``, the count Serve's own router and
    autoscaler use; it runs in the replica's control thread, so a busy model does not delay it.
    A handle call would reach one replica only. Replicas that do not answer in time are left out.
    """
    import ray

    wanted = set(models)
    actors: list[tuple[str, str, Any]] = []
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception as exc:  # the series are best effort; the scrape still answers
        log.warning("gateway: cannot list replicas for /metrics: %s", exc)
        return {}
    for entry in named:
        name, namespace = entry.get("name", ""), entry.get("namespace", "")
        parts = name.removeprefix(_REPLICA_PREFIX).split("#")
        if namespace != "serve" or not name.startswith(_REPLICA_PREFIX) or len(parts) != 3:
            continue
        app, deployment, replica = parts
        if app in wanted and deployment == MODEL_DEPLOYMENT:
            try:
                actors.append((app, replica, ray.get_actor(name, namespace="serve")))
            except ValueError:  # stopped meanwhile
                continue
    out: dict[str, dict[str, int]] = {m: {} for m in wanted}
    refs = [actor.get_num_ongoing_requests.remote() for _, _, actor in actors]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    done = set(ready)
    for (app, replica, _), ref in zip(actors, refs, strict=True):
        if ref in done:
            try:
                out[app][replica] = int(ray.get(ref))
            except Exception:  # the replica died between the list and the call
                continue
    return out


_REPLICA_PREFIX = "SERVE_REPLICA::"
