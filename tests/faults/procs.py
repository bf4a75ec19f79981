"""Processes as the fault tests see them: read from /proc (Linux), no extra dependency.

The tests kill real processes by pid and then check what is left, so they need
the process tree (``children``), the members of a process's session
(``session_members``: ``ray start --head`` runs in its own session, and every
Ray process it starts stays in it), and whether a pid is still a live process
(a zombie is not: it has exited and only waits to be reaped).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    state: str  # R, S, D, Z, ...
    name: str
    cmdline: str


def read(pid: int) -> Proc | None:
    """The process ``pid``, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name is in parentheses and may hold spaces or parentheses: split at the last ')'.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    state, ppid, _pgrp, sid = fields[0], int(fields[1]), fields[2], int(fields[3])
    return Proc(pid, ppid, sid, state, name, raw.replace(b"\0", b" ").decode(errors="replace").strip())


def all_procs() -> list[Proc]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read(int(entry))
            if proc is not None:
                out.append(proc)
    return out


def live(procs: list[Proc]) -> list[Proc]:
    return [p for p in procs if p.state != "Z"]


def children(pid: int) -> list[Proc]:
    return [p for p in all_procs() if p.ppid == pid]


def descendants(pid: int) -> list[Proc]:
    procs = all_procs()
    found, frontier = [], {pid}
    while frontier:
        layer = [p for p in procs if p.ppid in frontier]
        found.extend(layer)
        frontier = {p.pid for p in layer}
    return found


def session_members(sid: int) -> list[Proc]:
    """Live processes of session ``sid`` (zombies left out)."""
    return live([p for p in all_procs() if p.sid == sid])


def is_alive(pid: int) -> bool:
    proc = read(pid)
    return proc is not None and proc.state != "Z"


def kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> bool:
    """Send ``sig``; False when the process was already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is a live process; returns those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if is_alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if is_alive(p)]
    return left
