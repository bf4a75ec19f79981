"""Benchmark: text generation, tokens/s of the ONNX decoder with KV cache against PyTorch ``generate``.

The model is a GPT-2-style decoder built here (``rayrelay_workloads.textgen.tiny``:
random weights, 6 layers, width 384, 6 heads, a byte-level BPE tokenizer trained
on the shipped text; no hub is reachable here, and speed does not depend on
the weights). The ONNX variants are made with the product's own functions
(``textgen.export``): ``export_decoder`` (the generic graph: past key values as
inputs, past + new as outputs), ``build_inplace_decoder`` (the in-place graph the
export writes for GPT-2 models, ``textgen.inplace``) and ``quantize_decoder``
(dynamic int8).

Contenders, each with 2 threads (``torch.set_num_threads`` / onnxruntime
``intra_op_num_threads``):

- ``pytorch-generate``: transformers ``generate`` (greedy, its own KV cache,
  ``min_new_tokens`` = ``max_new_tokens`` so no row stops early), eager, fp32;
- ``ort-fp32-kv`` / ``ort-int8-kv`` (generic graph) and ``ort-fp32-inplace`` /
  ``ort-int8-inplace``: the product's decoding loop (``textgen.decoding.decode``,
  greedy, same token count) on each graph.

For batch 1 and 8 (prompts: validation texts cut to the same 32 tokens), each
contender generates ``NEW`` tokens per row; the contenders are interleaved per
repetition; tokens/s = batch x NEW / wall time, the median over repetitions is
reported with the ratio to PyTorch. Time to first token through the endpoint
(``--endpoint``, default on in a full run): the int8 set is published to a
``file://`` store, served by ``TextGenServer`` on a local Ray Serve, and
``generate_stream`` is timed from the request to the first server-sent event
and to the last, over several requests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, THREADS, apply_env, free_port, log, median, ratio, write_result
from rayrelay_workloads.hardware import instruction_set

apply_env()
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

PROMPT_TOKENS = 32
CONTENDERS = ("pytorch-generate", "ort-fp32-kv", "ort-int8-kv", "ort-fp32-inplace", "ort-int8-inplace")


def prompts(tokenizer: Any, batch: int) -> list[list[int]]:
    """``batch`` prompts of PROMPT_TOKENS tokens each, cut from the validation texts run together."""
    from rayrelay_workloads.textgen.tiny import texts_of

    stream: list[int] = []
    for text in texts_of(DATA / "textgen-validation.jsonl"):
        stream += tokenizer(text + "\n", add_special_tokens=False)["input_ids"]
    if len(stream) < batch * PROMPT_TOKENS:
        raise RuntimeError("not enough validation text for the prompts")
    return [stream[i * PROMPT_TOKENS : (i + 1) * PROMPT_TOKENS] for i in range(batch)]


def kernel(folder: Path, work: Path, batches: list[int], new: int, reps: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrelay_workloads.textgen.decoding import Sampling, generate_ids, onnx_decoder
    from rayrelay_workloads.textgen.export import export_decoder, quantize_decoder, session
    from rayrelay_workloads.textgen.inplace import build_inplace_decoder

    torch.set_num_threads(THREADS)
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    fp32, int8 = work / "model.onnx", work / "model.int8.onnx"
    export_decoder(model, fp32, 17)
    quantize_decoder(fp32, int8)
    sizes = {"fp32_mib": fp32.stat().st_size / 2**20, "int8_mib": int8.stat().st_size / 2**20}
    # The in-place graph (textgen.inplace) is what the export writes for this GPT-2 model; the
    # generic one (past in, present out) is what it writes for other models.
    fp32_inplace, int8_inplace = work / "model.inplace.onnx", work / "model.inplace.int8.onnx"
    build_inplace_decoder(model, fp32_inplace)
    quantize_decoder(fp32_inplace, int8_inplace)
    decoders = {
        "ort-fp32-kv": session(fp32, THREADS),
        "ort-int8-kv": session(int8, THREADS),
        "ort-fp32-inplace": session(fp32_inplace, THREADS),
        "ort-int8-inplace": session(int8_inplace, THREADS),
    }
    sampling = Sampling(max_new_tokens=new)

    def run_torch(batch: list[list[int]]) -> None:
        ids = torch.tensor(batch)
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )

    rows: list[dict[str, Any]] = []
    agree: dict[str, float] = {}
    for batch_size in batches:
        batch = prompts(tokenizer, batch_size)
        runners = {"pytorch-generate": lambda b=batch: run_torch(b)}
        for name, sess in decoders.items():
            runners[name] = lambda b=batch, s=sess: generate_ids(onnx_decoder(s, 0), b, sampling, None)
        for fn in runners.values():  # warm-up
            fn()
        seconds: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(reps):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
        for name in runners:
            tps = batch_size * new / median(seconds[name])
            rows.append(
                {"batch": batch_size, "contender": name, "tokens_per_s": tps, "seconds": seconds[name]}
            )
        base = next(r for r in rows if r["batch"] == batch_size and r["contender"] == "pytorch-generate")
        for row in rows:
            if row["batch"] == batch_size:
                row["vs_pytorch"] = ratio(row["tokens_per_s"], base["tokens_per_s"])
        if batch_size == 1:
            # Greedy agreement with PyTorch on this prompt (int8 may differ on a random model).
            ids = torch.tensor(batch)
            with torch.no_grad():
                ref = model.generate(
                    ids,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    attention_mask=torch.ones_like(ids),
                    pad_token_id=tokenizer.eos_token_id,
                )
            ref_tokens = ref[0, PROMPT_TOKENS:].tolist()
            for name, sess in decoders.items():
                got = generate_ids(onnx_decoder(sess, 0), batch, sampling, None)[0]
                agree[name] = float(np.mean([a == b for a, b in zip(got, ref_tokens, strict=True)]))
    return {"rows": rows, "sizes": sizes, "greedy_token_agreement_b1": agree}


def publish_set(folder: Path, work: Path) -> str:
    """Export the model with the product's ``export_lm``, publish it to a ``file://`` store: its manifest URI."""
    from rayrelay_core.api import ExportSpec, TrainingJobSpec
    from rayrelay_core.runs import JobDocument, RunLayout, run_id_for
    from rayrelay_workloads.quality import Int8Decision
    from rayrelay_workloads.textgen.data import Fields, LoadedLmData, read_lm_examples
    from rayrelay_workloads.textgen.export import export_lm
    from rayrelay_workloads.textgen.pipeline import publish_lm

    ckpt = work / "ckpt"
    (ckpt / "model").mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        (ckpt / "model" / item.name).write_bytes(item.read_bytes())
    train = read_lm_examples(str(DATA / "textgen-train.jsonl"), "jsonl", Fields())
    val = read_lm_examples(str(DATA / "textgen-validation.jsonl"), "jsonl", Fields())
    result = export_lm(ckpt, str(folder), work / "out", ExportSpec(), 128, val.examples[:8], bench_repeats=1)
    spec = TrainingJobSpec.model_validate(
        {
            "model": {"source": str(folder), "task": "text-generation"},
            "data": {"train": train.uri, "validation": val.uri},
        }
    )
    run_id = run_id_for(spec)
    job = JobDocument(
        namespace="bench",
        name="textgen",
        run_id=run_id,
        spec=spec,
        run_uri=RunLayout.for_job(f"file://{work}/store", "bench", "textgen", run_id).base,
    )
    _, manifest_uri = publish_lm(job, result, LoadedLmData(train, val), Int8Decision(True, None, "int8"), {})
    return str(manifest_uri)


