"""OpenAI's chat completions for text-generation models: parse, template, answer.

Pure apart from the tokenizer handed to :func:`template_ids`, so the unit tests
check every refusal and every shape. ``textgen.serving`` (the replica) parses
with :func:`parse_chat`, turns the messages into token ids and answers with the
builders here; ``textgen.openai_gateway`` (in the shared gateway) routes on the
body's ``model`` (the model list is every task's: ``serve.openai_models``). Plain
``/v1/completions`` is parsed in ``textgen.protocol``; both routes' answers are
built here, so they cannot drift apart.

``POST /v1/chat/completions``: ``model``, ``messages`` (1 to ``MAX_MESSAGES``
objects of ``role`` ``system`` / ``user`` / ``assistant`` (``developer`` counts as
``system``), ``content`` a string or an array of ``{"type": "text", "text"}``
parts, an optional ``name``), ``max_tokens`` or ``max_completion_tokens``
(default: ``maxNewTokens``, cut to the context the prompt leaves), ``temperature``
(default 1), ``top_p``, ``stop``, ``seed``, ``stream``, ``stream_options``
(``include_usage``), ``n`` (only 1), ``user``; the penalties are accepted and
not applied, as on ``/v1/completions``.

The messages become the prompt through the tokenizer's chat template when it
has one (``apply_chat_template`` with the generation prompt; control tokens
written in a message are encoded as text, ``sanitize_control_tokens``), else
through the plain template :func:`render_plain`::

    System: {content}
    User: {content}
    Assistant: {content}
    User: {content}
    Assistant:

one line per message, then ``Assistant:``; with it, generation also stops
before a ``\\nUser:`` the model writes (``PLAIN_STOP``, not counted among the
request's stop sequences).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from rayrelay_core.api import GenerationLimits
from rayrelay_workloads.serve.protocol import ProtocolError, show
from rayrelay_workloads.textgen import protocol as gp

COMPLETIONS = "completions"
CHAT = "chat"
PATHS = {COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}
MAX_MESSAGES = 256
PLAIN_STOP = "\nUser:"
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
}


@dataclass
class ChatRequest:
    """A parsed chat request: ``request.prompt`` is the plain template's text of ``messages``."""

    request: gp.GenerationRequest
    messages: list[dict[str, str]]  # {"role": system|user|assistant, "content": text}
    explicit_max_tokens: bool
    include_usage: bool = False


# --------------------------------------------------------------------- parsing


def parse_chat(body: bytes, limits: GenerationLimits, max_chars: int) -> ChatRequest:
    """A ``/v1/chat/completions`` body, checked field by field (400, 404 or 413 naming the field)."""
    doc = gp.load_json(body)
    unknown = set(doc) - CHAT_FIELDS
    if unknown:
        raise ProtocolError(400, gp.unknown_fields(unknown))
    model = gp.model_name(doc)
    messages = parse_messages(doc.get("messages"), max_chars)
    _refuse_unsupported(doc)
    stream = gp.stream_flag(doc)
    max_tokens, explicit = _max_tokens(doc, limits)
    request = gp.GenerationRequest(
        prompt=render_plain(messages),
        max_tokens=max_tokens,
        temperature=gp._number(doc.get("temperature", 1.0), "temperature", 0.0, 2.0),
        top_p=gp._number(doc.get("top_p", 1.0), "top_p", 1e-6, 1.0),
        stop=gp._stop(doc.get("stop"), "stop", limits),
        seed=gp._integer(doc["seed"], "seed") if doc.get("seed") is not None else None,
        stream=stream,
        model=model,
    )
    return ChatRequest(request, messages, explicit, _include_usage(doc, stream))


def parse_messages(value: Any, max_chars: int) -> list[dict[str, str]]:
    """``messages``: 1 to ``MAX_MESSAGES`` messages whose contents hold at most ``max_chars`` characters."""
    if not isinstance(value, list) or not value:
        raise ProtocolError(400, "messages is required: a non-empty array of {role, content} objects")
    if len(value) > MAX_MESSAGES:
        raise ProtocolError(400, f"messages: {len(value)} messages, at most {MAX_MESSAGES} per request")
    messages = [_message(item, f"messages[{i}]") for i, item in enumerate(value)]
    total = sum(len(m["content"]) for m in messages)
    if total > max_chars:
        raise ProtocolError(
            413, f"messages hold {total} characters of content, more than the limit of {max_chars}"
        )
    return messages


