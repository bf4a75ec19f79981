"""Closed-loop HTTP load generator, run as its own process by ``bench.endpoint``.

``python -m bench.loadgen --url URL --protocol v2|naive --concurrency C
--requests N --duration-s T --texts FILE --out FILE``

C workers each keep exactly one request in flight (closed loop) on their own
keep-alive connection, one text per request, until N requests completed or T
seconds passed, whichever comes first. It measures what a client sees: the
latency of every request (send to full body read), throughput (completed
requests / elapsed), and errors (non-2xx, connection errors, timeouts).

The generator shares the machine's two cores with the servers it loads, so it
is built to cost as little as possible, the same for both contenders: one
asyncio loop, a minimal HTTP/1.1 client on asyncio streams (no client
library: requests are pre-encoded bytes, a response is its status line,
headers and a ``Content-Length`` or chunked body), bodies encoded once per
text before the clock starts. Its own CPU time (user + system, from
``getrusage``) is reported as ``loadgen_cpu_s``, next to the elapsed time, so a
reader can see what it took from the budget.

The same payload shape goes to both servers: an Open Inference Protocol v2
``BYTES`` tensor of one text for rayrelay (``/v2/models/{name}/infer``), and
``{"text": ...}`` for the naive Flask server (``bench/naive_server.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import percentile


def payload(protocol: str, text: str) -> dict[str, Any]:
    if protocol == "v2":
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}
    return {"text": text}


def encode_requests(url: str, protocol: str, texts: list[str]) -> list[bytes]:
    """One complete HTTP/1.1 POST per text, ready to write."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    out = []
    for text in texts:
        body = json.dumps(payload(protocol, text), separators=(",", ":")).encode()
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


class HttpError(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one response, its body read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise HttpError(f"bad status line {lines[0][:60]!r}")
    status = int(status_line[1])
    length = -1
    chunked = False
    keep_alive = status_line[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            keep_alive = value.strip().lower() == b"keep-alive"
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length >= 0:
        await reader.readexactly(length)
    else:  # no length: the body ends with the connection
        await reader.read()
        keep_alive = False
    return status, keep_alive


async def run_load(
    url: str, protocol: str, texts: list[str], concurrency: int, requests: int, duration_s: float
) -> dict[str, Any]:
    bodies = encode_requests(url, protocol, texts)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    latencies: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.perf_counter() + duration_s
    timeout_s = 30.0

    def error(key: str) -> None:
        errors[key] = errors.get(key, 0) + 1

    async def worker() -> None:
        nonlocal issued
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while issued < requests and time.perf_counter() < deadline:
            data = bodies[issued % len(bodies)]
            issued += 1
            start = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
                reader, writer = conn
                writer.write(data)
                status, keep_alive = await asyncio.wait_for(read_response(reader), timeout_s)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, HttpError, ValueError) as exc:
                error(type(exc).__name__)
                if conn is not None:
                    conn[1].close()
                conn = None
                continue
            if not keep_alive:
                conn[1].close()
                conn = None
            if status >= 300:
                error(f"http_{status}")
                continue
            latencies.append(time.perf_counter() - start)
        if conn is not None:
            conn[1].close()

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
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
        "loadgen_cpu_s": cpu_s,
        "loadgen_cpu_ms_per_request": 1000 * cpu_s / max(1, len(latencies) + sum(errors.values())),
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
