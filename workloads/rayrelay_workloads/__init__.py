"""Code that runs inside Ray: the training pipeline (and, in sibling modules, serving).

Training pipeline, in the order it runs (``pipeline.run_pipeline``, entrypoint
``python -m rayrelay_workloads.train_job``): ``data`` (read and validate the
sets) -> ``train`` (Ray Train fine-tuning with S3 checkpoints and resume,
``progress`` documents) -> ``export`` (ONNX, optimisation, int8, parity) ->
``quality`` (the gate) -> ``publish`` (upload, manifest last). ``modeling``
resolves and loads the base model. Heavy dependencies (torch, transformers,
onnxruntime, ray) are imported inside functions so that importing a module is cheap.
"""
