"""From the best checkpoint to checked ONNX models: export, fuse, quantise, compare.

``pipeline.py`` calls :func:`export_all` with the local copy of the best
checkpoint (``train.py``). It writes into a local folder that ``publish.py``
uploads:

- ``hf/``: save_pretrained model + tokenizer (the PyTorch reference);
- ``onnx/model.onnx``: the fp32 model that is served. The transformer
  optimizer's fused graph when it is measurably faster here, else the plain
  export (never a speedup that was not measured);
- ``onnx/model.int8.onnx``: dynamic int8 quantisation.

Why the fused graph "gains nothing" here (measured, recorded in the manifest
metrics): with transformers 5 and torch 2.13 the optimizer fuses
SkipLayerNormalization and BiasGelu but does not match the attention subgraph
(no Attention node, ``optimizer_attention_fused: 0``), and onnxruntime's own
session optimiser (``ORT_ENABLE_ALL``) already applies LayerNorm/Gelu fusions
to the plain export at load time (``ort_session_fused_ops_*``). So the
pre-fused graph (``onnx_fused_ms``) is not faster than the plain one
(``onnx_plain_ms``) and the plain export is served; the fused one is used only
when it is measurably faster.

Parity: max |logit difference| of ONNX fp32 vs PyTorch over the validation set
must stay within ``export.parityTolerance`` (else ``ParityError``); the accuracy
of every variant is measured on the same rows.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayrelay_core.api import ExportSpec, Quantize
from rayrelay_workloads.data import Example

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
# Prefer a pre-fused graph only when it beats the plain one by more than noise.
FUSED_MIN_GAIN = 0.03


class ParityError(RuntimeError):
    """ONNX fp32 disagrees with PyTorch beyond the tolerance."""


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


def load_checkpoint_model(checkpoint_dir: str | Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    # Eager attention: the SDPA path of transformers 5 exports a mask/attention subgraph
    # that onnxruntime's BERT fusion does not recognise (no Attention node, no gain).
    model = AutoModelForSequenceClassification.from_pretrained(
        str(Path(checkpoint_dir) / "model"), attn_implementation="eager"
    )
    model.eval()
    return model


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
            # graph, closer to what onnxruntime's BERT fusion expects. Measured here: the
            # optimizer still does not fuse Attention on this export (see module docstring).
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


def optimize_onnx(src: Path, dst: Path, config: Any) -> dict[str, int]:
    """Fuse with onnxruntime's transformer optimizer; returns fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        # Only the Python fusions: the result stays portable (no CPU-specific kernels baked in).
        opt_level=0,
        use_gpu=False,
    )
    optimized.save_model_to_file(str(dst))
    return op_counts(dst)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts.get(op)}


def quantize_int8(src: Path, dst: Path, fused: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A graph fused by the transformer optimizer has tensors without type info;
    # quantize_dynamic fails on them unless given a default type (seen with onnxruntime 1.30).
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, extra_options=extra)


def session(path: Path, threads: int, basic_only: bool = False, save_optimized: Path | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if basic_only:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    if save_optimized is not None:
        opts.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_logits(sess: Any, enc: dict[str, Any]) -> Any:
    import numpy as np

    names = {i.name for i in sess.get_inputs()}
    feed = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items() if k in names}
    return sess.run(["logits"], feed)[0]


