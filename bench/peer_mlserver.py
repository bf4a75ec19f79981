"""Peer 2 of ``bench.endpoint``: Seldon MLServer serving the rayrelay artifact with a custom runtime.

Runs in the bench's own MLServer venv (``bench.peers``), the way MLServer's
docs write a custom inference runtime: an ``MLModel`` subclass with ``load()``
and ``predict(InferenceRequest) -> InferenceResponse``, named by
``implementation`` in the model's ``model-settings.json`` and started with
``mlserver start FOLDER`` (``bench.peers.mlserver_folder`` writes the folder:
``settings.json`` with the ports and ``parallel_workers``, the model's
``max_batch_size`` / ``max_batch_time`` for adaptive batching, and the
artifact's paths under ``parameters.extra``). The model is
``bench.peer_model.OnnxTextClassifier``: the same ONNX file, tokenizer and
onnxruntime thread settings as a rayrelay replica.

With adaptive batching MLServer merges the BYTES inputs of several requests
into one request (shape ``[n]``) and splits the outputs back by their first
dimension, so ``predict`` answers a batch exactly as it answers one text.
"""

from __future__ import annotations

from typing import Any

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from bench.peer_model import OnnxTextClassifier, v2_outputs


class TextClassifierRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra: dict[str, Any] = dict(self.settings.parameters.extra or {})
        self.classifier = OnnxTextClassifier(
            extra["onnx"],
            extra["tokenizer"],
            list(extra["labels"]),
            int(extra["max_length"]),
            int(extra["threads"]),
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].datatype != "BYTES":
            raise ValueError("expected one BYTES input tensor of texts")
        texts = [str(t) for t in StringCodec.decode_input(payload.inputs[0])]
        ids, probs = self.classifier.predict(texts)
        outputs = [ResponseOutput(**o) for o in v2_outputs(ids, probs, self.classifier.labels)]
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)
