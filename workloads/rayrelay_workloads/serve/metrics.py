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

- each text-generation replica (``textgen.serving``) records its requests' tokens,
  time to first token, time per output token and its continuous batch
  (``GenerationMetrics``).

The gateway's ``EndpointMetrics`` adds what autoscaling does: replicas by
state, ongoing requests per replica (asked of every replica at each scrape),
and requests held while a model scaled to zero starts a replica; and it creates
each model's 5xx series at 0 when it first sees the model (``models_seen``).

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
# Text generation (docs/performance.md, textgen_batching): time to first token 15 ms (1 stream)
# to 97 ms (p99, 8 streams) on one replica, seconds once requests queue; time per output
# token about 2 ms alone to 10 ms per stream at 8 streams, more on a loaded or larger model.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
# A model's 5xx series exist from the moment the gateway sees the model (at 0), so that
# rate() sees the first server error: the codes the gateway and the replicas answer.
SERVER_ERROR_CODES = ("500", "503", "504")
MODEL_PROTOCOLS = ("v1", "v2")


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

    def models_seen(self, models: Iterable[str]) -> None:
        """Create each model's server-error series at 0 (idempotent; one per protocol and 5xx code).

        A counter born with its first increment has no earlier sample, so ``rate()`` and
        ``increase()`` miss that first 5xx (and a burst that ends within a scrape or two)."""
        for model in models:
            for protocol in MODEL_PROTOCOLS:
                for code in SERVER_ERROR_CODES:
                    self.errors.labels(model, protocol, code)

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


class GenerationMetrics:
    """A text-generation replica's series (``textgen.serving.TextGenServer``), by model and replica.

    - ``rayrelay_generation_prompt_tokens`` / ``rayrelay_generation_tokens``: prompt tokens
      of the requests queued, and tokens generated (counted as they are handed to the stream);
    - ``rayrelay_generation_time_to_first_token_seconds``: from the request joining the
      replica's queue to its first token chosen (queue wait and prefill; not tokenisation);
    - ``rayrelay_generation_time_per_output_token_seconds``: per request of 2 tokens or more,
      (last token - first token) / (tokens - 1), timed on the decode thread where each token is
      chosen, so neither the stream's flush interval nor a slow reader changes it;
    - ``rayrelay_generation_running_requests`` / ``rayrelay_generation_queued_requests``: the
      continuous batcher's rows decoding now and the requests waiting to join (read at each
      scrape, :meth:`set_batch`);
    - ``self.http``: the requests the replica answers on its own routes (generate,
      generate_stream, infer, metadata), the gateway's series (``GatewayMetrics``).
    """

    def __init__(self, model: str, replica: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model", "replica"]
        self.prompt_tokens = Counter(
            "rayrelay_generation_prompt_tokens",
            "Prompt tokens of the text-generation requests queued in the replica.",
            labels,
            registry=self.registry,
        ).labels(model, replica)
        self.tokens = Counter(
            "rayrelay_generation_tokens",
            "Tokens generated (handed to their request's response).",
            labels,
            registry=self.registry,
        ).labels(model, replica)
        self.ttft = Histogram(
            "rayrelay_generation_time_to_first_token_seconds",
            "From a request joining the replica's queue to its first token chosen.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        ).labels(model, replica)
        self.tpot = Histogram(
            "rayrelay_generation_time_per_output_token_seconds",
            "Per request: (last token - first token) / (tokens - 1), as the decode loop chose them.",
            labels,
            buckets=TPOT_BUCKETS,
            registry=self.registry,
        ).labels(model, replica)
        self.running = Gauge(
            "rayrelay_generation_running_requests",
            "Requests decoding in the replica's continuous batch now.",
            labels,
            registry=self.registry,
        ).labels(model, replica)
        self.queued = Gauge(
            "rayrelay_generation_queued_requests",
            "Requests waiting to join the replica's continuous batch.",
            labels,
            registry=self.registry,
        ).labels(model, replica)
        self.http = GatewayMetrics(self.registry)

    def first_token(self, queued_at: float, first_at: float) -> None:
        self.ttft.observe(max(0.0, first_at - queued_at))

    def finished(self, tokens: int, first_at: float, last_at: float) -> None:
        """A request's time per output token, once it produced ``tokens`` (2 or more to count)."""
        if tokens >= 2:
            self.tpot.observe(max(0.0, last_at - first_at) / (tokens - 1))

    def set_batch(self, running: int, queued: int) -> None:
        self.running.set(running)
        self.queued.set(queued)

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
