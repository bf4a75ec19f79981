"""Serving a text-generation artifact set: the replica, its decoding engine, the OpenAI route.

A ModelDeployment whose manifest says ``task: text-generation`` gets the Serve
application ``serve.app.model_app`` builds with :class:`TextGenServer` (args
``task``, from ``rayrelay_core.runs.serve_app_args``), under the deployment name
``ModelServer`` (what the gateway looks for), with the route prefix
``/v2/models/{name}`` (``rayrelay_core.serveconfig``): Serve's proxy hands every
``/v2/models/{name}/...`` request straight to the replica (one hop, which
matters for streaming), and :meth:`TextGenServer.__call__` answers

- ``GET /v2/models/{name}`` and ``/ready``: metadata and readiness;
- ``POST .../generate``: OIP generate, the whole text at once;
- ``POST .../generate_stream``: server-sent events, one per token, each sent
  as soon as its token is chosen (before the next one is computed);
- ``POST .../infer``: OIP infer with a BYTES ``text_input`` tensor of one
  prompt, answered greedily with a BYTES ``text_output`` (what ``rayrelay run``'s
  smoke request and stock OIP clients send).

``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI) name the
model in their body, so the shared gateway receives them
(``textgen.openai_gateway``; ``GET /v1/models`` is ``serve.openai_models``) and
forwards the body by handle to the replica's :meth:`TextGenServer.complete` or
:meth:`TextGenServer.complete_stream`, with the route's kind (``openai_api``
parses chat requests, applies the chat template and builds both routes' answers).

With ``spec.auth`` every one of these routes asks for an API key
(``Authorization: Bearer``, ``rayrelay_core.apikeys``): the replica checks its
own routes with the digests ``reconfigure`` brings, and the gateway checks the
OpenAI routes with the digests the replica reports (``key_digests``).

Requests decode together (``textgen.batching``): one decode loop per replica,
on its own thread, where a request joins the running batch at the next step
and leaves it when it ends (EOS, a stop sequence, ``max_tokens``, or its client
gone: the generator's ``finally`` cancels its row); each keeps its own sampling
parameters and seed, and each token is posted to the request's event loop as
soon as it is chosen. ``spec.generation``'s ``maxBatchSize`` and
``maxCachedTokens`` bound the batch; beyond them requests wait in the queue, and
beyond ``maxQueuedRequests`` waiting a request gets 429.

Metrics (``serve.metrics.GenerationMetrics``, merged into the gateway's ``/metrics``
through :meth:`TextGenServer.metrics_text`): prompt and generated tokens, time to first
token and time per output token (timed on the decode thread, ``batching.Row``), the
batch's running and queued requests, and the requests of the replica's own routes.

Limits (``spec.generation``, defaults when omitted): ``maxPromptTokens``,
``maxNewTokens``, ``maxStopSequences``; the prompt's characters (a chat's
message contents together) are bounded by ``spec.limits.maxTextChars`` and the
body by ``maxBodyBytes``. Beyond any of them a request gets a 4xx naming the
limit, and so does any body that is not a request (bad JSON, nesting too deep,
a lone surrogate): no body makes a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rayrelay_core.api import GenerationLimits, ModelDeploymentSpec
from rayrelay_core.apikeys import KeyCheck, key_check
from rayrelay_workloads.serve import ingress
from rayrelay_workloads.serve.metrics import GenerationMetrics
from rayrelay_workloads.serve.protocol import ProtocolError, show
from rayrelay_workloads.textgen import openai_api as oa
from rayrelay_workloads.textgen import protocol as gp
from rayrelay_workloads.textgen.batching import Caps, Piece, QueueFull, Row, Scheduler, batch_for
from rayrelay_workloads.textgen.decoding import Sampling, TextStream, onnx_decoder
from rayrelay_workloads.textgen.tokenizer import light_text_tokenizer

log = logging.getLogger("ray.serve")

# When this module was imported in the replica process (the cold-start breakdown).
MODULE_IMPORTED_AT = time.time()

TASK = "text-generation"
# While several streams decode together, each sends what is ready at most this often (its
# first token and its last at once); a stream decoding alone sends each token as it comes.
STREAM_FLUSH_S = 0.02
WARMUP_PROMPT = "rayrelay warm-up"
INFER_MAX_TOKENS = 16
_V2 = re.compile(r"^/v2/models/(?P<name>[^/]+)(?P<rest>/ready|/infer|/generate|/generate_stream)?/?$")


class StopMatcher:
    """Holds back text that may be the start of a stop sequence; cuts at a complete one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop sequence was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class TextGenEngine:
    """Tokenise, check the limits, decode with the ONNX decoder, detokenise: no Serve, no HTTP."""

    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        eos_id: int | None,
        context: int,
        limits: GenerationLimits,
        max_chars: int,
    ) -> None:
        self.tokenizer = tokenizer
        # The decode thread detokenises while the event loop tokenises the next prompts; a fast
        # tokenizer's settings (split_special_tokens, truncation) are mutable Rust state that two
        # threads must not touch at once ("Already borrowed").
        self.tokenizer_lock = threading.Lock()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
        self.decoder = onnx_decoder(session, int(pad))
        self.eos_id = eos_id
        self.context = context
        self.limits = limits
        self.max_chars = max_chars

    def prompt_ids(self, req: gp.GenerationRequest) -> list[int]:
        with self.tokenizer_lock:
            ids: list[int] = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ProtocolError(400, "the prompt has no tokens")
        gp.check_prompt_tokens(len(ids), self.limits, self.context, req.max_tokens)
        return ids

    def chat_ids(self, chat: oa.ChatRequest) -> tuple[gp.GenerationRequest, list[int]]:
        """The messages as prompt token ids: the tokenizer's chat template, else the plain one.

        With the plain template, generation also stops at ``oa.PLAIN_STOP``; a ``max_tokens``
        the client left out shrinks to the context the prompt leaves (at least 1)."""
        req = chat.request
        with self.tokenizer_lock:
            if getattr(self.tokenizer, "chat_template", None):
                ids = oa.template_ids(self.tokenizer, chat.messages)
            else:
                encoded = self.tokenizer(req.prompt, add_special_tokens=False, split_special_tokens=True)
                ids = list(encoded["input_ids"])
                req = replace(req, stop=[*req.stop, oa.PLAIN_STOP])
        if not ids:
            raise ProtocolError(400, "the messages make a prompt of no tokens")
        if not chat.explicit_max_tokens:
            req = replace(req, max_tokens=max(1, min(req.max_tokens, self.context - len(ids))))
        gp.check_prompt_tokens(len(ids), self.limits, self.context, req.max_tokens)
        return req, ids

    def row(
        self, req: gp.GenerationRequest, ids: list[int], emit: Callable[[Piece | BaseException], None]
    ) -> Row:
        """The request as a row of the decode batch: its sampling, and a piece per chosen token."""
        sampling = Sampling(req.max_tokens, req.temperature, req.top_p, req.seed)
        text, stops = TextStream(self.tokenizer), StopMatcher(req.stop)
        produced = 0

        def turn(token: int) -> Piece:
            nonlocal produced
            produced += 1
            if self.eos_id is not None and token == self.eos_id:
                return Piece(token, stops.flush(), "stop")
            with self.tokenizer_lock:
                new = text.push(token)
            out, stopped = stops.feed(new)
            if stopped:
                return Piece(token, out, "stop")
            if produced >= req.max_tokens:
                return Piece(token, out + stops.flush(), "length")
            return Piece(token, out)

        return Row(ids, sampling, turn, emit)

    def pieces(self, req: gp.GenerationRequest, ids: list[int]) -> Iterator[Piece]:
        """One request alone, on the calling thread: each token as it is chosen (warm-up, tests)."""
        out: list[Piece | BaseException] = []
        batch = batch_for(self.decoder)
        batch.join([self.row(req, ids, out.append)])
        while True:
            for item in out:
                assert isinstance(item, Piece)
                yield item
            out.clear()
            if not batch.rows:
                return
            batch.step()

    def scheduler(self) -> Scheduler:
        """The replica's decode loop under ``spec.generation``'s caps."""
        caps = Caps(
            self.limits.max_batch_size, self.limits.max_cached_tokens, self.limits.max_queued_requests
        )
        return Scheduler(self.decoder, caps)


