"""Sentence embedding's steps for the shared run (``tasks.base.Task``): pairs -> normalised vectors.

Data: anchor/positive(/negative) pairs (``embedding.data``). Training:
``embedding.worker`` (multiple-negatives ranking loss with in-batch negatives, mean
pooling and normalisation; recall@1 and MRR on the validation pairs at checkpoints, the
higher recall@1 the better). Export: ``embedding.export`` (pooling and normalisation in
the ONNX graph, fp32 and int8, cosine parity against PyTorch). Gate: ``embedding.gate``
(``qualityGate.minRecallAt1`` / ``minMrr``, and ``minInt8Cosine`` for int8). Manifest and
publication: ``embedding.manifest``. Replica: ``embedding.serving.EmbeddingServer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rayrelay_core.runs import Manifest
from rayrelay_workloads.embedding.objective import METRIC
from rayrelay_workloads.failures import Reason
from rayrelay_workloads.tasks.base import Prepared, Run
from rayrelay_workloads.train import TrainResult


class SentenceEmbedding:
    name = "sentence-embedding"
    metric = METRIC
    order: Literal["max", "min"] = "max"
    failure_reasons: tuple[Reason, ...] = ()

    def prepare(self, run: Run) -> Prepared:
        from rayrelay_workloads.embedding.data import load_pairs
        from rayrelay_workloads.modeling import resolve_source

        job, spec = run.job, run.job.spec
        data = load_pairs(spec.data, job.endpoint_url)
        run.say(f"data: {len(data.train.examples)} train, {len(data.validation.examples)} validation pairs")
        source = resolve_source(spec.model.source, job.endpoint_url, str(run.scratch / "base-model"))
        return Prepared(job=job, data=data, tokenizer_source=source)

    def train_loop(self) -> Callable[[dict[str, Any]], None]:
        from rayrelay_workloads.embedding.worker import embedding_loop_per_worker

        return embedding_loop_per_worker

    def loop_config(self, run: Run, prepared: Prepared) -> dict[str, Any]:
        from rayrelay_workloads.train import base_loop_config

        return base_loop_config(prepared.job)  # the pair field names travel in data

    def check_trained(self, run: Run, prepared: Prepared, trained: TrainResult) -> None:
        from rayrelay_workloads.embedding.gate import check_retrieval

        recall, mrr = trained.metrics.get(METRIC), trained.metrics.get("val_mrr")
        run.say(f"training done: best {trained.checkpoint_uri} (validation recall@1 {recall}, MRR {mrr})")
        check_retrieval(prepared.job.spec.quality_gate, recall, mrr, "the trained model's")

    def export(self, run: Run, prepared: Prepared, trained: TrainResult) -> Any:
        from rayrelay_workloads.embedding.export import export_embedding
        from rayrelay_workloads.embedding.gate import check_retrieval

        spec = prepared.job.spec
        run.progress.stage("Exporting", f"exporting {trained.checkpoint_uri} with pooling and normalisation")
        result = export_embedding(
            trained.checkpoint_dir,
            prepared.tokenizer_source,
            run.scratch / "out",
            spec.export,
            spec.hyperparameters.max_seq_length,
            prepared.data.validation.examples,
            threads=max(1, int(spec.resources.cpus_per_worker)),
            bench_repeats=run.bench_repeats,
        )
        run.say(f"export: cosine to PyTorch min {result.cosine_min}, recall@1 {result.recall_at_1}")
        check_retrieval(
            spec.quality_gate, result.recall_at_1["pytorch"], result.mrr["pytorch"], "the exported model's"
        )
        return result

    def publish(
        self, run: Run, prepared: Prepared, trained: TrainResult, exported: Any
    ) -> tuple[Manifest, str]:
        from rayrelay_workloads.embedding.gate import int8_cosine_decision
        from rayrelay_workloads.embedding.manifest import publish_embedding
        from rayrelay_workloads.storewait import StoreWait

        decision = int8_cosine_decision(prepared.job.spec.quality_gate, exported.cosine_min.get("int8"))
        run.progress.stage("Publishing")
        waited = StoreWait()
        published = publish_embedding(
            prepared.job, exported, prepared.data, decision, trained.metrics, waited
        )
        if waited.retries:
            run.say(f"publish: waited {waited.waited_s:.1f}s for the store ({waited.retries} retries)")
        return published

    def replica(self) -> Any:
        from rayrelay_workloads.embedding.serving import EmbeddingServer

        return EmbeddingServer


TASK = SentenceEmbedding()
