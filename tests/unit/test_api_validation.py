"""The models, the validator and the generated CRDs agree on what is valid.

Every valid document of the corpus (``validation_corpus.py``: the examples and
``VALID``) must pass the models and the CRD (schema + CEL, through
``crd_emulator``); every ``INVALID`` manifest must be rejected by the models at
the exact field path, with a message users understand, and by the CRD too
wherever a CRD can express the rule. tests/cluster/test_validation_conformance.py
sends the same corpus to a real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import crd_emulator
import pytest
from validation_corpus import DELETE, EXAMPLES, INVALID, ROOT, TJ, mutate, valid_documents

from rayrelay_core.api import ModelDeployment, TrainingJob
from rayrelay_core.validation import (
    InvalidResource,
    ManifestParseError,
    load_documents,
    parse_resource,
    validate_document,
)


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"trainingjob.yaml", "modeldeployment.yaml", "quickstart.yaml"} <= names


@pytest.mark.parametrize("label,doc", valid_documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_example_is_valid_for_models_and_crd(label: str, doc: dict[str, Any]) -> None:
    assert validate_document(doc) == []
    resource = parse_resource(doc)
    assert isinstance(resource, (TrainingJob, ModelDeployment))
    assert crd_emulator.check(doc) == []


@pytest.mark.parametrize("label,doc", valid_documents(), ids=lambda v: v if isinstance(v, str) else "")
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
    with pytest.raises(ManifestParseError, match=r"line \d+"):
        load_documents(text)


def test_load_documents_skips_empty_documents() -> None:
    docs = load_documents("---\n---\nkind: TrainingJob\n---\n")
    assert docs == [{"kind": "TrainingJob"}]


def test_scalar_document_is_a_manifest_error() -> None:
    with pytest.raises(ManifestParseError, match="document 1"):
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
