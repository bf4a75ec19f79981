"""Continuous batching in a replica (rayrelay_workloads.serve.batching), with a fake model call."""

from __future__ import annotations

import asyncio
import threading

import pytest

from rayrelay_workloads.serve.batching import Batcher


class FakeModel:
    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.fail = fail

    def __call__(self, items: list[str]) -> list[str]:
        if self.gate is not None:
            assert self.gate.wait(5)
        self.batches.append(list(items))
        if self.fail:
            raise RuntimeError("model broke")
        return [item.upper() for item in items]


def test_a_lone_request_runs_at_once_without_waiting() -> None:
    model = FakeModel()

    async def scenario() -> str:
        batcher = Batcher(model, 8, batch_wait_timeout_s=5.0)  # a long wait that must not be taken
        return await asyncio.wait_for(batcher.submit("a"), 1.0)

    assert asyncio.run(scenario()) == "A"
    assert model.batches == [["a"]]


def test_requests_arriving_during_a_batch_form_the_next_one() -> None:
    gate = threading.Event()
    model = FakeModel(gate)
    sizes: list[int] = []

    async def scenario() -> list[str]:
        batcher = Batcher(model, 4, 0.0, on_batch=lambda arrivals, start: sizes.append(len(arrivals)))
        first = asyncio.ensure_future(batcher.submit("x"))
        await asyncio.sleep(0.05)  # "x" is computing (held by the gate); these queue meanwhile
        rest = [asyncio.ensure_future(batcher.submit(str(i))) for i in range(6)]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first] + list(await asyncio.gather(*rest))

    assert asyncio.run(scenario()) == ["X", "0", "1", "2", "3", "4", "5"]
    assert model.batches == [["x"], ["0", "1", "2", "3"], ["4", "5"]]  # bounded by max_batch_size
    assert sizes == [1, 4, 2]


def test_waits_only_for_requests_known_to_be_coming() -> None:
    model = FakeModel()
    coming = {"n": 1}

    async def scenario() -> list[str]:
        batcher = Batcher(model, 8, 1.0, expecting=lambda: coming["n"])
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.05)
        assert not model.batches  # waiting for the one announced
        coming["n"] = 0
        second = asyncio.ensure_future(batcher.submit("b"))
        return [await first, await second]

    assert asyncio.run(scenario()) == ["A", "B"]
    assert model.batches == [["a", "b"]]


def test_the_wait_is_bounded() -> None:
    model = FakeModel()

    async def scenario() -> str:
        batcher = Batcher(model, 8, 0.05, expecting=lambda: 3)  # announced, never arrive
        return await asyncio.wait_for(batcher.submit("a"), 1.0)

    assert asyncio.run(scenario()) == "A"


def test_a_failed_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    model = FakeModel(fail=True)

    async def scenario() -> str:
        batcher = Batcher(model, 8, 0.0)
        with pytest.raises(RuntimeError, match="model broke"):
            await batcher.submit("a")
        model.fail = False
        return await batcher.submit("b")

    assert asyncio.run(scenario()) == "B"


def test_reconfigure_applies_to_the_next_batch() -> None:
    gate = threading.Event()
    model = FakeModel(gate)

    async def scenario() -> None:
        batcher = Batcher(model, 8, 0.0)
        first = asyncio.ensure_future(batcher.submit("x"))
        await asyncio.sleep(0.05)
        batcher.configure(2, 0.0)
        rest = [asyncio.ensure_future(batcher.submit(str(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)

    asyncio.run(scenario())
    assert [len(b) for b in model.batches] == [1, 2, 1]
