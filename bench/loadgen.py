"""Closed-loop HTTP load generator, run as its own process by ``bench.endpoint``.

``python -m bench.loadgen --url URL --protocol v2|naive --concurrency C
--requests N --duration-s T --texts FILE --out FILE``

C workers each keep exactly one request in flight (closed loop) on their own
keep-alive connection, one text per request, until N requests completed or T
seconds passed, whichever comes first. It measures what a client sees: the
latency of every request (send to full body read), throughput (completed
requests / elapsed), and errors (non-2xx, connection errors, timeouts). One
asyncio loop with aiohttp keeps the generator itself cheap, since it shares the
machine's two cores with the server it loads.

The same payload shape goes to both servers: an Open Inference Protocol v2
``BYTES`` tensor of one text for rayrelay (``/v2/models/{name}/infer``), and
``{"text": ...}`` for the naive Flask server (``bench/naive_server.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import percentile


def payload(protocol: str, text: str) -> dict[str, Any]:
    if protocol == "v2":
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    return {"text": text}


async def run_load(
    url: str, protocol: str, texts: list[str], concurrency: int, requests: int, duration_s: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + duration_s
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(idx: int) -> None:
        nonlocal issued
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while issued < requests and time.perf_counter() < deadline:
                body = payload(protocol, texts[issued % len(texts)])
                issued += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, json=body) as resp:
                        await resp.read()
                        if resp.status >= 300:
                            key = f"http_{resp.status}"
                            errors[key] = errors.get(key, 0) + 1
                            continue
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests_issued": issued,
        "requests_ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "elapsed_s": elapsed,
        "throughput_rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "hit_time_bound": issued < requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--protocol", choices=("v2", "naive"), required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--texts", required=True, help="jsonl file with a 'text' field per line")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    texts = [json.loads(line)["text"] for line in Path(args.texts).read_text().splitlines() if line.strip()]
    result = asyncio.run(
        run_load(args.url, args.protocol, texts, args.concurrency, args.requests, args.duration_s)
    )
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
