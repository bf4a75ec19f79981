"""Sentence embeddings (issue 27): the loss, pooling, retrieval figures, gate, data, OpenAI route.

Pure pieces of ``rayrelay_workloads.embedding`` on small arrays and a tiny torch batch
(no Ray, no model download). The pooling is checked against sentence-transformers'
own Pooling(mean) + Normalize modules, the loss against the formula written out in
numpy. The gateway tests run the gateway class in-process (as ``test_gateway_resilience``
does) with a fake model handle whose ``embeddings`` method stands in for an
``EmbeddingServer`` replica: it judges the body with the replica's own parser
(``openai_api.parse_embeddings``) and answers fixed vectors.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_gateway_resilience import INFO, NAME, FakeHandle, _Method, make_gateway, running
from textgen_replica import http_request

from rayrelay_core.api import QualityGate, RequestLimits
from rayrelay_workloads.data import DataError
from rayrelay_workloads.embedding import make_pairs, objective
from rayrelay_workloads.embedding import openai_api as oa
from rayrelay_workloads.embedding.data import PairFields, parse_pairs
from rayrelay_workloads.embedding.gate import bf16_cosine_decision, check_retrieval, int8_cosine_decision
from rayrelay_workloads.quality import QualityGateError
from rayrelay_workloads.serve.protocol import ProtocolError

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "examples" / "data"
LIMITS = RequestLimits.model_validate({"maxTextsPerRequest": 4, "maxTextChars": 50, "maxBodyBytes": 65536})
DIM = 3


# ------------------------------------------------------------------ pooling and loss


def test_mean_pool_matches_sentence_transformers_and_ignores_padding() -> None:
    from sentence_transformers.models import Normalize, Pooling

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    ours = objective.mean_pool(hidden, mask)
    features = {"token_embeddings": hidden, "attention_mask": mask}
    theirs = Normalize()(Pooling(8, pooling_mode="mean")(features))["sentence_embedding"]
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(3), atol=1e-6)
    changed = hidden.clone()
    changed[1, 2:] += 100.0  # padding positions: no effect
    assert torch.allclose(objective.mean_pool(changed, mask), ours, atol=1e-6)


def _numpy_loss(a: np.ndarray, candidates: np.ndarray, scale: float) -> float:
    scores = scale * a @ candidates.T
    scores -= scores.max(axis=1, keepdims=True)
    logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(a)), np.arange(len(a))].mean())


def test_ranking_loss_is_cross_entropy_over_in_batch_positives_and_negatives() -> None:
    gen = torch.Generator().manual_seed(1)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
    a, p, n = unit(4, 6), unit(4, 6), unit(2, 6)
    without = objective.ranking_loss(a, p)
    with_neg = objective.ranking_loss(a, p, n)
    assert float(without) == pytest.approx(_numpy_loss(a.numpy(), p.numpy(), objective.SCALE), rel=1e-5)
    both = np.concatenate([p.numpy(), n.numpy()])
    assert float(with_neg) == pytest.approx(_numpy_loss(a.numpy(), both, objective.SCALE), rel=1e-5)
    # Matching pairs score far better than the same vectors with the positives rolled.
    assert float(objective.ranking_loss(a, a)) < float(objective.ranking_loss(a, a.roll(1, dims=0)))
    # An empty negatives tensor is the same as none.
    assert float(objective.ranking_loss(a, p, torch.zeros(0, 6))) == pytest.approx(float(without))


def test_ranking_loss_has_gradients_that_pull_the_pairs_together() -> None:
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=-1).requires_grad_()
    p = torch.nn.functional.normalize(torch.tensor([[0.3, 1.0], [1.0, 0.3]]), dim=-1)
    loss = objective.ranking_loss(a, p)
    loss.backward()
    step = a.detach() - 0.1 * a.grad
    assert float(objective.ranking_loss(step, p)) < float(loss.detach())


# ------------------------------------------------------------------ retrieval figures


def test_retrieval_recall_and_mrr() -> None:
    eye = np.eye(4)
    assert objective.retrieval(eye, eye) == objective.Retrieval(1.0, 1.0, 4)
    # anchor 0 ranks its positive second (positive 1 is closer), the others first.
    anchors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    positives = np.array([[0.6, 0.0, 0.8], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    found = objective.retrieval(anchors, positives)
    assert found.recall_at_1 == pytest.approx(2 / 3)
    assert found.mrr == pytest.approx((0.5 + 1 + 1) / 3)


def test_retrieval_counts_ties_against_the_anchor() -> None:
    same = np.ones((5, 3))
    found = objective.retrieval(same, same)
    assert found.recall_at_1 == 0.0 and found.mrr == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="equal"):
        objective.retrieval(np.ones((2, 3)), np.ones((3, 3)))


def test_cosine_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert np.allclose(objective.cosine_rows(a, b), [1.0, -1.0, np.sqrt(0.5)])


# ------------------------------------------------------------------ gate


def test_retrieval_gate_names_the_field_and_the_shortfall() -> None:
    gate = QualityGate(min_recall_at1=0.8, min_mrr=0.9)
    check_retrieval(gate, 0.8, 0.95, "the trained model's")
    with pytest.raises(
        QualityGateError, match=r"recall@1 .* 0\.700 is below qualityGate\.minRecallAt1 0\.8 by 0\.100"
    ):
        check_retrieval(gate, 0.7, 0.95, "the trained model's")
    with pytest.raises(QualityGateError, match=r"qualityGate\.minMrr 0\.9"):
        check_retrieval(gate, 0.9, 0.85, "x")
    with pytest.raises(QualityGateError, match="not measured"):
        check_retrieval(gate, None, 0.95, "x")
    check_retrieval(QualityGate(), None, None, "x")  # no gate: nothing to judge


def test_int8_cosine_decision() -> None:
    assert int8_cosine_decision(QualityGate(), 0.5).accepted
    gate = QualityGate(min_int8_cosine=0.99)
    accepted = int8_cosine_decision(gate, 0.995)
    assert accepted.accepted and accepted.recommended_variant == "int8"
    refused = int8_cosine_decision(gate, 0.97)
    assert not refused.accepted and refused.recommended_variant == "fp32"
    assert "qualityGate.minInt8Cosine 0.99" in (refused.reason or "")
    assert not int8_cosine_decision(gate, None).accepted


def test_bf16_cosine_decision() -> None:
    assert bf16_cosine_decision(QualityGate(), 0.5).accepted  # no gate: any measured bf16
    gate = QualityGate(min_bf16_cosine=0.999)
    assert bf16_cosine_decision(gate, 0.9995).accepted
    refused = bf16_cosine_decision(gate, 0.998)
    assert not refused.accepted and "qualityGate.minBf16Cosine 0.999" in (refused.reason or "")
    missing = bf16_cosine_decision(QualityGate(), None, "OpenVINO is not installed")
    assert not missing.accepted and "OpenVINO is not installed" in (missing.reason or "")


# ------------------------------------------------------------------ data


def test_pairs_parse_with_optional_negatives_and_field_names() -> None:
    rows = b'{"q": "a", "d": "b"}\n{"q": "c", "d": "e", "n": "f"}\n'
    pairs = parse_pairs(rows, "jsonl", "mem://p", PairFields("q", "d", "n"))
    assert [(p.anchor, p.positive, p.negative, p.row) for p in pairs] == [
        ("a", "b", None, 1),
        ("c", "e", "f", 2),
    ]
    assert PairFields.of({"anchorField": "q"}) == PairFields("q", "positive", "negative")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"anchor": "a"}\n', "row 1: missing field 'positive'"),
        (b'{"anchor": "a", "positive": 3}\n', "row 1: field 'positive' must be a string"),
        (b'{"anchor": " ", "positive": "b"}\n', "row 1: field 'anchor' is blank"),
        (b'{"anchor": "a", "positive": "b", "negative": ["x"]}\n', "field 'negative' must be a string"),
        (b"", "holds no rows"),
        (b"[1]\n", "expected an object"),
    ],
)
def test_bad_pairs_name_the_row_and_field(body: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        parse_pairs(body, "jsonl", "mem://p", PairFields())


def test_shipped_pairs_are_what_make_pairs_builds_and_each_validation_anchor_has_one_answer() -> None:
    train, validation = make_pairs.build(REPO / "examples" / "data")
    for name, rows in (("embedding-train.jsonl", train), ("embedding-validation.jsonl", validation)):
        shipped = [json.loads(line) for line in (REPO / "examples" / "data" / name).read_text().splitlines()]
        assert shipped == rows, f"{name} is not what make_pairs builds: regenerate it"
    tickets = [*make_pairs.read(DATA / "train.jsonl"), *make_pairs.read(DATA / "validation.jsonl")]
    filler = make_pairs.fillers([r["text"] for r in tickets])  # as build() finds them
    problems = [make_pairs.problem_of(r["positive"], filler) for r in validation]
    assert len(set(problems)) == len(problems)  # one pair per problem
    assert all(
        make_pairs.problem_of(r["anchor"], filler) == p for r, p in zip(validation, problems, strict=True)
    )
    assert 0.3 < sum("negative" in r for r in train) / len(train) < 0.7


# ------------------------------------------------------------------ OpenAI /v1/embeddings


def body(**doc: Any) -> bytes:
    return json.dumps({"model": "emb", **doc}).encode()


def test_parse_embeddings_accepts_a_string_or_a_list() -> None:
    one = oa.parse_embeddings(body(input="hello"), LIMITS, DIM)
    assert one == oa.EmbeddingsRequest("emb", ["hello"], "float")
    many = oa.parse_embeddings(
        body(input=["a", "b"], encoding_format="base64", dimensions=DIM, user="u"), LIMITS, DIM
    )
    assert many.texts == ["a", "b"] and many.encoding_format == "base64"


@pytest.mark.parametrize(
    ("doc", "status", "message"),
    [
        ({"input": ["a"] * 5}, 400, "input has 5 texts; the limit is 4"),
        ({"input": ["ok", "x" * 51]}, 400, "input[1] has 51 characters; the limit is 50"),
        ({"input": "x" * 51}, 400, "input has 51 characters"),
        ({"input": []}, 400, "input is an empty list"),
        ({"input": ["a", ""]}, 400, "input[1] is empty"),
        ({}, 400, "input is required"),
        ({"input": [1, 2, 3]}, 400, "token arrays are not supported"),
        ({"input": [[1, 2]]}, 400, "token arrays are not supported"),
        ({"input": {"a": 1}}, 400, "input must be a string or a list of strings"),
        (
            {"input": "a", "dimensions": 2},
            400,
            "dimensions 2 is not supported: this model returns 3-dimensional",
        ),
        ({"input": "a", "dimensions": True}, 400, "dimensions must be an integer"),
        ({"input": "a", "encoding_format": "int8"}, 400, "encoding_format must be 'float' or 'base64'"),
        ({"input": "a", "temperature": 1}, 400, "unknown field(s) ['temperature']"),
        ({"input": "a", "user": 5}, 400, "user must be a string"),
        ({"input": "a", "model": ""}, 400, "model is required"),
        ({"input": "a", "model": "m" * 64}, 404, "not found"),
        ({"input": ["a", "bad \ud800"]}, 400, "input[1] is not valid Unicode"),
    ],
)
def test_parse_embeddings_refuses_with_the_field_named(
    doc: dict[str, Any], status: int, message: str
) -> None:
    with pytest.raises(ProtocolError) as err:
        oa.parse_embeddings(body(**doc), LIMITS, DIM)
    assert err.value.status == status and message in err.value.message, err.value.message


def test_embeddings_response_in_float_and_base64() -> None:
    vectors = [np.array([0.6, 0.8, 0.0], dtype=np.float32), np.array([0.0, 0.0, 1.0], dtype=np.float32)]
    floats = oa.embeddings_response("emb", vectors, 7, "float")
    assert floats["object"] == "list" and floats["model"] == "emb"
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][0]["embedding"] == pytest.approx([0.6, 0.8, 0.0])
    packed = oa.embeddings_response("emb", vectors, 7, "base64")["data"][1]["embedding"]
    assert np.frombuffer(base64.b64decode(packed), dtype="<f4").tolist() == [0.0, 0.0, 1.0]


# Hostile bodies: every one is a short 4xx from the parser, never an exception of another kind.
HOSTILE = {
    "arrays 100,000 deep": ("[" * 100_000 + "]" * 100_000).encode(),
    "input 20,000 deep": ('{"model": "emb", "input": ' + "[" * 20_000 + '"a"' + "]" * 20_000 + "}").encode(),
    "empty": b"",
    "not UTF-8": b'\xff\xfe{"model": "emb"}',
    "not an object": b"[1, 2]",
    "truncated": b'{"model": "emb", "input": ',
    "a 5000-digit dimensions": b'{"model": "emb", "input": "a", "dimensions": ' + b"9" * 5000 + b"}",
    "1e400 dimensions": b'{"model": "emb", "input": "a", "dimensions": 1e400}',
    "a 5000-digit input": b'{"model": "emb", "input": [' + b"1" * 5000 + b"]}",
    "10,000 unknown fields": ("{" + ",".join(f'"f-{i}-{"x" * 30}": 1' for i in range(10_000)) + "}").encode(),
    "over the body limit": b'{"model": "emb", "input": "' + b"x" * 70_000 + b'"}',
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_are_a_short_4xx(case: str) -> None:
    with pytest.raises(ProtocolError) as err:
        oa.parse_embeddings(HOSTILE[case], LIMITS, DIM)
    assert 400 <= err.value.status < 500 and 0 < len(err.value.message) < 300, err.value.message


def embedding_handle(task: str = "sentence-embedding") -> FakeHandle:
    """A fake handle standing in for an EmbeddingServer replica (see the module docstring)."""
    handle = FakeHandle()

    async def info() -> dict[str, Any]:
        from rayrelay_workloads.embedding.serving import oip_metadata

        return {
            **INFO,
            "labels": [],
            "task": task,
            "dimension": DIM,
            "metadata": oip_metadata(NAME, str(INFO["version"]), DIM),
            "routes": f"/v2/models/{NAME}/infer or /v1/embeddings",
        }

    async def embeddings(raw: bytes) -> dict[str, Any]:
        try:
            req = oa.parse_embeddings(raw, RequestLimits.model_validate(INFO["limits"]), DIM)
        except ProtocolError as exc:
            return {"status": exc.status, "body": oa.error_body(exc.status, exc.message)}
        vectors = [np.ones(DIM, dtype=np.float32) / np.sqrt(DIM) for _ in req.texts]
        return {
            "status": 200,
            "body": oa.embeddings_response(req.model, vectors, len(req.texts), req.encoding_format),
        }

    handle.info = _Method(info)
    handle.embeddings = _Method(embeddings)  # type: ignore[attr-defined]
    return handle


def gateway_answer(raw: bytes, handle: FakeHandle | None = None, method: str = "POST") -> tuple[int, Any]:
    async def scenario() -> Any:
        req = http_request("/v1/embeddings", raw, method=method)
        return await make_gateway(handle or embedding_handle(), lambda: running())(req)

    response = asyncio.run(scenario())
    return response.status_code, json.loads(response.body)


def test_the_gateway_forwards_v1_embeddings_to_the_model_it_names() -> None:
    status, doc = gateway_answer(json.dumps({"model": NAME, "input": ["a", "b"]}).encode())
    assert status == 200, doc
    assert len(doc["data"]) == 2 and doc["model"] == NAME


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        (json.dumps({"model": "nobody", "input": "a"}).encode(), 404, "model 'nobody' not found"),
        (json.dumps({"input": "a"}).encode(), 400, "model is required"),
        (json.dumps({"model": NAME, "input": ["a"] * 9}).encode(), 400, "input has 9 texts; the limit is 8"),
        (json.dumps({"model": NAME, "input": "a", "dimensions": 7}).encode(), 400, "dimensions 7"),
        (('{"a":' * 20_000 + "1" + "}" * 20_000).encode(), 400, "nested too deeply"),
    ],
)
def test_the_gateway_refuses_bad_embeddings_requests_with_4xx(raw: bytes, status: int, message: str) -> None:
    got, doc = gateway_answer(raw)
    assert got == status and message in doc["error"]["message"], doc
    assert doc["error"]["type"] == "invalid_request_error"  # OpenAI's shape, which its client reads


def test_v1_embeddings_of_a_classifier_is_400_and_get_is_405() -> None:
    status, doc = gateway_answer(json.dumps({"model": NAME, "input": "a"}).encode(), FakeHandle())
    assert status == 400 and "not a sentence-embedding model" in doc["error"]["message"]
    status, doc = gateway_answer(b"", method="GET")
    assert status == 405, doc


def test_the_gateway_describes_an_embedding_model_by_its_vectors_and_points_v1_predict_to_its_routes() -> (
    None
):
    async def scenario(path: str, method: str, body: bytes = b"") -> Any:
        return await make_gateway(embedding_handle(), lambda: running())(
            http_request(path, body, method=method)
        )

    response = asyncio.run(scenario(f"/v2/models/{NAME}", "GET"))
    assert response.status_code == 200
    doc = json.loads(response.body)
    assert doc["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}]
    assert doc["inputs"][0]["datatype"] == "BYTES"
    response = asyncio.run(scenario(f"/v1/models/{NAME}:predict", "POST", b'{"instances": ["a"]}'))
    assert response.status_code == 400
    assert "/v1/embeddings" in json.loads(response.body)["error"]


def embedding_replica(keys: list[str] | None = None) -> Any:
    """An ``EmbeddingServer`` as its constructor leaves it, but for the model: ``embed`` (the
    batcher and the ONNX session) answers fixed unit vectors. The routing, keys, parsing,
    refusals and metrics are the replica's own."""
    from types import SimpleNamespace
    from typing import cast

    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_core.apikeys import KeyCheck, digest
    from rayrelay_workloads.embedding.serving import EmbeddingServer
    from rayrelay_workloads.serve.metrics import ReplicaMetrics

    server = object.__new__(cast(Any, EmbeddingServer).func_or_class)
    server.name, server.dimension, server._parsing = NAME, DIM, 0
    server.spec = ModelDeploymentSpec.model_validate(
        {"model": {"manifestUri": "file:///models/manifest.json"}, "limits": {"maxTextsPerRequest": 8}}
    )
    server.artifacts = SimpleNamespace(digest="sha256:" + "ab" * 32)
    server.keys = KeyCheck(digest(k) for k in keys) if keys else None
    server.metrics = ReplicaMetrics(NAME, "r1")

    async def embed(texts: list[str]) -> tuple[list[np.ndarray], int]:
        return [np.ones(DIM, dtype=np.float32) / np.sqrt(DIM) for _ in texts], 3 * len(texts)

    server.embed = embed
    return server


