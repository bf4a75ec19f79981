"""Issue 12, finding 10: hostile request bodies get a short 4xx, never a 500 or internal text.

Deeply nested JSON made ``json.loads`` (and the old recursive ``_flatten``) raise
``RecursionError``, which the gateway answered with HTTP 500 and the exception's
text. Checked on the parser (both protocols) and through the gateway class itself
(``rayrelay_workloads.serve.gateway.Gateway``, run in-process with a fake model
handle as in ``test_gateway_resilience.py``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.serve import protocol
from rayrelay_workloads.serve.protocol import ProtocolError, parse_v1_predict, parse_v2_infer
from tests.unit.test_gateway_resilience import NAME, FakeHandle, make_gateway, request, running

LIMITS = RequestLimits.model_validate({"maxBodyBytes": 1 << 20})
DEEP = 100_000  # far past Python's recursion limit: 200 kB of brackets, under the body limit
GATEWAY_DEEP = 20_000  # the gateway test's model takes 64 KiB bodies


def nested(depth: int, leaf: str = '"a"') -> str:
    return "[" * depth + leaf + "]" * depth


def v2_body(data: str, **tensor: Any) -> bytes:
    fields = {"name": "text", "datatype": "BYTES", "shape": [1], **tensor}
    head = json.dumps(fields)[:-1]
    return f'{{"inputs": [{head}, "data": {data}}}]}}'.encode()


HOSTILE = {
    "v2 deep data": lambda: parse_v2_infer(v2_body(nested(DEEP)), LIMITS),
    "v2 deep parameters": lambda: parse_v2_infer(
        f'{{"parameters": {{"x": {nested(DEEP)}}}, "inputs": []}}'.encode(), LIMITS
    ),
    "v2 deep top level": lambda: parse_v2_infer(nested(DEEP).encode(), LIMITS),
    "v1 deep instances": lambda: parse_v1_predict(f'{{"instances": {nested(DEEP)}}}'.encode(), LIMITS),
    "v1 deep objects": lambda: parse_v1_predict(('{"a":' * DEEP + "1" + "}" * DEEP).encode(), LIMITS),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_deeply_nested_json_is_a_short_400(case: str) -> None:
    with pytest.raises(ProtocolError) as err:
        HOSTILE[case]()
    assert err.value.status == 400
    assert err.value.message == "request body is nested too deeply"


def test_nested_data_that_json_parses_is_capped_without_recursion() -> None:
    """Nesting the parser takes (here 200 levels) is still refused before anything recurses."""
    with pytest.raises(ProtocolError) as err:
        parse_v2_infer(v2_body(nested(200)), LIMITS)
    assert err.value.status == 400 and "nested over 32 levels" in err.value.message
    # A real (row-major) nested tensor still flattens.
    assert parse_v2_infer(v2_body('[["a", "b"], ["c", "d"]]', shape=[2, 2]), LIMITS).texts == list("abcd")


@pytest.mark.parametrize(
    "tensor",
    [
        {"name": "x" * 50_000},
        {"name": [[[["deep"]]]] * 1000},
        {"datatype": "y" * 50_000},
        {"shape": [[1]] * 10_000},
        {"parameters": {"binary_data_size": "z" * 50_000}},
    ],
)
def test_error_messages_never_echo_a_large_value(tensor: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_v2_infer(v2_body('["a"]', **tensor), LIMITS)
    assert err.value.status in (400, 422) and len(err.value.message) < 200


def call_gateway(path: str, body: bytes, handle: FakeHandle | None = None) -> tuple[int, dict[str, Any]]:
    async def scenario() -> tuple[int, dict[str, Any]]:
        gateway = make_gateway(handle or FakeHandle(), running)
        response = await gateway(request(path, body))
        return response.status_code, json.loads(response.body)

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v2/models/{NAME}/infer", v2_body(nested(GATEWAY_DEEP))),
        (f"/v1/models/{NAME}:predict", f'{{"instances": {nested(GATEWAY_DEEP)}}}'.encode()),
    ],
)
def test_the_gateway_answers_nested_json_with_400(path: str, body: bytes) -> None:
    status, doc = call_gateway(path, body)
    assert status == 400, doc
    assert doc == protocol.error_body("request body is nested too deeply")


def test_a_server_fault_answers_500_without_the_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3://private-bucket/tenant-a/run-1/model.onnx: AccessDenied"
    status, doc = call_gateway(
        f"/v2/models/{NAME}/infer",
        v2_body('["a"]'),
        FakeHandle(predict_error=RuntimeError(secret)),
    )
    assert status == 500
    assert doc == protocol.error_body(protocol.INTERNAL_ERROR)
    assert secret not in json.dumps(doc) and "RuntimeError" not in json.dumps(doc)
    assert secret in caplog.text  # the operator's log keeps it


# ------------------------------------------------------------------ every route of a text-generation model
# Issue 25: a deeply nested body on POST /v1/completions got HTTP 500 (the OIP routes' fix above
# never reached the text-generation parser). Every route a text-generation replica serves (its own
# HTTP routes and the methods the gateway calls by handle) and every gateway route in front of it
# answers each hostile body with a short 4xx. The replica is real (a tiny exported decoder,
# ``textgen_replica.py``); so is the gateway class, forwarding to it in-process.

V = "@V@"  # where a hostile value goes in a route's body
PROMPT_INPUT = '{"name": "text_input", "datatype": "BYTES", "shape": [1], "data": [@V@]}'
MESSAGE = '[{"role": "user", "content": @V@}]'
PROMPT_HI, MESSAGE_HI = PROMPT_INPUT.replace(V, '"hi"'), MESSAGE.replace(V, '"hi"')
ROUTE_BODIES = {
    "generate": ['{"text_input": @V@}', '{"text_input": "hi", "parameters": {"max_tokens": @V@}}'],
    "infer": [
        f'{{"inputs": [{PROMPT_INPUT}]}}',
        f'{{"id": @V@, "inputs": [{PROMPT_HI}]}}',
    ],
    "completions": [
        '{"model": "writer", "prompt": @V@}',
        '{"model": "writer", "prompt": "hi", "max_tokens": @V@}',
        '{"model": @V@, "prompt": "hi"}',
    ],
    "chat": [
        '{"model": "writer", "messages": @V@}',
        f'{{"model": "writer", "messages": {MESSAGE}}}',
        '{"model": "writer", "messages": [{"role": @V@, "content": "hi"}]}',
        f'{{"model": "writer", "messages": {MESSAGE_HI}, "max_tokens": @V@}}',
        f'{{"model": @V@, "messages": {MESSAGE_HI}}}',
    ],
}
VALUES = {
    "arrays 200 deep": nested(200),
    "objects 200 deep": '{"a":' * 200 + "1" + "}" * 200,
    "a lone surrogate": '"\\ud800 x"',
    "a 5000-digit number": "1" * 5000,
    "1e400": "1e400",
    "a 4000-digit number": "9" * 4000,
}
WHOLE_BODIES: dict[str, bytes] = {
    "arrays 100,000 deep": nested(DEEP).encode(),
    "a field 100,000 deep": f'{{"model": "writer", "x": {nested(DEEP)}}}'.encode(),
    "empty": b"",
    "not UTF-8": b'\xff\xfe{"model": "writer"}',
    "not an object": b"[1, 2]",
    "truncated": b'{"model": "writer", "prompt": ',
    "10,000 unknown fields": (
        "{" + ",".join(f'"field-{i}-{"x" * 30}": 1' for i in range(10_000)) + "}"
    ).encode(),
}
# (route, how it is reached): the replica's own HTTP routes, its handle methods, the gateway's routes.
TARGETS = [
    ("generate", "replica /v2/models/writer/generate"),
    ("generate", "replica /v2/models/writer/generate_stream"),
    ("infer", "replica /v2/models/writer/infer"),
    ("completions", "handle complete"),
    ("completions", "handle complete_stream"),
    ("chat", "handle complete"),
    ("chat", "handle complete_stream"),
    ("completions", "gateway /v1/completions"),
    ("chat", "gateway /v1/chat/completions"),
]


def hostile_cases() -> list[Any]:
    cases = []
    for route, target in TARGETS:
        for i, template in enumerate(ROUTE_BODIES[route]):
            for what, value in VALUES.items():
                cases.append(
                    pytest.param(
                        target, route, template.replace(V, value).encode(), id=f"{target}-{i}-{what}"
                    )
                )
        for what, raw in WHOLE_BODIES.items():
            cases.append(pytest.param(target, route, raw, id=f"{target}-{what}"))
    return cases


async def answer(target: str, route: str, body: bytes) -> tuple[int, str]:
    """(status, error message) of ``body`` sent to ``target``."""
    from rayrelay_workloads.textgen import openai_api as oa
    from tests.unit.textgen_replica import ReplicaHandle, body_of, gateway_for, http_request, replica

    server = replica()
    kind = oa.CHAT if route == "chat" else oa.COMPLETIONS
    where, _, name = target.partition(" ")
    if where == "handle" and name == "complete":
        out = await server.complete(body, kind)
        return int(out["status"]), out["body"].get("error", "")
    if where == "handle":
        head = await server.complete_stream(body, kind).__anext__()
        return int(head["status"]), head.get("body", {}).get("error", "")
    ingress = server if where == "replica" else gateway_for({"writer": ReplicaHandle(server)})
    response = await ingress(http_request(name, body))
    doc = json.loads(await body_of(response))
    return response.status_code, doc.get("error", "") if isinstance(doc, dict) else ""


@pytest.mark.parametrize(("target", "route", "body"), hostile_cases())
def test_every_text_generation_route_answers_a_hostile_body_with_a_short_4xx(
    target: str, route: str, body: bytes
) -> None:
    status, message = asyncio.run(answer(target, route, body))
    assert 400 <= status < 500, (status, message)
    assert message and len(message) < 300, message


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v2/models/{NAME}/infer", v2_body('["a", "b"]', shape=[10**3000, 10**3000])),
        (f"/v2/models/{NAME}/infer", v2_body('["a"]', shape=[int("9" * 4000)])),
        (f"/v2/models/{NAME}/infer", b'{"inputs": [], "x": ' + b"1" * 5000 + b"}"),
        (f"/v1/models/{NAME}:predict", b'{"instances": [' + b"1" * 5000 + b"]}"),
    ],
)
def test_the_classification_routes_answer_huge_numbers_with_a_short_4xx(path: str, body: bytes) -> None:
    """Python refuses to print an int of over 4,300 digits: such a number (or a product of shape
    dimensions) must never reach an error message's str()."""
    status, doc = call_gateway(path, body)
    assert status in (400, 422), doc
    assert len(doc["error"]) < 300


def test_a_lone_surrogate_is_refused_where_it_would_reach_a_tokenizer_or_an_answer() -> None:
    """JSON's ``\\ud800`` escape makes a str that UTF-8 cannot encode: a tokenizer raises on it, and
    an echoed ``id`` made the answer itself fail (a 500)."""
    with pytest.raises(ProtocolError) as err:
        parse_v2_infer(v2_body('["ok", "bad \\ud800"]', shape=[2]), LIMITS)
    assert err.value.status == 422 and "[1] is not valid Unicode" in err.value.message
    with pytest.raises(ProtocolError) as err:
        parse_v1_predict(b'{"instances": ["\\udfff"]}', LIMITS)
    assert err.value.status == 422
    body = json.dumps(
        {"id": "\ud800", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    )
    status, doc = call_gateway(f"/v2/models/{NAME}/infer", body.encode())
    assert status == 400 and "'id' is not valid Unicode" in doc["error"]
