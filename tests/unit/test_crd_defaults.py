"""Every ``default`` in both CRDs passes its node's schema and CEL rules, as the API server checks it.

kube-apiserver validates each ``default`` of a CRD when the CRD is created: the
value *as written* (it does not fill in the nested defaults first) must be
pruned already, valid for the schema of its node, and pass every
``x-kubernetes-validations`` rule of that node and of the nodes below it that
the value reaches. One failing default makes the whole CRD invalid, so
``kubectl apply -f crds/`` and ``helm install`` fail for every user (issue 19:
``autoscaling.default: {}`` with the rule ``self.minReplicas <=
self.maxReplicas`` -> "no such key: minReplicas"). This test makes that class
of mistake fail in a second, without a server; tests/cluster/test_crds.py sends
the same CRDs to a real one.
"""

from __future__ import annotations

import copy
from typing import Any

import crd_emulator
import jsonschema
import pytest

KINDS = ("TrainingJob", "ModelDeployment")


def defaults() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for kind in KINDS:
        for path, node in crd_emulator.iter_defaults(crd_emulator.crd_schema(kind)):
            out.append((kind, ".".join(map(str, path)), node))
    return out


def default_errors(node: dict[str, Any]) -> list[str]:
    """What the API server says about ``node['default']`` (empty: accepted)."""
    value = node["default"]
    errors = [
        f"schema: {e.message}"
        for e in jsonschema.Draft202012Validator(crd_emulator.to_json_schema(node)).iter_errors(value)
    ]
    if not errors:
        errors += [f"{path}: {message}" for path, message in crd_emulator.cel_errors(node, value, ())]
    return errors


def test_the_crds_have_defaults_under_rules() -> None:
    """The walk below reaches the defaulted objects that carry CEL rules (the risky ones)."""
    found = {(kind, path) for kind, path, node in defaults() if "x-kubernetes-validations" in node}
    assert {("TrainingJob", "spec.resources"), ("ModelDeployment", "spec.autoscaling")} <= found
    assert len(defaults()) > 40


@pytest.mark.parametrize("kind,path,node", defaults(), ids=[f"{k}-{p}" for k, p, _ in defaults()])
def test_default_passes_its_schema_and_rules(kind: str, path: str, node: dict[str, Any]) -> None:
    assert default_errors(node) == [], f"{kind} {path}: default {node['default']!r} is refused"


@pytest.mark.parametrize("kind,path,node", defaults(), ids=[f"{k}-{p}" for k, p, _ in defaults()])
def test_object_default_carries_every_defaulted_field(kind: str, path: str, node: dict[str, Any]) -> None:
    """An object's default is complete: filling in nested defaults changes nothing.

    So what the server checks at CRD creation is exactly what an object gets.
    """
    if node.get("type") != "object" or "properties" not in node:
        return
    value = node["default"]
    assert crd_emulator.apply_defaults(node, value) == value


@pytest.mark.parametrize(
    "kind,path,field",
    [("ModelDeployment", "spec.autoscaling", "minReplicas"), ("TrainingJob", "spec.resources", "precision")],
)
def test_an_empty_object_default_is_caught(kind: str, path: str, field: str) -> None:
    """The check fails on the very defect the real server refused (issue 19)."""
    node = crd_emulator.crd_schema(kind)
    for part in path.split("."):
        node = node["properties"][part]
    broken = copy.deepcopy(node)
    broken["default"] = {}
    errors = default_errors(broken)
    assert errors and all("rule error" in e for e in errors), errors
    assert any(field in e for e in errors), errors
