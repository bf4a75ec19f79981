"""Text generation's steps for the shared run (``tasks.base.Task``): a causal LM with its KV cache.

Data: prompt/completion or plain texts (``textgen.data``). Training:
``textgen.worker`` (next-token cross-entropy; validation perplexity at
checkpoints, the lower the better). Export: ``textgen.export`` (the decoder with
its KV cache, fp32 and int8; logits and greedy-decoding parity). Gate:
``qualityGate.maxValPerplexity`` on the best checkpoint and
``maxInt8PerplexityIncrease`` for int8 (``textgen.pipeline``). Replica:
``textgen.serving.TextGenServer``. Not yet for this task:
``spec.artifacts.encryption`` (refused before training, reason ``InvalidSpec``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from rayrelay_core.runs import Manifest
from rayrelay_workloads.failures import Reason, UnsupportedSpec
from rayrelay_workloads.tasks.base import Prepared, Run
from rayrelay_workloads.textgen.lm import METRIC
from rayrelay_workloads.train import TrainResult

BENCH_REPEATS = 5  # a decoder's timing runs are long: at most this many


class TextGeneration:
    name = "text-generation"
    metric = METRIC
    order: Literal["max", "min"] = "min"
    failure_reasons: tuple[Reason, ...] = ()

    def prepare(self, run: Run) -> Prepared:
        from rayrelay_workloads.modeling import resolve_source
        from rayrelay_workloads.textgen.data import load_lm_data

        job, spec = run.job, run.job.spec
        if getattr(spec.artifacts, "encryption", None) is not None:
            raise UnsupportedSpec("spec.artifacts.encryption is not supported for task text-generation yet")
        data = load_lm_data(spec.data, job.endpoint_url)
        run.say(f"data: {len(data.train.examples)} train, {len(data.validation.examples)} validation texts")
        source = resolve_source(spec.model.source, job.endpoint_url, str(run.scratch / "base-model"))
        return Prepared(job=job, data=data, tokenizer_source=source)

    def train_loop(self) -> Callable[[dict[str, Any]], None]:
        from rayrelay_workloads.textgen.worker import lm_train_loop_per_worker

        return lm_train_loop_per_worker

    def loop_config(self, run: Run, prepared: Prepared) -> dict[str, Any]:
        from rayrelay_workloads.textgen.train import build_lm_config

        return build_lm_config(prepared.job)

    def check_trained(self, run: Run, prepared: Prepared, trained: TrainResult) -> None:
        from rayrelay_workloads.textgen.pipeline import check_max_perplexity

        best = float(trained.metrics.get(METRIC, math.inf))
        run.say(f"training done: best {trained.checkpoint_uri} (validation perplexity {best:.3f})")
        check_max_perplexity(prepared.job.spec.quality_gate, best)

    def export(self, run: Run, prepared: Prepared, trained: TrainResult) -> Any:
        from rayrelay_workloads.textgen.export import export_lm

        spec = prepared.job.spec
        run.progress.stage("Exporting", f"exporting {trained.checkpoint_uri} with its KV cache")
        result = export_lm(
            trained.checkpoint_dir,
            prepared.tokenizer_source,
            run.scratch / "out",
            spec.export,
            spec.hyperparameters.max_seq_length,
            prepared.data.validation.examples,
            threads=max(1, int(spec.resources.cpus_per_worker)),
            bench_repeats=min(run.bench_repeats, BENCH_REPEATS),
        )
        run.say(
            f"export: logits parity fp32 {result.max_diff_fp32:.2e}, greedy match {result.greedy_match}, "
            f"perplexity {result.perplexity}"
        )
        return result

    def publish(
        self, run: Run, prepared: Prepared, trained: TrainResult, exported: Any
    ) -> tuple[Manifest, str]:
        from rayrelay_workloads.textgen.pipeline import int8_perplexity_decision, publish_lm

        decision = int8_perplexity_decision(
            prepared.job.spec.quality_gate, exported.perplexity["fp32"], exported.perplexity.get("int8")
        )
        run.progress.stage("Publishing")
        return publish_lm(prepared.job, exported, prepared.data, decision, trained.metrics)

    def replica(self) -> Any:
        from rayrelay_workloads.textgen.serving import TextGenServer

        return TextGenServer


TASK = TextGeneration()
