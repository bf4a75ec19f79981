"""Offline validation of rayrelay manifests, with errors as users read them.

``rayrelay validate`` (``rayrelay_operator.cli``) and every code path that turns
a raw object into a typed model go through here:

- ``load_documents(text)`` parses multi-document YAML (errors carry the line);
- ``validate_document(doc)`` checks apiVersion, kind and metadata.name first, then
  the whole object against the models in ``api.py`` (the same rules as the CRD's
  schema and CEL rules, plus nothing looser), returning ``ValidationIssue``s
  whose ``path`` is written the way users write it (``spec.resources.numWorkers``,
  ``spec.runtime.executionProviders[0]``);
- ``parse_resource(doc)`` returns the typed TrainingJob/ModelDeployment or raises
  ``InvalidResource`` listing every issue;
- ``cross_checks(docs)`` finds problems *between* the documents of one file (a
  name defined twice, a ``trainingJobRef`` naming no TrainingJob of the file),
  so that ``rayrelay validate -f`` and ``rayrelay run -f`` refuse the same files
  with the same lines.

``ManifestParseError`` is about the YAML text; the artifact set's
``manifest.json`` has its own ``rayrelay_core.runs.ManifestError``.

Validation runs pydantic in *strict* JSON mode on wire (camelCase) names only so
that, like the API server, a string is never silently coerced into a number or a
boolean and a Python field name (``num_workers``) is an unknown field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rayrelay_core.api import (
    API_VERSION,
    NAME_PATTERN,
    QUANTITY_PATTERN,
    RESOURCES,
    S3_URI_PATTERN,
    STORE_URI_PATTERN,
    ApiModel,
    ModelDeployment,
    ModelRef,
    RuleError,
    TrainingJob,
)

# What a failed pattern means, in words (keyed by the pattern in api.py).
_PATTERN_TEXT = {
    NAME_PATTERN: "must be a lowercase name: letters a-z, digits and '-', starting and ending "
    "with a letter or digit",
    QUANTITY_PATTERN: "must be a Kubernetes quantity such as 512Mi or 4Gi",
    STORE_URI_PATTERN: "must be s3://bucket/key, file:///path or a plain path (bucket names: "
    "3-63 lowercase letters, digits, '.' or '-')",
    S3_URI_PATTERN: "must be an s3://bucket/key URI",
    r"^https?://[^\s/]+(/.*)?$": "must be an http:// or https:// URL",
}


def _field_pattern(model: type[ApiModel], field: str) -> str:
    for item in model.model_fields[field].metadata:
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            return pattern
    raise LookupError(f"{model.__name__}.{field} has no pattern")


_PATTERN_TEXT[_field_pattern(ModelRef, "manifest_uri")] = (
    "must be the URI of a manifest.json: s3://bucket/.../manifest.json, "
    "file:///.../manifest.json or a path ending in manifest.json"
)


@dataclass(frozen=True)
class ValidationIssue:
    """One problem with one document."""

    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}: {self.path}: {self.message}"


class ManifestParseError(ValueError):
    """The YAML text is not a sequence of mappings (malformed YAML and the like)."""


class InvalidResource(ValueError):
    """A document failed validation; ``issues`` says where and why."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def load_documents(text: str) -> list[dict[str, Any]]:
    """Parse multi-document YAML; empty documents are skipped.

    Raises ``ManifestParseError`` with the line number for malformed YAML, and for a
    document that is not a mapping.
    """
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "malformed YAML"
        raise ManifestParseError(f"malformed YAML: {where}{problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestParseError(f"malformed YAML: {exc}") from None
    docs: list[dict[str, Any]] = []
    for index, doc in enumerate(raw, start=1):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ManifestParseError(
                f"document {index} is a {type(doc).__name__}, not a mapping with apiVersion, kind, ..."
            )
        docs.append(doc)
    return docs


def _plain(value: Any) -> Any:
    """Mappings/sequences (kopf bodies, YAML output) as plain JSON-able values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:77] + "...")
    if isinstance(value, (dict, list)):
        return type(value).__name__ if isinstance(value, list) else "a mapping"
    return json.dumps(value)


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = f" (got {_show(err['input'])})"
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "greater_than_equal":
        return f"must be at least {_num(ctx['ge'])}{got}"
    if kind == "greater_than":
        return f"must be greater than {_num(ctx['gt'])}{got}"
    if kind == "less_than_equal":
        return f"must be at most {_num(ctx['le'])}{got}"
    if kind == "less_than":
        return f"must be less than {_num(ctx['lt'])}{got}"
    if kind in ("enum", "literal_error"):
        expected = ctx.get("expected", "")
        options = [o.strip().strip("'\"") for o in re.split(r",| or ", expected) if o.strip()]
        return f"must be one of: {', '.join(options)}{got}"
    if kind == "string_pattern_mismatch":
        return _PATTERN_TEXT.get(ctx.get("pattern", ""), f"must match {ctx.get('pattern')}") + got
    if kind == "string_too_short":
        return f"must be at least {ctx['min_length']} character(s) long{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters long"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing", "finite_number"):
        return f"must be a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind == "string_type":
        return f"must be a string{got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping{got}"
    if kind in ("list_type", "tuple_type"):
        return f"must be a list{got}"
    return str(err["msg"])


def _issues_from(exc: ValidationError, kind: str, name: str) -> list[ValidationIssue]:
    issues: list[ValidationIssue] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        rule = (err.get("ctx") or {}).get("error")
        if isinstance(rule, RuleError):
            issues.append(ValidationIssue(kind, name, _path(loc + rule.loc), rule.message))
            continue
        # Unions of X | None add the branch name ('function-after[...]', 'int', ...) to loc.
        loc = tuple(p for p in loc if isinstance(p, int) or not _is_branch_tag(p))
        issues.append(ValidationIssue(kind, name, _path(loc), _message(err)))
    # One message per path and text; stable order.
    unique = dict.fromkeys(issues)
    return list(unique)


def _is_branch_tag(part: str) -> bool:
    return "[" in part or part in {"int", "float", "str", "bool", "none", "list", "dict"}


def _header_issues(doc: Any, index: int | None) -> tuple[str, str, list[ValidationIssue]]:
    """Check apiVersion, kind, metadata.name; return (kind, name, issues)."""
    label = f"(document {index})" if index is not None else "(unnamed)"
    if not isinstance(doc, Mapping):
        return "?", label, [ValidationIssue("?", label, "(document)", "must be a mapping")]
    kind = doc.get("kind")
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    shown_kind = kind if isinstance(kind, str) and kind else "?"
    shown_name = name if isinstance(name, str) and name else label
    issues: list[ValidationIssue] = []

    def add(path: str, message: str) -> None:
        issues.append(ValidationIssue(shown_kind, shown_name, path, message))

    if "kind" not in doc:
        add("kind", f"field required (one of: {', '.join(sorted(RESOURCES))})")
    elif kind not in RESOURCES:
        add("kind", f"unknown kind {_show(kind)}; expected one of: {', '.join(sorted(RESOURCES))}")
    api_version = doc.get("apiVersion")
    if "apiVersion" not in doc:
        add("apiVersion", f"field required (must be {API_VERSION})")
    elif api_version != API_VERSION:
        add("apiVersion", f"must be {API_VERSION} (got {_show(api_version)})")
    if not isinstance(metadata, Mapping):
        add("metadata", "field required" if metadata is None else "must be a mapping")
    elif "name" not in metadata:
        add("metadata.name", "field required")
    return shown_kind, shown_name, issues


def _validate(kind: str, doc: Any) -> TrainingJob | ModelDeployment:
    # Strict JSON mode, wire (camelCase) names only: exactly what the API server
    # accepts, no string-to-number coercion, no snake_case Python field names.
    return RESOURCES[kind].model_validate_json(
        json.dumps(_plain(doc), default=str), strict=True, by_alias=True, by_name=False
    )


def validate_document(doc: Any, index: int | None = None) -> list[ValidationIssue]:
    """Every problem with one document; an empty list means it is valid.

    ``index`` (1-based position in a file) only labels documents without a name.
    """
    kind, name, issues = _header_issues(doc, index)
    if issues:
        # Without a known kind and version the rest cannot be checked meaningfully.
        return issues
    try:
        _validate(kind, doc)
    except ValidationError as exc:
        return _issues_from(exc, kind, name)
    return []


def parse_resource(doc: Any) -> TrainingJob | ModelDeployment:
    """The typed resource, or ``InvalidResource`` listing every issue."""
    kind, name, issues = _header_issues(doc, None)
    if issues:
        raise InvalidResource(issues)
    try:
        return _validate(kind, doc)
    except ValidationError as exc:
        raise InvalidResource(_issues_from(exc, kind, name)) from None


def cross_checks(docs: Sequence[Mapping[str, Any]], *, self_contained: bool = False) -> list[ValidationIssue]:
    """Problems across the (individually valid) documents of one file.

    A resource defined twice, and a ModelDeployment whose ``trainingJobRef``
    names no TrainingJob of the file (in its namespace) although the file
    defines TrainingJobs: a typo, or a job left out. A file of
    ModelDeployments alone may name TrainingJobs that already exist in a
    cluster (``kubectl apply`` one file after the other); ``self_contained``
    (``rayrelay run``, which has no cluster to find them in) refuses those too,
    with the same message, and so a student TrainingJob whose
    ``distillation.teacher.trainingJobRef`` names no TrainingJob of the file.
    """
    issues: list[ValidationIssue] = []
    seen: set[tuple[str, str, str]] = set()
    for doc in docs:
        meta = doc.get("metadata") or {}
        key = (str(doc.get("kind")), str(meta.get("namespace") or "default"), str(meta.get("name")))
        if key in seen:
            issues.append(ValidationIssue(key[0], key[2], "metadata.name", "defined twice in this file"))
        seen.add(key)
    jobs = {(ns, name) for kind, ns, name in seen if kind == "TrainingJob"}
    if not jobs and not self_contained:
        return issues
    for doc in docs:
        meta = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        ns = str(meta.get("namespace") or "default")
        if doc.get("kind") == "ModelDeployment":
            ref, path = (spec.get("model") or {}).get("trainingJobRef"), "spec.model.trainingJobRef.name"
        else:  # a distillation teacher: a student's file may leave it to the cluster, unless run here
            teacher = (spec.get("distillation") or {}).get("teacher") or {}
            ref = teacher.get("trainingJobRef") if self_contained else None
            path = "spec.distillation.teacher.trainingJobRef.name"
        if ref and (ns, ref.get("name")) not in jobs:
            issues.append(
                ValidationIssue(
                    str(doc.get("kind")),
                    str(meta.get("name")),
                    path,
                    f"TrainingJob {ref.get('name')!r} is not defined in this file",
                )
            )
    return issues
