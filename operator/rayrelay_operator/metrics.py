"""Prometheus metrics of the operator itself (not of the models it serves).

``handlers`` records every reconcile here; ``runner`` / the startup handler
serves them on ``RAYRELAY_METRICS_PORT``. Metric names are part of the
operator's contract (dashboards and alerts use them):

- ``rayrelay_reconciles_total{kind,result}`` -- result: ok | temporary | permanent
- ``rayrelay_reconcile_errors_total{kind,reason}``
- ``rayrelay_reconcile_duration_seconds{kind}`` (histogram)
- ``rayrelay_resources{kind,phase}`` -- resources by phase, as last reconciled
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
RESOURCES = Gauge("rayrelay_resources", "Resources by kind and phase.", ["kind", "phase"], registry=REGISTRY)

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()
_served = False


def record_phase(kind: str, key: str, phase: str | None) -> None:
    """Remember the phase of one resource (None: it is gone) and refresh the gauge."""
    with _lock:
        if phase is None:
            _phases.pop((kind, key), None)
        else:
            _phases[(kind, key)] = phase
        counts: dict[str, int] = {}
        for (k, _), p in _phases.items():
            if k == kind:
                counts[p] = counts.get(p, 0) + 1
        # Phases that emptied must read 0, not their last value.
        for labels in list(RESOURCES._metrics):
            if labels[0] == kind and labels[1] not in counts:
                RESOURCES.labels(*labels).set(0)
        for p, n in counts.items():
            RESOURCES.labels(kind, p).set(n)


def serve(port: int) -> None:
    """Serve /metrics on ``port`` once per process (0 = not at all)."""
    global _served
    if port and not _served:
        start_http_server(port, registry=REGISTRY)
        _served = True
