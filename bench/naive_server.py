"""The baseline server of ``bench.endpoint``: what many tutorials show.

One Flask process (the development server, threaded, as ``app.run`` starts it)
that loads the fine-tuned model with transformers and answers every request
with its own PyTorch eager forward pass: no batching, no ONNX, no
quantization. Requests are serialised by a lock, because one PyTorch model
called from many threads at once only fights over the same two cores.

``python -m bench.naive_server --model HF_FOLDER --port PORT [--threads 2]``;
``POST /predict`` with ``{"text": "..."}`` returns ``{"label": ..., "probabilities": [...]}``;
``GET /health`` answers once the model is loaded.
"""

from __future__ import annotations

import argparse
import threading

import torch
from flask import Flask, jsonify, request
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def create_app(model_dir: str, max_length: int) -> Flask:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = model.config.id2label
    lock = threading.Lock()
    app = Flask("naive-server")

    @app.get("/health")
    def health():  # type: ignore[no-untyped-def]
        return {"status": "ok"}

    @app.post("/predict")
    def predict():  # type: ignore[no-untyped-def]
        body = request.get_json(force=True, silent=True) or {}
        text = body.get("text")
        if not isinstance(text, str) or not text:
            return jsonify(error="expected {'text': '...'}"), 400
        with lock, torch.inference_mode():
            enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)[0]
        idx = int(probs.argmax())
        return {"label": labels[idx], "probabilities": probs.tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="save_pretrained folder (model + tokenizer)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    app = create_app(args.model, args.max_length)
    app.run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
