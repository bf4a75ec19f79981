"""A small ONNX text classifier whose logits are a known function of the token ids.

Stands in for a fine-tuned model where a test needs a real onnxruntime session
and a real tokenizer but not a trained model (the endpoint bench's peer
servers: ``tests/unit/test_peer_model.py``, ``tests/integration/test_bench_peers.py``):
logits = (sum of input_ids * attention_mask + sum of token_type_ids) x :data:`WEIGHTS`,
so a test can compute the expected answer from the feeds with numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ["account", "billing", "delivery", "technical"]
WEIGHTS = np.array([[0.001, -0.002, 0.0005, 0.003]], dtype=np.float32)


def write_tiny_classifier(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Add", ["masked", "token_type_ids"], ["summed_in"]),
        helper.make_node("ReduceSum", ["summed_in", "axes"], ["summed"], keepdims=1),
        helper.make_node("Cast", ["summed"], ["summed_f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["summed_f", "W"], ["logits"]),
    ]
    init = [
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("W", TensorProto.FLOAT, [1, len(LABELS)], WEIGHTS.reshape(-1).tolist()),
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])
    graph = helper.make_graph(nodes, "tiny", inputs, [out], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what this onnxruntime reads (onnx writes a newer one by default)
    onnx.save(model, str(path))
    return path


def expected_probabilities(feeds: dict[str, np.ndarray]) -> np.ndarray:
    summed = (feeds["input_ids"] * feeds["attention_mask"] + feeds["token_type_ids"]).sum(
        axis=1, keepdims=True
    )
    logits = summed.astype(np.float32) @ WEIGHTS
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out
