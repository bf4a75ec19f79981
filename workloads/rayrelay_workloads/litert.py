"""LiteRT (TensorFlow Lite) variants of the trained classifier: ``export.targets: [..., tflite]``.

``export.py`` calls :func:`tflite_variants` after the ONNX variants. The
converter (``litert-torch``) and the LiteRT interpreter (``ai-edge-litert``)
live in an environment of their own (``hack/litert_env.py``; their pins
conflict with the project's), so this module hands them files and reads files
back:

1. the reference model is traced here with ``torch.export`` at batch 1 and
   the run's maximum sequence length (``model.pt2``; ``litert-torch`` 0.10
   refuses dynamic dimensions for BERT, and batch 1 is the edge case), and the
   validation rows are written padded to that length (``rows.npz``);
2. ``litert_convert.py`` runs in the converter environment: ``model.tflite``
   (fp32), ``model.int8.tflite`` (dynamic range: int8 weights) with
   ``export.quantize: int8``, and the logits of each over the rows through the
   LiteRT interpreter, plus its timings;
3. the ``.tflite`` files move to ``tflite/`` in the output folder (published
   with the rest), the logits join the other variants' for parity and
   accuracy (``fp32-tflite``, ``int8-tflite``).

The environment's Python is ``RAYRELAY_LITERT_PYTHON`` when set, else
``<sys.prefix>/litert/bin/python`` (where ``make litert`` and the workloads
image put it). Without it the export fails with :class:`LiteRTUnavailable`,
which says how to create it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("litert_convert.py")
EDGE_SCRIPT = Path(__file__).with_name("edge_check.py")  # rayrelay edge-check runs it
FOLDER = "tflite"
FILES = {"fp32-tflite": "model.tflite", "int8-tflite": "model.int8.tflite"}
ENV_VAR = "RAYRELAY_LITERT_PYTHON"


class LiteRTUnavailable(RuntimeError):
    """The converter environment is missing, or the converter failed (its own error attached)."""


@dataclass
class TFLiteOutput:
    files: dict[str, str]  # variant -> path relative to the output folder
    logits: dict[str, Any]  # variant -> logits over the validation rows
    metrics: dict[str, float] = field(default_factory=dict)


def litert_python(environ: dict[str, str] | None = None) -> Path:
    """The converter environment's Python, or LiteRTUnavailable naming how to create it."""
    env = os.environ if environ is None else environ
    python = Path(env.get(ENV_VAR) or Path(sys.prefix) / "litert" / "bin" / "python")
    if not python.exists():
        raise LiteRTUnavailable(
            f"export.targets tflite needs the LiteRT converter environment, not found at {python}: "
            f"create it with `make litert` (or `python hack/litert_env.py`), or set {ENV_VAR}"
        )
    return python


def export_program(model: Any, input_names: list[str], max_len: int, path: Path) -> None:
    """Trace the classifier (keyword inputs named like the tokenizer's, logits out) at batch 1."""
    import torch

    class Logits(torch.nn.Module):
        # The additive BERT mask built here, as in the ONNX export (export.export_onnx).
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            mask = attention_mask[:, None, None, :].to(torch.float32)
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            additive = (1.0 - mask) * torch.finfo(torch.float32).min
            return self.inner(input_ids=input_ids, attention_mask=additive, **extra).logits

    sample = {name: torch.ones((1, max_len), dtype=torch.int64) for name in input_names}
    with torch.no_grad():
        program = torch.export.export(Logits(model).eval(), (), sample)
    torch.export.save(program, str(path))


def tflite_variants(
    model: Any,
    rows: dict[str, Any],
    out: Path,
    int8: bool,
    threads: int,
    repeats: int,
    environ: dict[str, str] | None = None,
) -> TFLiteOutput:
    """``out/tflite/model.tflite`` (+ ``model.int8.tflite``) and their logits over ``rows``.

    ``rows``: input name -> int64 array ``(rows, max_len)``, padded to the length the
    file is converted at. Metrics: ``tflite_stage_s`` (the whole step, process start
    included), ``tflite_convert_s``, ``tflite_quantize_s``, ``tflite_<fp32|int8>_ms``
    (batch 1, median).
    """
    import numpy as np

    python = litert_python(environ)
    started = time.perf_counter()
    max_len = int(next(iter(rows.values())).shape[1])
    with tempfile.TemporaryDirectory(prefix="rr-tflite-") as tmp:
        staging = Path(tmp)
        export_program(model, list(rows), max_len, staging / "model.pt2")
        np.savez(staging / "rows.npz", **rows)
        report = run_converter(python, staging, threads, repeats, int8)
        with np.load(staging / "out" / "logits.npz") as saved:
            logits = {name: saved[name] for name in saved.files}
        target = out / FOLDER
        target.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for name in logits:
            shutil.move(str(staging / "out" / FILES[name]), target / FILES[name])
            files[name] = f"{FOLDER}/{FILES[name]}"
    metrics = {
        "tflite_stage_s": round(time.perf_counter() - started, 3),
        "tflite_convert_s": float(report["convert_s"]),
        "tflite_seq_len": float(max_len),
    }
    if "quantize_s" in report:
        metrics["tflite_quantize_s"] = float(report["quantize_s"])
    for name, ms in report["batch1_ms"].items():
        metrics[f"tflite_{name.split('-')[0]}_ms"] = float(ms)
    return TFLiteOutput(files, logits, metrics)


def run_converter(
    python: Path | str, staging: Path, threads: int, repeats: int, int8: bool
) -> dict[str, Any]:
    """Run the converter script in the LiteRT environment on ``staging``'s program and rows; its report."""
    command = [
        str(python),
        str(SCRIPT),
        "--program",
        str(staging / "model.pt2"),
        "--rows",
        str(staging / "rows.npz"),
        "--out",
        str(staging / "out"),
        "--threads",
        str(threads),
        "--repeats",
        str(max(repeats, 1)),
    ] + (["--int8"] if int8 else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LiteRTUnavailable(f"the LiteRT converter failed: {converter_error(done.stderr)}")
    report: dict[str, Any] = json.loads((staging / "out" / "report.json").read_text())
    return report


def converter_error(stderr: str) -> str:
    """The converter's own error: the last exception line of its output (its logs are long)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) or head.endswith("Unavailable"):
            return line[:2000]
    return lines[-1][:2000] if lines else "no output"
