"""The node-local artifact cache: one folder per artifact set, keyed by its digest, bounded in size.

``artifacts.prepare`` fetches an artifact set into ``{root}/{digest}/``
(``root``: ``$RAYRELAY_CACHE_DIR`` or ``~/.cache/rayrelay``), where ``digest``
is the sha256 of the set's manifest. Every replica on a node shares that
folder, so a replica started after the first one (scaling up, or back from
zero) finds the files there and downloads nothing. What makes it safe:

- **keyed by digest**: a new manifest is a new folder; two sets never mix;
- **atomic writes**: a file lands under a temporary name and is renamed into
  place only after its sha256 matched the manifest (``artifacts``), so a
  reader never sees half a file, even with several replicas fetching at once;
- **verified on read**: a cached file is hashed again before each use, and
  one that no longer matches is fetched again (``artifacts``);
- **bounded**: before a set is fetched, the least recently used sets are
  removed until the new one fits under ``$RAYRELAY_CACHE_MAX_BYTES``
  (default 10 GiB). A set is never removed while a replica prepares it (a
  shared ``flock`` on ``{digest}.lock``) nor within ``IN_USE_GRACE_S`` of
  its last use (a replica creates its session from the files right after
  preparing them); removal renames the folder away first, so a concurrent
  reader finds either the whole folder or none.

"Last used" is the modification time of ``{digest}/.last-used``, touched on
every prepare. This module only manages folders; it never reads a store.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**30
IN_USE_GRACE_S = 600.0
_LAST_USED = ".last-used"
_TRASH_PREFIX = ".evicting-"


def max_bytes_from_env(environ: dict[str, str] | None = None) -> int:
    """``$RAYRELAY_CACHE_MAX_BYTES`` (a plain byte count), else the default; a bad value is refused."""
    env = os.environ if environ is None else environ
    raw = (env.get("RAYRELAY_CACHE_MAX_BYTES") or "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"RAYRELAY_CACHE_MAX_BYTES must be a byte count, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"RAYRELAY_CACHE_MAX_BYTES must be positive, got {value}")
    return value


@dataclass
class CacheEntry:
    digest: str
    path: Path
    size: int
    last_used: float


def _folder_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).stat().st_size
    return total


class NodeCache:
    """The cache under ``root``; ``clock`` is wall time (mtimes compare against it)."""

    def __init__(
        self, root: Path, max_bytes: int | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes if max_bytes is not None else max_bytes_from_env()
        self.clock = clock

    def path(self, digest: str) -> Path:
        if not digest or "/" in digest or digest.startswith("."):
            raise ValueError(f"not a digest: {digest!r}")
        return self.root / digest

    def _lock_path(self, digest: str) -> Path:
        return self.root / f".{digest}.lock"

    @contextlib.contextmanager
    def use(self, digest: str) -> Iterator[Path]:
        """Hold ``digest``'s folder (shared lock) while it is filled and read; marks it used."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.path(digest)
        with open(self._lock_path(digest), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self.touch(digest)
                yield folder
                self.touch(digest)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def touch(self, digest: str) -> None:
        marker = self.path(digest) / _LAST_USED
        marker.parent.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        marker.touch()
        os.utime(marker, (now, now))

    def entries(self) -> list[CacheEntry]:
        """Every cached set, least recently used first."""
        if not self.root.is_dir():
            return []
        out = []
        for child in self.root.iterdir():
            if not child.is_dir() or child.name.startswith("."):
                continue
            marker = child / _LAST_USED
            try:
                last = marker.stat().st_mtime if marker.exists() else child.stat().st_mtime
            except OSError:  # removed meanwhile
                continue
            out.append(CacheEntry(child.name, child, _folder_size(child), last))
        return sorted(out, key=lambda e: e.last_used)

    def size(self) -> int:
        return sum(e.size for e in self.entries())

    def make_room(self, incoming_bytes: int, keep: str) -> list[str]:
        """Evict least recently used sets (never ``keep``, a locked or recently used one)
        until ``incoming_bytes`` more fit under the bound; returns the evicted digests."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted: list[str] = []
        for entry in entries:
            if total + incoming_bytes <= self.max_bytes:
                break
            if entry.digest == keep or self.clock() - entry.last_used < IN_USE_GRACE_S:
                continue
            if self._evict(entry):
                total -= entry.size
                evicted.append(entry.digest)
        if total + incoming_bytes > self.max_bytes:
            log.warning(
                "artifact cache %s: %d bytes in use + %d incoming exceed the bound of %d bytes "
                "(the rest is in use); fetching anyway",
                self.root,
                total,
                incoming_bytes,
                self.max_bytes,
            )
        return evicted

    def _evict(self, entry: CacheEntry) -> bool:
        lock_path = self._lock_path(entry.digest)
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a replica is preparing it right now
            try:
                # Rename first: a reader sees the whole folder or none, never a half-deleted one.
                trash = self.root / f"{_TRASH_PREFIX}{entry.digest}-{uuid.uuid4().hex[:8]}"
                try:
                    os.replace(entry.path, trash)
                except OSError:
                    return False
                shutil.rmtree(trash, ignore_errors=True)
                log.info("artifact cache %s: evicted %s (%d bytes)", self.root, entry.digest[:12], entry.size)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
