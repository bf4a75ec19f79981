"""Waiting out an S3 outage: a store call that must happen, retried while the store does not answer.

Where a run or a replica cannot go on without the store -- the publication's
files and its manifest (``publish.py``), a replica's artifact set
(``serve/artifacts.py``) -- the call is retried with exponential backoff (1 s
doubling to 15 s, +-20 % jitter, ``progress.backoff_s``) for up to
``RAYRELAY_STORE_WAIT_SECONDS`` (default 300: the same budget holds every
storage call of Ray Train, ``holdfs.py``, and rank 0's wait before a checkpoint,
``train_worker.wait_for_store``). Each try is itself up to
``S3Settings.max_attempts`` boto3 attempts. Only an outage is waited out: the
store not reachable, or an HTTP 5xx / 429 / 408 answer. Anything else (no such
object, access denied, a file too large) fails at once, as before.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rayrelay_core.store import NotFound, StoreError, TooLarge
from rayrelay_workloads.progress import backoff_s, warn

T = TypeVar("T")

DEFAULT_WAIT_S = 300.0
BASE_S = 1.0
CAP_S = 15.0
_TRANSIENT_HTTP = re.compile(r"\(HTTP (5\d\d|429|408)\)")


def wait_budget_s(environ: dict[str, str] | None = None) -> float:
    """``$RAYRELAY_STORE_WAIT_SECONDS`` (read at each call), else 300."""
    raw = ((os.environ if environ is None else environ).get("RAYRELAY_STORE_WAIT_SECONDS") or "").strip()
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_WAIT_S
    except ValueError:
        return DEFAULT_WAIT_S


def is_outage(exc: StoreError) -> bool:
    """True for a store that does not answer (or answers 5xx / 429 / 408): worth waiting out."""
    if isinstance(exc, NotFound | TooLarge):
        return False
    text = str(exc)
    return "cannot reach the S3 store" in text or bool(_TRANSIENT_HTTP.search(text))


@dataclass
class StoreWait:
    """What :func:`hold` waited out, summed over its calls (logs, ``info()``, the fault suite)."""

    retries: int = 0
    waited_s: float = 0.0
    last_error: str = ""


def hold(
    op: Callable[[], T],
    what: str,
    *,
    wait: StoreWait | None = None,
    budget_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """``op()``; while it fails with an outage, try again with backoff until ``budget_s`` runs out.

    ``budget_s``: default :func:`wait_budget_s`. When the next try would start past the budget,
    the last StoreError propagates. ``on_retry(message)`` is told each wait (a status to update).
    """
    deadline = clock() + (wait_budget_s() if budget_s is None else budget_s)
    failures = 0
    while True:
        try:
            return op()
        except StoreError as exc:
            if not is_outage(exc):
                raise
            failures += 1
            delay = backoff_s(failures, BASE_S, CAP_S)
            if clock() + delay > deadline:
                warn(f"{what}: the store still does not answer after {failures} tries, giving up: {exc}")
                raise
            message = f"{what}: {exc}; trying again in {delay:.1f}s (try {failures})"
            warn(message)
            if wait is not None:
                wait.retries += 1
                wait.waited_s += delay
                wait.last_error = str(exc)
            if on_retry is not None:
                on_retry(message)
            sleep(delay)
