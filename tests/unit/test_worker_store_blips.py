"""Store blips inside workers (issue 14, item 9): progress and step records against a real S3 that fails.

The failing store is real: moto's S3 server stopped (its port then refuses
connections, as a crashed or restarting S3 endpoint does) and started again on
the same port, or a port nothing listens on. Nothing is mocked: each write goes
through ``S3Store`` and boto3.
Each test's store makes one boto3 attempt per write (``S3Settings.max_attempts``;
workers have 8), so that a failed write costs milliseconds, not seconds.
What must hold: a failing progress write never raises into a training step nor
stalls the next steps (it backs off), a stage transition is retried with
backoff until the store is back, and the step record's last write never
replaces an error the training loop is raising.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.faults.results import record
from tests.faults.s3 import RestartableS3

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def one_try(endpoint: str):
    from rayrelay_core.store import S3Settings, S3Store

    return S3Store(S3Settings(endpoint_url=endpoint, max_attempts=1, connect_timeout=2, read_timeout=5))


@pytest.fixture
def s3() -> Iterator[RestartableS3]:
    import boto3

    server = RestartableS3()
    server.start()
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket="blips")
    try:
        yield server
    finally:
        server.stop()


def read_progress(endpoint: str) -> dict:
    import json

    import boto3

    body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket="blips", Key="run/progress.json")
    return dict(json.loads(body["Body"].read()))


def test_a_failing_progress_write_neither_raises_nor_stalls_the_next_steps(s3: RestartableS3) -> None:
    from rayrelay_workloads.progress import ProgressWriter

    writer = ProgressWriter("s3://blips/run", s3.endpoint, interval=0.0, store=one_try(s3.endpoint))
    writer.training(step=1, total_steps=100, epoch=0.01)
    assert writer.wrote_last and read_progress(s3.endpoint)["step"] == 1
    s3.stop()
    t0 = time.monotonic()
    writer.training(step=2, total_steps=100, epoch=0.02)  # fails
    first = time.monotonic() - t0
    t1 = time.monotonic()
    for step in range(3, 40):  # within the hold: no write is tried, the steps do not wait
        writer.training(step=step, total_steps=100, epoch=step / 100)
    held = time.monotonic() - t1
    assert writer.failed_writes == 1 and not writer.wrote_last
    assert held < 0.5, (
        f"steps waited {held:.2f}s on a store that is down (one failed write took {first:.2f}s)"
    )
    s3.start()
    time.sleep(2.5)  # the first hold is 2 s +-20 %
    writer.training(step=40, total_steps=100, epoch=0.4)
    assert writer.wrote_last, "the next write after the hold reaches the store again"
    assert read_progress(s3.endpoint)["step"] == 40
    record(
        "store_blips_worker",
        figures={
            "failed_write_seconds": round(first, 3),
            "steps_during_outage": 37,
            "steps_wait_seconds_during_outage": round(held, 3),
            "writes_tried_during_outage": writer.failed_writes,
            "progress_after_store_back": "written",
        },
        command="pytest tests/unit/test_worker_store_blips.py",
        notes="S3 store with one boto3 attempt per write (workers have 8: about 4 s per failed write).",
    )


def test_a_stage_is_retried_with_backoff_until_the_store_is_back(
    s3: RestartableS3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The store comes back during the first backoff wait, whatever the machine's load.

    (A timer racing the backoff made this test fail on a loaded CI machine: moto's
    restart took longer than the 3 attempts' window.) The wait is the product's own
    ``time.sleep``, wrapped so that the server is started before it sleeps.
    """
    from rayrelay_workloads import progress

    def back_then_sleep(delay: float) -> None:
        if not s3.up:
            s3.start()
        time.sleep(delay)

    monkeypatch.setattr(
        progress, "write_with_retry", functools.partial(progress.write_with_retry, sleep=back_then_sleep)
    )
    writer = progress.ProgressWriter("s3://blips/run", s3.endpoint, store=one_try(s3.endpoint))
    s3.stop()
    assert writer.stage("Exporting", "exporting") is True
    assert read_progress(s3.endpoint)["stage"] == "Exporting"
    assert capsys.readouterr().err.count("retrying in") == 1, "one failed attempt, then the store was back"


def test_a_stage_the_store_never_takes_is_given_up_without_raising(capsys: pytest.CaptureFixture) -> None:
    from rayrelay_workloads import progress

    closed = f"http://127.0.0.1:{free_port()}"
    writer = progress.ProgressWriter("s3://blips/run", closed, store=one_try(closed))
    writer_stage = functools.partial(progress.write_with_retry, attempts=2, base=0.1)
    progress_retry = progress.write_with_retry
    progress.write_with_retry = writer_stage  # fewer, shorter tries; the same code path
    try:
        assert writer.stage("Publishing") is False
    finally:
        progress.write_with_retry = progress_retry
    assert writer.failed_writes == 1
    err = capsys.readouterr().err
    assert "progress stage Publishing: gave up after 2 attempts" in err and "cannot reach the S3 store" in err


