"""Run a published ``model.tflite`` the way an edge device does: LiteRT interpreter, ``tokenizers``.

Needs only ``ai-edge-litert``, ``tokenizers`` and ``numpy`` (no torch, no
onnxruntime, nothing of rayrelay): copy this file next to a downloaded run, or
run it through ``rayrelay edge-check``, which starts it in the LiteRT
environment. ::

    python edge_check.py RUN/manifest.json [--variant fp32-tflite|int8-tflite]
        [--text TEXT ...] [--jsonl FILE] [--threads N] [--repeats N] [--json]

Reads the manifest (a local path or ``file://`` URI; the files it names are
read next to it), checks the sha256 of the model file and of the tokenizer
file against it, tokenises each text (``hf/tokenizer.json``, padded and
truncated to the length the model was converted at), runs the interpreter one
text at a time and prints the label, its probability, and the median latency
of one call (batch 1). With ``--jsonl`` (``text`` / ``label`` fields, or
``--text-field`` / ``--label-field``) it also prints the accuracy on those rows
beside the accuracy the manifest recorded. Exits 1 with a message when a check
fails (digest mismatch, encrypted run, variant not in the manifest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_TEXTS = ("I would like to reset my password", "the parcel arrived broken, I want a refund")
WARMUP = 3


class EdgeCheckError(RuntimeError):
    """The run cannot be checked here (a message for the user, no traceback)."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(location: str) -> tuple[dict[str, Any], Path]:
    path = Path(location[len("file://") :] if location.startswith("file://") else location)
    if "://" in str(location) and not location.startswith("file://"):
        raise EdgeCheckError(f"{location}: only local manifests (a path or file://) are read here")
    manifest = json.loads(path.read_text())
    if manifest.get("encryption"):
        raise EdgeCheckError("the run's files are encrypted at rest; an edge device gets a plaintext run")
    return manifest, path.parent


def verified(manifest: dict[str, Any], root: Path, rel: str) -> Path:
    """``root/rel`` after checking its sha256 and size against the manifest's entry."""
    entries = {f["path"]: f for f in manifest.get("files", [])}
    if rel not in entries:
        raise EdgeCheckError(f"{rel} is not listed in the manifest")
    path = root / rel
    if not path.is_file():
        raise EdgeCheckError(f"{path} is missing")
    if path.stat().st_size != entries[rel]["size"] or sha256(path) != entries[rel]["sha256"]:
        raise EdgeCheckError(f"{rel}: sha256/size differ from the manifest's")
    return path


def tokenizer_for(manifest: dict[str, Any], root: Path, seq_len: int) -> Any:
    from tokenizers import Tokenizer

    folder = manifest.get("tokenizer", {}).get("path", "hf")
    tokenizer = Tokenizer.from_file(str(verified(manifest, root, f"{folder}/tokenizer.json")))
    pad_token = "[PAD]"
    config = root / folder / "tokenizer_config.json"
    if config.is_file():
        pad_token = json.loads(config.read_text()).get("pad_token") or pad_token
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=pad_id or 0, pad_token=pad_token)
    return tokenizer


class EdgeModel:
    """One ``.tflite`` classifier in the LiteRT interpreter, fed by ``tokenizers``."""

    def __init__(self, model_path: Path, manifest: dict[str, Any], root: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner()
        details = self.runner.get_input_details()
        self.inputs = sorted(details)
        self.seq_len = int(details[self.inputs[0]]["shape"][-1])
        self.tokenizer = tokenizer_for(manifest, root, self.seq_len)

    def feed(self, text: str) -> dict[str, Any]:
        import numpy as np

        enc = self.tokenizer.encode(text)
        arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
        return {name: np.asarray([arrays[name]], dtype=np.int32) for name in self.inputs}

    def logits(self, feed: dict[str, Any]) -> Any:
        (out,) = self.runner(**feed).values()
        return out[0]


def softmax(values: Any) -> Any:
    import numpy as np

    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def read_rows(path: Path, text_field: str, label_field: str) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.append((str(row[text_field]), str(row[label_field])))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    manifest, root = load_manifest(args.manifest)
    variant = manifest.get("variants", {}).get(args.variant)
    if not variant or not variant.get("file"):
        tflite = [n for n in manifest.get("variants", {}) if n.endswith("-tflite")]
        raise EdgeCheckError(
            f"variant {args.variant} is not in the manifest (LiteRT variants there: {tflite or 'none'}; "
            "export.targets needs tflite)"
        )
    model = EdgeModel(verified(manifest, root, variant["file"]), manifest, root, args.threads)
    labels = manifest.get("labels", [])
    rows = read_rows(Path(args.jsonl), args.text_field, args.label_field) if args.jsonl else []
    texts = list(args.text or ([] if rows else DEFAULT_TEXTS)) + [text for text, _ in rows]
    predictions = []
    for text in texts:
        probs = softmax(model.logits(model.feed(text)))
        best = int(probs.argmax())
        name = labels[best] if best < len(labels) else str(best)
        predictions.append({"text": text, "label": name, "probability": round(float(probs[best]), 6)})
    feed = model.feed(texts[0])
    for _ in range(WARMUP):
        model.logits(feed)
    samples = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.logits(feed)
        samples.append((time.perf_counter() - start) * 1000)
    report: dict[str, Any] = {
        "variant": args.variant,
        "file": variant["file"],
        "size": variant.get("size"),
        "seq_len": model.seq_len,
        "threads": args.threads,
        "batch1_ms": round(statistics.median(samples), 3),
        "predictions": predictions,
        "manifest_accuracy": variant.get("accuracy"),
    }
    if rows:
        tail = predictions[len(predictions) - len(rows) :]
        hits = sum(p["label"] == label for p, (_, label) in zip(tail, rows, strict=True))
        report["accuracy"] = round(hits / len(rows), 6)
        report["rows"] = len(rows)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-check", description=__doc__.splitlines()[0])
    parser.add_argument("manifest", help="the run's manifest.json (a path or file:// URI)")
    parser.add_argument("--variant", default="int8-tflite", choices=("fp32-tflite", "int8-tflite"))
    parser.add_argument("--text", nargs="+", help="texts to classify (default: two examples)")
    parser.add_argument("--jsonl", help="labelled rows to measure accuracy on")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except (EdgeCheckError, OSError, ValueError, KeyError) as exc:
        print(f"edge-check: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['variant']} ({report['file']}, {report['size']} bytes, sequence {report['seq_len']}, "
        f"{report['threads']} threads): {report['batch1_ms']} ms per text (batch 1, median)"
    )
    for p in report["predictions"][:20]:
        print(f"  {p['label']:<20} {p['probability']:.3f}  {p['text'][:70]}")
    if "accuracy" in report:
        print(
            f"accuracy {report['accuracy']:.3f} on {report['rows']} rows "
            f"(manifest: {report['manifest_accuracy']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
