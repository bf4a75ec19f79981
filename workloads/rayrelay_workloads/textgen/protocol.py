"""Generation requests and answers: KServe's OIP generate extension and OpenAI /v1/completions.

Pure (JSON in, dicts out), so the unit tests check every refusal. The replica
(``textgen.serving``) parses with these, counts the prompt's tokens, and
answers; every refusal is a ``serve.protocol.ProtocolError`` with a 4xx status
and a message naming the field.

OIP generate (``POST /v2/models/{name}/generate`` and ``/generate_stream``)::

    {"text_input": "...", "parameters": {"max_tokens": 16, "temperature": 0,
     "top_p": 1, "stop": ["\\n"], "seed": 1}}
    -> {"model_name": ..., "model_version": ..., "text_output": "...",
        "finish_reason": "stop" | "length", "tokens": [...]}

``max_new_tokens`` is accepted as a synonym of ``max_tokens``. The stream is
server-sent events: one ``data: {"model_name", "model_version", "text_output",
"token_id"}`` event per token, the last one with ``finish_reason``.

OpenAI ``POST /v1/completions``: ``model``, ``prompt`` (one string), ``max_tokens``
(default 16), ``temperature`` (default 1), ``top_p`` (default 1), ``stop``
(string or list), ``stream``, ``seed``, ``n`` (only 1). The answer is a
``text_completion`` object with ``usage``; a stream is ``data: {chunk}`` events
and ``data: [DONE]``. OpenAI's chat completions are parsed in ``textgen.openai_api``,
with the helpers here (``model_name``, ``stream_flag``, the field checks).

Every refusal's message stays short: a client's value is quoted through
``serve.protocol.show`` (scalars and short rows, cut to 60 characters) and at
most five unknown fields are named; a body that is no JSON object (nesting too
deep included) is a 400 from ``serve.protocol.load_object``, and a string with
a lone surrogate (which no tokenizer takes) a 400 from :func:`check_unicode`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import GenerationLimits
from rayrelay_workloads.serve.protocol import ProtocolError, load_object, show

MAX_STOP_CHARS = 256
MAX_MODEL_NAME = 63  # a ModelDeployment's name is a DNS label: a longer one names no model
OIP_PARAMETERS = {"max_tokens", "max_new_tokens", "temperature", "top_p", "stop", "seed"}
OPENAI_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "seed",
    "n",
    "user",
    "echo",
    "logprobs",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "suffix",
    "logit_bias",
}


@dataclass
class GenerationRequest:
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    model: str | None = None  # OpenAI's "model"


def load_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; anything else (bad JSON, nested too deeply, not an object) is a 400."""
    return load_object(body)


def unknown_fields(names: set[str], what: str = "field") -> str:
    """``unknown field(s) [...]`` naming at most five, each cut short: the message stays short."""
    shown = [show(n, 40) for n in sorted(names)[:5]]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"unknown {what}(s) [{', '.join(shown)}]{more}"


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(400, f"{name} must be a number, got {show(value)}")
    if not low <= value <= high:
        raise ProtocolError(400, f"{name} must be between {low:g} and {high:g}, got {show(value)}")
    return float(value)


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(400, f"{name} must be an integer, got {show(value)}")
    return value


def _stop(value: Any, name: str, limits: GenerationLimits) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ProtocolError(400, f"{name} must be a non-empty string or a list of them")
    if len(stops) > limits.max_stop_sequences:
        raise ProtocolError(
            400, f"{name}: {len(stops)} stop sequences, at most {limits.max_stop_sequences} (the limit)"
        )
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ProtocolError(400, f"{name}: a stop sequence is longer than {MAX_STOP_CHARS} characters")
    return list(stops)


def _max_tokens(value: Any, name: str, limits: GenerationLimits) -> int:
    tokens = _integer(value, name)
    if tokens < 1:
        raise ProtocolError(400, f"{name} must be at least 1, got {show(tokens)}")
    if tokens > limits.max_new_tokens:
        raise ProtocolError(
            400,
            f"{name} is {show(tokens)}, more than this model's limit of {limits.max_new_tokens} new tokens",
        )
    return tokens


