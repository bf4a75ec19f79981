"""A small stand-in for the API server's CRD checks, for tests.

It does what kube-apiserver does with a custom resource on create, in order:
apply the schema's defaults, reject unknown fields (kubectl's default
``--validate=strict``), validate the OpenAPI v3 schema (with ``jsonschema``,
after translating the few dialect differences), and evaluate every
``x-kubernetes-validations`` CEL rule (with ``celpy``). Errors come back as
``(path, message)`` with paths written like ``rayrelay validate`` writes them,
so tests can compare the CRD's verdict with the models'.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = {
    "TrainingJob": ROOT / "crds" / "trainingjobs.rayrelay.dev.yaml",
    "ModelDeployment": ROOT / "crds" / "modeldeployments.rayrelay.dev.yaml",
}


def load_crd(kind: str) -> dict[str, Any]:
    return yaml.safe_load(CRD_FILES[kind].read_text())


def crd_schema(kind: str) -> dict[str, Any]:
    return load_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def user_path(parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """The API server's structural defaulting (returns a new value)."""
    value = copy.deepcopy(value)
    _default_into(schema, value)
    return value


def _default_into(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _default_into(sub, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                _default_into(extra, item)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_into(schema["items"], item)


def to_json_schema(node: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """OpenAPI v3 (CRD dialect) -> JSON Schema 2020-12."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {k: to_json_schema(v, strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value, strict)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            continue  # handled below with minimum/maximum
        else:
            out[key] = value
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    # Strict field validation: unknown fields are errors (not silently pruned).
    if (
        strict
        and node.get("type") == "object"
        and "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def iter_rules(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], dict]]:
    """(schema path, rule) for every CEL rule; '[]' marks array items, '{}' map values."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from iter_rules(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from iter_rules(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_rules(schema["additionalProperties"], (*path, "{}"))


def iter_defaults(
    schema: dict[str, Any], path: tuple[Any, ...] = ()
) -> Iterator[tuple[tuple[Any, ...], dict]]:
    """(schema path, schema node) for every node that carries a ``default``."""
    if "default" in schema:
        yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from iter_defaults(sub, (*path, name))
    if isinstance(schema.get("items"), dict):
        yield from iter_defaults(schema["items"], (*path, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from iter_defaults(schema["additionalProperties"], (*path, "{}"))


_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def eval_rule(rule: str, self_value: Any) -> bool:
    """Evaluate one CEL rule with ``self`` bound; raises on an evaluation error."""
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule))
    result = _PROGRAMS[rule].evaluate({"self": celpy.json_to_cel(self_value)})
    if isinstance(result, Exception):
        raise result
    return bool(result)


def cel_errors(schema: dict[str, Any], value: Any, path: tuple[Any, ...]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = eval_rule(rule["rule"], value)
        except Exception as exc:  # the API server reports these as invalid too
            errors.append((user_path(path), f"rule error: {exc}"))
            continue
        if not ok:
            where = user_path(path) + rule.get("fieldPath", "")
            errors.append((where, rule["message"]))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(sub, value[name], (*path, name))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += cel_errors(schema["items"], item, (*path, i))
    return errors


def check(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """What the API server would say about ``doc`` (empty: accepted)."""
    kind = doc.get("kind")
    if kind not in CRD_FILES or doc.get("apiVersion") != "rayrelay.dev/v1alpha1":
        return [("kind", "no matches for kind/version")]
    schema = crd_schema(kind)
    value = apply_defaults(schema, doc)
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors: list[tuple[str, str]] = []
    for err in validator.iter_errors(value):
        parts = list(err.absolute_path)
        if err.validator in ("required", "additionalProperties"):
            # Reported on the parent; the field's name is the first quoted word.
            parts.append(err.message.split("'")[1])
        errors.append((user_path(parts), err.message))
    if not errors:
        # The API server runs CEL only on objects that passed the schema checks.
        errors += cel_errors(schema, value, ())
    return errors