def test_the_first_stage_is_required_and_raises_once_the_retries_are_spent(
    capsys: pytest.CaptureFixture,
) -> None:
    """The run's first write checks that the store answers at all: it ends in the StoreError."""
    from rayrelay_core.store import StoreError
    from rayrelay_workloads import progress

    closed = f"http://127.0.0.1:{free_port()}"
    writer = progress.ProgressWriter("s3://blips/run", closed, store=one_try(closed))
    with pytest.raises(StoreError, match="cannot reach the S3 store"):
        writer.stage("Training", "reading data", required=True)
    assert capsys.readouterr().err.count("retrying in") == progress.RETRY_ATTEMPTS - 1


def test_the_step_record_never_masks_the_error_the_loop_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from rayrelay_workloads import progress, train_worker
    from rayrelay_workloads.train_state import Position

    monkeypatch.setattr(
        train_worker, "write_with_retry", functools.partial(progress.write_with_retry, attempts=2, base=0.1)
    )
    closed = f"http://127.0.0.1:{free_port()}"
    recorder = train_worker.StepRecorder("s3://blips/run", closed, 1, Position(), "scratch", one_try(closed))
    recorder.add(1)
    assert recorder.flush() is False  # a failed flush says so and raises nothing
    with pytest.raises(RuntimeError, match="the loop's own error"):
        try:
            raise RuntimeError("the loop's own error")
        finally:
            assert recorder.close() is False


def test_the_step_record_is_whole_once_the_store_is_back(
    s3: RestartableS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store comes back during the close's first backoff wait (the product's sleep, wrapped)."""
    import json

    import boto3

    from rayrelay_workloads import progress, train_worker
    from rayrelay_workloads.train_state import Position
    from rayrelay_workloads.train_worker import StepRecorder

    def back_then_sleep(delay: float) -> None:
        if not s3.up:
            s3.start()
        time.sleep(delay)

    recorder = StepRecorder("s3://blips/run", s3.endpoint, 1, Position(), "scratch", one_try(s3.endpoint))
    recorder.add(1)
    assert recorder.flush()
    s3.stop()
    recorder.add(2)
    assert recorder.flush() is False
    recorder.add(3)
    monkeypatch.setattr(
        train_worker, "write_with_retry", functools.partial(progress.write_with_retry, sleep=back_then_sleep)
    )
    assert recorder.close() is True
    key = recorder.uri.removeprefix("s3://blips/")
    body = boto3.client("s3", endpoint_url=s3.endpoint).get_object(Bucket="blips", Key=key)["Body"].read()
    assert json.loads(body)["steps"] == [1, 2, 3]


def test_a_checkpoint_upload_waits_for_the_store_then_goes_on(
    s3: RestartableS3, capsys: pytest.CaptureFixture
) -> None:
    """Rank 0 holds its checkpoint upload while S3 is down; the wait is the product's own sleep,
    wrapped to start the server during the second backoff."""
    from rayrelay_workloads.train_worker import wait_for_store

    waits: list[float] = []

    def back_on_second_wait(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:
            s3.start()
        time.sleep(min(delay, 0.1))

    s3.stop()
    assert wait_for_store(one_try(s3.endpoint), "s3://blips/run/checkpoints", sleep=back_on_second_wait)
    assert len(waits) == 2 and 0.8 <= waits[0] <= 1.2 and 1.6 <= waits[1] <= 2.4, waits  # 1 s, 2 s, +-20 %
    assert "the store answers again after 2 failed checks" in capsys.readouterr().err


def test_a_checkpoint_upload_stops_waiting_when_the_budget_is_spent(capsys: pytest.CaptureFixture) -> None:
    from rayrelay_workloads.train_worker import wait_for_store

    closed = f"http://127.0.0.1:{free_port()}"
    slept: list[float] = []

    def clock() -> float:  # real time plus the waits the fake sleep skipped
        return time.monotonic() + sum(slept)

    start = clock()
    assert not wait_for_store(
        one_try(closed), "s3://blips/run/checkpoints", budget_s=4.0, sleep=slept.append, clock=clock
    )
    assert len(slept) == 2 and clock() - start <= 4.0, slept  # 1 s, 2 s (+-20 %); 4 s more won't fit
    assert "the store still does not answer after 4s" in capsys.readouterr().err
