"""KServe v2 (Open Inference Protocol) and v1 wire formats: parse, validate, build.

Pure functions over bytes and dicts (no Ray, no onnxruntime), used by the
gateway (``gateway.py``) before anything reaches a model replica, so every
client mistake becomes a :class:`ProtocolError` with a 4xx status and a message
saying what is wrong, and a replica only ever sees a bounded list of strings.

Statuses: 400 the body cannot be read as a request at all (malformed JSON,
nested too deeply, a number of over 4,300 digits, not an object, a required
field missing or of the wrong JSON type); 404 unknown model; 413 body larger
than ``limits.maxBodyBytes``; 422 a well-formed request the model cannot take
(wrong datatype, shape not matching the data, empty input, non-string items,
too many texts, a text over ``limits.maxTextChars`` or holding a lone
surrogate, which no tokenizer takes). The text-generation routes
(``textgen.protocol``, ``textgen.openai_api``) read bodies with
:func:`load_object` and quote values with :func:`show` too.

The v2 request may use Triton's binary tensor extension (the
``Inference-Header-Content-Length`` header; BYTES elements as 4-byte
little-endian length + bytes), which ``tritonclient`` sends by default.
Responses are always JSON; a client asking for binary outputs reads JSON
``data`` just as well.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import RequestLimits

INPUT_NAME = "text"
OUTPUT_NAMES = ("label_ids", "labels", "probabilities")
PLATFORM = "onnxruntime"


class ProtocolError(Exception):
    """A request the server refuses, with the HTTP status and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Prediction:
    """One text's result, as the model replica returns it."""

    label_id: int
    probabilities: list[float]


@dataclass
class V2Request:
    texts: list[str]
    id: str | None = None
    outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------- size


def check_content_length(header: str | None, limits: RequestLimits) -> None:
    """Refuse early, before reading, when the declared body size is over the limit."""
    if header is None:
        return
    try:
        size = int(header)
    except ValueError:
        raise ProtocolError(400, f"Content-Length is not a number: {header!r}") from None
    if size > limits.max_body_bytes:
        raise ProtocolError(413, f"request body is {size} bytes; the limit is {limits.max_body_bytes} bytes")


def check_body_size(body: bytes, limits: RequestLimits) -> None:
    """The actual size counts too: Content-Length may be absent (chunked) or wrong."""
    if len(body) > limits.max_body_bytes:
        raise ProtocolError(
            413,
            f"request body is over {limits.max_body_bytes} bytes (the limit); send fewer or shorter texts",
        )


# --------------------------------------------------------------------- parsing


