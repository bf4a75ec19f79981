"""``bench.embeddings``' pure pieces: infinity-emb's command line and answers, the table, the thread cap.

infinity-emb itself runs from a venv the bench makes with pip (``bench.peers``, minutes),
so it is not in the unit tests; what is checked here, in ``.venv``:

- ``openai_vectors`` reads an OpenAI embeddings response back in input order and refuses
  one that is short, has gaps in its indexes, or is not float vectors;
- ``infinity_args`` gives each sweep setting its engine, batch 32, no vector cache, mean
  pooling (the model's; infinity's optimum engine reads "auto" as CLS), and the fp32 file
  only where asked;
- the infinity venv's pins share ``.venv``'s onnxruntime and torch and not numpy (infinity
  needs numpy<2);
- ``bench.peer_infinity.limit_onnxruntime_threads`` gives a real onnxruntime session (a
  small ONNX graph, ``tests/tiny_classifier.py``) the bench's threads when the caller set
  none, and keeps a count the caller set;
- ``table`` prints every row's ratio to sentence-transformers, the kernel bound and
  infinity's rows, names the winner at 32 clients from the figures, and still renders a
  result written before these rows existed.
"""

from __future__ import annotations

import copy
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from bench import peers
from bench.embeddings import INFINITY_SWEEP, infinity_args, openai_vectors, table, winner_at
from bench.peer_infinity import limit_onnxruntime_threads
from tests.tiny_classifier import write_tiny_classifier


def test_openai_vectors_in_input_order() -> None:
    doc = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
            {"object": "embedding", "index": 0, "embedding": [1, 0]},
        ],
    }
    assert openai_vectors(doc, 2) == [[1.0, 0.0], [0.0, 1.0]]


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [1.0]}],  # one vector for two texts
        [{"index": 0, "embedding": [1.0]}, {"index": 2, "embedding": [1.0]}],  # a gap
        [{"index": 0, "embedding": "AACAPw=="}, {"index": 1, "embedding": "AACAPw=="}],  # base64
        None,
    ],
)
def test_openai_vectors_refuses_a_wrong_answer(data: Any) -> None:
    with pytest.raises(ValueError):
        openai_vectors({"data": data}, 2)


def test_infinity_args_per_setting() -> None:
    by_label = {label: infinity_args(options, 4321) for label, options in INFINITY_SWEEP}
    for args in by_label.values():
        assert args[args.index("--model-id") + 1] == "."
        assert args[args.index("--batch-size") + 1] == "32"
        assert args[args.index("--port") + 1] == "4321"
        assert args[args.index("--device") + 1] == "cpu"
        assert "--no-vector-disk-cache" in args
        assert args[args.index("--pooling-method") + 1] == "mean"  # the model's pooling, for every engine
    engines = {label: args[args.index("--engine") + 1] for label, args in by_label.items()}
    assert sorted(engines.values()) == ["optimum", "optimum", "torch", "torch"]
    bf16 = [label for label, args in by_label.items() if "--dtype" in args and args[-1] == "bfloat16"]
    assert bf16 == ["engine torch, --dtype bfloat16"]
    fp32_only = [label for label, args in by_label.items() if "--onnx-do-not-prefer-quantized" in args]
    assert fp32_only == ["engine optimum, ONNX fp32"]


def test_infinity_pins_share_the_kernels_not_numpy() -> None:
    pinned = peers.pins("infinity")
    assert f"onnxruntime=={version('onnxruntime')}" in pinned
    assert f"torch=={version('torch')}" in pinned
    assert not any(p.startswith("numpy") for p in pinned)
    assert any(p.startswith("infinity-emb[") and "==" in p for p in pinned)
    assert peers.venv_dir("infinity") != peers.venv_dir("kserve")


def test_onnxruntime_thread_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    model = str(write_tiny_classifier(tmp_path / "model.onnx"))
    monkeypatch.setattr(ort.InferenceSession, "__init__", ort.InferenceSession.__init__)  # restored after
    limit_onnxruntime_threads(3)
    plain = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert plain.get_session_options().intra_op_num_threads == 3
    assert plain.get_session_options().inter_op_num_threads == 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    own = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    assert own.get_session_options().intra_op_num_threads == 1


