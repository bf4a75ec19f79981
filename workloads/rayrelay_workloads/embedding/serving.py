"""The replica of a sentence-embedding model: classification's ``ModelServer``, answering vectors.

A ModelDeployment whose manifest says ``task: sentence-embedding`` gets this class
(``serve.app.model_app``), under the same deployment name. Everything but the answer is
``ModelServer``'s: artifact download and digest checks (encrypted sets decrypted in
memory), the light tokenizer, ``variant: auto`` timing fp32, int8 and bf16 (OpenVINO, on
CPUs with bf16 instructions) on this host,
continuous dynamic batching (``batching.Batcher``: texts of concurrent requests share one
session call of up to ``maxBatchSize``), API keys, metrics and the cold-start record.
What differs:

- the session's output is ``sentence_embedding`` (batch, dim), already pooled and
  normalised inside the graph (``embedding.export``); a batch item's result is its vector
  and its token count (OpenAI's ``usage``);
- the application's route prefix is all of ``/v2/models/{name}``
  (``serveconfig.WHOLE_PATH_TASKS``), so Serve's ingress (HAProxy or its proxy) hands every
  such path straight to a replica, which answers ``GET /v2/models/{name}`` (metadata) and
  ``.../ready`` itself;
- ``POST /v2/models/{name}/infer`` takes the same BYTES tensor of texts as classification
  and answers one FP32 output, ``embedding``, of shape ``[n, dim]``;
- OpenAI's embeddings in two places: ``POST /v1/embeddings`` names its model in the body,
  so the shared gateway receives it and forwards the body by handle to
  :meth:`EmbeddingServer.embeddings` (``embedding.openai_gateway``; refusals come back as
  data with their 4xx); and the model's own OpenAI base, ``/v2/models/{name}/openai/v1``
  (``OpenAI(base_url=...)``), whose ``POST .../embeddings`` reaches the replica in one hop,
  without the gateway (at 32 clients the gateway's hop halved the throughput,
  docs/embeddings.md). Both answer the same body the same way; the one-hop base serves
  only its own model (another ``model`` in the body is a 404).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from rayrelay_core.serveconfig import MODEL_DEPLOYMENT
from rayrelay_workloads.embedding import openai_api as oa
from rayrelay_workloads.serve import ingress, protocol
from rayrelay_workloads.serve.model import ModelServer
from rayrelay_workloads.serve.protocol import ProtocolError

TASK = "sentence-embedding"
OUTPUT_NAME = "embedding"  # the OIP infer output
OPENAI_BASE = "/openai/v1"  # the model's own OpenAI base URL, under /v2/models/{name}
# The replica's OIP paths: metadata, readiness and infer, optionally of a version.
_V2 = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/[^/]+)?(?P<rest>/ready|/infer)?/?$")
_OPENAI = re.compile(r"^/v2/models/(?P<name>[^/]+)" + re.escape(OPENAI_BASE) + r"/embeddings/?$")

# ModelServer is a Serve deployment; this class extends the class inside it.
_ModelServerClass: Any = cast(Any, ModelServer).func_or_class


@serve.deployment(name=MODEL_DEPLOYMENT)
class EmbeddingServer(_ModelServerClass):
    def _load_artifacts(self, args: dict[str, Any]) -> None:
        super()._load_artifacts(args)
        manifest = self.artifacts.manifest
        if manifest.task != TASK:
            raise RuntimeError(f"{args['manifestUri']} is a {manifest.task} artifact set, not {TASK}")
        self.dimension = int((manifest.embedding or {}).get("dimension") or 0)

    # ------------------------------------------------------------------ the model call

    def _infer(self, session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out: np.ndarray = np.asarray(session.run([self.output_name], feeds)[0], dtype=np.float32)
        return out

    def _check_output(self, vectors: np.ndarray, texts: int, what: str) -> None:
        if vectors.shape != (texts, self.dimension) or not np.isfinite(vectors).all():
            raise RuntimeError(
                f"{what} failed: the model gave {vectors.shape} values for {texts} text(s) and "
                f"{self.dimension}-dimensional vectors (or non-finite values)"
            )

    def _predict_batch(self, texts: list[str]) -> list[tuple[np.ndarray, int]]:
        """One session call for a batch: each text's vector and its token count (worker thread)."""
        start = time.perf_counter()
        try:
            feeds = self._feeds(texts)
            vectors = self._infer(self.session, feeds)
        except Exception:
            self.metrics.failures.inc()
            raise
        finally:
            self.metrics.inference.observe(time.perf_counter() - start)
        tokens = feeds["attention_mask"].sum(axis=1).tolist()
        return [(vectors[i], int(tokens[i])) for i in range(len(texts))]

    async def embed(self, texts: list[str]) -> tuple[list[np.ndarray], int]:
        """Vectors of ``texts`` (already validated) through the batcher, and their tokens in all."""
        if not texts or len(texts) > self.spec.limits.max_texts_per_request:
            raise ValueError(f"between 1 and {self.spec.limits.max_texts_per_request} texts per call")
        rows = await asyncio.gather(*(self.batcher.submit(str(t)) for t in texts))
        return [v for v, _ in rows], sum(n for _, n in rows)

    # ------------------------------------------------------------------ HTTP

    async def __call__(self, request: Request) -> Response:
        """Every ``/v2/models/{name}/...`` path (the application's route prefix): the one-hop
        OpenAI route here, the OIP routes through ``ModelServer.__call__`` (keys, faults,
        metrics) and :meth:`_v2_infer`."""
        match = _OPENAI.match(ingress.full_path(request))
        if match is not None and match.group("name") == self.name:
            return await self._openai_one_hop(request)
        response: Response = await super().__call__(request)
        return response

    async def _v2_infer(self, request: Request) -> Response:
        path = ingress.full_path(request)
        match = _V2.match(path)
        if match is None or match.group("name") != self.name:
            raise ProtocolError(404, f"no such endpoint: {request.method} {path}")
        rest = match.group("rest") or ""
        if rest != "/infer":
            ingress.require(request.method, "GET")
            if rest == "/ready":  # a request reaches a replica only once it runs, warmed up
                return ingress.json_response(200, {"name": self.name, "ready": True})
            return ingress.json_response(200, oip_metadata(self.name, self.version, self.dimension))
        ingress.require(request.method, "POST")
        limits = self.spec.limits
        self._parsing += 1  # texts on their way to the batcher: a batch may wait for them
        try:
            body = await ingress.read_body(request, limits)
            req = protocol.parse_v2_infer(
                body, limits, request.headers.get("inference-header-content-length")
            )
        finally:
            self._parsing -= 1
        if req.outputs is not None and req.outputs != [OUTPUT_NAME]:
            raise ProtocolError(422, f"this model has one output, {OUTPUT_NAME!r}; asked for {req.outputs}")
        self.metrics.http.texts.labels(self.name, "v2").observe(len(req.texts))
        vectors, _ = await self.embed(req.texts)
        return ingress.json_response(200, v2_embedding_response(self.name, self.version, req, vectors))

    async def embeddings(self, body: bytes) -> dict[str, Any]:
        """OpenAI ``/v1/embeddings`` (forwarded by the gateway): ``{"status", "body"}``."""
        start = time.perf_counter()
        try:
            status, out = 200, await self._embeddings(body)
        except ProtocolError as exc:
            status, out = exc.status, oa.error_body(exc.status, exc.message)
        self.metrics.http.observe(self.name, "openai", status, time.perf_counter() - start)
        return {"status": status, "body": out}

    async def _openai_one_hop(self, request: Request) -> Response:
        """``POST /v2/models/{name}/openai/v1/embeddings``: OpenAI's embeddings straight from
        Serve's ingress; the same answers as the gateway's route, refusals in OpenAI's shape
        (a missing or wrong key gets the same 401 as every other route of the model)."""
        start = time.perf_counter()
        try:
            refused = ingress.unauthorized(self.keys, request)
            if refused is not None:
                response: Response = refused
            else:
                ingress.require(request.method, "POST")
                self._parsing += 1  # as for infer: a batch may wait for these texts
                try:
                    body = await ingress.read_body(request, self.spec.limits)
                finally:
                    self._parsing -= 1
                response = ingress.json_response(200, await self._embeddings(body))
        except ProtocolError as exc:
            response = ingress.json_response(exc.status, oa.error_body(exc.status, exc.message))
        except Exception as exc:  # ModelServer's mapping (503 with Retry-After, or 500), OpenAI's shape
            status, message = self._fault(exc, request)
            error = oa.error_body(status, message)
            response = (
                ingress.unavailable_response(message, body=error)
                if status == 503
                else ingress.json_response(status, error)
            )
        self.metrics.http.observe(self.name, "openai", response.status_code, time.perf_counter() - start)
        return response

    async def _embeddings(self, body: bytes) -> dict[str, Any]:
        """OpenAI's answer to an embeddings body of this model, or ProtocolError (4xx)."""
        req = oa.parse_embeddings(body, self.spec.limits, self.dimension)
        if req.model != self.name:  # the gateway routes by this name; the one-hop base is ours only
            raise ProtocolError(
                404, f"model {protocol.show(req.model)} not found: this route serves {self.name!r}"
            )
        self.metrics.http.texts.labels(self.name, "openai").observe(len(req.texts))
        vectors, tokens = await self.embed(req.texts)
        return oa.embeddings_response(req.model, vectors, tokens, req.encoding_format)

    # ------------------------------------------------------------------ introspection

    def info(self) -> dict[str, Any]:
        """ModelServer's, with the task, the vector size, OIP metadata and the routes that answer."""
        return {
            **super().info(),
            "task": TASK,
            "dimension": self.dimension,
            "metadata": oip_metadata(self.name, self.version, self.dimension),
            "routes": (
                f"/v2/models/{self.name}/infer, /v1/embeddings or "
                f"/v2/models/{self.name}{OPENAI_BASE}/embeddings"
            ),
        }


def oip_metadata(model: str, version: str, dimension: int) -> dict[str, Any]:
    """``GET /v2/models/{name}``: a BYTES tensor of texts in, the FP32 vectors out."""
    return {
        "name": model,
        "versions": [version],
        "platform": protocol.PLATFORM,
        "inputs": [{"name": protocol.INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, dimension]}],
    }


def v2_embedding_response(
    model: str, version: str, request: protocol.V2Request, vectors: list[np.ndarray]
) -> dict[str, Any]:
    """OIP's answer: one FP32 output ``embedding`` of shape [n, dim], row-major."""
    dim = int(vectors[0].shape[0]) if vectors else 0
    out: dict[str, Any] = {
        "model_name": model,
        "model_version": version,
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "datatype": "FP32",
                "shape": [len(vectors), dim],
                "data": [float(x) for v in vectors for x in v],
            }
        ],
    }
    if request.id is not None:
        out["id"] = request.id
    return out