def _load_json(data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise ProtocolError(400, "request body is empty; expected a JSON object")
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise ProtocolError(400, "request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:  # arrays/objects nested thousands deep: a client fault, not a 500
        raise ProtocolError(400, _TOO_DEEP) from None
    except ValueError:  # not a JSONDecodeError: an integer of over 4,300 digits (Python's int limit)
        raise ProtocolError(400, "request body is not valid JSON: a number in it is too long") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, f"request body must be a JSON object, not {_json_type(doc)}")
    return doc


def load_object(data: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying why not (nesting included): for every route."""
    return _load_json(data)


def show(value: Any, limit: int = 60) -> str:
    """A client's value, safe to quote in an error message (short, never recursing)."""
    return _show(value, limit)


# OIP tensor data may be nested row-major arrays, one level per dimension; no real
# tensor comes near this. Deeper data is refused before anything recurses over it.
MAX_DATA_NESTING = 32
_TOO_DEEP = "request body is nested too deeply"


def _show(value: Any, limit: int = 60) -> str:
    """A client's value for an error message: short, and never recursing into nested data."""
    scalar = value is None or isinstance(value, (bool, int, float, str))
    short_row = (
        isinstance(value, list) and len(value) <= 16 and all(isinstance(v, (int, float)) for v in value)
    )
    if not (scalar or short_row):
        return _json_type(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return "a number"  # and repr() of an int over 4,300 digits raises
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


_NOT_UNICODE = "is not valid Unicode text (it holds a lone surrogate, which JSON can carry)"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_texts(texts: list[Any], where: str, limits: RequestLimits) -> list[str]:
    if not texts:
        raise ProtocolError(422, f"{where} is empty; send at least one text")
    if len(texts) > limits.max_texts_per_request:
        raise ProtocolError(
            422,
            f"{where} has {len(texts)} texts; the limit is {limits.max_texts_per_request} per request",
        )
    out: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ProtocolError(422, f"{where}[{i}] must be a string, not {_json_type(text)}")
        if len(text) > limits.max_text_chars:
            raise ProtocolError(
                422,
                f"{where}[{i}] has {len(text)} characters; the limit is {limits.max_text_chars}",
            )
        if not _encodable(text):  # no tokenizer takes one
            raise ProtocolError(422, f"{where}[{i}] {_NOT_UNICODE}")
        out.append(text)
    return out


_END = object()  # _flatten: an exhausted iterator


def _flatten(data: list[Any]) -> list[Any]:
    """OIP allows tensor data as a flat or a nested (row-major) JSON array.

    Iterative, with a depth cap: nesting a client chose never becomes recursion here.
    """
    if not any(isinstance(item, list) for item in data):  # the usual flat array: no walk
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) >= MAX_DATA_NESTING:
                raise ProtocolError(
                    400, f"input {INPUT_NAME!r}: 'data' is nested over {MAX_DATA_NESTING} levels deep"
                )
            stack.append(iter(item))
        else:
            out.append(item)
    return out


def _decode_bytes_tensor(raw: bytes, where: str) -> list[Any]:
    """Triton's BYTES serialisation: per element, uint32 little-endian length, then bytes."""
    items: list[Any] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ProtocolError(400, f"{where}: binary BYTES data is truncated (a length prefix is cut off)")
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + length > len(raw):
            raise ProtocolError(400, f"{where}: binary BYTES data is truncated (an element is cut off)")
        chunk = raw[pos : pos + length]
        pos += length
        try:
            items.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(422, f"{where}[{len(items)}] is not UTF-8 text") from None
    return items


def parse_v2_infer(body: bytes, limits: RequestLimits, header_length: str | None = None) -> V2Request:
    """A v2 infer request body -> the texts to classify and the response options.

    Checked in a fixed order (size, JSON, request fields, the tensor, its data,
    the outputs), so a request with several faults always gets the same answer.
    """
    check_body_size(body, limits)
    body, binary = _split_binary(body, header_length)
    doc = _load_json(body)
    request_id, parameters = _request_fields(doc)
    tensor = _text_tensor(doc)
    shape = _tensor_shape(tensor)
    data = _tensor_data(tensor, binary)
    count = 1
    for dim in shape:
        count *= dim
    if count != len(data):
        # A product of client dimensions can pass Python's 4,300-digit str() limit: never print it whole.
        elements = f"{count} elements" if count < 10**18 else "over 10^18 elements"
        raise ProtocolError(
            422,
            f"input {INPUT_NAME!r} has shape {_show(shape)} ({elements}) but {len(data)} data elements",
        )
    texts = _check_texts(data, f"input {INPUT_NAME!r}", limits)
    return V2Request(texts=texts, id=request_id, outputs=_requested_outputs(doc), parameters=parameters)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a body using Triton's binary extension."""
    if header_length is None:
        return body, b""
    try:
        json_size = int(header_length)
    except ValueError:
        raise ProtocolError(
            400, f"Inference-Header-Content-Length is not a number: {header_length!r}"
        ) from None
    if not 0 < json_size <= len(body):
        raise ProtocolError(
            400, f"Inference-Header-Content-Length {json_size} does not fit a {len(body)}-byte body"
        )
    return body[:json_size], body[json_size:]


def _request_fields(doc: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, f"'id' must be a string, not {_json_type(request_id)}")
    if request_id is not None and not _encodable(request_id):
        raise ProtocolError(400, f"'id' {_NOT_UNICODE}")  # it is echoed: UTF-8 must encode it
    parameters = doc.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ProtocolError(400, f"'parameters' must be an object, not {_json_type(parameters)}")
    return request_id, parameters


def _text_tensor(doc: dict[str, Any]) -> dict[str, Any]:
    """The one input tensor: named ``text``, datatype BYTES."""
    if "inputs" not in doc:
        raise ProtocolError(400, f"'inputs' is missing; send one BYTES tensor named {INPUT_NAME!r}")
    inputs = doc["inputs"]
    if not isinstance(inputs, list):
        raise ProtocolError(400, f"'inputs' must be an array of tensors, not {_json_type(inputs)}")
    if len(inputs) != 1:
        raise ProtocolError(
            422, f"'inputs' has {len(inputs)} tensors; this model takes exactly one, named {INPUT_NAME!r}"
        )
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise ProtocolError(400, f"inputs[0] must be an object, not {_json_type(tensor)}")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise ProtocolError(
            422, f"unknown input {_show(name)}; this model takes one BYTES input named {INPUT_NAME!r}"
        )
    datatype = tensor.get("datatype")
    if datatype != "BYTES":
        raise ProtocolError(
            422, f"input {INPUT_NAME!r} has datatype {_show(datatype)}; it must be 'BYTES' (texts)"
        )
    return tensor


def _tensor_shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(
            400,
            f"input {INPUT_NAME!r} needs 'shape', a non-empty array of non-negative integers; got {_show(shape)}",
        )
    return shape


def _tensor_data(tensor: dict[str, Any], binary: bytes) -> list[Any]:
    """The tensor's elements, flat: from the binary data when it says so, else from JSON ``data``."""
    tensor_params = tensor.get("parameters") or {}
    if not isinstance(tensor_params, dict):
        raise ProtocolError(400, f"inputs[0].parameters must be an object, not {_json_type(tensor_params)}")
    binary_size = tensor_params.get("binary_data_size")
    if binary_size is not None:
        if not isinstance(binary_size, int) or binary_size < 0 or binary_size > len(binary):
            raise ProtocolError(
                400,
                f"binary_data_size {_show(binary_size)} does not match the {len(binary)} bytes of binary data",
            )
        return _decode_bytes_tensor(binary[:binary_size], f"input {INPUT_NAME!r}")
    if "data" not in tensor:
        raise ProtocolError(400, f"input {INPUT_NAME!r} has no 'data'")
    data = tensor["data"]
    if not isinstance(data, list):
        raise ProtocolError(400, f"input {INPUT_NAME!r}: 'data' must be an array, not {_json_type(data)}")
    return _flatten(data)


def _requested_outputs(doc: dict[str, Any]) -> list[str] | None:
    if "outputs" not in doc:
        return None
    requested = doc["outputs"]
    if not isinstance(requested, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in requested
    ):
        raise ProtocolError(400, "'outputs' must be an array of objects with a 'name'")
    outputs = [o["name"] for o in requested]
    unknown = [o for o in outputs if o not in OUTPUT_NAMES]
    if unknown:
        raise ProtocolError(
            422, f"unknown output {_show(unknown[0])}; this model has outputs {', '.join(OUTPUT_NAMES)}"
        )
    return outputs or None


def parse_v1_predict(body: bytes, limits: RequestLimits) -> list[str]:
    """``{"instances": ["text", ...]}`` or ``{"instances": [{"text": ...}, ...]}`` -> texts."""
    check_body_size(body, limits)
    doc = _load_json(body)
    if "instances" not in doc:
        raise ProtocolError(400, '\'instances\' is missing; send {"instances": ["a text", ...]}')
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise ProtocolError(400, f"'instances' must be an array, not {_json_type(instances)}")
    texts: list[Any] = []
    for i, item in enumerate(instances):
        if isinstance(item, dict):
            if "text" not in item:
                raise ProtocolError(422, f"instances[{i}] is an object without a 'text' field")
            texts.append(item["text"])
        else:
            texts.append(item)
    return _check_texts(texts, "instances", limits)


# --------------------------------------------------------------------- responses


def v2_response(
    model: str,
    version: str,
    request: V2Request,
    predictions: list[Prediction],
    labels: list[str],
) -> dict[str, Any]:
    n = len(predictions)
    num_labels = len(labels)
    tensors = {
        "label_ids": {"datatype": "INT64", "shape": [n], "data": [p.label_id for p in predictions]},
        "labels": {"datatype": "BYTES", "shape": [n], "data": [labels[p.label_id] for p in predictions]},
        "probabilities": {
            "datatype": "FP32",
            "shape": [n, num_labels],
            "data": [x for p in predictions for x in p.probabilities],
        },
    }
    names = request.outputs or list(OUTPUT_NAMES)
    out: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "outputs": [{"name": name, **tensors[name]} for name in names],
    }
    if request.id is not None:
        out["id"] = request.id
    return out


def v1_response(predictions: list[Prediction], labels: list[str]) -> dict[str, Any]:
    return {
        "predictions": [
            {
                "label": labels[p.label_id],
                "labelId": p.label_id,
                "probabilities": dict(zip(labels, p.probabilities, strict=True)),
            }
            for p in predictions
        ]
    }


def model_metadata(model: str, version: str, num_labels: int) -> dict[str, Any]:
    return {
        "name": model,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label_ids", "datatype": "INT64", "shape": [-1]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, num_labels]},
        ],
    }


# What a client reads on a server fault: the exception's text stays in the server log
# (it may hold paths, URIs or internal state; see docs/security.md, finding 10).
INTERNAL_ERROR = "internal error; the server log has the details"


def error_body(message: str) -> dict[str, str]:
    """KServe's error shape (both protocols)."""
    return {"error": message}
