"""ModelServer: the Ray Serve deployment that runs one artifact set with onnxruntime.

One replica = one verified artifact set (``artifacts.prepare``), its tokenizer
(from the set's ``hf/`` folder) and one ``onnxruntime.InferenceSession``. The
constructor loads and verifies (the manifest's sha256 against the digest the
operator resolved, when given, then every file's sha256), and runs a warm-up
inference; if any step fails it raises with the reason, so the replica never
becomes healthy and Serve reports the application as DEPLOY_FAILED with that
message. That is what a ModelDeployment's ``Ready`` means: model loaded,
checksum verified, a warm-up inference passed.

The deployment has no HTTP route: the gateway (``gateway.py``) validates
requests (``protocol.py``) and calls :meth:`ModelServer.predict` with a list of
strings. Each text becomes one item of ``@serve.batch``, so texts of
concurrent requests (and the several texts of one request) share model calls
of up to ``maxBatchSize``; tokenisation pads to the longest text of the batch.
Batching settings arrive through ``user_config`` and change in place in
:meth:`reconfigure`. Metrics: ``metrics.ReplicaMetrics``; :meth:`stats` returns
the batch-size counts so tests assert batching from records, not timing.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
from typing import Any

import numpy as np
from ray import serve

from rayrelay_core.api import ExecutionProvider, ModelDeploymentSpec, RequestLimits
from rayrelay_workloads.serve.artifacts import prepare
from rayrelay_workloads.serve.metrics import ReplicaMetrics
from rayrelay_workloads.serve.protocol import Prediction

log = logging.getLogger("ray.serve")

WARMUP_TEXT = "rayrelay warm-up inference"


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


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(self, args: dict[str, Any]) -> None:
        self.name: str = args["name"]
        self.spec = ModelDeploymentSpec.model_validate(args["spec"])
        self._load_artifacts(args)
        self._create_session()
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (unit use): one process, one label
            replica = str(os.getpid())
        self.replica = replica
        self.metrics = ReplicaMetrics(self.name, replica)
        self.batch_counts: collections.Counter[int] = collections.Counter()
        self.max_batch_size = self.spec.batching.max_batch_size
        self.batch_wait_timeout_s = self.spec.batching.batch_wait_timeout_ms / 1000
        self._apply_batching()
        self._warm_up()
        self.ready = True
        log.info(
            "%s ready: %s variant %s, providers %s, labels %s",
            self.name,
            self.artifacts.digest[:12],
            self.artifacts.variant,
            self.providers,
            self.labels,
        )

    def _load_artifacts(self, args: dict[str, Any]) -> None:
        """Fetch and verify the artifact set (manifest digest, then every file), load the tokenizer."""
        from transformers import AutoTokenizer

        endpoint = args.get("endpointUrl") or self.spec.artifacts.endpoint_url
        self.artifacts = prepare(
            args["manifestUri"],
            variant=args.get("variant") or "auto",
            cache_dir=args.get("cacheDir"),
            endpoint_url=endpoint,
            expected_digest=args.get("digest"),
        )
        manifest = self.artifacts.manifest
        self.labels = list(manifest.labels)
        self.max_seq_length = manifest.tokenizer.max_seq_length
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(self.artifacts.tokenizer_dir), local_files_only=True
        )

    def _create_session(self) -> None:
        import onnxruntime as ort

        runtime = self.spec.runtime
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.intra_op_threads
        options.inter_op_num_threads = runtime.inter_op_threads
        providers, note = choose_providers(
            [str(p) for p in runtime.execution_providers],
            self.spec.resources.gpus,
            ort.get_available_providers(),
        )
        if note:
            log.warning("%s: %s", self.name, note)
        self.session = ort.InferenceSession(str(self.artifacts.model_path), options, providers=providers)
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]

    def _warm_up(self) -> None:
        """The replica is healthy only once a real inference passed."""
        probs = self._run([WARMUP_TEXT])
        if probs.shape != (1, len(self.labels)) or not np.isfinite(probs).all():
            raise RuntimeError(
                f"warm-up inference failed: the model gave {probs.shape} probabilities "
                f"for {len(self.labels)} labels (or non-finite values)"
            )

    # ------------------------------------------------------------------ config

    def _apply_batching(self) -> None:
        # serve.batch fixes its settings at class definition; these setters apply the spec's.
        batched: Any = self._batched
        batched.set_max_batch_size(self.max_batch_size)
        batched.set_batch_wait_timeout_s(self.batch_wait_timeout_s)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batching settings change in place (Serve calls this on user_config updates)."""
        if "maxBatchSize" in user_config:
            self.max_batch_size = int(user_config["maxBatchSize"])
        if "batchWaitTimeoutMs" in user_config:
            self.batch_wait_timeout_s = float(user_config["batchWaitTimeoutMs"]) / 1000
        self._apply_batching()

    def check_health(self) -> None:
        if not getattr(self, "ready", False):
            raise RuntimeError("model not loaded")

    # ------------------------------------------------------------------ inference

    def _run(self, texts: list[str]) -> np.ndarray:
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
        logits = self.session.run([self.output_name], feeds)[0]
        return softmax(np.asarray(logits, dtype=np.float32))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[str, float]]) -> list[Prediction]:
        start = time.perf_counter()
        for _, arrival in items:
            self.metrics.queue_wait.observe(max(0.0, start - arrival))
        size = len(items)
        self.batch_counts[size] += 1
        self.metrics.batch_size.observe(size)
        texts = [text for text, _ in items]
        try:
            # In a thread, so the event loop keeps accepting requests for the next batch.
            probs = await asyncio.to_thread(self._run, texts)
        except Exception:
            self.metrics.failures.inc()
            raise
        finally:
            self.metrics.inference.observe(time.perf_counter() - start)
        return [Prediction(int(row.argmax()), [float(x) for x in row]) for row in probs]

    async def predict(self, texts: list[str]) -> list[Prediction]:
        """Classify texts (already validated by the gateway; re-checked cheaply here)."""
        limits: RequestLimits = self.spec.limits
        if not texts or len(texts) > limits.max_texts_per_request:
            raise ValueError(f"between 1 and {limits.max_texts_per_request} texts per call")
        arrival = time.perf_counter()
        return list(await asyncio.gather(*(self._batched((str(t), arrival)) for t in texts)))

    # ------------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        """What the gateway needs to validate requests and describe the model."""
        return {
            "name": self.name,
            "version": self.artifacts.digest[:12],
            "digest": self.artifacts.digest,
            "variant": self.artifacts.variant,
            "labels": self.labels,
            "limits": self.spec.limits.wire(),
            "providers": self.providers,
            "ready": self.ready,
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


def mean_batch_size(batch_sizes: dict[str, int]) -> float:
    total = sum(batch_sizes.values())
    return math.fsum(int(k) * v for k, v in batch_sizes.items()) / total if total else 0.0
