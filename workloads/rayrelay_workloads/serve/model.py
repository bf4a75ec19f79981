"""ModelServer: the Ray Serve deployment that runs one artifact set with onnxruntime.

One replica = one verified artifact set (``artifacts.prepare``), its tokenizer
(from the set's ``hf/`` folder) and one ``onnxruntime.InferenceSession``. The
constructor loads and verifies (the manifest's sha256 against the digest the
operator resolved, when given, then every file's sha256), and runs a warm-up
inference; if any step fails it raises with the reason, so the replica never
becomes healthy and Serve reports the application as DEPLOY_FAILED with that
message. That is what a ModelDeployment's ``Ready`` means: model loaded,
checksum verified, a warm-up inference passed.

HTTP: the model application's route prefix is ``/v2/models/{name}/infer``
(``rayrelay_core.serveconfig``), so Serve's proxy hands an OIP infer request
straight to :meth:`ModelServer.__call__` (one hop: proxy -> replica), which
validates it with ``protocol.py`` exactly as the gateway does and answers with
the same bodies (``ingress.py``). Every other route (health, metadata,
readiness, KServe v1, metrics) goes to the shared gateway (``gateway.py``),
which calls :meth:`ModelServer.predict` with a list of strings. Each text becomes one item of the replica's ``batching.Batcher``
(continuous batching: a batch forms while the previous one computes, and an
idle replica starts a lone text at once), so texts of concurrent requests (and
the several texts of one request) share model calls of up to ``maxBatchSize``;
tokenisation is one call for the whole batch and pads to its longest text.
Batching settings arrive through ``user_config`` and change in place in
:meth:`reconfigure`, and so do the sha256 digests of the endpoint's API keys
(``spec.auth``, ``rayrelay_core.apikeys``): :meth:`__call__` answers 401 before it
reads a body, and :meth:`key_digests` tells the gateway what to check on the
routes it answers. The constructor times its steps (``cold_start_record``:
download, digest check, tokenizer, session, warm-up; files found in the node
cache, ``cache.py``, are not downloaded) and :meth:`info` returns them.
Variant: a forced ``fp32``/``int8`` is loaded as asked. With ``variant: auto``
(the default) the replica loads the manifest's recommended variant, warms it up,
then times each variant that passed the quality gate on its own hardware, a few
batches each under a time budget (``TIMING_*``), and keeps the fastest session
only (``rayrelay_core.variants``; the other variant's model file is fetched with
``artifacts.prepare_variant``: node cache, digest checks). The choice is written
next to the set in the node cache (``.variant-choice-<key>.json``); a later replica
on the node with the same instruction set, providers, threads and batch loads that
variant directly and times nothing. With a GPU (``resources.gpus``
and a CUDA build of onnxruntime) auto serves fp32 on the CUDA provider, untimed:
dynamic int8 does not run there. The ``bf16`` variant runs in OpenVINO, not
onnxruntime (``rayrelay_workloads.openvino_runtime``: the fp32 file compiled with a
bf16 precision hint); auto times it beside the others only on a CPU with bf16
instructions (AMX, AVX-512 BF16) and an image with OpenVINO, and says why not
otherwise. With ``RAYRELAY_OPENVINO_FP32=1`` auto also times ``fp32-openvino``: the
fp32 file (fetched and verified as fp32's) compiled by OpenVINO in fp32, fp32's
numerics in another runtime (off by default: ``openvino_runtime.OPENVINO_FP32_ENV``).
The choice, its timings, the runtime and precision that serve and the CPU
instruction set go to :meth:`info`, the log and ``/metrics`` (``ReplicaMetrics.set_variant``).
Metrics: ``metrics.ReplicaMetrics``; :meth:`stats` returns
the batch-size counts so tests assert batching from records, not timing.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

import rayrelay_core.variants as variants
from rayrelay_core.api import ExecutionProvider, ModelDeploymentSpec, RequestLimits
from rayrelay_core.apikeys import USER_CONFIG_KEY, KeyCheck, key_check
from rayrelay_core.variants import VariantChoice
from rayrelay_workloads import openvino_runtime
from rayrelay_workloads.hardware import instruction_set
from rayrelay_workloads.serve import ingress, protocol
from rayrelay_workloads.serve.artifacts import (
    PreparedArtifacts,
    cache_root,
    load_tokenizer,
    prepare,
    prepare_variant,
)
from rayrelay_workloads.serve.batching import Batcher
from rayrelay_workloads.serve.metrics import ReplicaMetrics
from rayrelay_workloads.serve.protocol import Prediction, ProtocolError

log = logging.getLogger("ray.serve")

WARMUP_TEXT = "rayrelay warm-up inference"
# variant: auto times the candidates on batches of this text (a short request, ~20 tokens).
TIMING_TEXT = "my order arrived two days late and the box was damaged, can you send a replacement please"
TIMING_ROUNDS = 3  # timed batches per candidate, in turns (after one untimed run that checks its output)
TIMING_MAX_BATCH = 8  # texts per timing batch: maxBatchSize, at most this
# The whole timing's bound in seconds (every candidate after the first is skipped once it passed).
TIMING_BUDGET_S = float(os.environ.get("RAYRELAY_VARIANT_TIMING_BUDGET_S", "10"))
SPIN = os.environ.get("RAYRELAY_ORT_SPIN", "0")  # "1" lets onnxruntime's idle threads spin

# When this module was imported in the replica process (the cold-start breakdown).
MODULE_IMPORTED_AT = time.time()

# The one route a model application serves itself (see the module docstring).
_INFER = re.compile(r"^/v2/models/(?P<name>[^/]+)/infer/?$")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return out


def choose_providers(requested: list[str], gpus: float, available: list[str]) -> tuple[list[str], str | None]:
    """The providers to create the session with, and a note when a request was not met."""
    chosen: list[str] = []
    notes: list[str] = []
    for provider in requested:
        if provider == ExecutionProvider.CUDA:
            if gpus <= 0:
                notes.append("CUDAExecutionProvider asked for but the replica has no GPU (resources.gpus)")
                continue
            if provider not in available:
                notes.append("CUDAExecutionProvider asked for but this onnxruntime build lacks it")
                continue
        elif provider not in available:
            notes.append(f"{provider} is not available in this onnxruntime build")
            continue
        chosen.append(provider)
    if ExecutionProvider.CPU.value not in chosen:
        chosen.append(ExecutionProvider.CPU.value)
    note = "; ".join(notes) + "; running on CPUExecutionProvider" if notes else None
    return chosen, note


def variant_providers(
    requested_variant: str, requested: list[str], gpus: float, available: list[str]
) -> tuple[list[str], str | None]:
    """:func:`choose_providers`, with CUDA first for ``variant: auto`` on a replica that has a GPU.

    A replica given GPUs (``resources.gpus``) whose onnxruntime has the CUDA provider serves
    auto on it (fp32: see ``rayrelay_core.variants``) even when the spec lists only the CPU
    provider (the default); a forced variant keeps the providers the spec lists."""
    wanted = list(requested)
    cuda = ExecutionProvider.CUDA.value
    if requested_variant in (variants.AUTO, "") and gpus > 0 and cuda in available and cuda not in wanted:
        wanted.insert(0, cuda)
    return choose_providers(wanted, gpus, available)


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def session_threads(runtime_intra: int, runtime_inter: int, cpus: float) -> tuple[int, int]:
    """onnxruntime's (intra-op, inter-op) threads for a replica given ``cpus`` CPUs.

    The rule (``runtime.*Threads`` = 0, the default): intra-op threads = the
    replica's whole CPUs (at least 1), inter-op = 1. onnxruntime's own default
    is one thread per physical core of the *node*, which oversubscribes as soon
    as several replicas, Serve's proxy or anything else share it; a BERT graph
    is a chain of operators, so inter-op parallelism has nothing to run.
    Replicas x threads is then bounded by the CPUs given, and the way to use
    more cores is more replicas (autoscaling) or more ``resources.cpus``.
    An explicit ``runtime.intraOpThreads`` / ``interOpThreads`` wins.
    """
    intra = runtime_intra or max(1, int(cpus))
    inter = runtime_inter or 1
    return intra, inter


def replica_label() -> str:
    """This replica's id for metric labels (Serve's), or the process id outside a replica."""
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # outside a replica (unit use): one process, one label
        return str(os.getpid())


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(self, args: dict[str, Any]) -> None:
        started_at = time.time()
        t0 = time.perf_counter()
        self.name: str = args["name"]
        self.spec = ModelDeploymentSpec.model_validate(args["spec"])
        # spec.auth: every request is refused until reconfigure() brings the digests (fail closed).
        self.keys: KeyCheck | None = key_check(self.spec.auth is not None, None)
        self._key_digests: list[str] | None = None if self.keys is None else []
        # Where a replica's start goes (cold start): see ``cold_start`` and ``info()``.
        self._timings: dict[str, float] = {}
        self.requested_variant = str(args.get("variant") or variants.AUTO)
        self.isa = instruction_set()
        self._memo_choice: VariantChoice | None = None  # an earlier replica's choice on this node
        self._choose_providers()
        self._load_artifacts(args)
        t_session = time.perf_counter()
        self._bind(self._new_session(self.artifacts.model_source, self.artifacts.variant))
        self._timings["session_s"] = time.perf_counter() - t_session
        self.replica = replica_label()
        self.metrics = ReplicaMetrics(self.name, self.replica)
        self._start_batcher()
        t_warm = time.perf_counter()
        self._warm_up()
        self._timings["warmup_s"] = time.perf_counter() - t_warm
        t_choice = time.perf_counter()
        self.variant_choice = self._choose_variant()
        self._timings["variant_choice_s"] = time.perf_counter() - t_choice
        self.metrics.set_variant(self.variant_choice)
        self.cold_start = cold_start_record(
            started_at, MODULE_IMPORTED_AT, self._timings, time.perf_counter() - t0
        )
        self.ready = True
        log.info(
            "%s cold start: %s",
            self.name,
            ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in self.cold_start.items()
            ),
        )
        log.info(
            "%s ready: %s variant %s (%s), providers %s, labels %s",
            self.name,
            self.artifacts.digest[:12],
            self.artifacts.variant,
            self.variant_choice.reason,
            self.providers,
            self.labels,
        )

    def _start_batcher(self) -> None:
        """The dynamic batcher of ``spec.batching`` in front of :meth:`_predict_batch`."""
        self.batch_counts: collections.Counter[int] = collections.Counter()
        self.max_batch_size = self.spec.batching.max_batch_size
        self.batch_wait_timeout_s = self.spec.batching.batch_wait_timeout_ms / 1000
        self._parsing = 0  # HTTP requests inside the replica whose texts are not queued yet
        self.batcher: Batcher[str, Prediction] = Batcher(
            self._predict_batch,
            self.max_batch_size,
            self.batch_wait_timeout_s,
            on_batch=self._on_batch,
            expecting=lambda: self._parsing,
        )

    @property
    def version(self) -> str:
        return self.artifacts.digest[:12]

    def _load_artifacts(self, args: dict[str, Any]) -> None:
        """Fetch and verify the artifact set (manifest digest, then every file), load the tokenizer.

        An encrypted set is decrypted in memory (``artifacts.prepare``), never to disk."""
        endpoint = args.get("endpointUrl") or self.spec.artifacts.endpoint_url
        t0 = time.perf_counter()
        self._cache_dir = args.get("cacheDir")
        self.artifacts = prepare(
            args["manifestUri"],
            variant=self.requested_variant,
            cache_dir=args.get("cacheDir"),
            endpoint_url=endpoint,
            expected_digest=args.get("digest"),
            timings=self._timings,
            resolve=self._first_variant,
        )
        self._timings["prepare_s"] = time.perf_counter() - t0
        manifest = self.artifacts.manifest
        self.labels = list(manifest.labels)
        self.max_seq_length = manifest.tokenizer.max_seq_length
        t_tok = time.perf_counter()
        # The light tokenizer when the set has a tokenizer.json (every fast tokenizer does):
        # importing transformers costs a replica seconds at each start (a cold start from zero).
        self.tokenizer = light_tokenizer(self.artifacts) or load_tokenizer(self.artifacts)
        self._timings["tokenizer_s"] = time.perf_counter() - t_tok

    def _first_variant(self, manifest: Any, digest: str) -> str:
        """The variant to load: the forced one, an earlier replica's choice on this node, or auto's first."""
        provider = self.session_providers[0]
        self._memo_choice = None
        self._manifest = manifest  # the memo's key depends on its variants (_memo_path)
        if self.requested_variant in (variants.AUTO, ""):
            try:
                memo = json.loads(self._memo_path(digest).read_text())
                self._memo_choice = variants.from_memo(
                    memo, manifest, self.isa, provider, self._unavailable(manifest), self._offered()
                )
            except (OSError, ValueError):
                pass  # none yet (or unreadable): time here
            if self._memo_choice is not None:
                return self._memo_choice.variant
        return variants.first_variant(
            manifest, self.requested_variant, provider == ExecutionProvider.CUDA.value
        )

    def _memo_path(self, digest: str) -> Path:
        """Where this node keeps auto's choice for this set and these settings (see the module docstring)."""
        runtime = self.spec.runtime
        threads = session_threads(
            runtime.intra_op_threads, runtime.inter_op_threads, self.spec.resources.cpus
        )
        settings: list[Any] = [
            self.isa,
            self.session_providers,
            threads,
            self._timing_batch(),
            TIMING_TEXT,
            _ort_version(),
        ]
        if "bf16" in self._manifest_variants():
            settings += openvino_runtime.serving_key()  # bf16 is a candidate: its runtime counts too
        if self._offered():  # fp32-openvino is a candidate: whether it runs here, and which OpenVINO
            settings += [*self._offered(), openvino_runtime.fp32_unavailable()]
            settings.append(openvino_runtime.installed_version())
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        return cache_root(self._cache_dir) / digest / f".variant-choice-{key}.json"

    def _manifest_variants(self) -> list[str]:
        """The variants of the set being served (or being prepared: ``_first_variant``)."""
        manifest = getattr(self, "_manifest", None)
        return list(manifest.variants) if manifest is not None else []

    def _unavailable(self, manifest: Any) -> dict[str, str]:
        """Accepted variants this replica's host cannot run well, and why (``variants.choose``)."""
        gone: dict[str, str] = {}
        fp32_openvino = openvino_runtime.fp32_unavailable() if self._offered() else None
        if fp32_openvino:
            gone["fp32-openvino"] = fp32_openvino
        info = manifest.variants.get("bf16")
        if info is None or not info.accepted:
            return gone
        why = openvino_runtime.serving_unavailable()
        return gone | {"bf16": why} if why else gone

    def _offered(self) -> tuple[str, ...]:
        """The serve-time candidates this replica offers to auto (``variants.DERIVED``)."""
        return ("fp32-openvino",) if openvino_runtime.fp32_offered() else ()

    def _remember(self, choice: VariantChoice) -> None:
        path = self._memo_path(self.artifacts.digest)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}")
        try:
            tmp.write_text(json.dumps(choice.memo()))
            os.replace(tmp, path)
        except OSError as exc:  # the set was evicted meanwhile, or a read-only cache: time again next time
            log.warning("%s: cannot record the variant choice in %s: %s", self.name, path, exc)
            tmp.unlink(missing_ok=True)

    def _timing_batch(self) -> int:
        return min(self.spec.batching.max_batch_size, TIMING_MAX_BATCH)

    def _choose_providers(self) -> None:
        """The onnxruntime providers of this replica's sessions (``variant_providers``)."""
        import onnxruntime as ort

        providers, note = variant_providers(
            self.requested_variant,
            [str(p) for p in self.spec.runtime.execution_providers],
            self.spec.resources.gpus,
            ort.get_available_providers(),
        )
        if note:
            log.warning("%s: %s", self.name, note)
        self.session_providers = providers

    def _new_session(self, model_source: str | bytes, variant: str = "") -> Any:
        """An onnxruntime session of ``model_source``, or OpenVINO's for bf16 and fp32-openvino."""
        import onnxruntime as ort

        runtime = self.spec.runtime
        intra, inter = session_threads(
            runtime.intra_op_threads, runtime.inter_op_threads, self.spec.resources.cpus
        )
        if variants.RUNTIMES.get(variant, ("",))[0] == variants.OPENVINO:
            self.threads = (intra, inter)
            return openvino_runtime.OpenVinoSession(model_source, intra, variants.RUNTIMES[variant][1])
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra
        options.inter_op_num_threads = inter
        # Idle pool threads sleep instead of spinning: a replica shares its cores with the
        # request path (Serve's proxy, the replica's own event loop), which spinning starves.
        options.add_session_config_entry("session.intra_op.allow_spinning", SPIN)
        self.threads = (intra, inter)
        return ort.InferenceSession(model_source, options, providers=self.session_providers)

    def _bind(self, session: Any) -> None:
        """Serve with ``session`` from now on."""
        self.session = session
        self.providers = session.get_providers()
        self.input_names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]

    def _warm_up(self) -> None:
        """The replica is healthy only once a real inference passed."""
        self._check_output(self._run([WARMUP_TEXT]), 1, "warm-up inference")

    def _check_output(self, probs: np.ndarray, texts: int, what: str) -> None:
        if probs.shape != (texts, len(self.labels)) or not np.isfinite(probs).all():
            raise RuntimeError(
                f"{what} failed: the model gave {probs.shape} probabilities "
                f"for {texts} text(s) and {len(self.labels)} labels (or non-finite values)"
            )

    def _choose_variant(self) -> VariantChoice:
        """auto: time the accepted variants here and keep the fastest session; forced: as loaded.

        The candidates' sessions live only while they are timed (two for int8/fp32);
        every one but the chosen is dropped before the replica takes requests. An earlier
        replica's choice on this node (``_first_variant``) is loaded already: nothing to time."""
        if self._memo_choice is not None:
            return self._as_run(self._memo_choice)
        batch = self._timing_batch()
        feeds = self._feeds([TIMING_TEXT] * batch)
        loaded = self.artifacts
        ready: dict[str, tuple[Any, PreparedArtifacts]] = {}

        def load(variant: str) -> None:
            if variant == loaded.variant:
                ready[variant] = (self.session, loaded)
                return
            prepared = prepare_variant(loaded, variant)
            session = self._new_session(prepared.model_source, variant)
            # The untimed first run, which also checks what the variant answers.
            self._check_output(self._infer(session, feeds), batch, f"{variant} timing batch")
            ready[variant] = (session, prepared)

        def run(variant: str) -> float:
            session = ready[variant][0]
            t0 = time.perf_counter()
            self._infer(session, feeds)
            return time.perf_counter() - t0

        choice = variants.choose(
            loaded.manifest,
            self.requested_variant,
            load,
            run,
            isa=self.isa,
            provider=self.providers[0],
            batch=batch,
            rounds=TIMING_ROUNDS,
            budget_s=TIMING_BUDGET_S,
            unavailable=self._unavailable(loaded.manifest),
            extra=self._offered(),  # fp32-openvino when asked for, unless _unavailable says why not
        )
        for variant, why in choice.skipped.items():
            log.warning("%s: variant %s not timed: %s", self.name, variant, why)
        if choice.variant != loaded.variant:
            session, self.artifacts = ready[choice.variant]
            self._bind(session)
        ready.clear()
        if choice.timed == variants.TIMED_HERE and not choice.skipped:
            self._remember(choice)
        return self._as_run(choice)

    def _as_run(self, choice: VariantChoice) -> VariantChoice:
        """``choice`` with the precision the served session really runs in (an emulated bf16 says so)."""
        label = getattr(self.session, "precision_label", None)
        return dataclasses.replace(choice, precision=label) if label else choice

    # ------------------------------------------------------------------ config

    def _apply_batching(self) -> None:
        self.batcher.configure(self.max_batch_size, self.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching settings and API key digests change in place (Serve calls this on user_config updates)."""
        set_keys(self, user_config)
        if "maxBatchSize" in user_config:
            self.max_batch_size = int(user_config["maxBatchSize"])
        if "batchWaitTimeoutMs" in user_config:
            self.batch_wait_timeout_s = float(user_config["batchWaitTimeoutMs"]) / 1000
        self._apply_batching()

    def check_health(self) -> None:
        if not getattr(self, "ready", False):
            raise RuntimeError("model not loaded")

    # ------------------------------------------------------------------ inference

    def _feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="np",
        )
        feeds = {
            name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names if name in encoded
        }
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise RuntimeError(f"the tokenizer does not produce the model inputs {missing}")
        return feeds

    def _infer(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        logits = session.run([self.output_name], feeds)[0]
        return softmax(np.asarray(logits, dtype=np.float32))

    def _run(self, texts: list[str]) -> np.ndarray:
        return self._infer(self.session, self._feeds(texts))

    def _on_batch(self, arrivals: list[float], start: float) -> None:
        for arrival in arrivals:
            self.metrics.queue_wait.observe(max(0.0, start - arrival))
        size = len(arrivals)
        self.batch_counts[size] += 1
        self.metrics.batch_size.observe(size)

    def _predict_batch(self, texts: list[str]) -> list[Prediction]:
        """One model call for a batch (runs in a worker thread: see ``batching.Batcher``)."""
        start = time.perf_counter()
        try:
            probs = self._run(texts)
        except Exception:
            self.metrics.failures.inc()
            raise
        finally:
            self.metrics.inference.observe(time.perf_counter() - start)
        ids = probs.argmax(axis=1).tolist()
        return [Prediction(i, row) for i, row in zip(ids, probs.tolist(), strict=True)]

    async def predict(self, texts: list[str]) -> list[Prediction]:
        """Classify texts (already validated by the caller; re-checked cheaply here)."""
        limits: RequestLimits = self.spec.limits
        if not texts or len(texts) > limits.max_texts_per_request:
            raise ValueError(f"between 1 and {limits.max_texts_per_request} texts per call")
        if len(texts) == 1:
            return [await self.batcher.submit(str(texts[0]))]
        return list(await asyncio.gather(*(self.batcher.submit(str(t)) for t in texts)))

    # ------------------------------------------------------------------ HTTP

    def key_digests(self) -> list[str] | None:
        """The API key digests this replica accepts (None: no ``spec.auth``), for the gateway."""
        return self._key_digests

    async def __call__(self, request: Request) -> Response:
        """``POST /v2/models/{name}/infer``, routed here by Serve's proxy (the one-hop path)."""
        start = time.perf_counter()
        try:
            refused = ingress.unauthorized(self.keys, request)
            response = refused if refused is not None else await self._v2_infer(request)
        except ProtocolError as exc:
            response = ingress.error_response(exc.status, exc.message)
        except Exception as exc:
            status, message = self._fault(exc, request)
            response = (
                ingress.unavailable_response(message)
                if status == 503
                else ingress.error_response(status, message)
            )
        self.metrics.http.observe(self.name, "v2", response.status_code, time.perf_counter() - start)
        return response

    def _fault(self, exc: Exception, request: Request) -> tuple[int, str]:
        """(status, message) of an exception no client caused, logged: 503 for Serve's transient
        errors (overload, no replica, a replica gone), else 500 with its traceback in the log."""
        transient = ingress.transient(exc)
        if transient is not None:
            log.warning("%s: %s: 503: %s", self.name, request.url.path, transient)
            return 503, ingress.describe(transient)
        log.exception("%s: %s %s failed", self.name, request.method, request.url.path)
        return 500, protocol.INTERNAL_ERROR

    async def _v2_infer(self, request: Request) -> Response:
        path = ingress.full_path(request)
        match = _INFER.match(path)
        if match is None or match.group("name") != self.name:
            raise ProtocolError(404, f"no such endpoint: {request.method} {path}")
        ingress.require(request.method, "POST")
        limits = self.spec.limits
        self._parsing += 1  # texts on their way to the batcher: a batch may wait for them
        try:
            body = await ingress.read_body(request, limits)
            header_length = request.headers.get("inference-header-content-length")
            req = protocol.parse_v2_infer(body, limits, header_length)
        finally:
            self._parsing -= 1
        self.metrics.http.texts.labels(self.name, "v2").observe(len(req.texts))
        predictions = await self.predict(req.texts)
        return ingress.json_response(
            200, protocol.v2_response(self.name, self.version, req, predictions, self.labels)
        )

    # ------------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        """What the gateway needs to validate requests and describe the model."""
        return {
            "name": self.name,
            "version": self.version,
            "digest": self.artifacts.digest,
            "variant": self.artifacts.variant,
            "labels": self.labels,
            "limits": self.spec.limits.wire(),
            "providers": self.providers,
            "ready": self.ready,
            "coldStart": self.cold_start,
            "variantChoice": {
                "requested": self.variant_choice.requested,
                "variant": self.variant_choice.variant,
                "reason": self.variant_choice.reason,
                "instructionSet": self.variant_choice.isa,
                "provider": self.variant_choice.provider,
                "timingsMs": {k: round(v * 1000, 3) for k, v in self.variant_choice.timings_s.items()},
                "timed": self.variant_choice.timed,
                "runtime": self.variant_choice.runtime,
                "precision": self.variant_choice.precision,
                "notTimed": dict(self.variant_choice.unavailable),
            },
        }

    def stats(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "batchSizes": {str(k): v for k, v in sorted(self.batch_counts.items())},
            "maxBatchSize": self.max_batch_size,
            "batchWaitTimeoutS": self.batch_wait_timeout_s,
        }

    def metrics_text(self) -> str:
        return self.metrics.text()


class LightTokenizer:
    """A ``tokenizers.Tokenizer`` called the way :meth:`ModelServer._run` calls a transformers one.

    ``tok(texts, padding="longest", truncation=True, max_length=n, return_tensors="np")`` of a
    transformers fast tokenizer runs this very Rust tokenizer (from the set's
    ``tokenizer.json``: normaliser, pre-tokeniser, vocabulary, [CLS]/[SEP] template) with
    longest-first truncation at ``n`` and right padding to the longest text of the batch;
    this does the same without importing transformers (seconds at every replica start).
    ``tests/unit/test_light_tokenizer.py`` checks the ids against transformers.
    """

    def __init__(self, tokenizer: Any, pad_id: int, pad_type_id: int, pad_token: str) -> None:
        self._tok = tokenizer
        self._tok.no_padding()
        self._pad = {"pad_id": pad_id, "pad_type_id": pad_type_id, "pad_token": pad_token}
        self._max_length: int | None = None
        self._lock = threading.Lock()  # padding/truncation settings live on the shared object

    def __call__(
        self,
        texts: list[str],
        padding: str = "longest",
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str = "np",
    ) -> dict[str, np.ndarray]:
        with self._lock:
            if max_length != self._max_length:
                if truncation and max_length:
                    self._tok.enable_truncation(max_length, strategy="longest_first")
                else:
                    self._tok.no_truncation()
                self._max_length = max_length
            self._tok.enable_padding(direction="right", **self._pad)
            encodings = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }


