"""A real text-generation replica in-process, and a Serve handle stand-in that calls it.

``TextGenServer`` (``rayrelay_workloads.textgen.serving``) with its real engine:
a tiny GPT-2 (2 layers, width 32, random weights, a byte-level BPE tokenizer
trained on the shipped text) exported to ONNX with its KV cache, built once per
test process. Only the constructor is skipped (it reads a published artifact
set); the attributes it sets are set here. :class:`ReplicaHandle` stands in for
``serve.get_app_handle(name)``: ``handle.method.remote(...)`` calls the
replica's method, ``handle.options(stream=True)`` gives the async generator, as
Serve's handle does. With it the gateway class (``serve.gateway.Gateway``, run
as in ``test_gateway_resilience.py``) forwards to a real replica.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from rayrelay_core.api import GenerationLimits, ModelDeploymentSpec

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "data" / "textgen-train.jsonl"
NAME = "writer"
CONTEXT = 128


@functools.cache
def tiny_model() -> tuple[Any, Any, Path]:
    """(the tiny GPT-2 in eval mode, its tokenizer, a folder for its graphs), once per process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrelay_workloads.textgen.tiny import build_tiny_gpt2

    folder = Path(tempfile.mkdtemp(prefix="rayrelay-tiny-replica-"))
    model_dir = build_tiny_gpt2(folder / "hf", TRAIN, width=32, positions=CONTEXT, vocab_size=320)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(str(model_dir)), folder


@functools.cache
def tiny_decoder(kv_cache: str = "inplace") -> tuple[Any, Any]:
    """(onnxruntime session of the tiny decoder, its tokenizer), once per process and graph kind.

    ``inplace`` is the graph the export writes for GPT-2 (``textgen.inplace``); ``concat`` the
    generic one (past in, present out) it writes for other models and wrote before."""
    from rayrelay_workloads.textgen.export import export_decoder, session
    from rayrelay_workloads.textgen.inplace import build_inplace_decoder

    model, tokenizer, folder = tiny_model()
    path = folder / f"decoder.{kv_cache}.onnx"
    if kv_cache == "inplace":
        build_inplace_decoder(model, path)
    else:
        export_decoder(model, path, 17)
    return session(path, 1), tokenizer


def replica(
    name: str = NAME,
    spec: dict[str, Any] | None = None,
    chat_template: str | None = None,
    wrap: Any = None,
    kv_cache: str = "inplace",
) -> Any:
    """A ``TextGenServer`` on the tiny decoder; ``spec`` adds to a minimal ModelDeployment spec.

    ``wrap(session)``, when given, stands between the engine and the onnxruntime session (a test
    can hold a decode step, or run another variant)."""
    from rayrelay_workloads.serve.metrics import GenerationMetrics
    from rayrelay_workloads.textgen.serving import TextGenEngine, TextGenServer

    session, tokenizer = tiny_decoder(kv_cache)
    session = session if wrap is None else wrap(session)
    if chat_template is not None:
        tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        tokenizer.chat_template = chat_template
    server = object.__new__(cast(Any, TextGenServer).func_or_class)
    server.name = name
    server.spec = ModelDeploymentSpec.model_validate(
        {"model": {"manifestUri": "file:///models/manifest.json"}, **(spec or {})}
    )
    server.keys, server._key_digests = None, None
    server.artifacts = SimpleNamespace(digest="sha256:" + "ab" * 32, variant="fp32")
    server.limits = server.spec.generation or GenerationLimits()
    max_chars = server.spec.limits.max_text_chars
    server.engine = TextGenEngine(
        session, tokenizer, tokenizer.eos_token_id, CONTEXT, server.limits, max_chars
    )
    server.scheduler = server.engine.scheduler()
    server.requests = server.tokens = 0
    server.metrics = GenerationMetrics(name, "r1")
    server.ready = True
    return server


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class ReplicaHandle:
    """``serve.get_app_handle`` of one in-process replica: each call runs the replica's method."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def options(self, stream: bool = False) -> ReplicaHandle:
        return self

    def __getattr__(self, method: str) -> _Remote:
        fn = getattr(self.server, method)
        if asyncio.iscoroutinefunction(fn) or method == "complete_stream":
            return _Remote(fn)

        async def call(*args: Any) -> Any:
            return fn(*args)

        return _Remote(call)


def http_request(
    path: str, body: bytes = b"", method: str = "POST", headers: dict[str, str] | None = None
) -> Any:
    """A Starlette request as Serve's proxy hands it over (one body chunk)."""
    from starlette.requests import Request

    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            *extra,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


def gateway_for(handles: dict[str, Any]) -> Any:
    """The gateway class in-process over running models ``{name: handle}`` (no Serve)."""
    from rayrelay_workloads.serve import gateway as gw

    gateway = cast(Any, gw.Gateway).func_or_class()
    gateway._read_states = lambda: {n: gw.ModelState(n, "RUNNING", "", 1_700_000_000.0, 1) for n in handles}
    gateway._get_app_handle = lambda name: handles[name]
    return gateway


async def body_of(response: Any) -> bytes:
    """A response's body, a streamed one included."""
    if hasattr(response, "body_iterator"):
        return b"".join([c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator])
    return bytes(response.body)