def endpoint_ttft(folder: Path, work: Path, requests_n: int, new: int) -> dict[str, Any]:
    """Publish the int8 set, serve it with TextGenServer, time generate_stream's first and last event."""
    import requests
    from ray import serve

    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_workloads.serve.app import ModelAppArgs, model_app

    manifest_uri = publish_set(folder, work)

    import ray

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    md = ModelDeploymentSpec.model_validate(
        {
            "model": {"manifestUri": manifest_uri},
            "resources": {"cpus": 1},
            "generation": {"maxNewTokens": new, "maxPromptTokens": 128},
        }
    )
    args = ModelAppArgs(
        name="textgen",
        manifest_uri=manifest_uri,
        spec=md,
        task="text-generation",
        cache_dir=str(work / "cache"),
    )
    serve.run(model_app(args), name="textgen", route_prefix="/v2/models/textgen")
    url = f"http://127.0.0.1:{port}/v2/models/textgen/generate_stream"
    body = {"text_input": "My order has not arrived and", "parameters": {"max_tokens": new, "temperature": 0}}
    first, last, events = [], [], 0
    for i in range(requests_n + 1):
        start = time.perf_counter()
        with requests.post(url, json=body, stream=True, timeout=120) as resp:
            resp.raise_for_status()
            got_first = None
            count = 0
            for line in resp.iter_lines():
                if line.startswith(b"data: "):
                    count += 1
                    if got_first is None:
                        got_first = time.perf_counter() - start
            total = time.perf_counter() - start
        if i == 0:
            continue  # warm-up
        first.append(got_first or total)
        last.append(total)
        events = count
    serve.shutdown()
    ray.shutdown()
    return {
        "requests": requests_n,
        "new_tokens": events,
        "ttft_ms_median": median(first) * 1000,
        "last_token_ms_median": median(last) * 1000,
        "ttft_ms": [x * 1000 for x in first],
        "last_ms": [x * 1000 for x in last],
    }


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``textgen`` section of docs/performance.md (``bench.report``)."""
    model, kern = doc["model"], doc["kernel"]
    lines = [
        "## 7. Text generation",
        "",
        f"GPT-2-style decoder, random weights, {model['layers']} layers x width {model['width']}; prompts of "
        f"{model['prompt_tokens']} tokens, {model['new_tokens']} new tokens per row (greedy, no early stop); "
        f"{doc['threads']} threads each; instruction set {doc['instruction_set']}; "
        f"load average at the end {doc.get('load_average_at_end')}. Tokens/s = rows x new tokens / wall "
        "time, median of interleaved repetitions. Command: `python -m bench --only textgen` "
        "(it runs `python -m bench.textgen`). `-kv`: the generic graph (past keys/values in, past + new "
        "out); `-inplace`: the graph the export writes for GPT-2 models, which writes each new position "
        "into cache buffers in place (docs/textgen.md).",
        "",
        "| batch | contender | tokens/s | vs PyTorch generate |",
        "|---|---|---|---|",
    ]
    for row in kern["rows"]:
        lines.append(
            f"| {row['batch']} | {row['contender']} | {row['tokens_per_s']:.1f} | {row['vs_pytorch']:.2f}x |"
        )
    sizes = kern["sizes"]
    lines += [
        "",
        f"ONNX files: fp32 {sizes['fp32_mib']:.1f} MiB, int8 {sizes['int8_mib']:.1f} MiB. Greedy tokens equal "
        f"to PyTorch's at batch 1 (share of the {model['new_tokens']} positions): "
        f"{kern['greedy_token_agreement_b1']}. With random weights the logits are nearly flat, so int8's "
        "rounding flips the argmax early and the rest of the sequence follows; the trained runs' manifests "
        "record int8's greedy agreement on validation prompts (`generation.greedyMatch`).",
        "",
    ]
    e = doc.get("endpoint")
    if e:
        lines += [
            f"Endpoint (TextGenServer, int8, one replica with 1 CPU, local Ray Serve, client on the same "
            f"machine): `generate_stream` with {e['new_tokens']} tokens, median over {e['requests']} requests: "
            f"first token after **{e['ttft_ms_median']:.1f} ms**, last after {e['last_token_ms_median']:.1f} ms.",
            "",
        ]
    return lines


def bench_decoder(work: Path, quick: bool) -> tuple[int, int, Path]:
    """(layers, width, folder) of the benches' decoder: a tiny GPT-2 trained on the shipped texts."""
    from rayrelay_workloads.textgen.tiny import build_tiny_gpt2

    layers, width = (2, 128) if quick else (6, 384)
    folder = build_tiny_gpt2(
        work / "model",
        DATA / "textgen-train.jsonl",
        layers=layers,
        width=width,
        heads=6 if width % 6 == 0 else 4,
        positions=512,
        vocab_size=2048,
    )
    return layers, width, folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.textgen", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-endpoint", action="store_true", help="skip the endpoint's time to first token")
    args = parser.parse_args(argv)

    new = 16 if args.quick else 64
    reps = 2 if args.quick else 5
    work = Path(tempfile.mkdtemp(prefix="rr-bench-textgen-"))
    layers, width, folder = bench_decoder(work, args.quick)
    log(f"textgen: model {layers} layers x {width}, {new} new tokens, {reps} repetitions")
    result: dict[str, Any] = {
        "instruction_set": instruction_set(),
        "threads": THREADS,
        "model": {"layers": layers, "width": width, "prompt_tokens": PROMPT_TOKENS, "new_tokens": new},
        "kernel": kernel(folder, work, [1, 8], new, reps),
    }
    for row in result["kernel"]["rows"]:
        log(
            f"  batch {row['batch']} {row['contender']}: {row['tokens_per_s']:.1f} tokens/s "
            f"({row['vs_pytorch']:.2f}x PyTorch)"
        )
    if not args.no_endpoint:
        result["endpoint"] = endpoint_ttft(folder, work, 3 if args.quick else 10, new)
        log(
            f"  endpoint: TTFT {result['endpoint']['ttft_ms_median']:.1f} ms, "
            f"last token {result['endpoint']['last_token_ms_median']:.1f} ms"
        )
    path = write_result("textgen", result)
    log(f"textgen: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
