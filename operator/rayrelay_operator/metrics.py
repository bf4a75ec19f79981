"""Prometheus metrics of the operator itself (not of the models it serves).

``handlers`` records every reconcile here; ``runner`` / the startup handler
serves them on ``RAYRELAY_METRICS_PORT``. Metric names are part of the
operator's contract (dashboards and alerts use them):

- ``rayrelay_reconciles_total{kind,result}`` -- result: ok | temporary | permanent
- ``rayrelay_reconcile_errors_total{kind,reason}``
- ``rayrelay_reconcile_duration_seconds{kind}`` (histogram)
- ``rayrelay_resources{kind,phase}`` -- resources by phase, as last reconciled
- ``rayrelay_resource_phase{kind,resource_namespace,resource_name,phase}`` -- 1 per
  resource, labelled with its phase as last reconciled (one series per resource, gone with
  it; not ``namespace``, which Prometheus sets to the operator's own namespace on scrape)
- ``rayrelay_trainingjob_progress_ratio{resource_namespace,resource_name}`` -- step / total
  steps (0 to 1) and ``rayrelay_trainingjob_attempt{...}`` -- the attempt number, from status
- ``rayrelay_trainingjob_submit_delay_seconds`` (histogram) -- a TrainingJob's creation to
  its first attempt's RayJob submitted by this operator
- ``rayrelay_trainingjob_retries_total{reason}`` -- failed attempts scheduled to run again
  (``failurePolicy.backoffLimit`` not spent), by the failure's reason (``RETRY_REASONS``, any
  other ``Other``), and ``rayrelay_trainingjob_retry_backoff_seconds`` (histogram) -- the
  backoff each such retry was given (``status.nextAttemptTime`` - now)
- ``rayrelay_reconcile_retry_delay_seconds{kind}`` (histogram) -- the delay before the next
  pass after a temporary error (``errors.backoff_delay``; what a kopf retry waits)
- ``rayrelay_modeldeployment_replicas{resource_namespace,resource_name,state}`` -- state:
  wanted (Serve's autoscaler target), existing, ready; from status
- ``rayrelay_operator_leader`` -- 1 while this replica reconciles (standalone, or the
  kopf peering leader), 0 while it stands by (kopf's peering starts paused)

The error and pass counters of the reasons alerts watch (``StoreUnavailable``), of
every result and of every retry reason start at 0 (and the retry delay histograms with
them), so that ``rate()`` and ``increase()`` have a series to read before the first error. docs/observability.md is the reference, with the alerts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from rayrelay_core.conditions import find_condition

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(
    "rayrelay_reconciles", "Reconcile passes by kind and result.", ["kind", "result"], registry=REGISTRY
)
ERRORS = Counter(
    "rayrelay_reconcile_errors", "Reconcile errors by kind and reason.", ["kind", "reason"], registry=REGISTRY
)
DURATION = Histogram(
    "rayrelay_reconcile_duration_seconds",
    "Time of one reconcile pass (observe, compute, apply).",
    ["kind"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SUBMIT_DELAY = Histogram(
    "rayrelay_trainingjob_submit_delay_seconds",
    "From a TrainingJob's creation to its first attempt's RayJob (or Ray job) submitted by this "
    "operator: what a sweep waits on the control plane.",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
    registry=REGISTRY,
)
RETRIES = Counter(
    "rayrelay_trainingjob_retries",
    "Failed TrainingJob attempts scheduled to run again after a backoff, by the failure's reason.",
    ["reason"],
    registry=REGISTRY,
)
RETRY_BACKOFF = Histogram(
    "rayrelay_trainingjob_retry_backoff_seconds",
    "Backoff given to a failed TrainingJob attempt before the next one is submitted.",
    buckets=(1, 2.5, 5, 10, 20, 40, 80, 160, 300, 600, 1800),
    registry=REGISTRY,
)
RETRY_DELAY = Histogram(
    "rayrelay_reconcile_retry_delay_seconds",
    "Delay before the next reconcile pass after a temporary error (the operator's backoff).",
    ["kind"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300, 600),
    registry=REGISTRY,
)
RESOURCES = Gauge("rayrelay_resources", "Resources by kind and phase.", ["kind", "phase"], registry=REGISTRY)
RESOURCE_PHASE = Gauge(
    "rayrelay_resource_phase",
    "1 for each resource, labelled with its phase as last reconciled.",
    ["kind", "resource_namespace", "resource_name", "phase"],
    registry=REGISTRY,
)
PROGRESS = Gauge(
    "rayrelay_trainingjob_progress_ratio",
    "Training progress of a TrainingJob: step / total steps, 0 to 1.",
    ["resource_namespace", "resource_name"],
    registry=REGISTRY,
)
ATTEMPT = Gauge(
    "rayrelay_trainingjob_attempt",
    "Attempt number of a TrainingJob (1 for the first; retries resume from the last checkpoint).",
    ["resource_namespace", "resource_name"],
    registry=REGISTRY,
)
REPLICAS = Gauge(
    "rayrelay_modeldeployment_replicas",
    "Replicas of a ModelDeployment by state: wanted (autoscaler target), existing, ready.",
    ["resource_namespace", "resource_name", "state"],
    registry=REGISTRY,
)
# The per-resource gauges besides RESOURCE_PHASE, whose series go when their resource goes.
# Each kind's per-resource gauges, with the label values that follow (namespace, name) in them:
# a resource's series are removed by name when it goes, never by a scan of every series.
_PER_RESOURCE: dict[str, tuple[tuple[Gauge, tuple[tuple[str, ...], ...]], ...]] = {
    "TrainingJob": ((PROGRESS, ((),)), (ATTEMPT, ((),))),
    "ModelDeployment": ((REPLICAS, (("wanted",), ("existing",), ("ready",))),),
}
LEADER = Gauge(
    "rayrelay_operator_leader",
    "1 while this operator replica reconciles (standalone or peering leader), 0 while it stands by.",
    registry=REGISTRY,
)

KINDS = ("TrainingJob", "ModelDeployment")
RESULTS = ("ok", "temporary", "permanent")
# Error reasons an alert reads with rate(): present (0) from the start.
ALERTED_REASONS = ("StoreUnavailable",)
# The reasons a failed attempt is retried for, as its Running condition says them: the
# operator's (DriverDied, StuckInitializing, ManifestMissing), the pipeline's retryable ones
# (failure.json: StorageError, TrainingFailed), the ray backend's (DriverFailed and Ray's
# job error types) and KubeRay's RayJob reasons. Anything else counts as "Other", so the
# label stays bounded whatever a backend reports.
RETRY_REASONS = (
    "DriverDied",
    "DriverFailed",
    "StuckInitializing",
    "ManifestMissing",
    "StorageError",
    "TrainingFailed",
    "RuntimeEnvSetupFailure",
    "JobSupervisorActorStartTimeout",
    "JobSupervisorActorStartFailure",
    "JobSupervisorActorUnschedulable",
    "JobSupervisorActorUnknownFailure",
    "JobSupervisorActorDied",
    "JobEntrypointCommandStartError",
    "DeadlineExceeded",
    "AppFailed",
    "SubmissionFailed",
    "Other",
)
for _kind in KINDS:
    for _result in RESULTS:
        RECONCILES.labels(_kind, _result)
    for _reason in ALERTED_REASONS:
        ERRORS.labels(_kind, _reason)
    RETRY_DELAY.labels(_kind)
for _reason in RETRY_REASONS:
    RETRIES.labels(_reason)

_phases: dict[tuple[str, str], str] = {}
_phase_counts: dict[str, dict[str, int]] = {}
_lock = threading.Lock()
_served = False


def record_phase(kind: str, key: str, phase: str | None) -> None:
    """Remember the phase of one resource (None: it is gone) and refresh the gauges.

    Constant time per pass: the per-phase counts move by one when a resource's phase
    changes, rather than being recounted over every resource (a recount made each pass
    cost O(resources), so a burst of N TrainingJobs cost O(N^2) here).
    """
    namespace, _, name = key.partition("/")
    with _lock:
        old = _phases.pop((kind, key), None) if phase is None else _phases.get((kind, key))
        if phase is not None:
            _phases[(kind, key)] = phase
        if old != phase:
            counts = _phase_counts.setdefault(kind, {})
            for p, step in ((old, -1), (phase, 1)):
                if p is not None:
                    counts[p] = counts.get(p, 0) + step  # an emptied phase reads 0, not its last value
                    RESOURCES.labels(kind, p).set(counts[p])
            if old is not None:
                with contextlib.suppress(KeyError):  # a series another path removed
                    RESOURCE_PHASE.remove(kind, namespace, name, old)
        if phase is not None:
            RESOURCE_PHASE.labels(kind, namespace, name, phase).set(1)
            return
        # By name: a scan of every series per deletion made deleting a sweep of N O(N^2).
        for gauge, suffixes in _PER_RESOURCE.get(kind, ()):
            for suffix in suffixes:
                with contextlib.suppress(KeyError):  # a series never exported
                    gauge.remove(namespace, name, *suffix)


def record_status(kind: str, key: str, status: Any) -> None:
    """Export a resource's progress and attempt (TrainingJob) or replicas (ModelDeployment).

    ``status`` is the computed ``TrainingJobStatus`` / ``ModelDeploymentStatus``; a value
    it does not know yet exports nothing (no series rather than a made-up 0).
    """
    namespace, _, name = key.partition("/")
    with _lock:
        if kind == "TrainingJob":
            percent = getattr(getattr(status, "progress", None), "percent", None)
            if percent is not None:
                PROGRESS.labels(namespace, name).set(percent / 100.0)
            if getattr(status, "attempt", 0):
                ATTEMPT.labels(namespace, name).set(status.attempt)
        elif kind == "ModelDeployment":
            wanted = getattr(getattr(status, "scaling", None), "target_replicas", None)
            for state, value in (
                ("wanted", wanted),
                ("existing", getattr(status, "replicas", None)),
                ("ready", getattr(status, "ready_replicas", None)),
            ):
                if value is not None:
                    REPLICAS.labels(namespace, name, state).set(value)


def record_submit(kind: str, body: Any, status: Any, now: float) -> None:
    """Observe the submit delay when this pass submitted a TrainingJob's first attempt.

    ``body`` is the resource as the pass read it (its stored status has no Ray job yet),
    ``status`` the status the pass computed, ``now`` the wall clock (seconds since the epoch).
    """
    if (
        kind != "TrainingJob"
        or getattr(status, "attempt", 0) != 1
        or getattr(status, "ray_job", None) is None
    ):
        return
    if ((body.get("status") or {}).get("rayJob")) or not (body.get("metadata") or {}).get(
        "creationTimestamp"
    ):
        return
    created = datetime.fromisoformat(str(body["metadata"]["creationTimestamp"]).replace("Z", "+00:00"))
    SUBMIT_DELAY.observe(max(0.0, now - created.timestamp()))


def retry_reason(reason: str | None) -> str:
    """The ``reason`` label of a retry: one of ``RETRY_REASONS`` (``Other`` for the rest)."""
    return reason if reason in RETRY_REASONS else "Other"


def record_retry(kind: str, body: Any, status: Any, now: float) -> None:
    """Count a retry when this pass scheduled a failed TrainingJob attempt to run again.

    The pass scheduled one when the status it computed has a ``next_attempt_time`` that the
    stored status (``body``, as the pass read it) did not: later passes that wait it out keep
    the stored one and count nothing (a pass whose status write is lost and the pass that
    schedules the retry again count it twice, as ``record_submit`` would). The reason is the Running condition's (``attempt_failed`` sets it); the backoff
    is the scheduled time minus ``now`` (seconds since the epoch).
    """
    at = getattr(status, "next_attempt_time", None)
    if kind != "TrainingJob" or not at or (body.get("status") or {}).get("nextAttemptTime") == at:
        return
    running = find_condition(getattr(status, "conditions", None) or [], "Running")
    RETRIES.labels(retry_reason(running.reason if running is not None else None)).inc()
    scheduled = datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()
    RETRY_BACKOFF.observe(max(0.0, scheduled - now))


# kopf (1.45) says when peering pauses this replica for a peer of higher priority and when
# it resumes, in these log lines of its peering engine, and exposes the state no other way.
PEERING_LOGGER = "kopf._core.engines.peering"
_PAUSED = ("Pausing operations", "Pausing all operators")
_RESUMED = "Resuming operations"


class _LeadershipFilter(logging.Filter):
    """Follows kopf's peering pauses into ``rayrelay_operator_leader``; drops no record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_PAUSED):
            LEADER.set(0)
        elif message.startswith(_RESUMED):
            LEADER.set(1)
        return True


_leadership = _LeadershipFilter()


def track_leadership(*, peering: bool) -> None:
    """Follow this replica's leadership from now on (idempotent).

    Standalone, it reconciles from the start. With (mandatory) peering kopf starts every
    replica paused and resumes the one no live peer outranks, so a replica is no leader
    until kopf says it resumes (a standby started after the leader logs nothing at all).
    With one peering object per watched namespace, the last message of any of them wins.
    """
    LEADER.set(0 if peering else 1)
    logger = logging.getLogger(PEERING_LOGGER)
    if not logger.isEnabledFor(logging.INFO):  # a logger's filters see only what it emits
        logger.setLevel(logging.INFO)
    if _leadership not in logger.filters:
        logger.addFilter(_leadership)


def serve(port: int) -> None:
    """Serve /metrics on ``port`` once per process (0 = not at all)."""
    global _served
    if port and not _served:
        start_http_server(port, registry=REGISTRY)
        _served = True
