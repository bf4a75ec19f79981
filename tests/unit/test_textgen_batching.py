"""Continuous batching of decode steps in the text-generation replica (issue 25, section 1).

Each test drives a real ``TextGenServer`` on the tiny exported decoder
(``textgen_replica.py``) through its HTTP routes, in-process. A :class:`Gate`
stands between the engine and the onnxruntime session, so a test can hold the
decode thread before a model run (and so decide which requests share a batch,
or stop the loop exactly where a client leaves) without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.unit.textgen_replica import NAME, body_of, http_request, replica, tiny_decoder

GENERATE = f"/v2/models/{NAME}/generate"
STREAM = f"/v2/models/{NAME}/generate_stream"
SENTENCE = "Where is my order I placed last week and when will it arrive at my home address please tell me"
WORDS = SENTENCE.split()


class Gate:
    """The session, with the decode thread held before a run while the gate is shut.

    ``permits(n)`` then lets exactly ``n`` more runs through (a prefill or a step each)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock = threading.Condition()
        self.allowed: int | None = None  # None: open
        self.held = False  # the decode thread waits at the gate now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def shut(self) -> None:
        with self.lock:
            self.allowed = 0

    def permits(self, count: int | None) -> None:
        with self.lock:
            self.allowed = None if count is None else (self.allowed or 0) + count
            self.lock.notify_all()

    def _wait(self) -> None:
        with self.lock:
            while self.allowed == 0:
                self.held = True
                assert self.lock.wait(30), "a test left the decode thread at the gate"
            self.held = False
            if self.allowed is not None:
                self.allowed -= 1

    def run(self, *args: Any) -> Any:  # the generic graph's calls
        self._wait()
        return self.inner.run(*args)

    def run_with_iobinding(self, *args: Any) -> Any:  # the in-place graph's calls
        self._wait()
        return self.inner.run_with_iobinding(*args)


