"""What a burst of TrainingJobs needs from the operator (issue 10, item 3; bench/control_plane.py).

- The TrainingJob timer does not run before the change handler reconciled the
  resource's generation: such a tick raced the create handler (which can wait for
  a worker thread past the timer's idle time) and submitted the same attempt a
  second time -- 1.8 RayJob creates per TrainingJob with 200 created at once on a
  real API server, 1.00 with the filter.
- The production context opens one artifact store per endpoint and reuses it,
  instead of building a boto3 client on every pass (a third of the operator's CPU).
"""

from __future__ import annotations

import threading
from typing import Any

from rayrelay_operator.handlers import _tj_needs_timer
from rayrelay_operator.reconcile.context import cached_store_for


def needs_timer(status: dict[str, Any], generation: int = 1, **spec: Any) -> bool:
    return _tj_needs_timer(status=status, spec=spec, meta={"generation": generation})


def test_timer_waits_for_the_change_handler_of_this_generation() -> None:
    assert not needs_timer({})  # just created: the create handler submits, not the timer
    assert not needs_timer({"phase": "Pending"})
    assert needs_timer({"phase": "Pending", "observedGeneration": 1})
    # A spec change (generation 2) is the update handler's to reconcile first.
    assert not needs_timer({"phase": "Training", "observedGeneration": 1}, generation=2)
    assert needs_timer({"phase": "Training", "observedGeneration": 2}, generation=2)


def test_timer_stops_on_terminal_jobs_except_for_the_ttl() -> None:
    done = {"phase": "Succeeded", "observedGeneration": 1}
    assert not needs_timer(done)
    assert needs_timer(done, ttlSecondsAfterFinished=60)
    cleaned = {**done, "conditions": [{"type": "ChildrenDeleted", "status": "True"}]}
    assert not needs_timer(cleaned, ttlSecondsAfterFinished=60)


def test_cached_store_for_opens_one_store_per_kind_and_endpoint() -> None:
    opened: list[tuple[str, str | None]] = []

    def open_(uri: str, endpoint: str | None) -> Any:
        opened.append((uri, endpoint))
        return object()

    store_for = cached_store_for(open_)
    a = store_for("s3://b/runs/ns/tj-1/run-1", "http://s3:9000")
    assert store_for("s3://b/runs/ns/tj-2/run-9", "http://s3:9000") is a
    assert store_for("s3://other/x", "http://minio:9000") is not a
    local = store_for("/tmp/artifacts/ns/tj", None)
    assert store_for("file:///tmp/artifacts/ns/tj-3", None) is local
    assert len(opened) == 3


def test_cached_store_for_opens_once_under_concurrent_passes() -> None:
    opened: list[str] = []
    gate = threading.Barrier(8)

    def open_(uri: str, endpoint: str | None) -> Any:
        opened.append(uri)
        return object()

    store_for = cached_store_for(open_)
    got: list[Any] = []

    def one_pass() -> None:
        gate.wait()
        got.append(store_for("s3://b/runs", None))

    threads = [threading.Thread(target=one_pass) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == 1 and len({id(s) for s in got}) == 1