def light_tokenizer(prepared: Any) -> LightTokenizer | None:
    """The set's ``tokenizer.json`` as a :class:`LightTokenizer`, or None (then transformers loads it).

    From the verified folder, or from memory for an encrypted set
    (``prepared.tokenizer_files``). The pad token comes from ``tokenizer_config.json``
    (else the tokenizer's own padding settings); without one, None.
    """
    import json

    from tokenizers import Tokenizer

    files = getattr(prepared, "tokenizer_files", None)
    if files is not None:
        raw, config_raw = files.get("tokenizer.json"), files.get("tokenizer_config.json", b"{}")
    else:
        folder = Path(prepared.tokenizer_dir)
        if not (folder / "tokenizer.json").is_file():
            return None
        raw = (folder / "tokenizer.json").read_bytes()
        config_path = folder / "tokenizer_config.json"
        config_raw = config_path.read_bytes() if config_path.is_file() else b"{}"
    if not raw:
        return None
    tokenizer = Tokenizer.from_str(raw.decode())
    config = json.loads(config_raw or b"{}")
    padding = tokenizer.padding or {}
    pad_token = config.get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    pad_token = pad_token or padding.get("pad_token")
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:
        return None
    return LightTokenizer(tokenizer, pad_id, int(padding.get("pad_type_id", 0)), str(pad_token))