async def until(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    """Wait for ``condition`` with a deadline (the event loop keeps running meanwhile)."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting until {what}"
        await asyncio.sleep(0.002)


def doc(prompt: str, max_tokens: int, **parameters: Any) -> bytes:
    body = {"text_input": prompt, "parameters": {"max_tokens": max_tokens, "temperature": 0, **parameters}}
    return json.dumps(body).encode()


async def generate(server: Any, body: bytes) -> tuple[int, Any]:
    response = await server(http_request(GENERATE, body))
    return response.status_code, json.loads(await body_of(response))


# Eight prompts of 1 to 20 words, asking for 5 to 26 tokens: rows join with different lengths and
# leave at different steps; two sample with their own temperature and seed.
MIXED = [
    doc(" ".join(WORDS[:n]), 5 + 3 * i, **extra)
    for i, (n, extra) in enumerate(
        [
            (1, {}),
            (20, {}),
            (4, {"temperature": 0.9, "seed": 7}),
            (12, {}),
            (2, {}),
            (17, {"temperature": 1.3, "top_p": 0.8, "seed": 3}),
            (7, {}),
            (9, {}),
        ]
    )
]


def int8_session(tmp: Path) -> Any:
    from rayrelay_workloads.textgen.export import quantize_decoder, session

    fp32 = Path(tiny_decoder()[0]._model_path)
    quantize_decoder(fp32, tmp / "decoder.int8.onnx")
    return session(tmp / "decoder.int8.onnx", 1)


def run_alone_then_batched(server: Any, gate: Gate) -> tuple[list[Any], list[Any]]:
    async def scenario() -> tuple[list[Any], list[Any]]:
        alone = [await generate(server, body) for body in MIXED]
        # The first prefill waits at the gate (with any rows that came with it) while the rest queue;
        # when it opens, all that wait join at the next step boundary.
        gate.shut()
        tasks = [asyncio.create_task(generate(server, body)) for body in MIXED]
        await until(lambda: gate.held and server.requests == 2 * len(MIXED), "all eight are queued")
        gate.permits(None)
        return alone, list(await asyncio.gather(*tasks))

    return asyncio.run(scenario())


@pytest.mark.parametrize("kv_cache", ["inplace", "concat"])
def test_a_request_writes_the_same_tokens_alone_and_in_a_batch_of_8(kv_cache: str) -> None:
    server = replica(wrap=Gate, kv_cache=kv_cache)
    gate = server.engine.decoder.session
    alone, batched = run_alone_then_batched(server, gate)
    assert all(status == 200 for status, _ in alone + batched), [a for s, a in alone + batched if s != 200]
    assert server.scheduler.stats.peak_rows == 8, "the eight requests decoded together"
    assert len({len(a["tokens"]) for _, a in alone}) > 3, "rows leave the batch at different steps"
    for i, ((_, one), (_, many)) in enumerate(zip(alone, batched, strict=True)):
        assert many["tokens"] == one["tokens"], f"request {i}: batched tokens differ from alone"
        assert many["text_output"] == one["text_output"] and many["finish_reason"] == one["finish_reason"]


@pytest.mark.parametrize("kv_cache", ["inplace", "concat"])
def test_a_client_gone_mid_stream_frees_its_slot_at_the_next_step(kv_cache: str) -> None:
    server = replica(spec={"generation": {"maxBatchSize": 1}}, wrap=Gate, kv_cache=kv_cache)
    gate = server.engine.decoder.session
    rows: list[Any] = []
    make_row = server.engine.row
    server.engine.row = lambda *args: rows.append(make_row(*args)) or rows[-1]

    async def scenario() -> tuple[list[bytes], tuple[int, Any]]:
        gate.shut()
        gate.permits(2)  # the long stream's prefill and one step: two tokens
        response = await server(http_request(STREAM, doc("Where is my order", 100)))
        events: list[bytes] = []
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            # Tokens ready together leave in one body chunk: count the events, not the chunks.
            events.extend(e for e in message.get("body", b"").split(b"\n\n") if e.startswith(b"data: "))
            if len(events) >= 2:
                gone.set()  # the client reads two tokens, then leaves

        stream = asyncio.create_task(response({"type": "http"}, receive, send))
        await until(lambda: len(rows) == 1, "the stream's row is queued first")
        waiting = asyncio.create_task(generate(server, doc("Thanks", 4)))
        await until(lambda: server.requests == 2 and gone.is_set(), "the client left, the 2nd is queued")
        await stream  # Starlette cancelled the body: the request's generator cancelled its row
        assert rows[0].cancelled and not rows[0].done
        gate.permits(None)
        return events, await waiting

    events, (status, answer) = asyncio.run(scenario())
    assert len(events) == 2 and b'"finish_reason"' not in b"".join(events)
    # The client left after two tokens: the decode loop either saw it at the boundary after them,
    # or was held before a third step, which was then the row's last.
    assert rows[0].produced in (2, 3), f"{rows[0].produced} tokens of 100 were decoded"
    assert status == 200 and len(answer["tokens"]) >= 1, "the waiting request got the freed slot"
    assert server.scheduler.stats.peak_rows == 1 and server.scheduler.stats.cancelled == 1


def sse_events(chunk: bytes) -> list[dict[str, Any]]:
    return [json.loads(e[6:]) for e in chunk.split(b"\n\n") if e.startswith(b"data: ")]


def test_a_lone_stream_sends_each_token_before_the_next_is_computed() -> None:
    server = replica(wrap=Gate)
    gate = server.engine.decoder.session
    tokens = 6

    async def scenario() -> list[bytes]:
        gate.shut()
        response = await server(http_request(STREAM, doc("Where is my order", tokens)))
        chunks: list[bytes] = []
        arrived = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                chunks.append(message["body"])
                arrived.set()

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()  # the client stays
            return {"type": "http.disconnect"}

        stream = asyncio.create_task(response({"type": "http"}, receive, send))
        for k in range(tokens):
            arrived.clear()
            gate.permits(1)  # one model run: the prefill, then one step each
            await asyncio.wait_for(arrived.wait(), 30)
            # The token is out while the decode thread waits before computing the next one.
            if k < tokens - 1:
                await until(lambda: gate.held, "the decode thread waits at the gate")
            assert len(chunks) == k + 1
        gate.permits(None)
        await stream
        return chunks

    chunks = asyncio.run(scenario())
    assert [len(sse_events(c)) for c in chunks] == [1] * tokens, "one event per chunk, one chunk per token"
    assert sse_events(chunks[-1])[0]["finish_reason"] == "length"


def test_tokens_a_slow_reader_fell_behind_by_leave_in_one_chunk() -> None:
    """While the reader is busy the decode loop goes on; what it made meanwhile leaves together,
    still one server-sent event per token, and the text is the one /generate writes."""
    server = replica(wrap=Gate)
    gate = server.engine.decoder.session
    rows: list[Any] = []
    make_row = server.engine.row
    server.engine.row = lambda *args: rows.append(make_row(*args)) or rows[-1]
    body = doc("Where is my order", 12)

    async def scenario() -> tuple[list[bytes], tuple[int, Any]]:
        gate.shut()
        gate.permits(1)  # the prefill only: the first chunk holds the first token
        response = await server(http_request(STREAM, body))
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                chunks.append(message["body"])
                if len(chunks) == 1:  # a slow client: busy until the whole answer was decoded
                    gate.permits(None)
                    await until(lambda: rows[0].done, "the row decoded every token")

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        await response({"type": "http"}, receive, send)
        return chunks, await generate(server, body)

    chunks, (status, whole) = asyncio.run(scenario())
    events = [e for c in chunks for e in sse_events(c)]
    assert status == 200 and len(events) == len(whole["tokens"]) == 12
    # The first chunk leaves with the prefill's token; the 11 made while the reader was busy
    # leave together in the second.
    assert [len(sse_events(c)) for c in chunks] == [1, 11]
    assert [e["token_id"] for e in events] == whole["tokens"]
    assert "".join(e["text_output"] for e in events) == whole["text_output"]
    assert events[-1]["finish_reason"] == whole["finish_reason"] and server.tokens == 24


def test_streams_sharing_the_batch_send_at_most_once_per_flush_interval(monkeypatch: Any) -> None:
    """Two streams decode together: each sends its first token at once, then what is ready
    once per interval (set long here); the tokens and text are those of each stream alone."""
    from rayrelay_workloads.textgen import serving

    monkeypatch.setattr(serving, "STREAM_FLUSH_S", 1.0)
    server = replica(wrap=Gate)
    gate = server.engine.decoder.session
    bodies = [doc("Where is my order", 8), doc("Thanks for the help with", 8)]

    arrivals: dict[int, list[float]] = {0: [], 1: []}

    async def one(body: bytes, chunks: list[bytes]) -> None:
        response = await server(http_request(STREAM, body))
        times = arrivals[bodies.index(body)]

        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                chunks.append(message["body"])
                times.append(time.monotonic())

        async def receive() -> dict[str, Any]:
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        await response({"type": "http"}, receive, send)

    async def scenario() -> tuple[list[list[bytes]], list[Any]]:
        alone = [await generate(server, b) for b in bodies]
        gate.shut()
        chunks: list[list[bytes]] = [[], []]
        tasks = [asyncio.create_task(one(b, c)) for b, c in zip(bodies, chunks, strict=True)]
        await until(lambda: gate.held and server.requests == 4, "both streams are queued")
        # One model run at a time until both rows decode together and each stream sent its first
        # token (the first to join may run a step alone before the second joins).
        deadline = time.monotonic() + 30
        while not (all(chunks) and server.scheduler.running() == 2 and gate.held and gate.allowed == 0):
            assert time.monotonic() < deadline, "the two streams never decoded together"
            if gate.held and gate.allowed == 0:
                gate.permits(1)
            await asyncio.sleep(0.002)
        before = [len(c) for c in chunks]
        gate.permits(1)  # one step of both: a token each, which waits for the interval
        await asyncio.sleep(0.3)
        assert [len(c) for c in chunks] == before, "a stream sharing the batch waits out the interval"
        gate.permits(None)
        await asyncio.gather(*tasks)
        return chunks, alone

    chunks, alone = asyncio.run(scenario())
    assert server.scheduler.stats.peak_rows == 2
    for i, (stream, (_, whole)) in enumerate(zip(chunks, alone, strict=True)):
        events = [e for c in stream for e in sse_events(c)]
        assert [e["token_id"] for e in events] == whole["tokens"] and len(events) == 8
        # The first chunk leaves with what is ready at once; the next waits out the interval
        # while the other stream still decodes (the last token of each leaves at once).
        assert 2 <= len(stream) <= 4, [len(sse_events(c)) for c in stream]
        gaps = [b - a for a, b in zip(arrivals[i], arrivals[i][1:], strict=False)]
        assert any(g >= 0.9 for g in gaps), gaps


def test_a_full_queue_gets_429_and_a_queued_request_waits_its_turn() -> None:
    server = replica(spec={"generation": {"maxBatchSize": 1, "maxQueuedRequests": 1}}, wrap=Gate)
    gate = server.engine.decoder.session

    async def scenario() -> tuple[list[Any], tuple[int, Any], Any]:
        gate.shut()
        first = asyncio.create_task(generate(server, doc("Where is my order", 6)))
        await until(lambda: gate.held, "the first request runs")
        second = asyncio.create_task(generate(server, doc("Thanks", 6)))
        await until(lambda: server.scheduler.queued() == 1, "the second request waits")
        refused = await generate(server, doc("Hello", 6))
        stream = await server(http_request(STREAM, doc("Hello", 6)))
        gate.permits(None)
        return list(await asyncio.gather(first, second)), refused, stream

    done, (status, refusal), stream = asyncio.run(scenario())
    assert status == 429 and "maxQueuedRequests: 1" in refusal["error"]
    assert stream.status_code == 429, "a stream is refused before it starts"
    assert [s for s, _ in done] == [200, 200] and server.scheduler.stats.peak_rows == 1


@pytest.mark.parametrize("kv_cache", ["inplace", "concat"])
def test_the_cache_cap_bounds_the_batch_and_refuses_what_never_fits(kv_cache: str) -> None:
    server = replica(
        spec={"generation": {"maxCachedTokens": 64, "maxNewTokens": 60}}, wrap=Gate, kv_cache=kv_cache
    )
    gate = server.engine.decoder.session
    # Each asks for prompt + 20 = at most 25 positions: two fit in 64 together, three do not.
    bodies = [doc(" ".join(WORDS[i : i + 3]), 20) for i in range(4)]

    async def scenario() -> tuple[list[Any], tuple[int, Any]]:
        gate.shut()
        tasks = [asyncio.create_task(generate(server, b)) for b in bodies]
        await until(lambda: gate.held and server.requests == 4, "all four are queued")
        gate.permits(None)
        return list(await asyncio.gather(*tasks)), await generate(server, doc(" ".join(WORDS[:8]), 60))

    done, (status, refusal) = asyncio.run(scenario())
    assert [s for s, _ in done] == [200] * 4
    stats = server.scheduler.stats
    assert stats.peak_rows == 2 and stats.peak_cached_tokens <= 64
    assert status == 400 and "maxCachedTokens" in refusal["error"]


def test_int8_greedy_tokens_are_reproducible_around_a_batch(tmp_path: Path) -> None:
    """int8 alone is deterministic, and a batch leaves nothing behind; in a batch it may differ.

    Dynamic int8 quantises each MatMul's input with one scale over the whole tensor, i.e. over
    every row of the batch, so a row's logits (and, at near ties, its greedy tokens) depend on
    the rows beside it: int8 is only batch-invariant where that scale is (docs/textgen.md)."""
    int8 = int8_session(tmp_path)
    server = replica(wrap=lambda _: Gate(int8))
    gate = server.engine.decoder.session
    alone, batched = run_alone_then_batched(server, gate)
    again = asyncio.run(_each_alone(server))
    assert [a["tokens"] for _, a in again] == [a["tokens"] for _, a in alone]
    assert server.scheduler.stats.peak_rows == 8
    assert all(status == 200 for status, _ in batched)
    for (_, one), (_, many) in zip(alone, batched, strict=True):
        assert len(many["tokens"]) == len(one["tokens"]) or many["finish_reason"] == "stop"


async def _each_alone(server: Any) -> list[tuple[int, Any]]:
    return [await generate(server, body) for body in MIXED]
