"""spec.optimization.pruning through ``run_pipeline`` on real Ray (the tiny BERT, 2 workers).

One run with pruning set: the ``Pruning`` stage shows in progress.json between
training and export, the manifest records what was removed, and the published
ONNX model is smaller than the unpruned run's (``tiny_run``, same model, data
and hyperparameters) with fewer heads and FFN neurons in the graph itself.
"""

from __future__ import annotations

import threading
from pathlib import Path

from rayrelay_core.runs import ProgressDoc, RunLayout, read_doc
from rayrelay_core.store import local_path, open_store
from tests.pipeline_fixtures import tiny_job, tiny_spec


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import onnx

    graph = onnx.load(str(path)).graph
    return {init.name: tuple(init.dims) for init in graph.initializer}


def test_pruned_run_publishes_a_smaller_model_and_records_it(
    ray_session, tiny_model, tiny_data, tiny_run, tmp_path
) -> None:
    from rayrelay_workloads.pipeline import run_pipeline

    pruning = {"heads": 0.5, "ffn": 0.5, "importanceBatches": 2, "recoverySteps": 4}
    spec = tiny_spec(tiny_model, *tiny_data, optimization={"pruning": pruning})
    job = tiny_job(spec, f"file://{tmp_path / 'artifacts'}", name="pruned")
    layout = RunLayout(job.run_uri)
    store = open_store(layout.base)

    stages: list[str] = []
    done = threading.Event()

    def watch() -> None:  # the operator's view of the run, as it polls progress.json
        while not done.is_set():
            doc = read_doc(store, layout.progress, ProgressDoc)
            if doc and (not stages or stages[-1] != doc.stage):
                stages.append(doc.stage)
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    logs: list[str] = []
    try:
        manifest = run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), bench_repeats=2, log=logs.append)
    finally:
        done.set()
        watcher.join(5)

    assert "Pruning" in stages and stages.index("Pruning") < stages.index("Exporting"), stages
    record = manifest.pruning
    assert record is not None
    assert (record.heads_fraction, record.ffn_fraction) == (0.5, 0.5)
    assert (record.heads_per_layer_before, record.heads_per_layer_after) == (2, 1)
    assert (record.ffn_per_layer_before, record.ffn_per_layer_after) == (64, 32)
    assert len(record.heads_kept) == 2 and all(len(kept) == 1 for kept in record.heads_kept)
    assert record.parameters_after < record.parameters_before
    assert record.recovery_steps == 4 and record.accuracy_after_recovery is not None
    assert any(line.startswith("pruning: heads 2->1") for line in logs), logs

    # The variants are the pruned model's: parity held against it and the gate saw it.
    assert manifest.parity.passed and manifest.variants["pytorch"].accuracy is not None
    pruned_fp32 = manifest.variants["fp32"]
    unpruned_fp32 = tiny_run.manifest.variants["fp32"]
    assert pruned_fp32.size is not None and unpruned_fp32.size is not None
    assert pruned_fp32.size < unpruned_fp32.size
    assert "onnx_int8_ms" in manifest.metrics and "onnx_fp32_ms" in manifest.metrics

    # In the graph itself: no initializer is as wide as an unpruned FFN (64) any more.
    graph = local_path(f"{layout.base}/{pruned_fp32.file}")
    assert all(64 not in dims for dims in weight_shapes(graph).values() if len(dims) == 2)
