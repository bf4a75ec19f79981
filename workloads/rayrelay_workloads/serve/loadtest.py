"""A small closed-loop load generator for a rayrelay endpoint (a measuring tool, not a test).

``python -m rayrelay_workloads.serve.loadtest --url http://127.0.0.1:8000 --model NAME``
runs, for each concurrency level, that many clients that each send one request
(one short text, KServe v1 or v2), wait for the answer and send the next, until
``--requests`` answers came back or ``--seconds`` passed. It prints requests/s
and p50/p99 latency per level. Any non-200 answer is counted and reported.
It uses aiohttp (a dependency of Ray's dashboard) so that 32 clients cost one
thread, which matters when the generator shares two cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

TEXTS = [
    "I was charged twice for my subscription this month",
    "the app crashes every time I open settings",
    "how can I change the email on my account",
    "thanks, that fixed it",
]


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        return (
            f"concurrency {self.concurrency:>3}: {self.rps:7.1f} req/s  p50 {self.p50_ms:7.1f} ms  "
            f"p99 {self.p99_ms:7.1f} ms  ({self.requests} requests, {self.errors} errors, {self.seconds:.1f} s)"
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def request_for(protocol: str, base: str, model: str, text: str) -> tuple[str, dict[str, Any]]:
    if protocol == "v1":
        return f"{base}/v1/models/{model}:predict", {"instances": [text]}
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    return f"{base}/v2/models/{model}/infer", body


async def run_level(
    base: str, model: str, concurrency: int, total: int, seconds: float, protocol: str
) -> LevelResult:
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(worker: int) -> None:
            nonlocal sent, errors
            while sent < total and time.perf_counter() < deadline:
                url, body = request_for(protocol, base, model, TEXTS[(sent + worker) % len(TEXTS)])
                sent += 1
                start = time.perf_counter()
                async with session.post(
                    url, data=json.dumps(body), headers={"Content-Type": "application/json"}
                ) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = [x * 1000 for x in latencies]
    return LevelResult(concurrency, len(latencies), errors, elapsed, percentile(ms, 50), percentile(ms, 99))


async def run(
    base: str, model: str, levels: list[int], total: int, seconds: float, protocol: str, warmup: int
) -> list[LevelResult]:
    if warmup:
        await run_level(base, model, 1, warmup, seconds, protocol)
    return [await run_level(base, model, c, total, seconds, protocol) for c in levels]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="base URL of the endpoint, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="the ModelDeployment's name")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=500, help="requests per level (at most)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per level")
    parser.add_argument("--protocol", choices=["v1", "v2"], default="v1")
    parser.add_argument("--warmup", type=int, default=20, help="requests sent first and not counted")
    args = parser.parse_args(argv)
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency must be integers separated by commas, got {args.concurrency!r}")
    if not levels or min(levels) < 1:
        parser.error("--concurrency needs at least one level, each >= 1")
    results = asyncio.run(
        run(args.url.rstrip("/"), args.model, levels, args.requests, args.seconds, args.protocol, args.warmup)
    )
    for result in results:
        print(result.line())
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