def load_text_tokenizer(folder: Any) -> Any:
    """The set's tokenizer: the light one where it writes what transformers writes, else transformers'.

    Importing transformers took most of a text-generation replica's own start
    (``textgen.tokenizer``; docs/textgen.md, "Cold start")."""
    light = light_text_tokenizer(folder)
    if light is not None:
        return light
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


class LoopPost:
    """Hands pieces from the decode thread to one event loop: one wake-up per burst, not per piece.

    A decode step emits one piece per row; the first piece of a burst schedules one
    ``_flush`` on the loop, and every piece posted before it runs (the step's other rows,
    or later steps while the loop is busy) rides along, so a step of eight streams costs
    the loop one wake-up instead of eight."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: _POSTS keys on the loop, and a strong reference here would keep every loop.
        self.loop = weakref.ref(loop)
        self.lock = threading.Lock()
        self.pending: list[tuple[asyncio.Queue[Any], Any]] = []

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        with self.lock:
            first = not self.pending
            self.pending.append((queue, item))
        loop = self.loop()
        if first and loop is not None:
            # A closed loop (RuntimeError): its requests are gone, and their generators
            # cancelled their rows.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        for queue, item in items:
            queue.put_nowait(item)


_POSTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopPost] = weakref.WeakKeyDictionary()


def loop_post(loop: asyncio.AbstractEventLoop) -> LoopPost:
    """The :class:`LoopPost` of ``loop`` (one per loop: Serve runs a replica's requests on one)."""
    post = _POSTS.get(loop)
    if post is None:
        post = _POSTS[loop] = LoopPost(loop)
    return post


def drain(queue: asyncio.Queue[Any], first: Any) -> list[Any]:
    """``first`` and whatever else the queue holds now: the pieces a slow reader fell behind by."""
    items = [first]
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


@serve.deployment(name="ModelServer")
class TextGenServer:
    def __init__(self, args: dict[str, Any]) -> None:
        started_at, t0 = time.time(), time.perf_counter()
        timings: dict[str, float] = {}  # where the start goes: info()["coldStart"]
        import onnxruntime  # noqa: F401 - imported first, so its cost stays in prepare_s (docs/textgen.md)

        from rayrelay_workloads.serve.model import cold_start_record

        self.name: str = args["name"]
        self.spec = ModelDeploymentSpec.model_validate(args["spec"])
        # spec.auth: every request is refused until reconfigure() brings the digests (fail closed).
        self.keys: KeyCheck | None = key_check(self.spec.auth is not None, None)
        self._key_digests: list[str] | None = None if self.keys is None else []
        self._fetch(args, timings)
        timings["prepare_s"] = time.perf_counter() - t0
        generation = self.artifacts.manifest.generation or {}
        t_tok = time.perf_counter()
        tokenizer = load_text_tokenizer(self.artifacts.tokenizer_dir)
        timings["tokenizer_s"] = time.perf_counter() - t_tok
        t_session = time.perf_counter()
        session = self._session()
        timings["session_s"] = time.perf_counter() - t_session
        self.limits = self.spec.generation or GenerationLimits()
        self.engine = TextGenEngine(
            session,
            tokenizer,
            generation.get("eosTokenId", tokenizer.eos_token_id),
            int(generation.get("contextLength") or 1024),
            self.limits,
            self.spec.limits.max_text_chars,
        )
        self.scheduler = self.engine.scheduler()
        self.requests = 0
        self.tokens = 0
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (unit use): one process, one label
            replica = str(os.getpid())
        self.metrics = GenerationMetrics(self.name, replica)
        t_warm = time.perf_counter()
        warm = list(
            self.engine.pieces(
                gp.GenerationRequest(WARMUP_PROMPT, 2),
                self.engine.prompt_ids(gp.GenerationRequest(WARMUP_PROMPT, 2)),
            )
        )
        if not warm:
            raise RuntimeError("warm-up generation produced nothing")
        timings["warmup_s"] = time.perf_counter() - t_warm
        self.cold_start = cold_start_record(started_at, MODULE_IMPORTED_AT, timings, time.perf_counter() - t0)
        self.cold_start["tokenizer"] = type(tokenizer).__name__
        self.ready = True
        log.info(
            "%s ready: text-generation, %s variant %s; cold start %s",
            self.name,
            self.version,
            self.artifacts.variant,
            self.cold_start,
        )

    def _fetch(self, args: dict[str, Any], timings: dict[str, float]) -> None:
        """The artifact set, fetched and verified (``serve.artifacts.prepare``); it must be this task's."""
        from rayrelay_workloads.serve.artifacts import prepare

        self.artifacts = prepare(
            args["manifestUri"],
            variant=args.get("variant") or "auto",
            cache_dir=args.get("cacheDir"),
            endpoint_url=args.get("endpointUrl") or self.spec.artifacts.endpoint_url,
            expected_digest=args.get("digest"),
            timings=timings,
        )
        manifest = self.artifacts.manifest
        if manifest.task != TASK:
            raise RuntimeError(f"{args['manifestUri']} is a {manifest.task} artifact set, not {TASK}")

    def _session(self) -> Any:
        """The decoder's onnxruntime session, with ``spec.runtime``'s threads and no spinning."""
        import onnxruntime as ort

        from rayrelay_workloads.serve.model import session_threads

        options = ort.SessionOptions()
        runtime = self.spec.runtime
        intra, inter = session_threads(
            runtime.intra_op_threads, runtime.inter_op_threads, self.spec.resources.cpus
        )
        options.intra_op_num_threads, options.inter_op_num_threads = intra, inter
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(
            str(self.artifacts.model_path), options, providers=["CPUExecutionProvider"]
        )

    @property
    def version(self) -> str:
        return self.artifacts.digest[:12]

    def check_health(self) -> None:
        if not getattr(self, "ready", False):
            raise RuntimeError("model not loaded")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """API key digests change in place; ``spec.batching`` does not apply (``spec.generation`` caps the batch)."""
        from rayrelay_workloads.serve.model import set_keys

        set_keys(self, user_config)

    def key_digests(self) -> list[str] | None:
        """The API key digests this replica accepts (None: no ``spec.auth``), for the gateway."""
        return self._key_digests

    # ------------------------------------------------------------------ generation

    def _room(self) -> None:
        """429 before anything is sent when the queue is full (a stream's status is still open)."""
        try:
            self.scheduler.check_room()
        except QueueFull as exc:
            raise ProtocolError(429, str(exc)) from None

    async def _pieces(self, req: gp.GenerationRequest, ids: list[int]) -> AsyncIterator[list[Piece]]:
        """The request's pieces from the decode loop, as they come; leaving early (client gone) frees its row.

        Each item is every piece ready now: one while the reader keeps up and the row decodes
        alone (each token goes out as soon as it is chosen), several when the reader fell
        behind the decode loop or, while other rows share the batch, what the last
        :data:`STREAM_FLUSH_S` made: they go out together (one chunk, one Serve message)
        instead of one message per token.
        The row is queued here, on the first iteration, not before: a response whose body never
        starts (its client left at once) then never holds a place in the batch."""
        post = loop_post(asyncio.get_running_loop())
        queue: asyncio.Queue[Piece | BaseException] = asyncio.Queue()
        row = self.engine.row(req, ids, lambda item: post.post(queue, item))
        self.requests += 1
        self.scheduler.submit(row)
        self.metrics.prompt_tokens.inc(len(ids))
        sent_at: float | None = None
        try:
            while True:
                first = await queue.get()
                if sent_at is not None and isinstance(first, Piece) and first.finish_reason is None:
                    # Several streams decode together: this one sends at most every
                    # STREAM_FLUSH_S, with every token ready by then (fewer messages through
                    # Serve, which cost more CPU per token than the step). Alone, at once.
                    wait = STREAM_FLUSH_S - (time.monotonic() - sent_at)
                    if wait > 0 and self.scheduler.running() > 1:
                        await asyncio.sleep(wait)
                ready: list[Piece] = []
                for item in drain(queue, first):
                    if isinstance(item, BaseException):
                        raise RuntimeError("text generation failed") from item
                    ready.append(item)
                    if item.finish_reason is not None:
                        break
                self.tokens += len(ready)
                self.metrics.tokens.inc(len(ready))
                if sent_at is None:  # the first token: times taken on the decode thread
                    self.metrics.first_token(row.queued_at, row.first_at)
                if ready[-1].finish_reason is not None:  # the row is done: its times are final
                    self.metrics.finished(row.produced, row.first_at, row.last_at)
                yield ready
                sent_at = time.monotonic()
                if ready[-1].finish_reason is not None:
                    return
        finally:
            self.scheduler.cancel(row)

    async def _collect(self, req: gp.GenerationRequest, ids: list[int]) -> tuple[str, list[int], str]:
        text, tokens, finish = [], [], "length"
        async for ready in self._pieces(req, ids):
            for piece in ready:
                text.append(piece.text)
                if piece.token is not None:
                    tokens.append(piece.token)
                finish = piece.finish_reason or finish
        return "".join(text), tokens, finish

    def _oip_event(self, piece: Piece) -> bytes:
        event: dict[str, Any] = {
            "model_name": self.name,
            "model_version": self.version,
            "text_output": piece.text,
            "token_id": piece.token,
        }
        if piece.finish_reason:
            event["finish_reason"] = piece.finish_reason
        return gp.sse(event)

    async def _oip_stream(self, req: gp.GenerationRequest, ids: list[int]) -> AsyncIterator[bytes]:
        # One event per token as before; the events ready together leave as one chunk.
        async for ready in self._pieces(req, ids):
            yield b"".join(self._oip_event(piece) for piece in ready)

    # ------------------------------------------------------------------ HTTP (one hop)

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await self._route(request)
        except ProtocolError as exc:
            response = ingress.error_response(exc.status, exc.message)
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.url.path)
            response = ingress.error_response(500, "internal error; the server log has the details")
        # A stream counts when its response starts (its status is sent then), not when it ends.
        self.metrics.http.observe(self.name, "v2", response.status_code, time.perf_counter() - start)
        return response

    async def _route(self, request: Request) -> Response:
        path = ingress.full_path(request)
        match = _V2.match(path)
        if match is None or match.group("name") != self.name:
            raise ProtocolError(404, f"no such endpoint: {request.method} {path}")
        refused = ingress.unauthorized(self.keys, request)
        if refused is not None:
            return refused
        rest = match.group("rest") or ""
        if rest in ("", "/ready"):
            ingress.require(request.method, "GET")
            if rest == "/ready":
                return ingress.json_response(200, {"name": self.name, "ready": True})
            return ingress.json_response(200, self.metadata())
        ingress.require(request.method, "POST")
        body = await ingress.read_body(request, self.spec.limits)
        if rest == "/infer":
            return await self._infer(body)
        req = gp.parse_oip_generate(body, self.limits, self.spec.limits.max_text_chars)
        ids = self.engine.prompt_ids(req)
        self._room()
        if rest == "/generate_stream":
            return StreamingResponse(self._oip_stream(req, ids), media_type="text/event-stream")
        text, tokens, finish = await self._collect(req, ids)
        return ingress.json_response(
            200,
            {
                "model_name": self.name,
                "model_version": self.version,
                "text_output": text,
                "finish_reason": finish,
                "tokens": tokens,
            },
        )

    async def _infer(self, body: bytes) -> Response:
        doc = gp.load_json(body)
        inputs = doc.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise ProtocolError(400, "inputs must hold one BYTES tensor with the prompt")
        data = inputs[0].get("data")
        if inputs[0].get("datatype") != "BYTES" or not isinstance(data, list) or len(data) != 1:
            raise ProtocolError(400, "inputs[0] must be a BYTES tensor of shape [1] (one prompt)")
        prompt = gp._prompt(data[0], "inputs[0].data[0]", self.spec.limits.max_text_chars)
        request_id = doc.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise ProtocolError(400, f"id must be a string, got {show(request_id)}")
        if request_id is not None:
            gp.check_unicode(request_id, "id")  # echoed in the answer
        req = gp.GenerationRequest(prompt, min(INFER_MAX_TOKENS, self.limits.max_new_tokens))
        ids = self.engine.prompt_ids(req)
        self._room()
        text, _, _ = await self._collect(req, ids)
        return ingress.json_response(
            200,
            {
                "model_name": self.name,
                "model_version": self.version,
                "id": request_id or str(uuid.uuid4()),
                "outputs": [{"name": "text_output", "shape": [1], "datatype": "BYTES", "data": [text]}],
            },
        )

    # ------------------------------------------------------------------ OpenAI, by handle from the gateway

    def _openai_request(self, body: bytes, kind: str) -> tuple[gp.GenerationRequest, list[int], bool]:
        """(request, prompt token ids, include_usage) of a ``/v1/completions`` or chat body."""
        max_chars = self.spec.limits.max_text_chars
        if kind == oa.CHAT:
            chat = oa.parse_chat(body, self.limits, max_chars)
            req, ids = self.engine.chat_ids(chat)
            self._room()
            return req, ids, chat.include_usage
        req = gp.parse_completions(body, self.limits, max_chars)
        ids = self.engine.prompt_ids(req)
        self._room()
        return req, ids, False

    async def complete(self, body: bytes, kind: str = oa.COMPLETIONS) -> dict[str, Any]:
        """``{"status", "body"}``: a refusal is data, so its 4xx survives the handle call."""
        try:
            req, ids, _ = self._openai_request(body, kind)
        except ProtocolError as exc:
            return {"status": exc.status, "body": {"error": exc.message}}
        text, tokens, finish = await self._collect(req, ids)
        answer = oa.Answer(kind, self.name).whole(text, finish, oa.usage(len(ids), len(tokens)))
        return {"status": 200, "body": answer}

    async def complete_stream(self, body: bytes, kind: str = oa.COMPLETIONS) -> AsyncIterator[Any]:
        """First ``{"status", "body"?}``, then the SSE chunks (bytes) and ``data: [DONE]``."""
        try:
            req, ids, include_usage = self._openai_request(body, kind)
        except ProtocolError as exc:
            yield {"status": exc.status, "body": {"error": exc.message}}
            return
        yield {"status": 200}
        answer, produced = oa.Answer(kind, self.name), 0
        for chunk in answer.first():
            yield gp.sse(chunk)
        async for ready in self._pieces(req, ids):
            produced += sum(piece.token is not None for piece in ready)
            yield b"".join(gp.sse(answer.chunk(piece.text, piece.finish_reason)) for piece in ready)
        if include_usage:
            yield gp.sse(answer.usage_chunk(oa.usage(len(ids), produced)))
        yield gp.sse("[DONE]")

    # ------------------------------------------------------------------ what the gateway asks

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [1]}],
            "parameters": {"task": TASK, "extensions": ["generate", "generate_stream"]},
        }

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.artifacts.digest,
            "variant": self.artifacts.variant,
            "labels": [],
            "limits": self.spec.limits.wire(),
            "generation": self.limits.wire(),
            "task": TASK,
            "providers": ["CPUExecutionProvider"],
            "ready": getattr(self, "ready", False),
            "coldStart": getattr(self, "cold_start", {}),
        }

    def stats(self) -> dict[str, Any]:
        batch = self.scheduler.stats
        return {
            "requests": self.requests,
            "tokens": self.tokens,
            "pid": os.getpid(),
            "running": self.scheduler.running(),
            "queued": self.scheduler.queued(),
            "steps": batch.steps,
            "peakBatch": batch.peak_rows,
            "peakCachedTokens": batch.peak_cached_tokens,
            "cancelled": batch.cancelled,
        }

    def metrics_text(self) -> str:
        """This replica's series for the gateway's ``/metrics`` (``serve.metrics.GenerationMetrics``)."""
        self.metrics.set_batch(self.scheduler.running(), self.scheduler.queued())
        return self.metrics.text()

    async def predict(self, texts: list[str]) -> list[Any]:
        raise ProtocolError(400, f"{self.name} is a text-generation model: use generate or /v1/completions")
