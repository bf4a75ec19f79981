"""From the best checkpoint to checked ONNX models: export, fuse, quantise, compare.

``pipeline.py`` calls :func:`export_all` with the local copy of the best
checkpoint (``train.py``). It writes into a local folder that ``publish.py``
uploads:

- ``hf/``: save_pretrained model + tokenizer (the PyTorch reference);
- ``onnx/model.onnx``: the fp32 model that is served. The transformer
  optimizer's fused graph when it is measurably faster here, else the plain
  export (never a speedup that was not measured);
- ``onnx/model.int8.onnx``: dynamic int8 quantisation;
- with ``export.targets`` ``ort``: ``ort/model.ort`` and ``ort/model.int8.ort``,
  onnxruntime's mobile (ORT) format of the two, and ``ort/required_operators.config``,
  the operator list a reduced onnxruntime build takes (:func:`convert_to_ort`).
  They are loaded back in onnxruntime and accuracy-checked on the validation set
  with the other variants (``fp32-ort``, ``int8-ort`` in the manifest);
- no file for ``bf16``: OpenVINO reads ``onnx/model.onnx`` with a bf16 precision
  hint (``openvino_runtime``), and the validation set runs through exactly that
  (:func:`bf16_variant`), so the manifest records bf16's accuracy, its logit
  difference to PyTorch and to fp32, and what actually ran: ``bf16`` on a CPU with
  bf16 instructions, ``bf16-emulated`` where OpenVINO emulates them (same numerics,
  ~20x slower; not timed then). Without OpenVINO the variant is recorded as not
  measured, and the quality gate never accepts it.

Fusion: what transformers 5 exports (eager attention) defeats onnxruntime's
BERT attention fusion in two small ways (the scores scaled by a ``Mul`` where
the fusion expects a ``Div``, and the heads reshaped as ``-1``);
:func:`prepare_for_fusion` rewrites both, and then the transformer optimizer
fuses Attention, EmbedLayerNormalization, SkipLayerNormalization and BiasGelu
(recorded as ``optimizer_fused_ops_*`` in the manifest metrics). Without an
Attention node the optimizer only pre-applied LayerNorm/Gelu fusions that
onnxruntime's own session optimiser applies at load time anyway, which is why
the fused graph used to measure no faster. The fused graph is still served
only when it measures faster here (``onnx_fused_ms`` vs ``onnx_plain_ms``),
and the int8 model is quantised from whichever fp32 graph is served. No graph
is saved after onnxruntime's ``ORT_ENABLE_ALL`` level (hardware-specific);
see :func:`session`.

:func:`export_all` runs the steps in order: :func:`save_reference` (``hf/``),
:func:`export_onnx`, :func:`time_plain`, :func:`choose_fp32` (optimise, keep the
fused graph only when faster), :func:`quantise` (int8), then parity over the
validation set (:func:`variant_logits`). Timing and parity figures are computed
by ``export_checks.py``: max |logit difference| of ONNX fp32 vs PyTorch must
stay within ``export.parityTolerance`` (else ``ParityError``); the accuracy of
every variant is measured on the same rows.

With ``export.targets`` ``tflite``: ``tflite/model.tflite`` (fp32) and, with
``export.quantize: int8``, ``tflite/model.int8.tflite`` (dynamic range),
converted by ``litert-torch`` in its own environment (``litert.py``) at batch
1 and the maximum sequence length; their logits come from the LiteRT
interpreter over the same validation rows (``fp32-tflite``, ``int8-tflite``),
``fp32-tflite`` is held to ``export.parityTolerance`` like ONNX fp32 (a
``ParityError`` names it), and the int8 gate decides ``int8-tflite`` on its
own accuracy (``publish.py``). Without the target nothing of this runs.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrelay_core.api import ExportSpec, ExportTarget, Quantize
from rayrelay_workloads.data import Example
from rayrelay_workloads.export_checks import (
    ParityError,
    ParityFigures,
    check_parity,
    fused_is_faster,
    parity,
    time_ms,
)

__all__ = ["ExportResult", "ParityError", "export_all"]

FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
    "SkipSimplifiedLayerNormalization",
)
BENCH_BATCH = 8  # texts per timed call
PARITY_BATCH = 64  # texts per call while comparing variants


@dataclass
class ExportResult:
    out_dir: Path
    labels: list[str]
    input_names: list[str]
    fp32_file: str  # relative to out_dir
    int8_file: str | None
    fused_used: bool
    accuracy: dict[str, float]
    max_diff_fp32: float
    max_diff_int8: float | None
    samples: int
    lower_case: bool | None
    metrics: dict[str, float] = field(default_factory=dict)
    # Variants in other formats (export.targets): name -> file relative to out_dir.
    extra_files: dict[str, str] = field(default_factory=dict)
    # The bf16 variant (OpenVINO on fp32's file): what ran and its figures, or why it was not measured.
    bf16: RuntimeVariant | None = None
    bf16_missing: str | None = None


@dataclass
class RuntimeVariant:
    """A variant served by another runtime from an exported file (bf16: OpenVINO on the fp32 ONNX)."""

    runtime: str
    measured: str  # e.g. "openvino 2026.4.1, bf16-emulated": what ran on the export host
    max_diff_pytorch: float = 0.0
    max_diff_fp32: float = 0.0
    labels_equal_fp32: float = 0.0


def load_checkpoint_model(checkpoint_dir: str | Path) -> Any:
    """The checkpoint's classifier, pruned (``spec.optimization.pruning``'s output) or not."""
    from rayrelay_workloads.modeling import load_trained_classifier
    from rayrelay_workloads.prune import load_pruned

    pruned = load_pruned(Path(checkpoint_dir) / "model")
    return pruned if pruned is not None else load_trained_classifier(checkpoint_dir)


def onnx_input_names(model: Any, tokenizer: Any) -> list[str]:
    """The inputs the ONNX graph takes: ids, mask, and token types when the model uses them."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in accepted and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def export_onnx(model: Any, tokenizer: Any, path: Path, opset: int, max_len: int) -> list[str]:
    import torch

    names = onnx_input_names(model, tokenizer)

    class Wrapper(torch.nn.Module):
        # Positional inputs in a fixed order, logits out: the graph's signature.
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            inputs = dict(zip(names, args, strict=True))
            # The classic BERT additive mask (batch, 1, 1, seq), passed through unchanged by
            # transformers 5 (which otherwise builds it from Range/And/Where ops): a smaller
            # graph, the mask path onnxruntime's BERT fusion expects (with prepare_for_fusion,
            # the optimizer fuses Attention: see the module docstring).
            mask = inputs["attention_mask"][:, None, None, :].to(torch.float32)
            inputs["attention_mask"] = (1.0 - mask) * torch.finfo(torch.float32).min
            return self.inner(**inputs).logits

    enc = tokenizer(
        ["a short text", "a somewhat longer text to export with"],
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    args = tuple(enc[n] for n in names)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["logits"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Wrapper(model).eval(),
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return names


def prepare_for_fusion(src: Path, dst: Path, num_heads: int) -> int:
    """Write ``src`` in the form onnxruntime's BERT attention fusion recognises.

    Two things in what transformers 5 (eager attention) exports stop the fusion
    (``optimizer_attention_fused: 0``), both found in its debug log:

    - the scores are scaled with a ``Mul``; the additive mask is a ``Mul``
      too, so the ``Add`` that joins them has two ``Mul`` parents, and the
      fusion looks for the mask path (``Mul <- Sub <- Cast <- Unsqueeze``) at
      the first one, finds the scores, and gives up ("failed to match mask
      path"). Rewritten as ``MatMul(Q, K) / (1/scale)``, what BERT exports
      always had;
    - the head split reshapes to ``(batch, seq, -1, head_size)``, and the
      fusion reads the number of heads from that shape ("Failed to detect
      num_heads and hidden_size"). The ``-1`` becomes ``num_heads``.

    Returns the number of nodes rewritten. The values are the same up to float
    rounding (the parity check covers them).
    """
    import onnx

    model = onnx.load(str(src))
    graph = _GraphIndex(model.graph)
    rewritten = _scores_scaled_by_div(graph) + _heads_in_head_split(graph, num_heads)
    onnx.save(model, str(dst))
    return rewritten


class _GraphIndex:
    """An ONNX graph with its nodes found by the tensors they write and read, and its scalar constants."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.inits = {init.name: init for init in graph.initializer}

    def scalar(self, name: str) -> float | None:
        """The non-zero one-element constant (Constant node or initializer) named ``name``, else None."""
        from onnx import numpy_helper

        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            value = numpy_helper.to_array(node.attribute[0].t) if node.attribute else None
        elif name in self.inits:
            value = numpy_helper.to_array(self.inits[name])
        else:
            return None
        return float(value.item()) if value is not None and value.size == 1 and value.item() != 0 else None

    def add_initializer(self, value: Any, name: str) -> None:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(value, name))


def _scores_scaled_by_div(g: _GraphIndex) -> int:
    """``MatMul(Q, K) * scale`` feeding the mask ``Add`` before a Softmax becomes ``/ (1/scale)``."""
    import numpy as np

    rewritten = 0
    for node in g.graph.node:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        source = g.producers.get(node.input[0])
        scale = g.scalar(node.input[1])
        after = g.consumers.get(node.output[0], [])
        if source is None or source.op_type != "MatMul" or scale is None or len(after) != 1:
            continue
        if after[0].op_type != "Add" or not any(
            c.op_type == "Softmax" for c in g.consumers.get(after[0].output[0], [])
        ):
            continue
        divisor = f"{node.name or node.output[0]}/divisor"
        g.add_initializer(np.array(1.0 / scale, dtype=np.float32), divisor)
        node.op_type = "Div"
        node.input[1] = divisor
        rewritten += 1
    return rewritten


def _heads_in_head_split(g: _GraphIndex, num_heads: int) -> int:
    """The ``-1`` of the head split's shape (a Concat read by Reshape -> Transpose) becomes ``num_heads``."""
    import numpy as np

    rewritten = 0
    heads = f"rayrelay/num_heads_{num_heads}"
    g.add_initializer(np.array([num_heads], dtype=np.int64), heads)
    for node in g.graph.node:
        if node.op_type != "Concat" or len(node.input) != 4:
            continue
        reshapes = [c for c in g.consumers.get(node.output[0], []) if c.op_type == "Reshape"]
        if (
            not reshapes
            or g.scalar(node.input[2]) != -1
            or not any(c.op_type == "Transpose" for r in reshapes for c in g.consumers.get(r.output[0], []))
        ):
            continue
        node.input[2] = heads
        rewritten += 1
    return rewritten


def optimize_onnx(src: Path, dst: Path, config: Any) -> dict[str, int]:
    """Fuse with onnxruntime's transformer optimizer; returns fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    staged = dst.with_name(dst.stem + ".staged.onnx")
    heads = int(config.num_attention_heads)
    # A pruned model (prune.py): the attention is heads x head size wide, no longer hidden_size.
    pruned = getattr(config, "rayrelay_pruning", None)
    width = heads * int(pruned["attention_head_size"]) if pruned else int(config.hidden_size)
    prepare_for_fusion(src, staged, heads)
    optimized = optimize_model(
        str(staged),
        model_type="bert",
        num_heads=heads,
        hidden_size=width,
        # Only the Python fusions: the result stays portable (no CPU-specific kernels baked in).
        opt_level=0,
        use_gpu=False,
    )
    optimized.save_model_to_file(str(dst))
    staged.unlink(missing_ok=True)
    return op_counts(dst)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}


def quantize_int8(src: Path, dst: Path, fused: bool, per_channel: bool = False) -> None:
    """Dynamic int8 of ``src``; ``per_channel``: one weight scale per output column, not per tensor."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A graph fused by the transformer optimizer has tensors without type info;
    # quantize_dynamic fails on them unless given a default type (seen with onnxruntime 1.30).
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel, extra_options=extra
    )


def session(path: Path, threads: int, basic_only: bool = False, save_optimized: Path | None = None) -> Any:
    """An onnxruntime CPU session; ``save_optimized`` writes its optimised graph.

    A saved graph is optimised at ``ORT_ENABLE_EXTENDED`` at most: above that
    (``ORT_ENABLE_ALL``, the NCHWc layout transformer) onnxruntime may bake in
    kernels for this CPU, and a graph saved here may be loaded on another node.
    Sessions that only run keep the full level.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if basic_only:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if save_optimized is not None:
        if not basic_only:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_logits(sess: Any, enc: dict[str, Any]) -> Any:
    import numpy as np

    names = {i.name for i in sess.get_inputs()}
    feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
    return sess.run(["logits"], feed)[0]


# ------------------------------------------------------------------ the steps of export_all


@dataclass
class Reference:
    """The trained PyTorch model everything is exported from and compared with."""

    model: Any
    tokenizer: Any
    max_len: int
    input_names: list[str] = field(default_factory=list)  # the ONNX graph's, once exported

    def encode(self, texts: list[str], padding: str | bool = True) -> dict[str, Any]:
        enc = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.max_len, return_tensors="np"
        )
        return {k: v for k, v in enc.items() if k in self.input_names}

    def logits(self, enc: dict[str, Any]) -> Any:
        import torch

        with torch.no_grad():
            return self.model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()


def save_reference(checkpoint_dir: str | Path, tokenizer_source: str, out: Path, max_len: int) -> Reference:
    """Load the checkpoint and the tokenizer; save both to ``hf/`` (the published PyTorch model)."""
    from rayrelay_workloads.modeling import load_tokenizer

    model = load_checkpoint_model(checkpoint_dir)
    tokenizer = load_tokenizer(tokenizer_source)
    tokenizer.model_max_length = max_len
    model.save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    return Reference(model, tokenizer, max_len)


def time_plain(
    ref: Reference, plain: Path, bench: dict[str, Any], threads: int, repeats: int
) -> dict[str, float]:
    """PyTorch and the plain export, with onnxruntime's full and basic session optimisation."""
    ort_optimized = plain.with_name("plain.ort-optimized.onnx")
    full = session(plain, threads)
    session(plain, threads, save_optimized=ort_optimized)  # what it fuses, saved portably (extended)
    basic = session(plain, threads, basic_only=True)
    metrics = {
        "pytorch_ms": time_ms(lambda: ref.logits(bench), repeats),
        "onnx_plain_ms": time_ms(lambda: onnx_logits(full, bench), repeats),
        "onnx_plain_basic_ms": time_ms(lambda: onnx_logits(basic, bench), repeats),
    }
    # What onnxruntime fuses by itself at load time (why a pre-fused graph gains little).
    for op, n in op_counts(ort_optimized).items():
        metrics[f"ort_session_fused_ops_{op}"] = n
    ort_optimized.unlink(missing_ok=True)
    return metrics


def choose_fp32(
    ref: Reference,
    plain: Path,
    spec: ExportSpec,
    bench: dict[str, Any],
    threads: int,
    repeats: int,
    plain_ms: float,
) -> tuple[Path, bool, dict[str, float]]:
    """The graph to serve as fp32 (fused only when measurably faster), whether fused, metrics."""
    metrics: dict[str, float] = {}
    served, fused_used = plain, False
    if spec.optimize:
        fused = plain.with_name("model.fused.onnx")
        counts = optimize_onnx(plain, fused, ref.model.config)
        for op, n in counts.items():
            metrics[f"optimizer_fused_ops_{op}"] = n
        if not any(op in counts for op in ("Attention", "MultiHeadAttention")):
            metrics["optimizer_attention_fused"] = 0
        fused_sess = session(fused, threads)
        metrics["onnx_fused_ms"] = time_ms(lambda: onnx_logits(fused_sess, bench), repeats)
        fused_used = fused_is_faster(metrics["onnx_fused_ms"], plain_ms)
        served = fused if fused_used else plain
    metrics["onnx_fused_served"] = float(fused_used)
    fp32_path = plain.with_name("model.onnx")
    served.replace(fp32_path)
    for leftover in (plain, plain.with_name("model.fused.onnx")):
        leftover.unlink(missing_ok=True)
    return fp32_path, fused_used, metrics


def quantise(
    fp32_path: Path, fused: bool, bench: dict[str, Any], threads: int, repeats: int, pytorch_ms: float
) -> tuple[Any, dict[str, float]]:
    """int8 dynamic quantisation of the served fp32 graph; its session and timings."""
    int8_path = fp32_path.with_name("model.int8.onnx")
    quantize_int8(fp32_path, int8_path, fused)
    int8_sess = session(int8_path, threads)
    int8_ms = time_ms(lambda: onnx_logits(int8_sess, bench), repeats)
    return int8_sess, {"onnx_int8_ms": int8_ms, "int8_speedup_vs_pytorch": round(pytorch_ms / int8_ms, 3)}


ORT_VARIANTS = {"fp32": "fp32-ort", "int8": "int8-ort"}
ORT_CONFIG = "required_operators.config"


def convert_to_ort(onnx_files: dict[str, Path], out: Path) -> dict[str, Path]:
    """onnxruntime's mobile format (``.ort``) of each ONNX file, and the reduced-build operator config.

    onnxruntime's own converter (``onnxruntime.tools.convert_onnx_models_to_ort``) with the
    fixed optimisation style, for the ``arm`` target platform: the layout-specific (NCHWc)
    optimisations of x86 are left out, so the file runs on a phone's CPU as well as here.
    Writes ``out/<stem>.ort`` per file and ``out/required_operators.config`` for all of them
    (what a minimal onnxruntime build must include). Returns variant -> ``.ort`` path.
    """
    import contextlib
    import io
    import os
    import shutil
    import tempfile

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="rr-ort-") as staging:
        for path in onnx_files.values():
            try:
                os.link(path, Path(staging) / path.name)
            except OSError:  # another filesystem
                shutil.copyfile(path, Path(staging) / path.name)
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its progress
            convert_onnx_models_to_ort(
                Path(staging),
                output_dir=out,
                optimization_styles=[OptimizationStyle.Fixed],
                target_platform="arm",
            )
    config = out / ORT_CONFIG
    # Its header names the converted files by absolute path: keep their names only.
    lines = [
        f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line
        for line in config.read_text().splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")
    return {variant: out / (path.stem + ".ort") for variant, path in onnx_files.items()}


def ort_variants(
    sessions: dict[str, Any], fp32_path: Path, threads: int, bench: dict[str, Any], repeats: int
) -> tuple[dict[str, str], dict[str, float]]:
    """``.ort`` files of the ONNX variants in ``sessions`` (added to it), their timings."""
    onnx_files = {"fp32": fp32_path}
    if "int8" in sessions:
        onnx_files["int8"] = fp32_path.with_name("model.int8.onnx")
    out = fp32_path.parent.parent / "ort"
    files: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for variant, path in convert_to_ort(onnx_files, out).items():
        name = ORT_VARIANTS[variant]
        sessions[name] = session(path, threads)
        files[name] = f"ort/{path.name}"
        metrics[f"ort_{variant}_ms"] = time_ms(functools.partial(onnx_logits, sessions[name], bench), repeats)
    return files, metrics


def bf16_variant(
    fp32_path: Path,
    threads: int,
    bench: dict[str, Any],
    repeats: int,
    run: Callable[[Any, dict[str, Any]], Any] = onnx_logits,
) -> tuple[Any, RuntimeVariant | None, dict[str, float], str | None]:
    """OpenVINO reading the served fp32 graph with a bf16 hint: its session, record, timing, or why not.

    The session is the one a replica would create (``openvino_runtime.OpenVinoSession``); ``run``
    is the task's call of a session on ``bench`` (the timing). An emulated bf16 (no bf16
    instructions here) is measured for accuracy but not timed."""
    from rayrelay_workloads import openvino_runtime as ovr

    cap = ovr.capability()
    if not cap.installed:
        return None, None, {}, f"OpenVINO is not installed where the export ran ({cap.error})"
    try:
        sess = ovr.OpenVinoSession(str(fp32_path), threads, "bf16")
    except Exception as exc:  # a graph OpenVINO cannot compile: bf16 is simply not offered
        return None, None, {}, f"OpenVINO could not compile the fp32 graph: {type(exc).__name__}: {exc}"[:300]
    record = RuntimeVariant(ovr.RUNTIME, f"{ovr.RUNTIME} {sess.version}, {sess.precision_label}")
    metrics = {"bf16_emulated": float(sess.emulated)}
    if not sess.emulated:
        metrics["openvino_bf16_ms"] = time_ms(functools.partial(run, sess, bench), repeats)
    return sess, record, metrics, None


def export_host_lacks_bf16() -> str | None:
    """Why an export with ``export.bf16`` unset does not measure bf16 here, or None when it does."""
    from rayrelay_workloads.hardware import cpu_flags
    from rayrelay_workloads.openvino_runtime import BF16_FLAGS

    if set(BF16_FLAGS) & set(cpu_flags()):
        return None
    return (
        "the export host has no bf16 instructions (amx_bf16, avx512_bf16) and export.bf16 is "
        "unset; set it to true to measure bf16 in emulation"
    )


def variant_logits(ref: Reference, sessions: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """Logits of PyTorch and of each ONNX session over ``texts``, batch by batch."""
    import numpy as np

    outs: dict[str, list[Any]] = {"pytorch": [], **{name: [] for name in sessions}}
    for i in range(0, len(texts), PARITY_BATCH):
        enc = ref.encode(texts[i : i + PARITY_BATCH])
        outs["pytorch"].append(ref.logits(enc))
        for name, sess in sessions.items():
            outs[name].append(onnx_logits(sess, enc))
    return {k: np.concatenate(v) for k, v in outs.items()}


def fp32_and_int8(
    ref: Reference,
    plain: Path,
    spec: ExportSpec,
    bench: Any,
    threads: int,
    repeats: int,
    metrics: dict[str, float],
) -> tuple[Path, bool, dict[str, Any]]:
    """The fp32 model (plain or fused, ``choose_fp32``) and, with ``quantize: int8``, the int8 one:
    (fp32 file, fused or not, their sessions); their timings go into ``metrics``."""
    fp32_path, fused_used, chosen = choose_fp32(
        ref, plain, spec, bench, threads, repeats, metrics["onnx_plain_ms"]
    )
    sessions = {"fp32": session(fp32_path, threads)}
    metrics |= chosen | {"onnx_fp32_ms": time_ms(lambda: onnx_logits(sessions["fp32"], bench), repeats)}
    if spec.quantize == Quantize.INT8:
        sessions["int8"], int8_metrics = quantise(
            fp32_path, fused_used, bench, threads, repeats, metrics["pytorch_ms"]
        )
        metrics |= int8_metrics
    return fp32_path, fused_used, sessions


def edge_variants(
    ref: Reference,
    spec: ExportSpec,
    sessions: dict[str, Any],
    fp32_path: Path,
    out: Path,
    validation: list[Example],
    threads: int,
    bench: Any,
    bench_repeats: int,
) -> tuple[dict[str, str], dict[str, Any], dict[str, float]]:
    """``export.targets``' files (ORT format, LiteRT): (files, LiteRT logits of the validation rows, metrics)."""
    metrics: dict[str, float] = {}
    extra_files: dict[str, str] = {}
    if ExportTarget.ORT in spec.targets:
        extra_files, metrics = ort_variants(sessions, fp32_path, threads, bench, bench_repeats)
    tflite_logits: dict[str, Any] = {}
    if ExportTarget.TFLITE in spec.targets:  # LiteRT, in its own environment (litert.py)
        from rayrelay_workloads.litert import tflite_variants

        rows = ref.encode([ex.text for ex in validation], padding="max_length")
        tflite = tflite_variants(ref.model, rows, out, spec.quantize == Quantize.INT8, threads, bench_repeats)
        extra_files |= tflite.files
        tflite_logits, metrics = tflite.logits, metrics | tflite.metrics
    return extra_files, tflite_logits, metrics


def maybe_bf16(
    spec: ExportSpec,
    fp32_path: Path,
    threads: int,
    bench: Any,
    bench_repeats: int,
    run: Callable[[Any, dict[str, Any]], Any] = onnx_logits,
) -> tuple[Any, RuntimeVariant | None, dict[str, float], str | None]:
    """(session, variant, metrics, why it is missing) of the bf16 variant, as ``export.bf16`` asks.

    ``false`` publishes no bf16 variant at all; unset measures it only where this host runs
    bf16 natively (emulated, the pass costs ~17x fp32's: a quickstart would wait minutes).
    """
    if spec.bf16 is False:
        return None, None, {}, None
    if spec.bf16 is None and (why := export_host_lacks_bf16()):
        return None, None, {}, why
    return bf16_variant(fp32_path, threads, bench, bench_repeats, run)


def compare_variants(
    ref: Reference,
    sessions: dict[str, Any],
    validation: list[Example],
    labels: list[str],
    extra_logits: dict[str, Any],
    tolerance: float,
    bf16: RuntimeVariant | None,
) -> ParityFigures:
    """Every variant's logits on the validation rows against PyTorch's: the parity figures, checked
    (``ParityError`` beyond ``tolerance``); ``bf16``'s own figures (to PyTorch, to fp32, labels equal
    to fp32's) are filled in."""
    import numpy as np

    label_ids = {name: i for i, name in enumerate(labels)}
    logits = variant_logits(ref, sessions, [ex.text for ex in validation]) | extra_logits
    figures = parity(logits, np.array([label_ids[ex.label] for ex in validation]))
    check_parity(figures, tolerance)
    if bf16 is not None:
        bf16.max_diff_pytorch = figures.max_diff["bf16"]
        bf16.max_diff_fp32 = float(np.abs(logits["bf16"] - logits["fp32"]).max())
        same = logits["bf16"].argmax(-1) == logits["fp32"].argmax(-1)
        bf16.labels_equal_fp32 = round(float(same.mean()), 6)
    return figures


def export_all(
    checkpoint_dir: str | Path,
    tokenizer_source: str,
    out_dir: str | Path,
    spec: ExportSpec,
    max_len: int,
    validation: list[Example],
    labels: list[str],
    threads: int = 2,
    bench_repeats: int = 10,
    on_stage: Callable[[str], object] | None = None,
) -> ExportResult:
    """Everything between the checkpoint and the files to publish: export, time, optimise, quantise, compare."""
    import torch

    out = Path(out_dir)
    torch.set_num_threads(threads)
    ref = save_reference(checkpoint_dir, tokenizer_source, out, max_len)
    plain = out / "onnx" / "model.plain.onnx"
    ref.input_names = export_onnx(ref.model, ref.tokenizer, plain, spec.opset, max_len)
    # One fixed batch for every timing: 8 validation texts padded to max_len.
    bench = ref.encode([ex.text for ex in (validation * BENCH_BATCH)[:BENCH_BATCH]], padding="max_length")
    metrics = time_plain(ref, plain, bench, threads, bench_repeats)
    if on_stage:
        on_stage("Optimizing")
    fp32_path, fused_used, sessions = fp32_and_int8(ref, plain, spec, bench, threads, bench_repeats, metrics)
    extra_files, tflite_logits, edge_metrics = edge_variants(
        ref, spec, sessions, fp32_path, out, validation, threads, bench, bench_repeats
    )
    metrics |= edge_metrics
    bf16_sess, bf16, bf16_metrics, bf16_missing = maybe_bf16(spec, fp32_path, threads, bench, bench_repeats)
    metrics |= bf16_metrics
    if bf16_sess is not None:
        sessions["bf16"] = bf16_sess
    metrics |= {"bench_batch": BENCH_BATCH, "bench_seq_len": max_len, "bench_threads": threads}
    figures = compare_variants(ref, sessions, validation, labels, tflite_logits, spec.parity_tolerance, bf16)
    for name in extra_files:
        metrics[f"max_abs_logit_diff_{name}"] = figures.max_diff.get(name, 0.0)
    if bf16 is not None:
        metrics["max_abs_logit_diff_bf16"] = bf16.max_diff_pytorch
    return ExportResult(
        out_dir=out,
        labels=labels,
        input_names=ref.input_names,
        fp32_file="onnx/model.onnx",
        int8_file="onnx/model.int8.onnx" if "int8" in sessions else None,
        fused_used=fused_used,
        accuracy=figures.accuracy,
        max_diff_fp32=figures.max_diff_fp32,
        max_diff_int8=figures.max_diff_int8,
        samples=figures.samples,
        lower_case=getattr(ref.tokenizer, "do_lower_case", None),
        metrics=metrics,
        extra_files=extra_files,
        bf16=bf16,
        bf16_missing=bf16_missing,
    )
