"""The real API server and ``rayrelay validate`` agree on every manifest of the corpus.

Every document of ``tests/unit/validation_corpus.py`` (the examples, ``VALID``,
``INVALID`` and the CEL cases) is sent with ``kubectl apply --dry-run=server``
to a kube-apiserver that runs the generated CRDs (schema, defaults, CEL rules,
strict field validation), and judged by the models (``validate_document``, the
function behind ``rayrelay validate``; the CLI itself runs once over the whole
corpus below). They must agree on accept/refuse and on the field paths, so the
CRDs and the models cannot drift apart. A valid document must also come back
from the server with exactly the defaults the models fill in.

Where the two cannot agree, the case is listed in ``NO_FIELD_PATH`` or
``KNOWN_DIFFERENCES`` with the reason, and the test pins what each side says,
so that a change on either side shows up here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rayrelay_core.validation import parse_resource, validate_document
from tests.cluster.controlplane import ControlPlane
from tests.unit.validation_corpus import (
    CEL_CASES,
    INVALID,
    TJ,
    document,
    mutate,
    valid_documents,
)

# Refused before the server looks at the schema, so there is no field path to compare:
# case id -> what kubectl / the server says instead.
NO_FIELD_PATH: dict[str, str] = {
    # kubectl maps kind+version to a resource through discovery first.
    "wrong-api-version": 'no matches for kind "TrainingJob" in version "rayrelay.dev/v1"',
    "missing-api-version": "apiVersion not set",
    "unknown-kind": 'no matches for kind "TrainJob"',
    # kubectl apply reads the live object by name before it sends anything.
    "missing-name": "resource name may not be empty",
    "missing-metadata": "resource name may not be empty",
}

# Both refuse, but the server reports more paths than the models: case id -> (extra server paths, why).
SERVER_REPORTS_MORE: dict[str, tuple[set[str], str]] = {
    "md-max-zero": (
        {"spec.autoscaling.minReplicas"},
        "the server still runs the CEL rule minReplicas <= maxReplicas after a bound failed "
        "(maxReplicas: 0 < 1); pydantic skips a model's validators once one of its fields failed",
    ),
}

# Documents on which the two legitimately disagree: (id, document, server accepts,
# models accept, why). Each side's verdict is pinned.
KNOWN_DIFFERENCES: list[tuple[str, dict[str, Any], bool, bool, str]] = [
    (
        "integral-float-for-integer",
        mutate(TJ, {"spec.hyperparameters.epochs": 2.0}),
        True,
        False,
        "kubectl turns YAML 2.0 into the JSON number 2, an integer for the server; the models see "
        "the float 2.0 and, strict on types, refuse it (the stricter side, never a false accept)",
    ),
    (
        "null-for-a-defaulted-object",
        mutate(TJ, {"spec.resources": None}),
        True,
        False,
        "the server drops a null of a non-nullable field and applies the default; the models refuse "
        "null (the stricter side)",
    ),
    (
        "status-with-an-unknown-field",
        mutate(TJ, {"status": {"phase": "Training", "somethingNew": 1}}),
        False,
        True,
        "kubectl's strict field validation refuses unknown fields everywhere, status included; the "
        "models ignore unknown status fields on purpose (an older client reading a newer operator's "
        "status). Users never write status; the operator writes it through the status subresource",
    ),
    (
        "status-with-a-bad-phase",
        mutate(TJ, {"status": {"phase": "Bogus"}}),
        True,
        False,
        "on create the server discards status (it has a status subresource) before validating; the "
        "models validate the status they are given",
    ),
]

_PATH = re.compile(r"(?:is invalid: |^\* )([^\s:]+): ", re.MULTILINE)
_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')


def server_paths(stderr: str) -> set[str]:
    """Field paths in kubectl's report of a refusal (field errors and strict decoding errors)."""
    paths = set(_UNKNOWN_FIELD.findall(stderr)) | set(_PATH.findall(stderr))
    paths.discard("<nil>")  # "some validation rules were not checked because the object was invalid"
    return paths


def model_paths(doc: dict[str, Any]) -> set[str]:
    return {issue.path for issue in validate_document(doc)}


def dry_run(plane: ControlPlane, namespace: str, doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return plane.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=yaml.safe_dump(doc),
        check=False,
    )


@pytest.fixture(scope="module")
def conformance_ns(crds_installed: ControlPlane) -> Iterator[str]:
    name = "conformance"
    crds_installed.kubectl("create", "namespace", name)
    yield name
    crds_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _valid_cases() -> list[tuple[str, dict[str, Any]]]:
    cel = [
        (f"cel-{i}-{path}-holds", document(kind, spec))
        for i, (kind, path, _, spec, holds) in enumerate(CEL_CASES)
        if holds
    ]
    return valid_documents() + cel


