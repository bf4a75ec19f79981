"""Unit tests of the KServe v2/v1 wire formats (rayrelay_workloads.serve.protocol)."""

from __future__ import annotations

import json
import struct

import pytest

from rayrelay_core.api import RequestLimits
from rayrelay_workloads.serve import protocol
from rayrelay_workloads.serve.metrics import merge_expositions
from rayrelay_workloads.serve.protocol import Prediction, ProtocolError

LIMITS = RequestLimits(max_texts_per_request=4, max_text_chars=20, max_body_bytes=2048)


def v2(texts: object, **extra: object) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [len(texts) if isinstance(texts, list) else 1]}
    tensor["data"] = texts
    tensor.update(extra.pop("tensor", {}))  # type: ignore[call-overload]
    return json.dumps({"inputs": [tensor], **extra}).encode()


def refused(fn, *args) -> ProtocolError:  # type: ignore[no-untyped-def]
    with pytest.raises(ProtocolError) as info:
        fn(*args)
    return info.value


def test_v2_ok_with_id_parameters_and_outputs() -> None:
    req = protocol.parse_v2_infer(
        v2(["hello", "world"], id="r1", parameters={"x": 1}, outputs=[{"name": "labels"}]), LIMITS
    )
    assert req.texts == ["hello", "world"]
    assert req.id == "r1" and req.parameters == {"x": 1} and req.outputs == ["labels"]


def test_v2_nested_data_and_2d_shape() -> None:
    req = protocol.parse_v2_infer(v2([["a"], ["b"]], tensor={"shape": [2, 1]}), LIMITS)
    assert req.texts == ["a", "b"]


def test_v2_triton_binary_extension() -> None:
    texts = ["héllo", "b"]
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    req = protocol.parse_v2_infer(header + raw, LIMITS, str(len(header)))
    assert req.texts == texts
    truncated = refused(protocol.parse_v2_infer, header + raw[:-1], LIMITS, str(len(header)))
    assert truncated.status == 400


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "must be a JSON object, not an array"),
        (b'{"id": "x"}', 400, "'inputs' is missing"),
        (b'{"inputs": {}}', 400, "must be an array"),
        (json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(), 422, "must be 'BYTES'"),
        (json.dumps({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}).encode(), 422, "unknown input 'txt'"),
        (v2(["a", "b"], tensor={"shape": [3]}), 422, "shape [3] (3 elements) but 2"),
        (v2(["a"], tensor={"shape": "1"}), 400, "'shape'"),
        (v2([]), 422, "is empty"),
        (v2(["a", 3]), 422, "[1] must be a string, not a number"),
        (v2(["a"] * 5), 422, "has 5 texts; the limit is 4"),
        (v2(["x" * 21]), 422, "has 21 characters; the limit is 20"),
        (v2(["a"], outputs=[{"name": "logits"}]), 422, "unknown output 'logits'"),
        (v2(["a"], id=5), 400, "'id' must be a string"),
        (v2(["a"], tensor={"data": "a"}), 400, "'data' must be an array"),
        (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["' + b"a" * 3000 + b'"]}]}', 413, "limit"),
        (json.dumps({"inputs": [1, 2]}).encode(), 422, "exactly one"),
    ],
)  # fmt: skip
def test_v2_bad_requests(body: bytes, status: int, words: str) -> None:
    err = refused(protocol.parse_v2_infer, body, LIMITS)
    assert err.status == status, err.message
    assert words in err.message


def test_v1_ok_both_forms() -> None:
    assert protocol.parse_v1_predict(b'{"instances": ["a", "b"]}', LIMITS) == ["a", "b"]
    assert protocol.parse_v1_predict(b'{"instances": [{"text": "a"}]}', LIMITS) == ["a"]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"nope", 400, "not valid JSON"),
        (b'"text"', 400, "not a string"),
        (b'{"inputs": ["a"]}', 400, "'instances' is missing"),
        (b'{"instances": "a"}', 400, "must be an array"),
        (b'{"instances": []}', 422, "is empty"),
        (b'{"instances": [{"txt": "a"}]}', 422, "without a 'text'"),
        (b'{"instances": [null]}', 422, "[0] must be a string, not null"),
        (b'{"instances": ["a","a","a","a","a"]}', 422, "the limit is 4"),
        (b'{"instances": ["aaaaaaaaaaaaaaaaaaaaaaaaa"]}', 422, "characters"),
    ],
)
def test_v1_bad_requests(body: bytes, status: int, words: str) -> None:
    err = refused(protocol.parse_v1_predict, body, LIMITS)
    assert err.status == status, err.message
    assert words in err.message


def test_content_length_checked_before_reading() -> None:
    protocol.check_content_length(None, LIMITS)
    protocol.check_content_length("2048", LIMITS)
    assert refused(protocol.check_content_length, "2049", LIMITS).status == 413
    assert refused(protocol.check_content_length, "lots", LIMITS).status == 400


def test_responses_and_metadata() -> None:
    labels = ["neg", "pos"]
    preds = [Prediction(1, [0.25, 0.75]), Prediction(0, [0.9, 0.1])]
    req = protocol.V2Request(texts=["a", "b"], id="abc")
    out = protocol.v2_response("m", "v1", req, preds, labels)
    by_name = {o["name"]: o for o in out["outputs"]}
    assert out["id"] == "abc" and out["model_name"] == "m"
    assert by_name["label_ids"] == {"name": "label_ids", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert by_name["labels"]["data"] == ["pos", "neg"]
    assert by_name["probabilities"]["shape"] == [2, 2]
    assert by_name["probabilities"]["data"] == [0.25, 0.75, 0.9, 0.1]
    only = protocol.v2_response("m", "v1", protocol.V2Request(["a"], outputs=["labels"]), preds[:1], labels)
    assert [o["name"] for o in only["outputs"]] == ["labels"] and "id" not in only
    v1 = protocol.v1_response(preds[:1], labels)
    assert v1 == {
        "predictions": [{"label": "pos", "labelId": 1, "probabilities": {"neg": 0.25, "pos": 0.75}}]
    }
    meta = protocol.model_metadata("m", "v1", 3)
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][2] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}
    assert meta["platform"] == "onnxruntime"


def test_merge_expositions_one_block_per_family() -> None:
    a = '# HELP x_total X.\n# TYPE x_total counter\nx_total{m="a"} 1.0\n'
    b = '# HELP x_total X.\n# TYPE x_total counter\nx_total{m="b"} 2.0\n'
    merged = merge_expositions([a, b])
    assert merged.count("# TYPE x") == 1
    assert 'x_total{m="a"} 1.0' in merged and 'x_total{m="b"} 2.0' in merged