def _server(rates: dict[str, float], batched: float) -> dict[str, Any]:
    row = {"p50_ms": 10.0, "p99_ms": 20.0}
    return {
        "one_text_per_request": {c: {"sentences_per_s": r, **row} for c, r in rates.items()},
        "batch32_one_client": {"sentences_per_s": batched, **row},
    }


def _agreement(name: str) -> dict[str, Any]:
    return {
        "pairs": 74,
        "cosine_min": 0.99,
        "recall_at_1": {name: 0.95, "sentence_transformers": 0.95},
        "mrr": {name: 0.97, "sentence_transformers": 0.97},
        "same_top1_share": 1.0,
    }


def _infinity(at_32: float, sweep: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """infinity-emb's result with torch at 32 clients making ``at_32`` sentences/s."""
    return {
        **_server({"1": 40.0, "8": 90.0, "32": at_32}, 160.0),
        "server": "infinity-emb 0.0.78",
        "pins": ["infinity-emb[server,torch]==0.0.78"],
        "setting": "engine torch (fp32)",
        "threads": 2,
        "sweep": sweep or [],
        "agreement": _agreement("infinity"),
    }


OLD_DOC: dict[str, Any] = {
    "variant": "int8",
    "texts": 256,
    "instruction_set": "avx512_vnni",
    "load_average_before": [1.0, 1.0, 1.0],
    "load_average_at_end": [1.0, 1.0, 1.0],
    "command": "python -m bench --only embeddings",
    "sentence_transformers": {"sentences_per_s": 200.0, "batch32_p50_ms": 150.0, "batch32_p99_ms": 180.0},
    "endpoint": _server({"1": 50.0, "8": 100.0, "32": 150.0}, 180.0),
    "agreement": _agreement("endpoint"),
}


def test_table_of_a_result_without_kernel_or_infinity() -> None:
    text = "\n".join(table(OLD_DOC))
    assert "| endpoint /v1/embeddings, 32 client(s), 1 text each | 150.0 | 0.75x |" in text
    assert "infinity" not in text and "kernel" not in text.lower()


def test_table_with_kernel_bound_and_infinity() -> None:
    doc = copy.deepcopy(OLD_DOC)
    doc["kernel"] = {
        "int8": {
            "sentences_per_s": 400.0,
            "batch32_p50_ms": 79.0,
            "batch32_p99_ms": 90.0,
            "intra_op_threads": 2,
        },
        "fp32": {
            "sentences_per_s": 230.0,
            "batch32_p50_ms": 137.0,
            "batch32_p99_ms": 150.0,
            "intra_op_threads": 2,
        },
        "bf16": {
            "sentences_per_s": 610.0,
            "batch32_p50_ms": 52.0,
            "batch32_p99_ms": 60.0,
            "intra_op_threads": 2,
            "runtime": "openvino",
        },
    }
    doc["sentence_transformers_bf16"] = {
        "sentences_per_s": 500.0,
        "batch32_p50_ms": 64.0,
        "batch32_p99_ms": 70.0,
        "torch_threads": 2,
        "dtype": "bfloat16",
    }
    doc["infinity"] = _infinity(
        120.0,
        [
            {
                "setting": "engine torch (fp32)",
                "geomean_sentences_per_s": 75.6,
                "agreement": {"cosine_min": 1.0},
            }
        ],
    )
    text = "\n".join(table(doc))
    bf16_st = "| sentence-transformers encode, bf16 weights (torch_dtype bfloat16), batch 32, 1 process"
    assert f"{bf16_st} | 500.0 | 2.50x |" in text  # the ratio stays to fp32's encode
    kernel = "| kernel bound: published {} ONNX, {} session alone, batch 32, 2 threads | {} |"
    assert kernel.format("int8", "onnxruntime", "400.0 | 2.00x") in text  # a record without runtime
    assert kernel.format("fp32", "onnxruntime", "230.0 | 1.15x") in text
    assert kernel.format("bf16", "openvino", "610.0 | 3.05x") in text
    assert (
        "| infinity-emb (engine torch (fp32)) /embeddings, 32 client(s), 1 text each | 120.0 | 0.60x |"
        in text
    )
    assert (
        "| infinity-emb (engine torch (fp32)) /embeddings, 1 client, 32 texts each | 160.0 | 0.80x |" in text
    )
    assert (
        "At 32 clients of one text each, rayrelay /v1/embeddings wins: 150.0 sentences/s against 120.0"
        in text
    )
    assert "Agreement of infinity-emb on the 74 validation pairs" in text
    assert "not eligible" not in text
    doc["infinity"]["sweep"][0]["agreement"]["cosine_min"] = 0.5  # vectors unlike the model's
    assert "(cosine 0.5000, below 0.95: not eligible)" in "\n".join(table(doc))
    # the winner follows the figures, not the order of the servers
    doc["infinity"]["one_text_per_request"]["32"]["sentences_per_s"] = 300.0
    assert winner_at(doc, 32)[0] == ("infinity-emb (engine torch (fp32))", 300.0)
    assert "infinity-emb (engine torch (fp32)) wins: 300.0 sentences/s" in "\n".join(table(doc))


def test_table_with_the_second_split_and_the_one_hop_route() -> None:
    """A result with the endpoint measured twice (1 x 2 threads, then 2 x 1 thread) and OIP
    infer at 32 clients: both splits get their rows, and the winner line ranks every route."""
    doc = copy.deepcopy(OLD_DOC)
    doc["endpoint"]["oip_infer_32_clients"] = {"sentences_per_s": 190.0, "p50_ms": 9.0, "p99_ms": 19.0}
    doc["endpoint_split"] = {
        "replicas": 2,
        "cpus": 1,
        "intra_op_threads": 1,
        **_server({"1": 55.0, "8": 110.0, "32": 160.0}, 170.0),
        "oip_infer_32_clients": {"sentences_per_s": 260.0, "p50_ms": 8.0, "p99_ms": 18.0},
    }
    doc["infinity"] = _infinity(200.0)
    text = "\n".join(table(doc))
    one, two = "endpoint, 1 replica x 1 CPU (2 threads)", "endpoint, 2 replicas x 1 CPU (1 thread each)"
    assert f"| {one} /v1/embeddings, 32 client(s), 1 text each | 150.0 | 0.75x |" in text
    assert f"| {two} /v1/embeddings, 32 client(s), 1 text each | 160.0 | 0.80x |" in text
    assert (
        f"| {two} OIP /v2/models/{{name}}/infer, 32 clients, 1 text each (no gateway hop) | 260.0 |" in text
    )
    assert "then as 2 replicas of 1 CPU with 1 thread each on the same head" in text
    ranked = winner_at(doc, 32)
    assert [rate for _, rate in ranked] == [260.0, 200.0, 190.0, 160.0, 150.0]
    assert ranked[0][0] == f"rayrelay OIP infer, one hop ({two})"
    assert f"rayrelay OIP infer, one hop ({two}) wins: 260.0 sentences/s against 200.0" in text


def test_table_with_the_one_hop_openai_route() -> None:
    """OpenAI's embeddings on the model's own base (no gateway), measured at 32 clients: its
    row, and its place in the winner line by its figure."""
    doc = copy.deepcopy(OLD_DOC)
    doc["endpoint"]["openai_one_hop_32_clients"] = {"sentences_per_s": 240.0, "p50_ms": 9.5, "p99_ms": 21.0}
    doc["infinity"] = _infinity(200.0)
    text = "\n".join(table(doc))
    row = "| endpoint OpenAI /v2/models/{name}/openai/v1/embeddings, 32 clients, 1 text each (the model's own base: no gateway hop) | 240.0 |"
    assert row in text, text
    ranked = winner_at(doc, 32)
    assert ranked[0] == ("rayrelay OpenAI embeddings, one hop (endpoint)", 240.0)
    assert "rayrelay OpenAI embeddings, one hop (endpoint) wins: 240.0 sentences/s against 200.0" in text
    # two of rayrelay's routes ahead: the winner line weighs the first against the peer, not the other route
    doc["endpoint"]["oip_infer_32_clients"] = {"sentences_per_s": 250.0, "p50_ms": 9.0, "p99_ms": 20.0}
    text = "\n".join(table(doc))
    assert "wins: 250.0 sentences/s against 200.0 for infinity-emb (engine torch (fp32)) (1.25x)" in text, (
        text
    )