def _invalid_cases() -> list[tuple[str, dict[str, Any], str | None]]:
    out: list[tuple[str, dict[str, Any], str | None]] = [
        (case_id, mutate(base, changes), path) for case_id, base, changes, path, _, _ in INVALID
    ]
    out += [
        (f"cel-{i}-{path}-fails", document(kind, spec), None)
        for i, (kind, path, _, spec, holds) in enumerate(CEL_CASES)
        if not holds
    ]
    return out


@pytest.mark.parametrize("label,doc", _valid_cases(), ids=[c[0] for c in _valid_cases()])
def test_valid_document_is_accepted_with_the_models_defaults(
    crds_installed: ControlPlane, conformance_ns: str, label: str, doc: dict[str, Any]
) -> None:
    assert validate_document(doc) == []
    proc = dry_run(crds_installed, conformance_ns, doc)
    assert proc.returncode == 0, f"the server refuses a valid document: {proc.stderr}"
    stored = json.loads(proc.stdout)
    # The server's defaulting fills in exactly what the models do.
    assert stored["spec"] == parse_resource(doc).spec.wire()


@pytest.mark.parametrize("case_id,doc,path", _invalid_cases(), ids=[c[0] for c in _invalid_cases()])
def test_invalid_document_is_refused_at_the_same_path(
    crds_installed: ControlPlane, conformance_ns: str, case_id: str, doc: dict[str, Any], path: str | None
) -> None:
    models = model_paths(doc)
    assert models, "the models accept an invalid document"
    proc = dry_run(crds_installed, conformance_ns, doc)
    assert proc.returncode != 0, f"the server accepts an invalid document: {proc.stdout[:500]}"
    if case_id in NO_FIELD_PATH:
        assert NO_FIELD_PATH[case_id] in proc.stderr, proc.stderr
        return
    server = server_paths(proc.stderr)
    extra, _ = SERVER_REPORTS_MORE.get(case_id, (set(), ""))
    assert server == models | extra, f"server: {proc.stderr.strip()}\nmodels: {sorted(models)}"
    if path is not None:
        assert path in models


def test_no_field_path_list_is_exactly_the_cases_outside_the_schema() -> None:
    """Only the cases the corpus marks as beyond a CRD (crd_too False) may skip the path check."""
    outside = {case[0] for case in INVALID if not case[5]}
    assert outside == set(NO_FIELD_PATH)
    assert set(SERVER_REPORTS_MORE) <= {case[0] for case in INVALID}


@pytest.mark.parametrize(
    "case_id,doc,server_accepts,models_accept,why",
    KNOWN_DIFFERENCES,
    ids=[c[0] for c in KNOWN_DIFFERENCES],
)
def test_known_differences_are_what_they_say(
    crds_installed: ControlPlane,
    conformance_ns: str,
    case_id: str,
    doc: dict[str, Any],
    server_accepts: bool,
    models_accept: bool,
    why: str,
) -> None:
    proc = dry_run(crds_installed, conformance_ns, doc)
    assert (proc.returncode == 0) is server_accepts, proc.stderr
    assert (validate_document(doc) == []) is models_accept


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(Path(sys.executable).parent / "rayrelay"), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def test_rayrelay_validate_cli_says_what_the_models_say() -> None:
    """The shipped command, once over every invalid document and once over every valid one."""
    invalid = [doc for _, doc, _ in _invalid_cases()]
    proc = _cli("validate", "-f", "-", stdin=yaml.safe_dump_all(invalid))
    assert proc.returncode == 1
    expected = [str(issue) for i, doc in enumerate(invalid, start=1) for issue in validate_document(doc, i)]
    assert proc.stdout.splitlines() == expected

    # Valid documents, renamed so that one file holds them all (names are unique per kind,
    # and every trainingJobRef names a TrainingJob of the file).
    valid = [mutate(TJ, {"metadata.name": "ref"})]
    for i, (_, doc) in enumerate(_valid_cases()):
        renamed = mutate(doc, {"metadata.name": f"v{i}"})
        if "trainingJobRef" in renamed["spec"].get("model", {}):
            renamed["spec"]["model"]["trainingJobRef"]["name"] = "ref"
        valid.append(renamed)
    proc = _cli("validate", "-f", "-", stdin=yaml.safe_dump_all(valid))
    assert proc.returncode == 0, proc.stdout + proc.stderr
