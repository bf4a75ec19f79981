"""``rayrelay operator``'s run options and login, without a cluster.

The same defects are caught end to end by ``tests/cluster/test_operator*.py``
(the shipped command against a real API server); these say why in a second.
"""

from __future__ import annotations

import pytest

from rayrelay_operator.cli import build_parser
from rayrelay_operator.runner import (
    DEFAULT_PEERING,
    PRIORITY_SPAN,
    peer_priority,
    peering_lifetime,
    run_options,
)


def options(*argv: str, **env: str) -> dict[str, object]:
    return run_options(build_parser().parse_args(["operator", *argv]), env)


def test_standalone_passes_no_peering_name() -> None:
    # A peering name makes kopf's peering mandatory: with --standalone every watch-stream
    # would pause ("peering CRD is missing") and the operator would do nothing.
    opts = options("--all-namespaces", "--standalone", POD_NAME="rayrelay-abc")
    assert opts == {"standalone": True, "clusterwide": True, "namespaces": [], "liveness_endpoint": None}


def test_peering_gets_name_identity_and_a_priority_from_the_pod_name() -> None:
    opts = options("--namespace=a", "--namespace=b", "--peering=rr", POD_NAME="rayrelay-7d9f-x2k4q")
    assert opts["standalone"] is False and opts["namespaces"] == ["a", "b"]
    assert opts["peering_name"] == "rr"
    assert opts["identity"] == "rayrelay-7d9f-x2k4q"
    assert opts["priority"] == peer_priority("rayrelay-7d9f-x2k4q")
    assert options("-A")["peering_name"] == DEFAULT_PEERING


def test_replicas_get_distinct_stable_priorities() -> None:
    # kopf pauses *every* operator when two live peers share a priority.
    names = [f"rayrelay-5c8b7d6f9-{i:05d}" for i in range(2000)]
    priorities = [peer_priority(n) for n in names]
    assert len(set(priorities)) == len(names)
    assert all(1 <= p < PRIORITY_SPAN for p in priorities)
    assert peer_priority(names[0]) == priorities[0]  # a restarted container keeps its rank
    assert 1 <= peer_priority(None) < PRIORITY_SPAN  # run by hand: random


def test_explicit_priority_wins() -> None:
    assert options("-A", "--priority", str(PRIORITY_SPAN), POD_NAME="p")["priority"] == PRIORITY_SPAN


def test_namespace_defaults_to_the_pods_own() -> None:
    assert options("--standalone", POD_NAMESPACE="ops")["namespaces"] == ["ops"]
    with pytest.raises(SystemExit, match="--namespace"):
        options("--standalone")


@pytest.mark.parametrize(
    "argv", [("-A", "--namespace=x"), ("-A", "--standalone", "--peering=rr")], ids=["scope", "peering"]
)
def test_contradictions_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit, match="either"):
        options(*argv)


def test_peering_lifetime_flag_overrides_the_setting() -> None:
    parse = build_parser().parse_args
    assert peering_lifetime(parse(["operator", "-A"]), 10) == 10
    assert peering_lifetime(parse(["operator", "-A", "--peering-lifetime=7"]), 10) == 7
    with pytest.raises(SystemExit, match="at least"):
        peering_lifetime(parse(["operator", "-A", "--peering-lifetime=1"]), 10)


def test_registry_logs_in_unless_a_login_is_given() -> None:
    import kopf
    from kopf._core.intents import causes

    from rayrelay_operator.handlers import LOGIN, build_registry
    from rayrelay_operator.settings import Settings

    def logins(registry: kopf.OperatorRegistry) -> list[str]:
        return [h.id for h in registry._activities.get_handlers(causes.Activity.AUTHENTICATION)]

    registry = build_registry(Settings())
    # A bare kopf.OperatorRegistry has none: "LoginError: Ran out of valid credentials".
    assert logins(registry) == [LOGIN]

    @kopf.on.login(registry=registry, id="emulator")
    def emulator(**_: object) -> None:
        return None

    assert logins(registry) == ["emulator"]  # a test's own login replaces the fallback
