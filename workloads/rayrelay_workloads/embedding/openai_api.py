"""OpenAI's ``POST /v1/embeddings``: the request judged, the answer shaped (pure, no Ray).

Request fields: ``model`` (the ModelDeployment's name; required), ``input`` (a string or a
list of strings), ``encoding_format`` (``float``, the default, or ``base64``: the
little-endian float32 bytes of each vector, which the official client asks for and
decodes), ``dimensions`` (accepted only when it equals the model's vector size: this model
was not trained for shorter vectors, so any other value is a 400) and ``user`` (ignored).
Token arrays as ``input`` are refused (this endpoint tokenises itself), and so is any other
field. Limits come from the ModelDeployment's ``spec.limits`` and are 400s naming the
field: ``input`` with more than ``maxTextsPerRequest`` texts, ``input[i]`` longer than
``maxTextChars`` characters, or empty. Refusals use OpenAI's error shape
(:func:`error_body`: ``{"error": {"message", "type", "param", "code"}}``), whose message
the official client shows.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.serve.protocol import ProtocolError, load_object, show

PATH = "/v1/embeddings"
FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
FORMATS = ("float", "base64")
MAX_MODEL_NAME = 63  # a ModelDeployment's name is a DNS label: a longer one names no model


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    texts: list[str]
    encoding_format: str = "float"


def model_name(doc: dict[str, Any]) -> str:
    """``model``: required, a string; one longer than any ModelDeployment name is a 404."""
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise ProtocolError(400, "model is required (the ModelDeployment's name)")
    if len(model) > MAX_MODEL_NAME:
        raise ProtocolError(404, f"model {show(model)} not found")
    check_unicode(model, "model")
    return model


def check_unicode(value: str, name: str) -> None:
    """JSON can carry lone surrogates, which no tokenizer takes: a 400 naming the field."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(400, f"{name} is not valid Unicode text (it holds a lone surrogate)") from None


def model_of(body: bytes) -> str:
    """The model a body names (what the gateway routes on): 400 without one."""
    return model_name(load_object(body))


def parse_embeddings(body: bytes, limits: RequestLimits, dimension: int) -> EmbeddingsRequest:
    """A checked request, or ProtocolError(400) naming the field at fault (fixed order of checks)."""
    if len(body) > limits.max_body_bytes:
        raise ProtocolError(413, f"request body is over {limits.max_body_bytes} bytes (the limit)")
    doc = load_object(body)
    extra = sorted(set(doc) - FIELDS)
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise ProtocolError(400, f"unknown field(s) [{', '.join(show(n, 40) for n in extra[:5])}]{more}")
    model = model_name(doc)
    texts = _texts(doc.get("input"), limits)
    fmt = doc.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in FORMATS:
        raise ProtocolError(400, f"encoding_format must be 'float' or 'base64', got {show(fmt)}")
    dims = doc.get("dimensions")
    if dims is not None:
        if isinstance(dims, bool) or not isinstance(dims, int):
            raise ProtocolError(400, f"dimensions must be an integer, got {show(dims)}")
        if dims != dimension:
            raise ProtocolError(
                400,
                f"dimensions {show(dims)} is not supported: this model returns {dimension}-dimensional "
                "vectors only (leave dimensions out, or send it equal to that)",
            )
    user = doc.get("user")
    if user is not None and not isinstance(user, str):
        raise ProtocolError(400, f"user must be a string, got {show(user)}")
    return EmbeddingsRequest(model, texts, str(fmt))


def _texts(value: Any, limits: RequestLimits) -> list[str]:
    if value is None:
        raise ProtocolError(400, "input is required: a string or a list of strings")
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ProtocolError(400, f"input must be a string or a list of strings, got {show(value)}")
    if not items:
        raise ProtocolError(400, "input is an empty list; send at least one text")
    if len(items) > limits.max_texts_per_request:
        raise ProtocolError(
            400, f"input has {len(items)} texts; the limit is {limits.max_texts_per_request} per request"
        )
    texts = []
    for i, item in enumerate(items):
        where = "input" if isinstance(value, str) else f"input[{i}]"
        if not isinstance(item, str):
            hint = " (token arrays are not supported: send text)" if isinstance(item, int | list) else ""
            raise ProtocolError(400, f"{where} must be a string, got {show(item)}{hint}")
        if not item.strip():
            raise ProtocolError(400, f"{where} is empty")
        if len(item) > limits.max_text_chars:
            raise ProtocolError(
                400, f"{where} has {len(item)} characters; the limit is {limits.max_text_chars}"
            )
        check_unicode(item, where)
        texts.append(item)
    return texts


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape, which its clients read the message from (``openai.BadRequestError``)."""
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": None,
            "code": "model_not_found" if status == 404 else None,
        }
    }


def encode_vector(vector: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in np.asarray(vector, dtype=np.float32)]


def embeddings_response(model: str, vectors: list[np.ndarray], tokens: int, fmt: str) -> dict[str, Any]:
    """OpenAI's list of embeddings, in input order, with the tokens counted (no completion tokens)."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(v, fmt)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": int(tokens), "total_tokens": int(tokens)},
    }
