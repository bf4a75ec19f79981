"""Fixtures of the fault suite (``tests/faults``).

Every test here carries the ``faults`` marker. The longer cases also carry
``faults_long`` and run only under ``make faults`` (``RAYRELAY_FAULTS_LONG=1``);
elsewhere they skip saying so, which keeps ``make test`` within its time budget.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAULTS_DIR = Path(__file__).resolve().parent
LONG_ENV = "RAYRELAY_FAULTS_LONG"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    long_ok = os.environ.get(LONG_ENV) == "1"
    for item in items:
        if FAULTS_DIR not in item.path.parents:
            continue
        item.add_marker(pytest.mark.faults)
        if item.get_closest_marker("faults_long") and not long_ok:
            item.add_marker(
                pytest.mark.skip(reason=f"a longer fault case: runs under `make faults` ({LONG_ENV}=1)")
            )
