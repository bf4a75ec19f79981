"""Sequence classification's steps for the shared run (``tasks.base.Task``).

Data: labelled texts (``data.py``), with an optional distillation teacher
(``distill.py``). Training: ``train_worker.train_loop_per_worker`` (cross-entropy, or the
distillation loss; validation accuracy at checkpoints). With
``spec.optimization.pruning`` the ``Pruning`` stage (``prune.py``) makes the best
checkpoint smaller before export, and everything after it (parity, the quality
gate, the manifest's variants) is about the pruned model. Export: ``export.export_all``
(fp32, optimised, int8, bf16, edge variants, parity). Gate: accuracy floors and the
int8/bf16 accuracy drops (``quality.py``). Replica: ``serve.model.ModelServer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rayrelay_core.api import Pruning
from rayrelay_core.runs import Manifest, PruningInfo
from rayrelay_workloads.distill import DistillationError
from rayrelay_workloads.failures import Reason
from rayrelay_workloads.prune import PruningError
from rayrelay_workloads.tasks.base import Prepared, Run
from rayrelay_workloads.train import TrainResult
from rayrelay_workloads.train_state import METRIC


class Classification:
    name = "sequence-classification"
    metric = METRIC
    order: Literal["max", "min"] = "max"
    failure_reasons: tuple[Reason, ...] = (
        (DistillationError, "InvalidTeacher", False),
        (PruningError, "PruningFailed", False),
    )

    def prepare(self, run: Run) -> Prepared:
        from rayrelay_workloads.data import load_data
        from rayrelay_workloads.distill import resolve_teacher
        from rayrelay_workloads.envelope import key_from_env
        from rayrelay_workloads.modeling import ModelSourceError, check_num_layers, resolve_source
        from rayrelay_workloads.prune import check_prunable, is_pruned

        job, spec = run.job, run.job.spec
        if spec.artifacts.encryption is not None:
            key_from_env()  # a missing or malformed key fails now, not after training
        data = load_data(spec.data, spec.model.num_labels, job.endpoint_url)
        run.say(
            f"data: {len(data.train.examples)} train, {len(data.validation.examples)} validation, labels {data.labels}"
        )
        # Resolve once on the driver too: a bad source fails here, not in every worker.
        source = resolve_source(spec.model.source, job.endpoint_url, str(run.scratch / "base-model"))
        check_num_layers(source, spec.model.num_layers)
        if spec.distillation is not None:  # the teacher's manifest, digest and labels, checked once
            teacher = resolve_teacher(job, data.labels)
            job = job.model_copy(update={"teacher": teacher})
            run.say(f"teacher: run {teacher.run_id} at {teacher.manifest_uri} ({teacher.digest})")
        if is_pruned(source):
            raise ModelSourceError(
                f"model.source {spec.model.source!r} is a pruned model (rayrelay_pruning in its config): "
                "it serves, but cannot be fine-tuned again; use the unpruned base model and optimization.pruning"
            )
        if _pruning(run) is not None:
            check_prunable(source)  # a model pruning cannot handle fails now, not after training
        return Prepared(job=job, data=data, tokenizer_source=source)

    def train_loop(self) -> Callable[[dict[str, Any]], None]:
        from rayrelay_workloads.train_worker import train_loop_per_worker

        return train_loop_per_worker

    def loop_config(self, run: Run, prepared: Prepared) -> dict[str, Any]:
        from rayrelay_workloads.train import build_config

        return build_config(prepared.job, prepared.data.labels)

    def check_trained(self, run: Run, prepared: Prepared, trained: TrainResult) -> None:
        from rayrelay_workloads.quality import check_min_accuracy

        run.say(f"training done: best {trained.checkpoint_uri} ({METRIC} {trained.metrics.get(METRIC)})")
        if trained.metrics.get(METRIC) is not None:
            check_min_accuracy(prepared.job.spec.quality_gate, float(trained.metrics[METRIC]))

    def export(self, run: Run, prepared: Prepared, trained: TrainResult) -> Any:
        from rayrelay_workloads.export import export_all

        spec = prepared.job.spec
        checkpoint_dir, pruning = trained.checkpoint_dir, None
        settings = _pruning(run)
        if settings is not None:
            checkpoint_dir, pruning = prune(run, prepared, trained, settings)
        run.progress.stage("Exporting", f"exporting {trained.checkpoint_uri}")
        result = export_all(
            checkpoint_dir,
            prepared.tokenizer_source,
            run.scratch / "out",
            spec.export,
            spec.hyperparameters.max_seq_length,
            prepared.data.validation.examples,
            prepared.data.labels,
            threads=max(1, int(spec.resources.cpus_per_worker)),
            bench_repeats=run.bench_repeats,
            on_stage=run.progress.stage,
        )
        run.say(f"export: accuracy {result.accuracy}, parity {result.max_diff_fp32:.2e}")
        return result, pruning  # publish needs both: the manifest records what pruning did

    def publish(
        self, run: Run, prepared: Prepared, trained: TrainResult, exported: Any
    ) -> tuple[Manifest, str]:
        from rayrelay_workloads.publish import publish
        from rayrelay_workloads.quality import bf16_decision, check_min_accuracy, int8_decision
        from rayrelay_workloads.storewait import StoreWait

        result, pruning = exported
        gate, accuracy = prepared.job.spec.quality_gate, result.accuracy
        check_min_accuracy(gate, accuracy["pytorch"])
        decision = int8_decision(gate, accuracy["fp32"], accuracy.get("int8"))
        bf16 = bf16_decision(gate, accuracy["fp32"], accuracy.get("bf16"), result.bf16_missing)
        if result.bf16 is not None:
            run.say(
                f"bf16: {result.bf16.measured}, accepted {bf16.accepted}"
                + (f" ({bf16.reason})" if bf16.reason else "")
            )
        run.progress.stage("Publishing")
        waited = StoreWait()
        manifest, uri = publish(
            prepared.job,
            result,
            prepared.data,
            decision,
            pruning=pruning,
            wait=waited,
            bf16=bf16,
        )
        if waited.retries:
            run.say(f"publish: waited {waited.waited_s:.1f}s for the store ({waited.retries} retries)")
        return manifest, uri

    def replica(self) -> Any:
        from rayrelay_workloads.serve.model import ModelServer

        return ModelServer


def _pruning(run: Run) -> Pruning | None:
    optimization = run.job.spec.optimization
    return optimization.pruning if optimization is not None else None


def prune(run: Run, prepared: Prepared, trained: TrainResult, settings: Pruning) -> tuple[str, PruningInfo]:
    """The Pruning stage: score, slice, recover (on this process, see prune.py); the pruned checkpoint."""
    from rayrelay_workloads.prune import PruneSettings, manifest_info, prune_checkpoint

    spec, data = prepared.job.spec, prepared.data
    run.progress.stage(
        "Pruning",
        f"removing {settings.heads:g} of the heads and {settings.ffn:g} of the FFN neurons, "
        f"then {settings.recovery_steps} recovery steps",
    )
    out, report = prune_checkpoint(
        trained.checkpoint_dir,
        prepared.tokenizer_source,
        run.scratch / "pruned",
        PruneSettings(settings.heads, settings.ffn, settings.importance_batches, settings.recovery_steps),
        data.train.examples,
        data.validation.examples,
        data.labels,
        spec.hyperparameters.model_dump(),
        threads=max(1, int(spec.resources.cpus_per_worker)),
    )
    unpruned = trained.metrics.get(METRIC)
    info = manifest_info(report, float(unpruned) if unpruned is not None else None)
    run.say(
        f"pruning: heads {info.heads_per_layer_before}->{info.heads_per_layer_after}, "
        f"ffn {info.ffn_per_layer_before}->{info.ffn_per_layer_after} per layer, "
        f"parameters {info.parameters_before}->{info.parameters_after}, "
        f"accuracy {info.accuracy_before_recovery} -> {info.accuracy_after_recovery} after recovery"
    )
    return str(out), info


TASK = Classification()
