"""From the best LM checkpoint to checked ONNX decoders with a KV cache (fp32 and int8).

``textgen.pipeline`` calls :func:`export_lm` with the local copy of the best
checkpoint. It writes what ``publish`` uploads:

- ``hf/``: save_pretrained model + tokenizer (the PyTorch reference);
- ``onnx/model.onnx``: the decoder with its KV cache. A GPT-2 model gets the
  in-place graph (``textgen.inplace``: built from the weights, onnxruntime's
  ``GroupQueryAttention`` writes each new position into cache buffers the caller
  keeps); any other model the generic graph with past key values in and present
  ones out (``decoding.py`` states its inputs and outputs), exported from eager
  attention with the TorchScript exporter and dynamic batch / sequence / past
  axes. Either way one graph serves the prefill and every later step;
- ``onnx/model.int8.onnx``: onnxruntime's dynamic int8 quantisation of it.

Checks, recorded in the manifest (``generation`` block and metrics):

- logits parity: the largest |logit difference| of each ONNX variant against
  PyTorch over a few validation prompts, run as a prefill and then token by
  token through the cache (so the cached path is what is compared); fp32 must
  stay within ``export.parityTolerance`` (else ``ParityError``);
- greedy-decoding parity: for the same prompts, the tokens PyTorch's
  ``generate`` (greedy) writes and the tokens each ONNX variant writes with
  :func:`decoding.decode`; fp32 must match on every prompt (else
  ``ParityError``), int8's share of identical prompts is recorded;
- validation perplexity of PyTorch and of each ONNX variant on the same rows,
  which the quality gate judges (``qualityGate.maxInt8PerplexityIncrease``).

The transformer optimizer's BERT fusions do not apply to this graph;
``export.optimize`` is not used for text-generation (onnxruntime's session
optimiser still fuses at load time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayrelay_core.api import ExportSpec, Quantize
from rayrelay_workloads.export_checks import ParityError, time_ms
from rayrelay_workloads.textgen.data import LmExample
from rayrelay_workloads.textgen.decoding import (
    Sampling,
    StepModel,
    TorchDecoder,
    generate_ids,
    onnx_decoder,
)
from rayrelay_workloads.textgen.inplace import build_inplace_decoder, supports
from rayrelay_workloads.textgen.lm import encode_examples, perplexity

PARITY_PROMPTS = 8  # validation rows whose first words become parity prompts
PROMPT_WORDS = 6
PARITY_NEW_TOKENS = 16
PPL_ROWS = 64  # validation rows the ONNX perplexity is measured on
BENCH_NEW_TOKENS = 32


@dataclass
class LmExportResult:
    out_dir: Path
    fp32_file: str
    int8_file: str | None
    max_diff_fp32: float
    max_diff_int8: float | None
    greedy_match: dict[str, float]  # variant -> share of prompts with identical tokens
    perplexity: dict[str, float]  # pytorch / fp32 / int8 on the same validation rows
    prompts: int
    eos_token_id: int | None
    context_length: int
    metrics: dict[str, float] = field(default_factory=dict)
    kv_cache: str = "concat"  # "inplace" (textgen.inplace) or "concat" (export_decoder)


def past_names(layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return past, present


def model_dims(config: Any) -> tuple[int, int, int]:
    """(layers, heads, head size) of a GPT-style config."""
    layers = int(getattr(config, "n_layer", None) or config.num_hidden_layers)
    heads = int(getattr(config, "n_head", None) or config.num_attention_heads)
    width = int(getattr(config, "n_embd", None) or config.hidden_size)
    return layers, heads, width // heads


def export_decoder(model: Any, path: Path, opset: int) -> None:
    """The decoder with past key values as one ONNX graph (see the module docstring)."""
    import torch
    from transformers import DynamicCache

    layers, heads, head_size = model_dims(model.config)
    past_in, present_out = past_names(layers)

    class Decoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            flat: list[Any] = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    batch, past_len, new = 2, 3, 4
    ids = torch.randint(0, int(model.config.vocab_size), (batch, new))
    mask = torch.ones(batch, past_len + new, dtype=torch.long)
    pos = torch.arange(past_len, past_len + new).expand(batch, new)
    past = [torch.randn(batch, heads, past_len, head_size) for _ in past_in]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes |= {n: {0: "batch", 2: "past_sequence"} for n in past_in}
    axes |= {n: {0: "batch", 2: "total_sequence"} for n in present_out}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Decoder(model).eval(),
            (ids, mask, pos, *past),
            str(path),
            input_names=["input_ids", "attention_mask", "position_ids", *past_in],
            output_names=["logits", *present_out],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


def quantize_decoder(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def parity_prompts(tokenizer: Any, rows: list[LmExample], count: int = PARITY_PROMPTS) -> list[list[int]]:
    """Token ids of the first words of a few validation rows (their prompt, when they have one)."""
    prompts = []
    for row in rows[:count]:
        text = row.prompt or " ".join(row.completion.split()[:PROMPT_WORDS])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            prompts.append(ids)
    return prompts or [[int(tokenizer.eos_token_id or 0)]]


def stepwise_logits(decoder: Any, prompt: list[int], follow: list[int]) -> np.ndarray:
    """Logits after the prompt and after each token of ``follow`` (prefill, then cached steps)."""
    out = [decoder.prefill([prompt])]
    for token in follow:
        out.append(decoder.step(np.array([token], dtype=np.int64)))
    return np.concatenate(out, axis=0)


def torch_greedy(model: Any, prompts: list[list[int]], new_tokens: int, eos: int | None) -> list[list[int]]:
    """PyTorch ``generate`` (greedy, its own cache), one prompt at a time: the reference tokens."""
    import torch

    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos if eos is not None else 0,
            )
        out.append([int(t) for t in gen[0, len(prompt) :].tolist()])
    return out


def onnx_perplexity(sess: Any, tokenizer: Any, rows: list[LmExample], max_len: int) -> float:
    """Validation perplexity of an ONNX decoder (prefill over each row, empty past)."""
    decoder = onnx_decoder(sess, int(tokenizer.pad_token_id or 0))
    total, count = 0.0, 0
    for row in rows:
        batch = encode_examples(tokenizer, [row], max_len)
        ids = batch["input_ids"][0].tolist()
        labels = batch["labels"][0].numpy()
        logits = decoder.full_logits(ids).astype(np.float64)
        target = labels[1:]
        keep = target != -100
        shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        total -= float(logp[np.arange(len(target))[keep], target[keep]].sum())
        count += int(keep.sum())
    return perplexity(total / max(count, 1))


def export_lm(
    checkpoint_dir: str | Path,
    tokenizer_source: str,
    out_dir: str | Path,
    spec: ExportSpec,
    max_len: int,
    validation: list[LmExample],
    threads: int = 2,
    bench_repeats: int = 5,
) -> LmExportResult:
    """Export, quantise and check (see the module docstring)."""
    import torch

    out = Path(out_dir)
    torch.set_num_threads(threads)
    model, tokenizer = _load_and_save(checkpoint_dir, tokenizer_source, out, max_len)
    sessions, int8_file, kv_cache = _export_variants(model, out, spec, threads)
    eos = tokenizer.eos_token_id
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0))
    prompts = parity_prompts(tokenizer, validation)
    diffs, matches = _parity(model, sessions, prompts, pad, eos)
    _check_fp32_parity(diffs["fp32"], matches["fp32"], len(prompts), spec.parity_tolerance)

    rows = validation[:PPL_ROWS]
    ppl = {"pytorch": _torch_perplexity(model, tokenizer, rows, max_len)}
    for name, sess in sessions.items():
        ppl[name] = onnx_perplexity(sess, tokenizer, rows, max_len)

    metrics = _timings(model, sessions, prompts[0], pad, eos, bench_repeats)
    return LmExportResult(
        out_dir=out,
        fp32_file="onnx/model.onnx",
        int8_file=int8_file,
        max_diff_fp32=diffs["fp32"],
        max_diff_int8=diffs.get("int8"),
        greedy_match=matches,
        perplexity=ppl,
        prompts=len(prompts),
        eos_token_id=eos,
        context_length=int(
            getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
        ),
        metrics=metrics,
        kv_cache=kv_cache,
    )


def _load_and_save(
    checkpoint_dir: str | Path, tokenizer_source: str, out: Path, max_len: int
) -> tuple[Any, Any]:
    """The checkpoint's model (eager attention, eval mode) and the tokenizer, both saved to ``out/hf``."""
    from transformers import AutoModelForCausalLM

    from rayrelay_workloads.modeling import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(Path(checkpoint_dir) / "model"), attn_implementation="eager"
    )
    model.eval()
    tokenizer = load_tokenizer(tokenizer_source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = max_len
    model.save_pretrained(out / "hf")
    tokenizer.save_pretrained(out / "hf")
    return model, tokenizer


def _export_variants(
    model: Any, out: Path, spec: ExportSpec, threads: int
) -> tuple[dict[str, Any], str | None, str]:
    """The fp32 decoder and, with ``quantize: int8``, its int8 copy: their sessions, the int8 file,
    and the kind of KV cache the graph has.

    A GPT-2 model gets the in-place graph (``textgen.inplace``: each step writes only the new
    position into the cache); any other model the generic TorchScript export."""
    fp32_path = out / "onnx" / "model.onnx"
    if supports(model.config) is None:
        build_inplace_decoder(model, fp32_path)
        kv_cache = "inplace"
    else:
        export_decoder(model, fp32_path, spec.opset)
        kv_cache = "concat"
    sessions = {"fp32": session(fp32_path, threads)}
    if spec.quantize != Quantize.INT8:
        return sessions, None, kv_cache
    int8_path = fp32_path.with_name("model.int8.onnx")
    quantize_decoder(fp32_path, int8_path)
    sessions["int8"] = session(int8_path, threads)
    return sessions, "onnx/model.int8.onnx", kv_cache


def _parity(
    model: Any, sessions: dict[str, Any], prompts: list[list[int]], pad: int, eos: int | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Per variant: the largest logit difference to PyTorch along its greedy path, and the share of
    prompts whose greedy tokens (alone and batched) equal PyTorch's."""
    reference = torch_greedy(model, prompts, PARITY_NEW_TOKENS, eos)
    greedy = Sampling(max_new_tokens=PARITY_NEW_TOKENS)
    diffs: dict[str, float] = {}
    matches: dict[str, float] = {}
    for name, sess in sessions.items():
        decoder = onnx_decoder(sess, pad)
        worst = 0.0
        for prompt, ref_tokens in zip(prompts, reference, strict=True):
            ref_logits = stepwise_logits(TorchDecoder(model, pad), prompt, ref_tokens[:-1])
            got = stepwise_logits(decoder, prompt, ref_tokens[:-1])
            worst = max(worst, float(np.abs(got - ref_logits).max()))
        diffs[name] = worst
        tokens = generate_ids(decoder, prompts, greedy, eos) if len(prompts) else []
        # Batched decoding (left padding) must give each prompt the same tokens as alone.
        alone = [generate_ids(decoder, [p], greedy, eos)[0] for p in prompts]
        same = [a == r and t == r for a, t, r in zip(alone, tokens, reference, strict=True)]
        matches[name] = sum(same) / len(same)
    return diffs, matches


def _check_fp32_parity(diff: float, match: float, prompts: int, tolerance: float) -> None:
    if diff > tolerance:
        raise ParityError(
            f"ONNX fp32 decoder logits differ from PyTorch by up to {diff:.3g} on {prompts} "
            f"validation prompts (export.parityTolerance is {tolerance:g})"
        )
    if match < 1.0:
        raise ParityError(
            f"ONNX fp32 greedy decoding wrote other tokens than PyTorch on "
            f"{round((1 - match) * prompts)} of {prompts} validation prompts"
        )


def _torch_perplexity(model: Any, tokenizer: Any, rows: list[LmExample], max_len: int) -> float:
    from rayrelay_workloads.textgen.lm import evaluate_lm

    return evaluate_lm(model, tokenizer, rows, max_len).perplexity


def _timings(
    model: Any, sessions: dict[str, Any], prompt: list[int], pad: int, eos: int | None, repeats: int
) -> dict[str, float]:
    """ms per generated token (batch 1, greedy, no EOS stop) of PyTorch and each ONNX variant."""
    sampling = Sampling(max_new_tokens=BENCH_NEW_TOKENS)
    runners: dict[str, StepModel] = {"pytorch": TorchDecoder(model, pad)}
    runners |= {k: onnx_decoder(s, pad) for k, s in sessions.items()}
    metrics: dict[str, float] = {"decode_bench_new_tokens": BENCH_NEW_TOKENS}
    for name, runner in runners.items():

        def run(r: StepModel = runner) -> object:
            return generate_ids(r, [prompt], sampling, None)

        ms = time_ms(run, max(1, repeats))
        metrics[f"{name}_ms_per_token"] = round(ms / BENCH_NEW_TOKENS, 4)
    for name in sessions:
        pt, ox = metrics["pytorch_ms_per_token"], metrics[f"{name}_ms_per_token"]
        metrics[f"{name}_speedup_vs_pytorch"] = round(pt / ox, 3) if ox > 0 and not math.isnan(ox) else 0.0
    return metrics
