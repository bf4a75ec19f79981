"""How a reconcile pass treats an exception, and how long it waits before the next try.

``classify`` sorts exceptions into permanent (retrying is useless until the
spec changes: the resource fails with the reason) and temporary (retried with
backoff; the status says what is wrong meanwhile). ``backoff_delay`` is the
only backoff of the operator: every driver gets its delay from
``driver.run_pass``, which counts retries from how long the problem has lasted
(``retries_since``), so the schedule survives an operator restart and needs no
counter anywhere.

Failed *attempts* of a TrainingJob wait too (``attempt_backoff``): the same
exponential schedule over the attempt number, with a jitter derived from the
job's identity, so the computation stays pure and a restarted operator
computes the same time (``status.nextAttemptTime`` records it anyway).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from rayrelay_core.runs import ManifestError
from rayrelay_core.store import NotFound, StoreError
from rayrelay_core.validation import InvalidResource
from rayrelay_operator.backends.base import BackendRejected, BackendUnavailable
from rayrelay_operator.settings import Settings

# Reasons that end a resource for good until its spec changes.
# Policy refusals (rayrelay_operator.policy.REASONS) are permanent too: the spec asks for
# something a tenant may not have.
POLICY_REASONS = frozenset(
    {
        "ImageNotAllowed",
        "CredentialsNotAllowed",
        "EndpointNotAllowed",
        "StorageNotAllowed",
        "BackendNotAllowed",
    }
)
PERMANENT_REASONS = frozenset({"InvalidSpec", "ModelNotFound", "BackendRejected"}) | POLICY_REASONS


class StoreUnavailable(StoreError):
    """The artifact store at ``uri`` did not answer (temporary): no credentials, S3 down, ..."""

    def __init__(self, uri: str, cause: BaseException) -> None:
        super().__init__(f"artifact store {uri} is not reachable: {cause}")
        self.uri = uri


@dataclass(frozen=True)
class ErrorClass:
    """How a driver should treat an exception out of a reconcile."""

    permanent: bool
    reason: str
    delay: float  # seconds before a retry (0 for permanent errors)


def backoff_delay(retry: int, settings: Settings | None = None, jitter: float = 0.5) -> float:
    """Exponential backoff: base * 2**retry, spread by +-``retry_jitter``, capped.

    ``jitter`` in [0, 1) says where in the spread (0.5: in the middle, i.e. no
    spread); the cap holds after the spread.
    """
    s = settings or Settings()
    exact = s.retry_base_delay_seconds * (2 ** max(0, min(retry, 30)))
    spread = 1.0 + s.retry_jitter * (2.0 * jitter - 1.0)
    return float(min(s.retry_max_delay_seconds, exact * spread))


def attempt_backoff(key: str, failed_attempt: int, settings: Settings | None = None) -> float:
    """Seconds between the end of ``failed_attempt`` (1 for the first) and the next attempt.

    ``backoff_delay(failed_attempt - 1)``: base, 2 x base, 4 x base ... capped, spread by
    a jitter taken from ``key`` (e.g. namespace/name/run/attempt) rather than a random
    draw, so that jobs that failed together part, and the function stays pure.
    """
    digest = hashlib.sha256(f"{key}/{failed_attempt}".encode()).digest()
    jitter = int.from_bytes(digest[:4], "big") / 2**32
    return backoff_delay(max(0, failed_attempt - 1), settings, jitter)


def retries_since(since: datetime | None, now: datetime, settings: Settings | None = None) -> int:
    """How many retries an exponential schedule made since ``since`` (0 when it just began).

    With base b the tries fall at 0, b, 3b, 7b, ...: after t seconds,
    floor(log2(1 + t/b)) retries were made.
    """
    s = settings or Settings()
    if since is None or now <= since:
        return 0
    elapsed = (now - since).total_seconds()
    return int(math.floor(math.log2(1.0 + elapsed / s.retry_base_delay_seconds) + 1e-9))


def classify(
    exc: BaseException, retry: int = 0, settings: Settings | None = None, jitter: float = 0.5
) -> ErrorClass:
    """Permanent (retrying is useless) or temporary (retry after ``delay``)."""
    delay = backoff_delay(retry, settings, jitter)
    if isinstance(exc, InvalidResource | ValidationError):
        return ErrorClass(True, "InvalidSpec", 0)
    if isinstance(exc, BackendRejected):
        return ErrorClass(True, "BackendRejected", 0)
    if isinstance(exc, ManifestError | NotFound):
        return ErrorClass(True, "ModelNotFound", 0)
    if isinstance(exc, BackendUnavailable):  # MissingPermission, RayUnavailable, ...: each says which
        return ErrorClass(False, exc.reason, delay)
    if isinstance(exc, StoreError):
        return ErrorClass(False, "StoreUnavailable", delay)
    status = getattr(exc, "status", None)  # kubernetes.client.ApiException and kopf's APIError
    if isinstance(status, int):
        if status == 429 or status >= 500:
            # Too many requests / server trouble: back off, longer for 429.
            cap = (settings or Settings()).retry_max_delay_seconds
            return ErrorClass(False, f"ApiError{status}", min(cap, delay * (2 if status == 429 else 1)))
        if status == 403:
            # RBAC, not the spec: an operator that may not read something is told, and retries.
            return ErrorClass(False, "MissingPermission", delay)
        if status in (400, 422):
            return ErrorClass(True, f"ApiError{status}", 0)
        return ErrorClass(False, f"ApiError{status}", delay)
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return ErrorClass(False, "ConnectionError", delay)
    # Unknown: a bug or something unforeseen; retrying with backoff is the safe default.
    return ErrorClass(False, type(exc).__name__, delay)
