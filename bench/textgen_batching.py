"""Benchmark: continuous batching of decode steps, concurrent streams through the endpoint (issue 25).

The model and its published int8 set are made as in ``bench.textgen`` (a
GPT-2-style decoder with random weights, 6 layers x 384, built here; no hub is
reachable). One ``TextGenServer`` replica (``variant: int8``,
``resources.cpus`` 1, so one onnxruntime thread) serves it on a local Ray
Serve; the load is a bounded asyncio client (aiohttp) on loopback, in this
process: ``c`` workers each send ``generate_stream`` requests back to back
(greedy, ``NEW`` new tokens, prompts of different lengths cut from the
validation texts) for ``ROUNDS`` requests each, for c in 1, 2, 4, 8. Per level:
aggregate tokens/s (tokens received / wall time of the level), p50 time between
tokens (gaps between consecutive server-sent events of one stream) and time to
first token (p50, p99).

Baseline: PyTorch ``generate`` (eager fp32, greedy, ``min_new_tokens`` =
``max_new_tokens``) on the same prompts batched the same way (c rows, left
padded) in one process, with the replica's thread count; tokens/s = c x NEW /
wall time, median of ``ROUNDS`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DATA,
    apply_env,
    free_port,
    load_average,
    log,
    median,
    percentile,
    ratio,
    write_result,
)
from rayrelay_workloads.hardware import instruction_set

apply_env()

LEVELS = (1, 2, 4, 8)
REPLICA_CPUS = 1


def prompt_texts(count: int) -> list[str]:
    """``count`` prompts of 4 to 4 + 3 x (count - 1) words from the validation texts."""
    from rayrelay_workloads.textgen.tiny import texts_of

    words = " ".join(texts_of(DATA / "textgen-validation.jsonl")).split()
    return [" ".join(words[i * 40 : i * 40 + 4 + 3 * i]) for i in range(count)]


async def one_stream(session: Any, url: str, prompt: str, new: int) -> dict[str, Any]:
    """One ``generate_stream`` request: arrival times of its events, relative to the request."""
    body = {"text_input": prompt, "parameters": {"max_tokens": new, "temperature": 0}}
    start = time.perf_counter()
    times: list[float] = []
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: "):
                times.append(time.perf_counter() - start)
                json.loads(line[6:])
    return {"times": times}


async def level(url: str, concurrency: int, rounds: int, new: int) -> dict[str, Any]:
    """``concurrency`` workers, ``rounds`` streams each, back to back."""
    import aiohttp

    prompts = prompt_texts(max(LEVELS))
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker(w: int) -> None:
            for r in range(rounds):
                results.append(await one_stream(session, url, prompts[(w + r) % len(prompts)], new))

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - start
    tokens = sum(len(r["times"]) for r in results)
    gaps = [b - a for r in results for a, b in zip(r["times"], r["times"][1:], strict=False)]
    ttft = [r["times"][0] for r in results if r["times"]]
    return {
        "concurrency": concurrency,
        "streams": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "gap_ms_p50": percentile(gaps, 50) * 1000,
        "gap_ms_p99": percentile(gaps, 99) * 1000,
        "ttft_ms_p50": percentile(ttft, 50) * 1000,
        "ttft_ms_p99": percentile(ttft, 99) * 1000,
    }


def serve_int8(manifest_uri: str, work: Path, new: int) -> str:
    """One TextGenServer replica (int8, 1 CPU) on a local Ray Serve: its generate_stream URL."""
    import ray
    from ray import serve

    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_workloads.serve.app import ModelAppArgs, model_app

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": {"manifestUri": manifest_uri},
            "resources": {"cpus": REPLICA_CPUS},
            "generation": {"maxNewTokens": new, "maxPromptTokens": 128, "maxBatchSize": max(LEVELS)},
        }
    )
    args = ModelAppArgs(
        name="textgen",
        manifest_uri=manifest_uri,
        variant="int8",
        spec=spec,
        task="text-generation",
        cache_dir=str(work / "cache"),
    )
    serve.run(model_app(args), name="textgen", route_prefix="/v2/models/textgen")
    return f"http://127.0.0.1:{port}/v2/models/textgen/generate_stream"


def torch_baseline(folder: Path, new: int, rounds: int) -> list[dict[str, Any]]:
    """PyTorch ``generate`` on the same prompts, c rows per call (left padded), the replica's threads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(REPLICA_CPUS)
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"
    rows = []
    for c in LEVELS:
        batch = tokenizer(prompt_texts(max(LEVELS))[:c], return_tensors="pt", padding=True)
        seconds = []
        for _ in range(rounds + 1):  # the first call warms up
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    **batch,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
            seconds.append(time.perf_counter() - start)
        rows.append({"concurrency": c, "tokens_per_s": c * new / median(seconds[1:]), "seconds": seconds[1:]})
    return rows


