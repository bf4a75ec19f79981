"""From the best checkpoint to checked ONNX encoders that return normalised sentence vectors.

``embedding.pipeline`` calls :func:`export_embedding`. It writes what ``publish`` uploads:

- ``hf/``: the encoder and tokenizer (save_pretrained) plus sentence-transformers'
  module files (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``),
  so ``SentenceTransformer(hf/)`` loads the very model that was trained, pooling and
  normalisation included: the reference the parity figures and the tests compare with;
- ``onnx/model.onnx``: input ids and mask in, ``sentence_embedding`` (batch, dim) out; the
  mean pooling over the mask and the L2 normalisation are inside the graph, so a replica
  runs one session call and nothing else. It is exported the way classification's graph is
  (``export.export_onnx``: the additive mask BERT fusion expects) and, with
  ``export.optimize``, fused by the same transformer optimizer (``export.optimize_onnx``),
  kept only when measurably faster (``export_checks.fused_is_faster``);
- ``onnx/model.int8.onnx``: dynamic int8 with per-channel weight scales (``export.quantize_int8``);
- no file for ``bf16``: OpenVINO runs ``onnx/model.onnx`` with a bf16 precision hint, as for
  classification (``export.maybe_bf16``: measured where the export host has bf16 instructions
  unless ``export.bf16`` says otherwise). On an AMX host it ran the bench's texts 1.5x faster
  than int8 (docs/embeddings.md).

Checks: every variant's vector of each validation text (anchors and positives) is compared
with PyTorch's by cosine similarity; ONNX fp32 must reach :data:`FP32_MIN_COSINE` on every
text (else ``ParityError``), int8's and bf16's smallest and mean cosine are recorded and
judged by ``qualityGate.minInt8Cosine`` and ``minBf16Cosine`` (``embedding.gate``). Recall@1
and MRR of each variant on the validation pairs are measured too, so the manifest shows
what int8 and bf16 cost in retrieval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayrelay_core.api import ExportSpec, Quantize
from rayrelay_workloads.embedding.data import Pair
from rayrelay_workloads.embedding.objective import cosine_rows, mean_pool, retrieval, without_pooler
from rayrelay_workloads.export import (
    RuntimeVariant,
    maybe_bf16,
    onnx_input_names,
    optimize_onnx,
    quantize_int8,
    session,
)
from rayrelay_workloads.export_checks import ParityError, fused_is_faster, time_ms

OUTPUT = "sentence_embedding"
FP32_MIN_COSINE = 0.999  # ONNX fp32 against PyTorch, every validation text
PARITY_BATCH = 64
BENCH_BATCH = 8


@dataclass
class EmbeddingExportResult:
    out_dir: Path
    input_names: list[str]
    dimension: int
    fp32_file: str
    int8_file: str | None
    fused_used: bool
    cosine_min: dict[str, float]  # variant -> smallest cosine to PyTorch over the validation texts
    cosine_mean: dict[str, float]
    recall_at_1: dict[str, float]  # pytorch / fp32 / int8 on the validation pairs
    mrr: dict[str, float]
    texts: int
    pairs: int
    lower_case: bool | None
    metrics: dict[str, float] = field(default_factory=dict)
    # The bf16 variant (OpenVINO on fp32's file): what ran, or why it was not measured.
    bf16: RuntimeVariant | None = None
    bf16_missing: str | None = None


def load_encoder_checkpoint(checkpoint_dir: str | Path) -> Any:
    from transformers import AutoModel

    # Eager attention, as for classification: the graph onnxruntime's BERT fusion recognises.
    model = AutoModel.from_pretrained(str(Path(checkpoint_dir) / "model"), attn_implementation="eager")
    model.eval()
    return without_pooler(model)  # the checkpoint has none (worker.load_encoder)


def sentence_transformers_files(folder: Path, dimension: int, max_len: int, lower_case: bool | None) -> None:
    """The module files that make ``folder`` a sentence-transformers model (mean pooling, Normalize)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    pooling = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (folder / "2_Normalize").mkdir(parents=True, exist_ok=True)
    (folder / "2_Normalize" / "config.json").write_text("{}")
    config = {
        "max_seq_length": max_len,
        "do_lower_case": bool(lower_case) if lower_case is not None else False,
    }
    (folder / "sentence_bert_config.json").write_text(json.dumps(config, indent=2))


