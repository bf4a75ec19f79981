"""``bench.serving.start_and_deploy``: a benchmark starts over on a new Ray head when its head exited.

The fakes stand in for ``start_cluster`` (a local Ray head) and ``deploy`` (the
reconcile passes until Ready), which raises ``HeadExited`` when the head process
has stopped; a real head dying at start needs a machine loaded enough to time out
one of its components, so the retry logic is checked with the fakes.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import serving


class FakeCluster:
    def __init__(self) -> None:
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True


def setup(monkeypatch: pytest.MonkeyPatch, outcomes: list[Any]) -> list[FakeCluster]:
    clusters: list[FakeCluster] = []

    def start_cluster(**_: Any) -> FakeCluster:
        clusters.append(FakeCluster())
        return clusters[-1]

    def deploy(cluster: FakeCluster, obj: dict[str, Any]) -> str:
        obj["status"] = {"phase": "Deploying"}
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return str(outcome)

    monkeypatch.setattr(serving, "start_cluster", start_cluster)
    monkeypatch.setattr(serving, "deploy", deploy)
    return clusters


def test_a_head_that_exited_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    clusters = setup(monkeypatch, [serving.HeadExited("gone"), "rollout"])
    obj: dict[str, Any] = {}
    cluster, rollout = serving.start_and_deploy(obj, tries=3)
    assert rollout == "rollout" and cluster is clusters[1]
    assert clusters[0].stopped and not clusters[1].stopped
    assert obj["status"] == {"phase": "Deploying"}  # the status of the second try, not a stale one


def test_it_gives_up_after_the_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    clusters = setup(monkeypatch, [serving.HeadExited("gone")] * 2)
    with pytest.raises(serving.HeadExited):
        serving.start_and_deploy({}, tries=2)
    assert len(clusters) == 2 and all(c.stopped for c in clusters)


def test_other_failures_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    clusters = setup(monkeypatch, [RuntimeError("ModelDeployment failed"), "never"])
    with pytest.raises(RuntimeError, match="ModelDeployment failed"):
        serving.start_and_deploy({}, tries=3)
    assert len(clusters) == 1 and clusters[0].stopped