def time_ms(fn: Any, repeats: int) -> float:
    """Median wall time of ``fn`` in ms after two warm-up calls."""
    fn()
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


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
    """Everything between the checkpoint and the files to publish."""
    import numpy as np
    import torch

    from rayrelay_workloads.modeling import load_tokenizer

    out = Path(out_dir)
    torch.set_num_threads(threads)
    model = load_checkpoint_model(checkpoint_dir)
    tokenizer = load_tokenizer(tokenizer_source)
    tokenizer.model_max_length = max_len
    model.save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")

    onnx_dir = out / "onnx"
    plain = onnx_dir / "model.plain.onnx"
    names = export_onnx(model, tokenizer, plain, spec.opset, max_len)
    metrics: dict[str, float] = {}

    # One fixed batch for every timing: 8 validation texts padded to max_len.
    bench_enc = tokenizer(
        [ex.text for ex in (validation * 8)[:8]],
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_tensors="np",
    )
    bench_t = {k: torch.from_numpy(v) for k, v in bench_enc.items() if k in names}

    def torch_run() -> None:
        with torch.no_grad():
            model(**bench_t)

    metrics["pytorch_ms"] = time_ms(torch_run, bench_repeats)
    plain_all = session(plain, threads, save_optimized=onnx_dir / "plain.ort-optimized.onnx")
    plain_basic = session(plain, threads, basic_only=True)
    metrics["onnx_plain_ms"] = time_ms(lambda: onnx_logits(plain_all, bench_enc), bench_repeats)
    metrics["onnx_plain_basic_ms"] = time_ms(lambda: onnx_logits(plain_basic, bench_enc), bench_repeats)
    for op, n in op_counts(onnx_dir / "plain.ort-optimized.onnx").items():
        metrics[f"ort_session_fused_ops_{op}"] = n
    (onnx_dir / "plain.ort-optimized.onnx").unlink(missing_ok=True)

    served, fused_used = plain, False
    if on_stage:
        on_stage("Optimizing")
    if spec.optimize:
        fused = onnx_dir / "model.fused.onnx"
        counts = optimize_onnx(plain, fused, model.config)
        for op, n in counts.items():
            metrics[f"optimizer_fused_ops_{op}"] = n
        if not any(op in counts for op in ("Attention", "MultiHeadAttention")):
            metrics["optimizer_attention_fused"] = 0
        fused_sess = session(fused, threads)
        metrics["onnx_fused_ms"] = time_ms(lambda: onnx_logits(fused_sess, bench_enc), bench_repeats)
        fused_used = metrics["onnx_fused_ms"] < metrics["onnx_plain_ms"] * (1 - FUSED_MIN_GAIN)
        if fused_used:
            served = fused
    metrics["onnx_fused_served"] = float(fused_used)
    fp32_path = onnx_dir / "model.onnx"
    served.replace(fp32_path)
    for leftover in (plain, onnx_dir / "model.fused.onnx"):
        leftover.unlink(missing_ok=True)
    fp32_sess = session(fp32_path, threads)
    metrics["onnx_fp32_ms"] = time_ms(lambda: onnx_logits(fp32_sess, bench_enc), bench_repeats)

    int8_sess = None
    int8_path = onnx_dir / "model.int8.onnx"
    if spec.quantize == Quantize.INT8:
        quantize_int8(fp32_path, int8_path, fused_used)
        int8_sess = session(int8_path, threads)
        metrics["onnx_int8_ms"] = time_ms(lambda: onnx_logits(int8_sess, bench_enc), bench_repeats)
        metrics["int8_speedup_vs_pytorch"] = round(metrics["pytorch_ms"] / metrics["onnx_int8_ms"], 3)
    metrics["bench_batch"] = 8
    metrics["bench_seq_len"] = max_len
    metrics["bench_threads"] = threads

    # Parity and accuracy over the whole validation set, batch by batch.
    label_ids = {name: i for i, name in enumerate(labels)}
    target = np.array([label_ids[ex.label] for ex in validation])
    outs: dict[str, list[Any]] = {"pytorch": [], "fp32": [], "int8": []}
    for i in range(0, len(validation), 64):
        rows = validation[i : i + 64]
        enc = tokenizer(
            [r.text for r in rows], padding=True, truncation=True, max_length=max_len, return_tensors="np"
        )
        enc = {k: v for k, v in enc.items() if k in names}
        with torch.no_grad():
            outs["pytorch"].append(model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy())
        outs["fp32"].append(onnx_logits(fp32_sess, enc))
        if int8_sess is not None:
            outs["int8"].append(onnx_logits(int8_sess, enc))
    logits = {k: np.concatenate(v) for k, v in outs.items() if v}
    accuracy = {k: round(float((v.argmax(-1) == target).mean()), 6) for k, v in logits.items()}
    max_fp32 = float(np.abs(logits["fp32"] - logits["pytorch"]).max())
    max_int8 = float(np.abs(logits["int8"] - logits["pytorch"]).max()) if "int8" in logits else None
    result = ExportResult(
        out_dir=out,
        labels=labels,
        input_names=names,
        fp32_file="onnx/model.onnx",
        int8_file="onnx/model.int8.onnx" if int8_sess is not None else None,
        fused_used=fused_used,
        accuracy=accuracy,
        max_diff_fp32=max_fp32,
        max_diff_int8=max_int8,
        samples=len(validation),
        lower_case=getattr(tokenizer, "do_lower_case", None),
        metrics=metrics,
    )
    if max_fp32 > spec.parity_tolerance:
        raise ParityError(
            f"ONNX fp32 logits differ from PyTorch by up to {max_fp32:.3g} on the validation set "
            f"(export.parityTolerance is {spec.parity_tolerance:g})"
        )
    return result