def replica_answer(
    server: Any, path: str, body: Any = None, method: str = "POST", **headers: str
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    response = asyncio.run(server(http_request(path, raw, method=method, headers=headers)))
    return response.status_code, json.loads(response.body)


def test_the_replica_answers_openai_embeddings_on_the_models_own_base_in_one_hop() -> None:
    """``/v2/models/{name}/openai/v1/embeddings`` (the route prefix is all of /v2/models/{name}):
    OpenAI's answer and refusals straight from the replica, its metadata and readiness too."""
    server = embedding_replica()
    base = f"/v2/models/{NAME}/openai/v1/embeddings"
    status, doc = replica_answer(
        server, base, {"model": NAME, "input": ["a", "b"], "encoding_format": "float"}
    )
    assert status == 200 and doc["model"] == NAME and len(doc["data"]) == 2, doc
    assert doc["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert np.allclose(doc["data"][1]["embedding"], 1 / np.sqrt(DIM))
    status, doc = replica_answer(server, base, {"model": "other", "input": "a"})
    assert (
        status == 404
        and doc["error"]["code"] == "model_not_found"
        and f"serves {NAME!r}" in doc["error"]["message"]
    )
    status, doc = replica_answer(server, base, {"model": NAME, "input": ["a"] * 9})
    assert status == 400 and "input has 9 texts; the limit is 8" in doc["error"]["message"], doc
    status, doc = replica_answer(server, base, method="GET")
    assert status == 405 and doc["error"]["type"] == "invalid_request_error"
    status, doc = replica_answer(server, f"/v2/models/{NAME}", method="GET")
    assert status == 200 and doc["outputs"][0]["shape"] == [-1, DIM], doc
    assert replica_answer(server, f"/v2/models/{NAME}/ready", method="GET") == (
        200,
        {"name": NAME, "ready": True},
    )
    status, doc = replica_answer(server, f"/v2/models/{NAME}/openai/v1/chat/completions", {"model": NAME})
    assert status == 404, doc


def test_the_one_hop_openai_route_asks_for_the_models_key() -> None:
    server = embedding_replica(keys=["s3cret-key-of-the-model"])
    base = f"/v2/models/{NAME}/openai/v1/embeddings"
    status, _ = replica_answer(server, base, {"model": NAME, "input": "a"})
    assert status == 401
    status, _ = replica_answer(server, base, {"model": NAME, "input": "a"}, Authorization="Bearer wrong")
    assert status == 401
    status, doc = replica_answer(
        server, base, {"model": NAME, "input": "a"}, Authorization="Bearer s3cret-key-of-the-model"
    )
    assert status == 200 and len(doc["data"]) == 1, doc


def test_the_one_hop_openai_route_maps_faults_as_the_replicas_other_routes() -> None:
    """Serve's overload is a 503 with Retry-After, a broken model a 500 whose message names no
    detail: ``ModelServer``'s mapping (``_fault``), in OpenAI's error shape."""
    from ray.serve.exceptions import BackPressureError

    server = embedding_replica()
    base = f"/v2/models/{NAME}/openai/v1/embeddings"
    for exc, status in (
        (BackPressureError(num_queued_requests=64, max_queued_requests=64), 503),
        (RuntimeError("the session failed"), 500),
    ):

        async def embed(texts: list[str], exc: Exception = exc) -> Any:
            raise exc

        server.embed = embed
        raw = json.dumps({"model": NAME, "input": "a"}).encode()
        response = asyncio.run(server(http_request(base, raw)))
        doc = json.loads(response.body)
        assert response.status_code == status, doc
        assert doc["error"]["type"] == "server_error"
        assert ("retry-after" in response.headers) == (status == 503)
        assert "the session failed" not in doc["error"]["message"]
