"""Opt-in diagnostics of the operator process: where its memory goes (tracemalloc).

``RAYRELAY_MEMORY_PROFILE=<file>`` starts ``tracemalloc`` before kopf runs and, every
``RAYRELAY_MEMORY_PROFILE_SECONDS`` (20), replaces ``<file>`` with a snapshot
(``tracemalloc.Snapshot.dump``); ``python -m rayrelay_operator.diagnostics <file>`` prints
the largest allocation sites, by line and by call chain. Only the dump runs in the
operator: grouping millions of traces is a Python loop that, inside the busy operator,
took minutes and competed with it for the GIL. It is for finding what the operator keeps
per resource (``bench/control_plane.py --memory-profile``); tracing slows the process
down and roughly doubles its memory, so never in production. Unset, nothing here runs.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

FRAMES = 12


def report(snapshot: tracemalloc.Snapshot, top: int = 30) -> str:
    """A text report of a snapshot: totals, top sites by line, top call chains (pure)."""
    snapshot = snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*"),
        ]
    )
    by_line = snapshot.statistics("lineno")
    total = sum(s.size for s in by_line)
    lines = [f"traced now {total / 2**20:.1f} MiB in {sum(s.count for s in by_line)} blocks", "", "by line:"]
    lines += [f"{s.size / 2**20:8.2f} MiB {s.count:8d}  {s.traceback[0]}" for s in by_line[:top]]
    lines += ["", "by call chain:"]
    for s in snapshot.statistics("traceback")[: top // 2]:
        lines.append(f"{s.size / 2**20:8.2f} MiB {s.count:8d}")
        lines += [f"      {frame}" for frame in s.traceback.format(limit=FRAMES, most_recent_first=True)]
    return "\n".join(lines) + "\n"


def start_from_env(env: Mapping[str, str] | None = None) -> threading.Thread | None:
    """Start the memory profile when ``RAYRELAY_MEMORY_PROFILE`` names a file; else nothing."""
    env = os.environ if env is None else env
    target = env.get("RAYRELAY_MEMORY_PROFILE")
    if not target:
        return None
    every = float(env.get("RAYRELAY_MEMORY_PROFILE_SECONDS") or 20)
    tracemalloc.start(FRAMES)
    path = Path(target)

    def dump() -> None:
        while True:
            time.sleep(every)
            if not tracemalloc.is_tracing():
                return  # stopped by someone else (a test): nothing more to report
            tmp = path.with_suffix(".tmp")
            tracemalloc.take_snapshot().dump(str(tmp))
            os.replace(tmp, path)

    thread = threading.Thread(target=dump, name="rayrelay-memory-profile", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    """``python -m rayrelay_operator.diagnostics SNAPSHOT [TOP]``: the report of a dumped snapshot."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m rayrelay_operator.diagnostics SNAPSHOT [TOP]")
    snapshot = tracemalloc.Snapshot.load(args[0])
    print(report(snapshot, int(args[1]) if len(args) > 1 else 30), end="")


if __name__ == "__main__":
    main()
