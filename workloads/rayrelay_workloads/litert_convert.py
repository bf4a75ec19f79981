"""The LiteRT (TensorFlow Lite) converter, run as a script in its own environment.

``litert.py`` runs this file with the Python of the converter environment
(``hack/litert_env.py``: ``litert-torch`` and ``ai-edge-litert``, whose pins
cannot live beside the project's ``pydantic``), files in and files out::

    python litert_convert.py --program model.pt2 --rows rows.npz --out DIR [--int8] [--threads N]

- ``model.pt2``: the classifier as a ``torch.export`` program (``torch.export.save``),
  keyword inputs named like the tokenizer's outputs, logits out, traced at batch 1
  and the run's maximum sequence length (the shape the ``.tflite`` file keeps:
  ``litert-torch`` 0.10 refuses dynamic batch/sequence dimensions for BERT);
- ``rows.npz``: the validation rows, one int64 array per input, ``(rows, max_len)``.

Writes ``DIR/model.tflite`` (fp32), with ``--int8`` ``DIR/model.int8.tflite``
(``ai-edge-quantizer``'s dynamic-range recipe: int8 weights, fp32 activations),
``DIR/logits.npz`` (each variant's logits over the rows, run one row at a time
through the LiteRT interpreter, as on a device) and ``DIR/report.json`` (the
seconds each step took, batch-1 latency of each variant, package versions).

Imports nothing of rayrelay: the environment it runs in holds the converter's
pins, and the project's packages are reached only through the torch it shares.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

VARIANTS = {"fp32-tflite": "model.tflite", "int8-tflite": "model.int8.tflite"}
WARMUP = 3


def convert(program: Path, sample: dict[str, Any], dst: Path) -> None:
    import litert_torch
    import torch

    exported = torch.export.load(str(program))
    kwargs = {name: torch.from_numpy(values[:1]) for name, values in sample.items()}
    edge = litert_torch.convert(exported.module(), sample_kwargs=kwargs)
    edge.export(str(dst))


def quantize(src: Path, dst: Path) -> None:
    from ai_edge_quantizer import quantizer, recipe

    result = quantizer.Quantizer(str(src), recipe.dynamic_wi8_afp32()).quantize()
    result.export_model(str(dst), overwrite=True)


def run_rows(path: Path, rows: dict[str, Any], threads: int, repeats: int) -> tuple[Any, float]:
    """Logits of every row (batch 1, as converted) and the median ms of one call."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    runner = interpreter.get_signature_runner()
    count = len(next(iter(rows.values())))

    def call(i: int) -> Any:
        feed = {name: values[i : i + 1].astype(np.int32) for name, values in rows.items()}
        (out,) = runner(**feed).values()
        return out

    logits = np.concatenate([call(i) for i in range(count)])
    for _ in range(WARMUP):
        call(0)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(0)
        samples.append((time.perf_counter() - start) * 1000)
    return logits, round(statistics.median(samples), 3)


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", type=Path, required=True, help="torch.export program (.pt2)")
    parser.add_argument("--rows", type=Path, required=True, help="validation rows (.npz)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--int8", action="store_true", help="also write the dynamic-range int8 model")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    parser.add_argument("--repeats", type=int, default=20, help="timed batch-1 calls per variant")
    args = parser.parse_args(argv)

    import numpy as np

    with np.load(args.rows) as data:
        rows = {name: data[name] for name in data.files}
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "versions": {n: version(n) for n in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch")},
        "rows": len(next(iter(rows.values()))),
        "seq_len": int(next(iter(rows.values())).shape[1]),
        "threads": args.threads,
    }
    start = time.perf_counter()
    convert(args.program, rows, args.out / VARIANTS["fp32-tflite"])
    report["convert_s"] = round(time.perf_counter() - start, 3)
    variants = ["fp32-tflite"]
    if args.int8:
        start = time.perf_counter()
        quantize(args.out / VARIANTS["fp32-tflite"], args.out / VARIANTS["int8-tflite"])
        report["quantize_s"] = round(time.perf_counter() - start, 3)
        variants.append("int8-tflite")
    logits: dict[str, Any] = {}
    report["batch1_ms"] = {}
    for name in variants:
        logits[name], report["batch1_ms"][name] = run_rows(
            args.out / VARIANTS[name], rows, args.threads, args.repeats
        )
    np.savez(args.out / "logits.npz", **logits)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