def set_keys(server: Any, user_config: dict[str, Any]) -> None:
    """A replica's API key check from ``user_config`` (``ModelServer`` and ``TextGenServer`` alike).

    Logs how many keys it holds, never a key or a digest."""
    check = key_check(server.spec.auth is not None, user_config)
    if check is None:
        return
    digests = sorted(str(d) for d in user_config.get(USER_CONFIG_KEY) or [])
    if digests != server._key_digests:
        log.info("%s: API keys updated in place (%d key(s))", server.name, len(check))
    server.keys, server._key_digests = check, digests


def cold_start_record(
    started_at: float, module_imported_at: float, timings: dict[str, float], total_s: float
) -> dict[str, Any]:
    """A replica's start, step by step (seconds; wall-clock stamps in seconds since the epoch).

    ``initStartedAt`` lets a caller that knows when a request arrived (a cold start from zero)
    split the wait into Serve's part (deciding, starting the actor process, importing this
    module: up to ``moduleImportedAt``/``initStartedAt``) and the replica's own steps:
    manifest read and store client (``prepare`` minus download and verification), download,
    digest check (sha256 of every file, cached ones too), tokenizer, onnxruntime session,
    warm-up inference, and ``variant: auto``'s timing of the candidates (``variantChoiceS``:
    the other variant's download and digest check are in ``downloadS``/``verifyS`` too).
    ``downloadedBytes`` 0 means the node cache had every file.
    """
    prepare_s = timings.get("prepare_s", 0.0)
    download_s = timings.get("download_s", 0.0)
    verify_s = timings.get("verify_s", 0.0)
    return {
        "moduleImportedAt": round(module_imported_at, 3),
        "initStartedAt": round(started_at, 3),
        "manifestS": round(max(0.0, prepare_s - download_s - verify_s), 4),
        "downloadS": round(download_s, 4),
        "verifyS": round(verify_s, 4),
        "tokenizerS": round(timings.get("tokenizer_s", 0.0), 4),
        "sessionS": round(timings.get("session_s", 0.0), 4),
        "warmupS": round(timings.get("warmup_s", 0.0), 4),
        "variantChoiceS": round(timings.get("variant_choice_s", 0.0), 4),
        "initS": round(total_s, 4),
        "downloadedBytes": int(timings.get("downloaded_bytes", 0)),
        "cachedFiles": int(timings.get("cached_files", 0)),
        "readyAt": round(started_at + total_s, 3),
    }


def mean_batch_size(batch_sizes: dict[str, int]) -> float:
    total = sum(batch_sizes.values())
    return math.fsum(int(k) * v for k, v in batch_sizes.items()) / total if total else 0.0
