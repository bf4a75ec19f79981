"""The gateway under concurrency: status refreshes and overload (rayrelay_workloads.serve.gateway).

Pure: the gateway class runs without Serve, with a fake status reader and a
fake model handle. The 500 these guard against came from concurrent
``serve.status()`` calls (every stale request started its own read, and Ray's
status parsing is not thread-safe), and from Serve's overload errors being
answered as server faults.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, cast

import pytest
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from textgen_replica import http_request

from rayrelay_workloads.serve import gateway as gw
from rayrelay_workloads.serve.gateway import ModelState
from rayrelay_workloads.serve.protocol import Prediction

NAME = "sentiment"
INFO = {
    "name": NAME,
    "version": "abcdef012345",
    "labels": ["negative", "positive"],
    "limits": {"maxTextsPerRequest": 8, "maxTextChars": 1000, "maxBodyBytes": 65536},
}
BODY = json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["great"]}]}
).encode()


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class FakeHandle:
    def __init__(self, predict_error: BaseException | None = None) -> None:
        async def info() -> dict[str, Any]:
            return INFO

        async def predict(texts: list[str]) -> list[Prediction]:
            if predict_error is not None:
                raise predict_error
            return [Prediction(1, [0.1, 0.9]) for _ in texts]

        async def key_digests() -> list[str] | None:
            return None  # no spec.auth (tests/unit/test_endpoint_keys.py covers keys)

        self.info = _Method(info)
        self.predict = _Method(predict)
        self.key_digests = _Method(key_digests)


def make_gateway(handle: FakeHandle, read_states: Any) -> Any:
    gateway = cast(Any, gw.Gateway).func_or_class()  # the class under @serve.deployment
    gateway._read_states = read_states
    gateway._get_app_handle = lambda name: handle
    return gateway


def running() -> dict[str, ModelState]:
    return {NAME: ModelState(NAME, "RUNNING", "", 100.0, 1)}


def request(path: str = f"/v2/models/{NAME}/infer", body: bytes = BODY) -> Request:
    return cast(Request, http_request(path, body))


def expire(gateway: Any) -> None:
    stamp, states = gateway._status_cache
    gateway._status_cache = (stamp - 10 * gw.STATUS_TTL_S, states)


async def settle(gateway: Any) -> None:
    if gateway._refresh is not None:
        await asyncio.gather(gateway._refresh, return_exceptions=True)


def test_failed_status_refresh_keeps_serving_with_the_last_state(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    def read_states() -> dict[str, ModelState]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ValueError("<module 'ray.serve.autoscaling_policy'> is not registered for pickle by value")
        return running()

    async def scenario() -> None:
        gateway = make_gateway(FakeHandle(), read_states)
        assert (await gateway(request())).status_code == 200
        expire(gateway)
        for _ in range(3):
            response = await gateway(request())
            assert response.status_code == 200, response.body
            await settle(gateway)
        assert calls == 2  # the failed read is retried after a TTL, not on every request
        expire(gateway)
        assert (await gateway(request())).status_code == 200
        await settle(gateway)
        assert calls == 3

    asyncio.run(scenario())
    assert "reading the model status failed" in caplog.text  # still logged


def test_status_is_read_once_for_many_concurrent_stale_requests() -> None:
    calls = 0
    concurrent = 0
    most = 0
    lock = threading.Lock()

    def read_states() -> dict[str, ModelState]:
        nonlocal calls, concurrent, most
        with lock:
            calls += 1
            concurrent += 1
            most = max(most, concurrent)
        time.sleep(0.05)
        with lock:
            concurrent -= 1
        return running()

    async def scenario() -> None:
        gateway = make_gateway(FakeHandle(), read_states)
        responses = await asyncio.gather(*(gateway(request()) for _ in range(32)))
        assert [r.status_code for r in responses] == [200] * 32
        expire(gateway)
        responses = await asyncio.gather(*(gateway(request()) for _ in range(32)))
        assert [r.status_code for r in responses] == [200] * 32
        await settle(gateway)

    asyncio.run(scenario())
    assert most == 1 and calls == 2


def test_backpressure_is_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> Any:
        gateway = make_gateway(
            FakeHandle(BackPressureError(num_queued_requests=64, max_queued_requests=64)), lambda: running()
        )
        return await gateway(request())

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert "overloaded" in json.loads(response.body)["error"]
    assert "503" in caplog.text


def test_no_status_yet_is_503_with_retry_after_not_500() -> None:
    def read_states() -> dict[str, ModelState]:
        raise RuntimeError("controller busy")

    async def scenario() -> Any:
        return await make_gateway(FakeHandle(), read_states)(request())

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "controller busy" in json.loads(response.body)["error"]


def test_a_real_fault_is_still_500() -> None:
    async def scenario() -> Any:
        return await make_gateway(FakeHandle(KeyError("boom")), lambda: running())(request())

    assert asyncio.run(scenario()).status_code == 500


@pytest.mark.parametrize("path", [f"/v2/models/{NAME}/infer", f"/v1/models/{NAME}:predict"])
def test_label_prediction_of_a_text_generation_model_is_400_naming_the_routes(path: str) -> None:
    """A fake handle whose info says text-generation stands in for a TextGenServer replica."""
    handle = FakeHandle()

    async def info() -> dict[str, Any]:
        return {**INFO, "labels": [], "task": "text-generation"}

    handle.info = _Method(info)
    body = BODY if "v2" in path else json.dumps({"instances": ["great"]}).encode()

    async def scenario() -> Any:
        return await make_gateway(handle, lambda: running())(request(path, body))

    response = asyncio.run(scenario())
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert "text-generation" in error and "/v1/completions" in error