def export_graph(model: Any, tokenizer: Any, path: Path, opset: int, max_len: int) -> list[str]:
    """The encoder with pooling and normalisation as one ONNX graph; its input names."""
    import torch

    names = onnx_input_names(model, tokenizer)

    class Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            inputs = dict(zip(names, args, strict=True))
            mask = inputs["attention_mask"]
            # The classic additive mask, as export.export_onnx passes it (the fusion's mask path).
            extended = mask[:, None, None, :].to(torch.float32)
            inputs["attention_mask"] = (1.0 - extended) * torch.finfo(torch.float32).min
            return mean_pool(self.inner(**inputs).last_hidden_state, mask)

    enc = tokenizer(
        ["a short text", "a somewhat longer text to export with"],
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[OUTPUT] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Encoder(model).eval(),
            tuple(enc[n] for n in names),
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return names


class Reference:
    """The trained encoder everything is compared with, and the tokenizer every variant is fed by."""

    def __init__(self, model: Any, tokenizer: Any, max_len: int, input_names: list[str]) -> None:
        self.model, self.tokenizer, self.max_len, self.input_names = model, tokenizer, max_len, input_names

    def encode(self, texts: list[str], padding: str | bool = True) -> dict[str, np.ndarray]:
        enc = self.tokenizer(
            texts, padding=padding, truncation=True, max_length=self.max_len, return_tensors="np"
        )
        return {k: np.asarray(enc[k], dtype=np.int64) for k in self.input_names}

    def vectors(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.no_grad():
            inputs = {k: torch.from_numpy(v) for k, v in enc.items()}
            out = mean_pool(self.model(**inputs).last_hidden_state, inputs["attention_mask"])
        result: np.ndarray = out.numpy()
        return result


def onnx_vectors(sess: Any, enc: dict[str, np.ndarray]) -> np.ndarray:
    out: np.ndarray = sess.run([OUTPUT], enc)[0]
    return out


def variant_vectors(ref: Reference, sessions: dict[str, Any], texts: list[str]) -> dict[str, np.ndarray]:
    outs: dict[str, list[np.ndarray]] = {"pytorch": [], **{name: [] for name in sessions}}
    for i in range(0, len(texts), PARITY_BATCH):
        enc = ref.encode(texts[i : i + PARITY_BATCH])
        outs["pytorch"].append(ref.vectors(enc))
        for name, sess in sessions.items():
            outs[name].append(onnx_vectors(sess, enc))
    return {k: np.concatenate(v) for k, v in outs.items()}


def choose_graph(
    ref: Reference, plain: Path, spec: ExportSpec, bench: dict[str, np.ndarray], threads: int, repeats: int
) -> tuple[Path, bool, dict[str, float]]:
    """``onnx/model.onnx``: the fused graph when ``export.optimize`` and measurably faster, else the plain one."""
    metrics = {"pytorch_ms": time_ms(lambda: ref.vectors(bench), repeats)}
    plain_sess = session(plain, threads)
    metrics["onnx_plain_ms"] = time_ms(lambda: onnx_vectors(plain_sess, bench), repeats)
    served, fused_used = plain, False
    fused = plain.with_name("model.fused.onnx")
    if spec.optimize:
        for op, n in optimize_onnx(plain, fused, ref.model.config).items():
            metrics[f"optimizer_fused_ops_{op}"] = n
        fused_sess = session(fused, threads)
        metrics["onnx_fused_ms"] = time_ms(lambda: onnx_vectors(fused_sess, bench), repeats)
        fused_used = fused_is_faster(metrics["onnx_fused_ms"], metrics["onnx_plain_ms"])
        served = fused if fused_used else plain
    metrics["onnx_fused_served"] = float(fused_used)
    target = plain.with_name("model.onnx")
    served.replace(target)
    for leftover in (plain, fused):
        leftover.unlink(missing_ok=True)
    return target, fused_used, metrics


@dataclass
class Comparison:
    """Every variant against PyTorch on the validation texts, and on the validation pairs."""

    cosine_min: dict[str, float]
    cosine_mean: dict[str, float]
    recall_at_1: dict[str, float]
    mrr: dict[str, float]


def compare(vectors: dict[str, np.ndarray], pairs: int) -> Comparison:
    """Cosine of each variant's vectors to PyTorch's; retrieval of each (anchors first, then positives).

    ``ParityError`` when ONNX fp32 falls below :data:`FP32_MIN_COSINE` on any text."""
    out = Comparison({}, {}, {}, {})
    for name, values in vectors.items():
        found = retrieval(values[:pairs], values[pairs:])
        out.recall_at_1[name], out.mrr[name] = round(found.recall_at_1, 6), round(found.mrr, 6)
        if name != "pytorch":
            cos = cosine_rows(values, vectors["pytorch"])
            out.cosine_min[name], out.cosine_mean[name] = float(cos.min()), float(cos.mean())
    if out.cosine_min["fp32"] < FP32_MIN_COSINE:
        raise ParityError(
            f"ONNX fp32 embeddings differ from PyTorch: cosine similarity down to {out.cosine_min['fp32']:.6f} "
            f"on {2 * pairs} validation texts (at least {FP32_MIN_COSINE} is required)"
        )
    return out


def save_reference(
    checkpoint_dir: str | Path, tokenizer_source: str, out: Path, max_len: int
) -> tuple[Any, Any]:
    """The trained encoder and its tokenizer, saved to ``hf/`` as a sentence-transformers model."""
    from rayrelay_workloads.modeling import load_tokenizer

    model = load_encoder_checkpoint(checkpoint_dir)
    tokenizer = load_tokenizer(tokenizer_source)
    tokenizer.model_max_length = max_len
    model.save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    lower_case = getattr(tokenizer, "do_lower_case", None)
    sentence_transformers_files(out / "hf", int(model.config.hidden_size), max_len, lower_case)
    return model, tokenizer


def export_embedding(
    checkpoint_dir: str | Path,
    tokenizer_source: str,
    out_dir: str | Path,
    spec: ExportSpec,
    max_len: int,
    validation: list[Pair],
    threads: int = 2,
    bench_repeats: int = 10,
) -> EmbeddingExportResult:
    """Export, optimise, quantise and compare (see the module docstring)."""
    import torch

    out = Path(out_dir)
    torch.set_num_threads(threads)
    model, tokenizer = save_reference(checkpoint_dir, tokenizer_source, out, max_len)
    plain = out / "onnx" / "model.plain.onnx"
    ref = Reference(model, tokenizer, max_len, export_graph(model, tokenizer, plain, spec.opset, max_len))
    texts = [p.anchor for p in validation] + [p.positive for p in validation]
    bench = ref.encode((texts * BENCH_BATCH)[:BENCH_BATCH], padding="max_length")
    fp32_path, fused_used, metrics = choose_graph(ref, plain, spec, bench, threads, bench_repeats)
    sessions = {"fp32": session(fp32_path, threads)}
    metrics["onnx_fp32_ms"] = time_ms(lambda: onnx_vectors(sessions["fp32"], bench), bench_repeats)
    if spec.quantize == Quantize.INT8:
        int8_path = fp32_path.with_name("model.int8.onnx")
        # Per-channel weight scales: on the shipped MiniLM pairs the smallest int8 cosine to PyTorch
        # was 0.918 per tensor and 0.985 per channel (mean 0.962 vs 0.993).
        quantize_int8(fp32_path, int8_path, fused_used, per_channel=True)
        sessions["int8"] = session(int8_path, threads)
        metrics["onnx_int8_ms"] = time_ms(lambda: onnx_vectors(sessions["int8"], bench), bench_repeats)
    bf16_sess, bf16, bf16_metrics, bf16_missing = maybe_bf16(
        spec, fp32_path, threads, bench, bench_repeats, onnx_vectors
    )
    metrics |= bf16_metrics
    if bf16_sess is not None:
        sessions["bf16"] = bf16_sess
    metrics |= {"bench_batch": BENCH_BATCH, "bench_seq_len": max_len, "bench_threads": threads}
    found = compare(variant_vectors(ref, sessions, texts), len(validation))
    return EmbeddingExportResult(
        out_dir=out,
        input_names=ref.input_names,
        dimension=int(model.config.hidden_size),
        fp32_file="onnx/model.onnx",
        int8_file="onnx/model.int8.onnx" if "int8" in sessions else None,
        fused_used=fused_used,
        cosine_min=found.cosine_min,
        cosine_mean=found.cosine_mean,
        recall_at_1=found.recall_at_1,
        mrr=found.mrr,
        texts=len(texts),
        pairs=len(validation),
        lower_case=getattr(tokenizer, "do_lower_case", None),
        metrics=metrics,
        bf16=bf16,
        bf16_missing=bf16_missing,
    )
