"""The figures the fault tests measure, one JSON file per case (``tests/faults/results/``).

Each case calls :func:`record` with what it injected, what held and the
numbers it measured; ``python -m tests.faults.report`` renders every file into
``docs/reliability.md``, so the page shows only figures a test wrote. A run
records only when ``RAYRELAY_FAULTS_RECORD=1`` (``make faults`` sets it):
``make test`` runs the fast cases as checks without touching the tracked
results. The machine's load average, CPU count and the git commit go with
every record, since absolute times on a shared 2-core machine vary.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[2]
RECORD_ENV = "RAYRELAY_FAULTS_RECORD"


def recording() -> bool:
    return os.environ.get(RECORD_ENV) == "1"


def _git() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def record(case: str, *, figures: dict[str, Any], command: str, notes: str = "") -> Path | None:
    """Write ``results/<case>.json`` (when recording); returns its path or None."""
    doc = {
        "case": case,
        "figures": figures,
        "command": command,
        "notes": notes,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": _git(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
        },
    }
    print(f"fault figures {case}: {json.dumps(figures, sort_keys=True)}")  # shown with -s / on failure
    if not recording():
        return None
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{case}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
