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
