"""What one reconcile pass needs from its driver, and the actions it hands back.

A driver (the kopf handlers, ``rayrelay run``'s loop, the benchmarks, the
tests) builds one ``ReconcileContext`` and calls ``driver.run_pass`` with it.
Everything with a side effect or a clock comes in through the context, so the
state machines (``training``, ``deployment``) stay pure and their tests run on
a fake clock. Actions are plain data; ``apply_actions`` is the one place that
turns them into backend calls and events.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rayrelay_core.store import Store, is_s3, open_store
from rayrelay_operator.backends.base import WorkBackend
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingWork, TrainingWork

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Submit:
    """Submit a training attempt (idempotent by its deterministic names)."""

    work: TrainingWork


@dataclass(frozen=True)
class Stop:
    """Stop a training attempt (suspend, deadline, giving up)."""

    work: TrainingWork


@dataclass(frozen=True)
class DeleteChildren:
    """Delete every child of a TrainingJob (ttlSecondsAfterFinished, deletion)."""

    backend: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Deploy:
    """Create or update a ModelDeployment's Serve application."""

    work: ServingWork


@dataclass(frozen=True)
class Undeploy:
    """Remove a ModelDeployment's Serve application (suspend, deletion)."""

    work: ServingWork


@dataclass(frozen=True)
class Event:
    """A Kubernetes event on the resource: type Normal|Warning, CamelCase reason."""

    type: str
    reason: str
    message: str


Action = Submit | Stop | DeleteChildren | Deploy | Undeploy | Event


@dataclass
class Plan:
    """What one pass decided: the status to write and the actions to apply through ``backend``."""

    status: Any  # TrainingJobStatus | ModelDeploymentStatus
    actions: list[Action]
    backend: WorkBackend | None  # None: nothing to apply (an invalid spec)


# ------------------------------------------------------------------------ context


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ReconcileContext:
    """What a reconcile needs from its driver.

    ``backends`` maps a backend name (``kuberay``/``ray``) to an instance; a
    resource uses ``spec.backend`` or ``settings.default_backend``.
    ``get_trainingjob(namespace, name)`` returns a TrainingJob as a dict (or
    None) for ModelDeployments that reference one. ``emit`` receives events.
    ``now`` is the clock and ``jitter`` a source of numbers in [0, 1) for the
    backoff's spread; tests pass fixed ones.
    """

    settings: Settings
    backends: Mapping[str, WorkBackend]
    now: Callable[[], datetime] = utcnow
    store_for: Callable[[str, str | None], Store] = open_store
    get_trainingjob: Callable[[str, str], dict[str, Any] | None] | None = None
    emit: Callable[[Event], None] = lambda event: None
    jitter: Callable[[], float] = random.random
    # Tenant policy (``rayrelay_operator.policy``): on in the operator, off in ``rayrelay run``
    # (its user owns the machine). ``secret_labels(namespace, name)`` gives a Secret's labels,
    # or None when it does not exist.
    enforce_policy: bool = False
    secret_labels: Callable[[str, str], Mapping[str, str] | None] | None = None
    # ``secret_data(namespace, name)``: a Secret's data, decoded (None when it does not exist).
    # Read only for a ModelDeployment's ``spec.auth.apiKeysSecret``, every pass (key rotation).
    secret_data: Callable[[str, str], Mapping[str, str] | None] | None = None
    # When running attempts' progress was last read (``settings.store_poll_seconds``).
    store_pacer: StorePacer = field(default_factory=lambda: StorePacer())


class StorePacer:
    """When each running attempt's progress was last read from the store, and what was seen then.

    A running attempt's passes (every timer tick) read its progress only when it is due: never
    read, the backend's view changed since (``fingerprint``), or ``interval`` seconds passed.
    Shared by the copies of a context (``dataclasses.replace``); bounded, the oldest go first.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._last: OrderedDict[str, tuple[datetime, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def due(self, key: str, fingerprint: Any, now: datetime, interval: float) -> bool:
        with self._lock:
            last = self._last.get(key)
        if last is None or last[1] != fingerprint or interval <= 0:
            return True
        return (now - last[0]).total_seconds() >= interval

    def read(self, key: str, fingerprint: Any, now: datetime) -> None:
        """Record a successful read (a failed one is retried at once by the next pass)."""
        with self._lock:
            self._last[key] = (now, fingerprint)
            self._last.move_to_end(key)
            while len(self._last) > self._limit:
                self._last.popitem(last=False)


def cached_store_for(
    open_: Callable[[str, str | None], Store] = open_store,
) -> Callable[[str, str | None], Store]:
    """A ``store_for`` that opens one store per kind (S3 or local) and endpoint, then reuses it.

    ``open_store`` makes a new boto3 client on every call: a third of the operator's CPU
    in a burst of TrainingJobs (py-spy, ``bench/control_plane.py``), and making clients is
    not thread-safe in boto3, while using one is. Which bucket and key a read touches is
    in each call's URI, so one store serves every resource with that endpoint.
    """
    lock = threading.Lock()
    opened: dict[tuple[bool, str | None], Store] = {}

    def store_for(uri: str, endpoint_url: str | None) -> Store:
        key = (is_s3(uri), endpoint_url)
        with lock:
            if key not in opened:
                opened[key] = open_(uri, endpoint_url)
            return opened[key]

    return store_for


def emit(ctx: ReconcileContext, event: Event) -> None:
    """Send an event; best effort, it must never fail a reconcile."""
    try:
        ctx.emit(event)
    except Exception:
        log.warning("could not emit event %s", event, exc_info=True)


def apply_actions(actions: list[Action], ctx: ReconcileContext, backend: WorkBackend | None) -> None:
    """Carry out the backend actions in order, then the events.

    Backend errors propagate (``driver.run_pass`` classifies them); events
    follow only once every backend call succeeded, so a pass that is retried
    does not announce what did not happen. ``backend`` is None for plans
    that carry events only (an invalid spec).
    """
    for action in actions:
        if isinstance(action, Event):
            continue
        assert backend is not None, f"{action} needs a backend"
        if isinstance(action, Submit):
            backend.submit_training(action.work)
        elif isinstance(action, Stop):
            backend.stop_training(action.work)
        elif isinstance(action, DeleteChildren):
            ctx.backends.get(action.backend, backend).delete_training(action.namespace, action.name)
        elif isinstance(action, Deploy):
            backend.deploy_serving(action.work)
        elif isinstance(action, Undeploy):
            backend.delete_serving(action.work)
    for action in actions:
        if isinstance(action, Event):
            emit(ctx, action)
