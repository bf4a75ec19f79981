"""The operator's opt-in memory profile (``rayrelay_operator.diagnostics``).

The report is built from a real ``tracemalloc`` snapshot of this test's own allocations;
the profile thread is the one ``rayrelay operator`` starts when RAYRELAY_MEMORY_PROFILE is set.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from rayrelay_operator import diagnostics


def test_unset_starts_nothing() -> None:
    assert diagnostics.start_from_env({}) is None
    assert diagnostics.start_from_env({"RAYRELAY_MEMORY_PROFILE": ""}) is None


def test_report_names_the_site_that_holds_the_memory() -> None:
    tracemalloc.start(diagnostics.FRAMES)
    try:
        held = [bytearray(4096) for _ in range(512)]  # 2 MiB from this line
        text = diagnostics.report(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert len(held) == 512
    top = text.split("by line:\n", 1)[1].splitlines()[0]
    assert "test_operator_diagnostics.py" in top and float(top.split()[0]) >= 2.0
    assert "by call chain:" in text


def test_the_profile_file_is_written_while_the_process_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "operator.tracemalloc"
    try:
        thread = diagnostics.start_from_env(
            {"RAYRELAY_MEMORY_PROFILE": str(target), "RAYRELAY_MEMORY_PROFILE_SECONDS": "0.05"}
        )
        assert thread is not None and thread.daemon
        deadline = time.monotonic() + 20
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tracemalloc.stop()
    # What ``python -m rayrelay_operator.diagnostics FILE`` prints of it.
    diagnostics.main([str(target), "5"])
    assert capsys.readouterr().out.startswith("traced now ")
