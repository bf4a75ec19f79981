"""The text-generation replica's Prometheus series move with real requests (issue 28).

A real ``TextGenServer`` on the tiny exported decoder (``textgen_replica.py``), driven
through its own HTTP routes in-process, with the ``Gate`` of test_textgen_batching.py
between the engine and the onnxruntime session so that the test decides when the decode
thread runs (which requests share a batch, how long they wait). What the replica exports
(``metrics_text``, the text the gateway merges into ``/metrics``) is parsed with
prometheus_client's parser and compared with what the requests themselves returned: prompt
and generated tokens, time to first token (at least the time the test held the queue), time
per output token, the continuous batch's running and queued requests, and the requests and
errors of its routes.

The gateway half (``gateway_for``: the gateway class without Serve, forwarding by handle to
the same in-process replica) shows a model's 5xx series present at 0 before its first server
error, which a session that raises (standing in for a broken model) then causes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from rayrelay_workloads.serve.metrics import TTFT_BUCKETS, merge_expositions
from tests.unit.test_textgen_batching import GENERATE, STREAM, Gate, doc, generate, sse_events, until
from tests.unit.textgen_replica import (
    NAME,
    ReplicaHandle,
    body_of,
    gateway_for,
    http_request,
    replica,
    tiny_decoder,
)

HOLD_S = 0.3  # how long the test keeps the first requests waiting before their prefill


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    for (n, got), v in samples(text).items():
        if n == name and set(labels.items()) <= set(got):
            return v
    return None


def prompt_tokens(prompt: str) -> int:
    return len(tiny_decoder()[1](prompt, add_special_tokens=False)["input_ids"])


def test_generation_series_follow_real_requests() -> None:
    server = replica(spec={"generation": {"maxBatchSize": 2}}, wrap=Gate)
    gate = server.engine.decoder.session
    prompts = [("Where is my order", 6), ("Thanks for the quick reply", 9), ("Hello", 4)]
    seen: dict[str, str] = {}

    async def scenario() -> tuple[list[tuple[int, Any]], list[dict[str, Any]], int]:
        gate.shut()
        tasks = [asyncio.create_task(generate(server, doc(*prompts[0])))]
        await until(lambda: gate.held and server.requests == 1, "the first prefill waits at the gate")
        tasks += [asyncio.create_task(generate(server, doc(p, n))) for p, n in prompts[1:]]
        await until(lambda: server.scheduler.queued() == 2, "the other two are queued")
        await asyncio.sleep(HOLD_S)  # a known wait before any first token: not synchronisation
        # The first row's prefill and step, then the second row's prefill (maxBatchSize 2: the
        # third waits); held before the step the two rows take together.
        gate.permits(3)
        await until(lambda: gate.held and server.scheduler.running() == 2, "two rows decoding, one queued")
        seen["mid"] = server.metrics_text()
        gate.permits(None)
        answers = list(await asyncio.gather(*tasks))
        response = await server(http_request(STREAM, doc("My order has not arrived", 5)))
        events = sse_events(await body_of(response))
        bad = await server(http_request(GENERATE, doc("Hello", 0)))  # max_tokens 0: refused, 4xx
        # A row leaves the batch at the step boundary after its last token was sent.
        await until(lambda: server.scheduler.running() == 0, "the last row left the batch")
        return answers, events, bad.status_code

    answers, events, bad = asyncio.run(scenario())
    assert [s for s, _ in answers] == [200, 200, 200] and 400 <= bad < 500, (answers, bad)
    text = server.metrics_text()
    labels = {"model": NAME, "replica": "r1"}

    mid = seen["mid"]
    assert sample(mid, "rayrelay_generation_running_requests", **labels) == 2
    assert sample(mid, "rayrelay_generation_queued_requests", **labels) == 1
    assert sample(text, "rayrelay_generation_running_requests", **labels) == 0
    assert sample(text, "rayrelay_generation_queued_requests", **labels) == 0

    sent = [*(p for p, _ in prompts), "My order has not arrived"]
    assert sample(text, "rayrelay_generation_prompt_tokens_total", **labels) == sum(map(prompt_tokens, sent))
    generated = sum(len(a["tokens"]) for _, a in answers) + len(events)
    assert generated > len(sent)
    assert sample(text, "rayrelay_generation_tokens_total", **labels) == generated

    ttft = "rayrelay_generation_time_to_first_token_seconds"
    assert sample(text, f"{ttft}_count", **labels) == 4
    # The three held requests waited at least HOLD_S for their first token (the third one
    # longer: behind the first two); only the stream, alone afterwards, can be under it.
    below = max(b for b in TTFT_BUCKETS if b < HOLD_S)
    assert (sample(text, f"{ttft}_bucket", le=str(below), **labels) or 0) <= 1
    assert (sample(text, f"{ttft}_sum", **labels) or 0) >= 3 * HOLD_S

    tpot = "rayrelay_generation_time_per_output_token_seconds"
    long_enough = sum(len(a["tokens"]) >= 2 for _, a in answers) + (len(events) >= 2)
    assert sample(text, f"{tpot}_count", **labels) == long_enough
    per_token = (sample(text, f"{tpot}_sum", **labels) or 0) / long_enough
    assert 0 < per_token < 1.0, per_token

    http = {"model": NAME, "protocol": "v2"}
    assert sample(text, "rayrelay_requests_total", code="200", **http) == 4
    assert sample(text, "rayrelay_requests_total", code=str(bad), **http) == 1
    assert sample(text, "rayrelay_request_errors_total", code=str(bad), **http) == 1
    assert sample(text, "rayrelay_request_latency_seconds_count", **http) == 5


class Breakable:
    """The session, until ``broken`` is set: then every model run raises (a broken model)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.broken = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.broken:
            raise RuntimeError("the model's graph failed")

    def run(self, *args: Any) -> Any:  # the generic graph's calls
        self._check()
        return self.inner.run(*args)

    def run_with_iobinding(self, *args: Any) -> Any:  # the in-place graph's calls
        self._check()
        return self.inner.run_with_iobinding(*args)


