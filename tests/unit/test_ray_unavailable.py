"""A Ray cluster that does not answer is ``RayUnavailable`` in the status (issue 14, case 2).

The ``ray`` backend against a port nothing listens on (a real connection
refused), and the reconcile's error classification; the head really stopped
under a running TrainingJob is ``tests/faults/test_head_lost.py``.
"""

from __future__ import annotations

import pytest

from rayrelay_operator.backends.base import BackendUnavailable, MissingPermission, RayUnavailable
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.reconcile.errors import classify
from tests.conftest import free_port


def test_a_ray_cluster_that_does_not_answer_is_ray_unavailable_and_temporary() -> None:
    backend = RayBackend(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RayUnavailable, match="not reachable") as caught:
        backend.serve_instance()
    err = classify(caught.value)
    assert err.reason == "RayUnavailable" and not err.permanent and err.delay > 0


def test_other_unavailability_keeps_its_reason() -> None:
    assert classify(BackendUnavailable("later")).reason == "BackendUnavailable"
    assert classify(MissingPermission("forbidden")).reason == "MissingPermission"