def summary(levels: list[dict[str, Any]], torch_rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_c = {row["concurrency"]: row for row in levels}
    base = {row["concurrency"]: row for row in torch_rows}
    top = max(LEVELS)
    return {
        "tokens_per_s_ratio_8_vs_1": ratio(by_c[top]["tokens_per_s"], by_c[1]["tokens_per_s"]),
        "gap_p50_ratio_8_vs_1": ratio(by_c[top]["gap_ms_p50"], by_c[1]["gap_ms_p50"]),
        "ttft_ms_p99_at_8": by_c[top]["ttft_ms_p99"],
        "vs_pytorch_at_8": ratio(by_c[top]["tokens_per_s"], base[top]["tokens_per_s"]),
    }


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``textgen_batching`` section of docs/performance.md (``bench.report``)."""
    s, torch_rows = doc["summary"], {r["concurrency"]: r for r in doc["pytorch"]}
    lines = [
        "## Text generation: continuous batching (issue 25)",
        "",
        f"One TextGenServer replica (int8, {doc['replica_cpus']} CPU, one onnxruntime thread) of the "
        f"{doc['model']['layers']} x {doc['model']['width']} random-weight decoder of section 7; "
        f"`generate_stream`, greedy, {doc['new_tokens']} new tokens, prompts of 4 to 25 words; c "
        f"workers on one asyncio loop (aiohttp, loopback), {doc['rounds']} streams each, back to back. "
        f"Baseline: PyTorch `generate` (fp32 eager, {doc['replica_cpus']} thread) on the same prompts, "
        f"c rows per call. Instruction set **{doc['instruction_set']}**; load average before "
        f"{doc['load_average_before']}, after {doc['load_average_at_end']}. Command: "
        "`python -m bench --only textgen_batching`.",
        "",
        "| streams | tokens/s | p50 between tokens ms | p99 between tokens ms | TTFT p50 ms | TTFT p99 ms "
        "| PyTorch generate tokens/s | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["levels"]:
        base = torch_rows[row["concurrency"]]["tokens_per_s"]
        lines.append(
            f"| {row['concurrency']} | {row['tokens_per_s']:.1f} | {row['gap_ms_p50']:.1f} | "
            f"{row['gap_ms_p99']:.1f} | {row['ttft_ms_p50']:.1f} | {row['ttft_ms_p99']:.1f} | {base:.1f} | "
            f"{ratio(row['tokens_per_s'], base):.2f}x |"
        )
    lines += [
        "",
        f"Goals (issue 25): tokens/s at 8 streams vs 1 **{s['tokens_per_s_ratio_8_vs_1']:.2f}x** (goal >= 4x); "
        f"p50 time between tokens at 8 vs 1 **{s['gap_p50_ratio_8_vs_1']:.2f}x** (goal <= 2x); TTFT p99 at 8 "
        f"**{s['ttft_ms_p99_at_8']:.0f} ms** (goal <= 500 ms); vs PyTorch generate at 8 "
        f"**{s['vs_pytorch_at_8']:.2f}x** (goal >= 2x). The replica's largest batch: "
        f"{doc['replica_stats'].get('peakBatch')} streams, {doc['replica_stats'].get('peakCachedTokens')} cached "
        "positions at most.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.textgen_batching", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    from bench.textgen import bench_decoder, publish_set

    new, rounds = (16, 2) if args.quick else (64, 4)
    work = Path(tempfile.mkdtemp(prefix="rr-bench-textgen-batching-"))
    layers, width, folder = bench_decoder(work, args.quick)
    result: dict[str, Any] = {
        "instruction_set": instruction_set(),
        "model": {"layers": layers, "width": width},
        "new_tokens": new,
        "rounds": rounds,
        "replica_cpus": REPLICA_CPUS,
        "load_average_before": load_average(),
        "pytorch": torch_baseline(folder, new, rounds),
    }
    url = serve_int8(publish_set(folder, work), work, new)
    asyncio.run(level(url, 2, 1, new))  # warm-up
    result["levels"] = [asyncio.run(level(url, c, rounds, new)) for c in LEVELS]
    from ray import serve

    # The replica's own figures: how many streams really decoded together, and its cache peak.
    result["replica_stats"] = serve.get_app_handle("textgen").stats.remote().result()
    for row in result["levels"]:
        log(
            f"  {row['concurrency']} streams: {row['tokens_per_s']:.1f} tokens/s, gap p50 {row['gap_ms_p50']:.1f} ms"
        )
    result["summary"] = summary(result["levels"], result["pytorch"])
    log(f"textgen_batching: {result['summary']}")
    log(f"textgen_batching: wrote {write_result('textgen_batching', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
