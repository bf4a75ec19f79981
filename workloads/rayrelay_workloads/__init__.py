"""Code that runs inside Ray: the training pipeline (and, in sibling modules, serving).

Training pipeline, in the order it runs (``pipeline.run_pipeline``, entrypoint
``python -m rayrelay_workloads.train_job``): ``data`` (read and validate the
sets) -> ``train`` (the Ray Train driver; the per-worker loop in
``train_worker``, its Ray-free steps -- data position, checkpoints, step,
evaluation -- in ``train_state``; ``progress`` documents) -> ``export`` (ONNX,
optimisation, int8; timing and parity figures in ``export_checks``) ->
``quality`` (the gate) -> ``publish`` (upload, manifest last). ``modeling``
resolves and loads the base model. That is classification's run; every task's
goes through the same shared steps, the task (``spec.model.task``) being chosen
once by ``tasks.task_for`` and giving what differs (``tasks.base.Task``; one
folder per task: ``classification``, ``textgen``, ``embedding``; see
``workloads/README.md``). Heavy dependencies (torch, transformers,
onnxruntime, ray) are imported inside functions so that importing a module is cheap.
"""