def _prompt(value: Any, name: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise ProtocolError(400, f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ProtocolError(400, f"{name} is empty")
    if len(value) > max_chars:
        raise ProtocolError(413, f"{name} is {len(value)} characters, more than the limit of {max_chars}")
    check_unicode(value, name)
    return value


def check_unicode(value: str, name: str) -> None:
    """JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer takes: a 400, not a 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(400, f"{name} is not valid Unicode text (it holds a lone surrogate)") from None


def parse_oip_generate(
    body: bytes, limits: GenerationLimits, max_chars: int, default_max_tokens: int = 16
) -> GenerationRequest:
    doc = load_json(body)
    unknown = set(doc) - {"text_input", "parameters", "id"}
    if unknown:
        raise ProtocolError(400, f"{unknown_fields(unknown)}; expected text_input and parameters")
    if "text_input" not in doc:
        raise ProtocolError(400, "text_input is required")
    prompt = _prompt(doc["text_input"], "text_input", max_chars)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(400, "parameters must be an object")
    unknown = set(params) - OIP_PARAMETERS
    if unknown:
        raise ProtocolError(
            400, f"{unknown_fields(unknown, 'parameter')}; supported: {sorted(OIP_PARAMETERS)}"
        )
    raw_max = params.get(
        "max_tokens", params.get("max_new_tokens", min(default_max_tokens, limits.max_new_tokens))
    )
    name = "parameters.max_tokens" if "max_tokens" in params else "parameters.max_new_tokens"
    return GenerationRequest(
        prompt=prompt,
        max_tokens=_max_tokens(raw_max, name, limits),
        temperature=_number(params.get("temperature", 0.0), "parameters.temperature", 0.0, 2.0),
        top_p=_number(params.get("top_p", 1.0), "parameters.top_p", 1e-6, 1.0),
        stop=_stop(params.get("stop"), "parameters.stop", limits),
        seed=_integer(params["seed"], "parameters.seed") if params.get("seed") is not None else None,
    )


def parse_completions(body: bytes, limits: GenerationLimits, max_chars: int) -> GenerationRequest:
    doc = load_json(body)
    unknown = set(doc) - OPENAI_FIELDS
    if unknown:
        raise ProtocolError(400, unknown_fields(unknown))
    model = model_name(doc)
    prompt = doc.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ProtocolError(400, "prompt: one prompt per request is supported")
        prompt = prompt[0]
    if doc.get("n", 1) != 1 or doc.get("best_of", 1) != 1:
        raise ProtocolError(400, "n and best_of: only 1 is supported")
    if doc.get("echo") or doc.get("logprobs") or doc.get("suffix") or doc.get("logit_bias"):
        raise ProtocolError(400, "echo, logprobs, suffix and logit_bias are not supported")
    stream = stream_flag(doc)
    return GenerationRequest(
        prompt=_prompt(prompt, "prompt", max_chars),
        max_tokens=_max_tokens(doc.get("max_tokens", min(16, limits.max_new_tokens)), "max_tokens", limits),
        temperature=_number(doc.get("temperature", 1.0), "temperature", 0.0, 2.0),
        top_p=_number(doc.get("top_p", 1.0), "top_p", 1e-6, 1.0),
        stop=_stop(doc.get("stop"), "stop", limits),
        seed=_integer(doc["seed"], "seed") if doc.get("seed") is not None else None,
        stream=stream,
        model=model,
    )


def stream_flag(doc: dict[str, Any]) -> bool:
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise ProtocolError(400, f"stream must be true or false, got {show(stream)}")
    return stream


def model_name(doc: dict[str, Any]) -> str:
    """An OpenAI body's ``model``: required, a string; one longer than any ModelDeployment name is 404."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError(400, "model is required (the ModelDeployment's name)")
    if len(model) > MAX_MODEL_NAME:
        raise ProtocolError(404, f"model {show(model)} not found")
    check_unicode(model, "model")
    return model


def model_of_completion(body: bytes) -> str:
    """The model a /v1/completions or /v1/chat/completions body names (what the gateway routes on)."""
    return model_name(load_json(body))


def check_prompt_tokens(count: int, limits: GenerationLimits, context: int, max_tokens: int) -> None:
    if count > limits.max_prompt_tokens:
        raise ProtocolError(
            400, f"the prompt is {count} tokens, more than this model's limit of {limits.max_prompt_tokens}"
        )
    if count + max_tokens > context:
        raise ProtocolError(
            400,
            f"the prompt ({count} tokens) plus max_tokens ({max_tokens}) exceed the model's context of "
            f"{context} tokens",
        )
    if count + max_tokens > limits.max_cached_tokens:
        raise ProtocolError(
            400,
            f"the prompt ({count} tokens) plus max_tokens ({max_tokens}) exceed this replica's cache of "
            f"{limits.max_cached_tokens} tokens (spec.generation.maxCachedTokens)",
        )


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()
