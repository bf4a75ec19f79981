"""Peer of ``bench.embeddings``: infinity-emb, a dedicated embeddings server, run from its own venv.

Runs in the bench's infinity venv (``bench.peers``, ``infinity-emb[server,torch,optimum]``
with the CPU torch wheel), never in ``.venv``; it imports nothing of rayrelay. Two commands:

- ``prepare HF_DIR OUT``: the folder infinity serves. The published ``hf/`` folder's files
  (linked, not copied) for the ``torch`` engine, plus what infinity's ``optimum`` engine
  reads from a model repository, made the way such repositories are made: ``model.onnx``
  exported by optimum (``feature-extraction``: the encoder's ``last_hidden_state``; infinity
  pools and normalises it) and ``model_quantized.onnx``, optimum's dynamic per-channel int8
  for AVX-512 VNNI (infinity picks a ``*quantize*`` file on CPU unless told not to). ``done`` is written
  last. The ONNX files lie at the folder's top and the bench serves it as ``--model-id .``
  from inside it: infinity 0.0.78 hands optimum the file's path as found under the model
  id, and optimum 2 matches it against bare file names (an absolute or ``onnx/`` path is a
  ``FileNotFoundError`` at load).
- ``serve --threads N -- ARGS``: ``infinity_emb v2 ARGS`` with every onnxruntime session
  given ``N`` intra-op threads and 1 inter-op thread (infinity has no option of its own for
  that; torch's count comes from ``OMP_NUM_THREADS`` in the environment, set by the bench).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any


def prepare(hf_dir: Path, out: Path) -> None:
    if (out / "done").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    for item in hf_dir.iterdir():
        link = out / item.name
        if not link.exists():
            link.symlink_to(item.resolve())
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    # Exported beside, not into, the linked files: optimum writes config and tokenizer files too.
    export = out / "export"
    # library "transformers": the encoder alone (last_hidden_state, what infinity's optimum engine
    # reads); optimum would otherwise see modules.json and export sentence-transformers' pipeline.
    main_export(
        str(hf_dir),
        output=str(export),
        task="feature-extraction",
        library_name="transformers",
        do_validation=False,
    )
    quantizer = ORTQuantizer.from_pretrained(str(export), file_name="model.onnx")
    # per channel: per-tensor int8 of this model moves its vectors too far (cosine ~0.93 to
    # PyTorch here); the product's own int8 is per channel as well.
    config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)
    quantizer.quantize(save_dir=str(export), quantization_config=config)
    for name in ("model.onnx", "model_quantized.onnx"):
        (export / name).rename(out / name)
    shutil.rmtree(export)
    (out / "done").write_text("ok\n")


def limit_onnxruntime_threads(threads: int) -> None:
    """Every ``onnxruntime.InferenceSession`` made after this gets ``threads`` intra-op threads."""
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def init(self: Any, path_or_bytes: Any, sess_options: Any = None, *args: Any, **kwargs: Any) -> None:
        options = sess_options if sess_options is not None else ort.SessionOptions()
        if not options.intra_op_num_threads:
            options.intra_op_num_threads = threads
        if not options.inter_op_num_threads:
            options.inter_op_num_threads = 1
        original(self, path_or_bytes, options, *args, **kwargs)

    ort.InferenceSession.__init__ = init  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("hf_dir", type=Path)
    prep.add_argument("out", type=Path)
    serve = sub.add_parser("serve")
    serve.add_argument("--threads", type=int, required=True)
    serve.add_argument("infinity_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.hf_dir, args.out)
        return 0
    limit_onnxruntime_threads(args.threads)
    from infinity_emb.cli import cli

    rest = [a for a in args.infinity_args if a != "--"]
    sys.argv = ["infinity_emb", "v2", *rest]
    cli()
    return 0


if __name__ == "__main__":
    sys.exit(main())