def test_a_models_server_error_series_exist_at_zero_before_its_first_5xx() -> None:
    server = replica(wrap=Breakable)
    gateway = gateway_for({NAME: ReplicaHandle(server)})

    async def call(path: str, body: Any = None, method: str = "POST") -> int:
        raw = b"" if body is None else json.dumps(body).encode()
        response = await gateway(http_request(path, raw, method))
        await body_of(response)
        return int(response.status_code)

    def exposition() -> str:
        # What the gateway's /metrics answers: its own series merged with the replica's.
        from prometheus_client import generate_latest

        return merge_expositions([generate_latest(gateway.metrics.registry).decode(), server.metrics_text()])

    async def scenario() -> tuple[str, str, int, int]:
        assert await call(f"/v2/models/{NAME}/ready", method="GET") == 200  # the gateway sees the model
        before = exposition()
        server.engine.decoder.session.broken = True
        completion = {"model": NAME, "prompt": "Where is my order", "max_tokens": 4}
        v1 = await call("/v1/completions", completion)
        v2 = (await server(http_request(GENERATE, doc("Where is my order", 4)))).status_code
        return before, exposition(), v1, v2

    before, after, v1, v2 = asyncio.run(scenario())
    assert (v1, v2) == (500, 500)
    errors = "rayrelay_request_errors_total"
    for protocol in ("v1", "v2"):
        for code in ("500", "503", "504"):
            assert sample(before, errors, model=NAME, protocol=protocol, code=code) == 0, (protocol, code)
    # The first 5xx of each route is an increase of a series Prometheus already had at 0.
    assert sample(after, errors, model=NAME, protocol="v1", code="500") == 1
    assert sample(after, errors, model=NAME, protocol="v2", code="500") == 1
    assert sample(after, errors, model=NAME, protocol="v1", code="503") == 0
