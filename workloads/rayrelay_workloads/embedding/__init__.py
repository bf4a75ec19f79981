"""The sentence-embedding task: pairs in, a mean-pooled, normalised encoder out, served at /v1/embeddings.

- ``data``: anchor/positive(/negative) pairs, read like every task's data files
  (``make_pairs`` builds the shipped ones from the support tickets in ``examples/data/``);
- ``objective``: mean pooling, the multiple-negatives ranking loss and the retrieval
  figures (recall@1, MRR) the quality gate judges, on arrays (no Ray);
- ``worker``: the Ray Train loop, on the shared training state (``train_state``: position,
  batch plan, checkpoints, resume), run by the shared driver (``train.fit_best_checkpoint``);
- ``export``: ONNX with pooling and normalisation inside the graph, fp32 and int8, checked
  by cosine similarity against PyTorch;
- ``gate``: ``qualityGate.minRecallAt1`` / ``minMrr`` / ``minInt8Cosine`` (pure decisions);
- ``manifest``: the manifest (``Manifest.embedding``) and its publication through ``publish.publish_folder``;
- ``task``: the steps above as ``tasks.base.Task`` for the shared run (``pipeline.run_pipeline``);
- ``serving``, ``openai_api``, ``openai_gateway``: the replica (OIP infer returns vectors)
  and OpenAI's ``POST /v1/embeddings``.
"""
