"""Prometheus metrics of the serving path, and how the gateway exposes them.

Each process keeps its own ``prometheus_client`` registry (not the global one,
which Ray's own libraries may also write to):

- the gateway (``gateway.py``) counts requests by model, protocol and status
  code, errors by code, and the end-to-end latency: every HTTP request passes
  through it, so these are complete for a single gateway replica;
- each model replica (``model.py``) records batch sizes, queue wait (arrival in
  the replica to the start of its batch) and inference latency, labelled with
  its replica id, and the variant it serves: ``rayrelay_variant_info`` (1, with
  the requested and served variant, the CPU instruction set, the onnxruntime
  provider, the timing batch, and the runtime and precision that serve as labels) and, when ``variant: auto`` timed the
  candidates at start, ``rayrelay_variant_batch_seconds`` per variant
  (``rayrelay_core.variants``; the operator reads both into ``status.model``).

The gateway's ``EndpointMetrics`` adds what autoscaling does: replicas by
state, ongoing requests per replica (asked of every replica at each scrape),
and requests held while a model scaled to zero starts a replica.

``GET /metrics`` on the gateway renders its own registry and merges in the
text that every *running* model application returns from
``ModelServer.metrics_text``. A handle call reaches one replica, so with several
replicas each scrape carries the series of whichever replica answered (they
differ by the ``replica`` label); for a complete cluster-wide view at scale,
Ray Serve's built-in ``ray_serve_*`` metrics on each node's metrics agent are
the source. Tests read batch sizes from ``ModelServer.stats`` or this endpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import rayrelay_core.variants as variants

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class GatewayMetrics:
    """Per-request HTTP series; the gateway's own, or a model replica's for the routes it serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "rayrelay_requests",
            "HTTP requests served by the gateway.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "rayrelay_request_errors",
            "Requests answered with a 4xx or 5xx status, by code.",
            ["model", "protocol", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rayrelay_request_latency_seconds",
            "Time from request arrival at the gateway to its response.",
            ["model", "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.texts = Histogram(
            "rayrelay_request_texts",
            "Texts per accepted inference request.",
            ["model", "protocol"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def observe(self, model: str, protocol: str, code: int, seconds: float) -> None:
        self.requests.labels(model, protocol, str(code)).inc()
        if code >= 400:
            self.errors.labels(model, protocol, str(code)).inc()
        self.latency.labels(model, protocol).observe(seconds)


class EndpointMetrics(GatewayMetrics):
    """The gateway's series: its requests (``GatewayMetrics``) plus what autoscaling does.

    - ``rayrelay_replicas{model,state}``: replicas by Serve state (STARTING, RUNNING,
      STOPPING, ...), read from Serve at each scrape; RUNNING is always present (0 when
      scaled to zero);
    - ``rayrelay_ongoing_requests{model,replica}``: requests in flight or queued in each
      replica, the count Serve's autoscaler follows (``gateway.replica_ongoing_requests``);
    - ``rayrelay_held_requests{model}``: requests the gateway holds while a model scaled to
      zero starts a replica, and ``rayrelay_cold_start_requests`` /
      ``rayrelay_cold_start_wait_seconds`` for those that were held. (Inference on a model's
      own route is held by Serve's proxy instead, which the gateway does not see.)
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.replicas = Gauge(
            "rayrelay_replicas",
            "Replicas of a model by Serve state (STARTING, RUNNING, STOPPING, ...).",
            ["model", "state"],
            registry=self.registry,
        )
        self.ongoing = Gauge(
            "rayrelay_ongoing_requests",
            "Requests in flight or queued in a replica (what Serve's autoscaler follows).",
            ["model", "replica"],
            registry=self.registry,
        )
        self.held_now = Gauge(
            "rayrelay_held_requests",
            "Requests held by the gateway while a model scaled to zero starts a replica.",
            ["model"],
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "rayrelay_cold_start_requests",
            "Requests that found their model scaled to zero and were held until a replica answered.",
            ["model"],
            registry=self.registry,
        )
        self.cold_wait = Histogram(
            "rayrelay_cold_start_wait_seconds",
            "Time a request held for a model scaled to zero waited for its answer.",
            ["model"],
            buckets=LATENCY_BUCKETS + (20.0, 30.0, 60.0),
            registry=self.registry,
        )

    @contextlib.contextmanager
    def held(self, model: str, scaled_to_zero: bool) -> Iterator[None]:
        """Count a call made while ``model`` had no replica (a no-op otherwise)."""
        if not scaled_to_zero:
            yield
            return
        gauge = self.held_now.labels(model)
        gauge.inc()
        start = time.perf_counter()
        try:
            yield
        finally:
            gauge.dec()
            self.cold_starts.labels(model).inc()
            self.cold_wait.labels(model).observe(time.perf_counter() - start)

    def set_replicas(self, by_model: Mapping[str, Mapping[str, int]]) -> None:
        self.replicas.clear()
        for model, states in by_model.items():
            self.replicas.labels(model, "RUNNING").set(0)
            for state, count in states.items():
                self.replicas.labels(model, state).set(count)

    def set_ongoing(self, by_model: Mapping[str, Mapping[str, int]]) -> None:
        self.ongoing.clear()
        for model, replicas in by_model.items():
            for replica, count in replicas.items():
                self.ongoing.labels(model, replica).set(count)


class ReplicaMetrics:
    def __init__(self, model: str, replica: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "replica"]
        self.batch_size = Histogram(
            "rayrelay_batch_size",
            "Texts per model call (dynamic batching).",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(model, replica)
        self.queue_wait = Histogram(
            "rayrelay_queue_wait_seconds",
            "Time a text waited in the replica before its batch started.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model, replica)
        self.inference = Histogram(
            "rayrelay_inference_latency_seconds",
            "Time of one batch: tokenisation and the onnxruntime call.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        ).labels(model, replica)
        self.failures = Counter(
            "rayrelay_inference_failures",
            "Batches whose model call raised.",
            labels,
            registry=self.registry,
        ).labels(model, replica)
        # The requests this replica answers over HTTP itself (its route, /v2/models/{name}/infer):
        # the same series as the gateway's, merged into one by ``merge_expositions``.
        self.http = GatewayMetrics(self.registry)
        self._model, self._replica = model, replica
        self.variant_info = Gauge(
            variants.INFO_METRIC,
            "The variant this replica serves (1), with the instruction set and provider it was chosen for "
            "and the runtime (onnxruntime, openvino) and precision (fp32, int8, bf16) it runs in.",
            list(variants.INFO_LABELS),
            registry=self.registry,
        )
        self.variant_timing = Gauge(
            variants.TIMING_METRIC,
            "Seconds per timing batch of each variant, measured on this replica at start (variant: auto).",
            list(variants.TIMING_LABELS),
            registry=self.registry,
        )

    def set_variant(self, choice: variants.VariantChoice) -> None:
        """Export what the replica serves and, when it timed the candidates, each one's time."""
        labels = (
            choice.requested,
            choice.variant,
            choice.isa,
            choice.provider,
            str(choice.batch),
            choice.timed,
            choice.runtime,
            choice.precision,
            variants.not_timed_label(choice.unavailable),
        )
        self.variant_info.labels(self._model, self._replica, *labels).set(1)
        for name, seconds in choice.timings_s.items():
            self.variant_timing.labels(self._model, self._replica, name).set(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample_line(sample: Sample) -> str:
    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
    value = repr(float(sample.value)) if sample.value not in (float("inf"), float("-inf")) else "+Inf"
    return f"{sample.name}{{{labels}}} {value}" if labels else f"{sample.name} {value}"


def merge_expositions(texts: Iterable[str]) -> str:
    """Merge Prometheus text expositions, one HELP/TYPE block per family.

    Concatenating them would repeat a family's HELP and TYPE lines (every model
    application defines the same families), which strict parsers reject. A
    series present in several texts (the same name and labels: the gateway and
    a model replica both count requests to one model, v1 at the gateway and v2
    infer at the replica's own route) is summed, which is right for the
    counters and histograms here; a duplicate series would be refused too.
    """
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            entry = families.setdefault(family.name, (family.documentation, family.type, {}))
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = entry[2].get(key)
                if seen is None:
                    entry[2][key] = sample
                elif sample.name.endswith("_created"):  # a start time: the earliest, not a sum
                    entry[2][key] = seen._replace(value=min(seen.value, sample.value))
                else:
                    entry[2][key] = seen._replace(value=seen.value + sample.value)
    lines: list[str] = []
    for name, (doc, kind, samples) in families.items():
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(_sample_line(s) for s in samples.values())
    return "\n".join(lines) + "\n"
