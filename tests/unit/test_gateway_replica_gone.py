"""A replica that dies while answering, as the gateway sees it (issue 14, item 5).

Pure: the gateway class runs without Serve; a fake handle raises Ray's own
``ActorDiedError`` (what a handle call gets when its replica was SIGKILLed
mid-request) a given number of times. ``tests/faults/test_replica_killed.py``
kills a real replica under load.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ray.exceptions import ActorDiedError
from test_gateway_resilience import FakeHandle, make_gateway, request, running

from rayrelay_workloads.serve.protocol import Prediction


class DiesThenAnswers(FakeHandle):
    """A handle whose first ``deaths`` predictions fail as a killed replica's do."""

    def __init__(self, deaths: int) -> None:
        super().__init__()
        self.calls = 0

        async def predict(texts: list[str]) -> list[Prediction]:
            self.calls += 1
            if self.calls <= deaths:
                raise ActorDiedError()
            return [Prediction(1, [0.1, 0.9]) for _ in texts]

        self.predict.fn = predict


def test_a_replica_dying_mid_request_is_sent_again_and_answered() -> None:
    handle = DiesThenAnswers(deaths=1)
    response = asyncio.run(make_gateway(handle, running)(request()))
    assert response.status_code == 200, response.body
    assert handle.calls == 2


def test_a_second_death_is_503_with_retry_after_not_500() -> None:
    handle = DiesThenAnswers(deaths=2)
    response: Any = asyncio.run(make_gateway(handle, running)(request()))
    assert response.status_code == 503, response.body
    assert int(response.headers["Retry-After"]) >= 1
    error = json.loads(response.body)["error"]
    assert error.startswith("a replica of the model stopped while answering; retry later")
    assert "\n" not in error
    assert handle.calls == 2  # sent twice, not more