def _message(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, dict):
        raise ProtocolError(400, f"{where} must be an object with role and content, got {show(item)}")
    unknown = set(item) - {"role", "content", "name"}
    if unknown:
        raise ProtocolError(400, f"{where}: {gp.unknown_fields(unknown)}; a message has role, content, name")
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ProtocolError(
            400,
            f"{where}.role must be system, user or assistant (developer counts as system), got {show(role)}",
        )
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise ProtocolError(400, f"{where}.name must be a string, got {show(name)}")
    content = _content(item.get("content"), f"{where}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


def _content(value: Any, where: str) -> str:
    """A string, or OpenAI's array of text parts (joined by newlines); other parts are refused."""
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
                raise ProtocolError(
                    400, f"{where}[{j}] must be a text part {{type: text, text: string}}, got {show(kind)}"
                )
            texts.append(part["text"])
        value = "\n".join(texts)
    if not isinstance(value, str):
        raise ProtocolError(400, f"{where} must be a string or an array of text parts, got {show(value)}")
    gp.check_unicode(value, where)
    return value


def _refuse_unsupported(doc: dict[str, Any]) -> None:
    if doc.get("n", 1) != 1:
        raise ProtocolError(400, "n: only 1 is supported")
    if doc.get("logprobs") or doc.get("top_logprobs") is not None or doc.get("logit_bias"):
        raise ProtocolError(400, "logprobs, top_logprobs and logit_bias are not supported")


def _max_tokens(doc: dict[str, Any], limits: GenerationLimits) -> tuple[int, bool]:
    """(max new tokens, whether the client set it): ``max_completion_tokens`` or ``max_tokens``."""
    given = [k for k in ("max_completion_tokens", "max_tokens") if doc.get(k) is not None]
    if len(given) == 2:
        raise ProtocolError(400, "give max_completion_tokens or max_tokens, not both")
    if given:
        return gp._max_tokens(doc[given[0]], given[0], limits), True
    return limits.max_new_tokens, False


def _include_usage(doc: dict[str, Any], stream: bool) -> bool:
    options = doc.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ProtocolError(400, "stream_options is only allowed with stream: true")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise ProtocolError(400, "stream_options must be an object holding only include_usage")
    flag = options.get("include_usage", False)
    if not isinstance(flag, bool):
        raise ProtocolError(400, f"stream_options.include_usage must be true or false, got {show(flag)}")
    return flag


# --------------------------------------------------------------------- templates


def render_plain(messages: list[dict[str, str]]) -> str:
    """The plain template (a tokenizer without ``chat_template``): ``Role: content`` lines, then ``Assistant:``."""
    return "".join(f"{ROLES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant:"


def template_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The messages through the tokenizer's own chat template, with the generation prompt, as token ids.

    Control tokens a message contains are encoded as text (a client cannot end a turn or open
    another role by writing one); a template that refuses the messages (e.g. roles that do not
    alternate) is a 400 with its reason."""
    from jinja2.exceptions import TemplateError

    try:
        out = tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            sanitize_control_tokens=True,
        )
    except TemplateError as exc:
        raise ProtocolError(
            400, f"the model's chat template refused the messages: {show(str(exc), 200)}"
        ) from None
    return [int(t) for t in out["input_ids"]]


# --------------------------------------------------------------------- answers


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _choice(kind: str, text: str, finish: str | None, streamed: bool) -> dict[str, Any]:
    if kind == COMPLETIONS:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    key = "delta" if streamed else "message"
    body = {"content": text} if streamed else {"role": "assistant", "content": text}
    return {"index": 0, key: body, "logprobs": None, "finish_reason": finish}


class Answer:
    """One request's answers: the whole completion, or its stream of chunks (same id, same time)."""

    def __init__(self, kind: str, model: str) -> None:
        self.kind, self.model = kind, model
        prefix = "chatcmpl" if kind == CHAT else "cmpl"
        self.id, self.created = f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def _head(self, chunk: bool) -> dict[str, Any]:
        obj = "text_completion" if self.kind == COMPLETIONS else "chat.completion"
        if chunk and self.kind == CHAT:
            obj += ".chunk"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str, counts: dict[str, int]) -> dict[str, Any]:
        return {**self._head(False), "choices": [_choice(self.kind, text, finish, False)], "usage": counts}

    def first(self) -> list[dict[str, Any]]:
        """What a stream opens with: chat's role announcement (OpenAI's first delta); nothing for completions."""
        if self.kind != CHAT:
            return []
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return [{**self._head(True), "choices": [choice]}]

    def chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        return {**self._head(True), "choices": [_choice(self.kind, text, finish, True)]}

    def usage_chunk(self, counts: dict[str, int]) -> dict[str, Any]:
        """``stream_options.include_usage``: the last chunk before ``[DONE]``, no choices, the usage."""
        return {**self._head(True), "choices": [], "usage": counts}
