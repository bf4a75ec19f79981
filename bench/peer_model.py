"""The model code the peer servers of ``bench.endpoint`` run: the same artifact, tokenizer and threads.

KServe's ``ModelServer`` (``bench/peer_kserve.py``) and Seldon's MLServer
(``bench/peer_mlserver.py``) each run in a venv of their own
(``bench.peers``), where neither rayrelay nor Ray is installed. Both wrap
:class:`OnnxTextClassifier`, which does what a rayrelay model replica does
for a batch of texts, from the same published files:

- the tokenizer from the set's ``hf/tokenizer.json`` (the ``tokenizers``
  package, the Rust tokenizer a transformers fast tokenizer runs), truncated at
  the manifest's ``maxSeqLength`` (longest-first), padded right to the longest
  text of the batch with the pad token of ``tokenizer_config.json``;
- one ``onnxruntime.InferenceSession`` of the chosen ONNX file with the
  replica's thread settings: ``intra`` intra-op threads, 1 inter-op thread,
  idle pool threads not spinning (``session.intra_op.allow_spinning`` = 0);
- softmax over the logits, arg-max label id, label names from the manifest.

:func:`v2_outputs` gives the three OIP v2 output tensors rayrelay answers with
(``label_ids``, ``labels``, ``probabilities``), so the bench can check that every
contender gives the same answers for the same texts. Nothing here imports a
serving framework: ``tests/unit/test_peer_model.py`` runs it in ``.venv``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return out


class OnnxTextClassifier:
    """Texts in, (label ids, probabilities) out: one tokenizer call and one session run per batch."""

    def __init__(
        self, model_path: str, tokenizer_dir: str, labels: list[str], max_length: int, intra: int
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(tokenizer_dir)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        pad_token = config.get("pad_token")
        if isinstance(pad_token, dict):
            pad_token = pad_token.get("content")
        pad_token = pad_token or (self.tokenizer.padding or {}).get("pad_token") or "[PAD]"
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no pad token {pad_token!r}")
        self.tokenizer.enable_truncation(max_length, strategy="longest_first")
        self.tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, intra)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.labels = list(labels)
        self.threads = (options.intra_op_num_threads, options.inter_op_num_threads)

    def feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.array(columns[name], dtype=np.int64) for name in self.input_names}

    def predict(self, texts: list[str]) -> tuple[list[int], np.ndarray]:
        logits = self.session.run([self.output_name], self.feeds(texts))[0]
        probs = softmax(np.asarray(logits, dtype=np.float32))
        return probs.argmax(axis=1).tolist(), probs


def v2_outputs(ids: list[int], probs: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """rayrelay's three OIP v2 output tensors (name, datatype, shape, data) for a batch."""
    n, k = probs.shape
    return [
        {"name": "label_ids", "datatype": "INT64", "shape": [n], "data": list(ids)},
        {"name": "labels", "datatype": "BYTES", "shape": [n], "data": [labels[i] for i in ids]},
        {"name": "probabilities", "datatype": "FP32", "shape": [n, k], "data": probs.reshape(-1).tolist()},
    ]


def text_inputs(inputs: list[dict[str, Any]]) -> list[str]:
    """The texts of an OIP v2 request's inputs as JSON (one BYTES tensor), as strings."""
    if len(inputs) != 1 or inputs[0].get("datatype") != "BYTES":
        raise ValueError("expected one BYTES input tensor of texts")
    data = inputs[0].get("data")
    if not isinstance(data, list) or not data:
        raise ValueError("the BYTES input has no texts")
    return [d.decode() if isinstance(d, bytes) else str(d) for d in data]


def v2_answer(body: dict[str, Any]) -> tuple[list[int], list[float]]:
    """(label ids, flattened probabilities) of an OIP v2 response body, whichever server wrote it."""
    outputs = {o.get("name"): o for o in body.get("outputs") or []}
    if "label_ids" not in outputs or "probabilities" not in outputs:
        raise ValueError(f"the response lacks label_ids or probabilities: {sorted(map(str, outputs))}")
    ids = [int(x) for x in np.asarray(outputs["label_ids"]["data"]).reshape(-1)]
    probs = [float(x) for x in np.asarray(outputs["probabilities"]["data"], dtype=np.float64).reshape(-1)]
    return ids, probs
