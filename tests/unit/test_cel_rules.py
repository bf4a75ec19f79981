"""Every CEL rule in the generated CRDs, evaluated with cel-python.

Each rule runs on objects that must pass and objects that must fail
(``validation_corpus.CEL_CASES``, after the CRD's defaults are applied, as the
API server does), and the models must reach
the same verdict with the same message, so the two copies of each cross-field
rule (pydantic validator and CEL) cannot drift apart. A rule added to the models
without cases here fails ``test_every_rule_has_cases``.
"""

from __future__ import annotations

from typing import Any

import crd_emulator
import pytest
from validation_corpus import CEL_CASES as CASES
from validation_corpus import document

from rayrelay_core.validation import validate_document


def all_rules() -> list[tuple[str, str, dict[str, str]]]:
    out = []
    for kind in ("TrainingJob", "ModelDeployment"):
        for path, rule in crd_emulator.iter_rules(crd_emulator.crd_schema(kind)):
            out.append((kind, ".".join(path), rule))
    return out


def find_rule(kind: str, path: str, gist: str) -> dict[str, str]:
    matches = [r for k, p, r in all_rules() if k == kind and p == path and gist in r["message"]]
    assert len(matches) == 1, f"no single rule at {kind} {path} with {gist!r}: {matches}"
    return matches[0]


def node_value(doc: dict[str, Any], kind: str, path: str) -> Any:
    value: Any = crd_emulator.apply_defaults(crd_emulator.crd_schema(kind), doc)
    for part in path.split("."):
        value = value[part]
    return value


def test_crds_carry_the_expected_rules() -> None:
    assert len(all_rules()) == 23  # 19, and sentence-embedding's 4 (issue 27)
    for _, _, rule in all_rules():
        assert rule["rule"] and rule["message"]


def test_every_rule_has_cases() -> None:
    for kind, path, rule in all_rules():
        verdicts = {
            holds for k, p, gist, _, holds in CASES if k == kind and p == path and gist in rule["message"]
        }
        assert verdicts == {True, False}, f"{kind} {path} {rule['rule']!r} needs passing and failing cases"


@pytest.mark.parametrize(
    "kind,path,gist,spec,holds",
    CASES,
    ids=[f"{c[0]}-{c[1]}-{'pass' if c[4] else 'fail'}-{i}" for i, c in enumerate(CASES)],
)
def test_rule(kind: str, path: str, gist: str, spec: dict[str, Any], holds: bool) -> None:
    rule = find_rule(kind, path, gist)
    doc = document(kind, spec)
    assert crd_emulator.eval_rule(rule["rule"], node_value(doc, kind, path)) is holds
    # The models agree, at the same field path and with the same message.
    where = path + rule.get("fieldPath", "")
    model_hits = [i for i in validate_document(doc) if i.message == rule["message"]]
    if holds:
        assert model_hits == []
    else:
        assert [i.path for i in model_hits] == [where]


def test_rules_are_written_against_wire_names() -> None:
    """CEL sees camelCase; a snake_case name in a rule would never match."""
    for _, _, rule in all_rules():
        assert "_" not in rule["rule"].replace("'", ""), rule["rule"]
