"""Peer 1 of ``bench.endpoint``: KServe's Python ``ModelServer`` serving the rayrelay artifact.

Runs in the bench's own KServe venv (``bench.peers``), the way KServe's docs
write a custom predictor: a ``kserve.Model`` subclass whose ``load()`` builds
the model and whose ``predict()`` takes the decoded OIP v2 ``InferRequest``,
started by ``kserve.ModelServer().start([model])`` with KServe's own command
line (``--http_port``, ``--workers``, ...). The model is
``bench.peer_model.OnnxTextClassifier``: the same ONNX file, tokenizer and
onnxruntime thread settings as a rayrelay replica.

With ``--workers N`` > 1 KServe starts N uvicorn processes by ``spawn`` and
hands each the pickled model, so the model pickles without its session and
loads again in the worker (``__getstate__`` / ``__setstate__``).

``python -m bench.peer_kserve --model_name NAME --http_port PORT --workers N
--onnx FILE --tokenizer DIR --labels JSON --max-length N --threads N``
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

from bench.peer_model import OnnxTextClassifier, text_inputs, v2_outputs


class TextClassifier(Model):  # type: ignore[misc]
    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        super().__init__(name)
        self.settings = settings
        self.classifier: OnnxTextClassifier | None = None

    def load(self) -> bool:
        s = self.settings
        self.classifier = OnnxTextClassifier(
            s["onnx"], s["tokenizer"], s["labels"], s["max_length"], s["threads"]
        )
        self.ready = True
        return self.ready

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["classifier"] = None  # an onnxruntime session does not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.ready:
            self.load()

    async def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> InferResponse:
        assert self.classifier is not None
        inputs = [{"datatype": i.datatype, "data": i.data} for i in payload.inputs]
        ids, probs = self.classifier.predict(text_inputs(inputs))
        outputs = [
            InferOutput(name=o["name"], shape=o["shape"], datatype=o["datatype"], data=o["data"])
            for o in v2_outputs(ids, probs, self.classifier.labels)
        ]
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)


def main() -> None:
    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--labels", required=True, help="JSON list of label names")
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per worker")
    args, _ = parser.parse_known_args()
    settings = {
        "onnx": args.onnx,
        "tokenizer": args.tokenizer,
        "labels": json.loads(args.labels),
        "max_length": args.max_length,
        "threads": args.threads,
    }
    model = TextClassifier(args.model_name, settings)
    model.load()
    ModelServer().start([model])


if __name__ == "__main__":
    main()
