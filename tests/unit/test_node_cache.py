"""The node-local artifact cache (``serve.cache.NodeCache``) and ``artifacts.prepare`` on top of it.

A real artifact set is built here in a local folder (a manifest listing real
files with their sha256), so ``prepare`` runs exactly as in a replica, with a
counting store (``CountingStore``, standing in for S3: it serves the same
bytes as the local store and counts downloads).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import LocalStore, sha256_file
from rayrelay_workloads.serve import cache as cache_mod
from rayrelay_workloads.serve.artifacts import ArtifactError, prepare
from rayrelay_workloads.serve.cache import NodeCache, max_bytes_from_env


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def fill(cache: NodeCache, digest: str, size: int) -> None:
    with cache.use(digest) as folder:
        (folder / "blob").write_bytes(b"x" * size)


def test_lru_eviction_keeps_the_bound_and_spares_recent_locked_and_kept_sets(tmp_path: Path) -> None:
    clock = Clock()
    cache = NodeCache(tmp_path, max_bytes=3000, clock=clock)
    for digest in ("a", "b", "c"):
        fill(cache, digest, 900)
        clock.now += 1000  # each older than the in-use grace by the time the next comes
    cache.touch("a")  # a used again: b is now the least recently used
    clock.now += 1000
    assert [e.digest for e in cache.entries()] == ["b", "c", "a"]
    assert cache.make_room(900, keep="d") == ["b"], "only as much as needed, oldest first"
    fill(cache, "d", 900)
    assert cache.size() <= 3000
    # Nothing evictable: c is held by a replica preparing it, a/d were just used, d is kept.
    clock.now += 1000
    with open(tmp_path / ".c.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        cache.touch("a")
        assert cache.make_room(2000, keep="d") == []
    assert {e.digest for e in cache.entries()} == {"a", "c", "d"}
    clock.now += cache_mod.IN_USE_GRACE_S + 1
    assert cache.make_room(2000, keep="d") == ["c", "a"]
    assert not any(p.name.startswith(".evicting-") for p in tmp_path.iterdir()), "no trash left behind"


def test_digest_must_be_a_plain_name(tmp_path: Path) -> None:
    cache = NodeCache(tmp_path, max_bytes=10)
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            cache.path(bad)


def test_max_bytes_from_env() -> None:
    assert max_bytes_from_env({}) == cache_mod.DEFAULT_MAX_BYTES
    assert max_bytes_from_env({"RAYRELAY_CACHE_MAX_BYTES": "1048576"}) == 1048576
    for bad in ("10Gi", "0", "-5"):
        with pytest.raises(ValueError, match="RAYRELAY_CACHE_MAX_BYTES"):
            max_bytes_from_env({"RAYRELAY_CACHE_MAX_BYTES": bad})


# ------------------------------------------------------------------ prepare on the cache


class CountingStore(LocalStore):
    """A local-folder store that counts downloads (stands in for a remote store)."""

    def __init__(self) -> None:
        super().__init__()
        self.downloads: list[str] = []
        self.lock = threading.Lock()

    def download(self, uri: str, dest: Any) -> None:
        with self.lock:
            self.downloads.append(uri)
        super().download(uri, dest)


def artifact_set(folder: Path, seed: str = "a") -> str:
    """A minimal servable artifact set: int8 ONNX bytes + tokenizer files, with a real manifest."""
    files = {
        "onnx/model.int8.onnx": (seed * 5000).encode(),
        "hf/tokenizer.json": b'{"version": "1.0"}',
        "hf/tokenizer_config.json": b"{}",
        "hf/model.safetensors": b"weights never fetched by serving",
    }
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    from reconcile_fakes import sample_manifest

    from rayrelay_core.runs import FileEntry

    manifest = sample_manifest(f"run-{seed}")
    manifest.files = [
        FileEntry(path=rel, sha256=sha256_file(folder / rel), size=len(data)) for rel, data in files.items()
    ]
    manifest.tokenizer.path = "hf"
    (folder / "manifest.json").write_text(manifest.to_json())
    return str(folder / "manifest.json")


@pytest.fixture
def manifest_uri(tmp_path: Path) -> str:
    return artifact_set(tmp_path / "store")


def test_second_prepare_downloads_nothing_and_verifies_every_file(manifest_uri: str, tmp_path: Path) -> None:
    store = CountingStore()
    first: dict[str, float] = {}
    a = prepare(manifest_uri, cache_dir=str(tmp_path / "c"), store=store, timings=first)
    assert len(store.downloads) == 3 and first["downloaded_bytes"] > 0 and first["verify_s"] >= 0
    assert not any("safetensors" in d for d in store.downloads)
    second: dict[str, float] = {}
    b = prepare(manifest_uri, cache_dir=str(tmp_path / "c"), store=store, timings=second)
    assert len(store.downloads) == 3, "a warm node cache downloads nothing"
    assert second.get("downloaded_bytes", 0) == 0 and second["cached_files"] == 3 and "verify_s" in second
    assert a.root == b.root == tmp_path / "c" / a.digest, "keyed by the manifest's digest"
    # Digest verified on read: a cached file altered on disk is fetched again, not trusted.
    b.model_path.write_bytes(b"tampered")
    third: dict[str, float] = {}
    c = prepare(manifest_uri, cache_dir=str(tmp_path / "c"), store=store, timings=third)
    assert len(store.downloads) == 4 and third["downloaded_bytes"] == 5000
    assert c.model_path.read_bytes() == b"a" * 5000
    assert not list(c.root.rglob(".*.part-*")), "no temporary file left"


def test_prepare_evicts_the_least_recently_used_set(tmp_path: Path) -> None:
    store = CountingStore()
    cache_dir = tmp_path / "c"
    one = artifact_set(tmp_path / "s1", "a")
    two = artifact_set(tmp_path / "s2", "b")
    first = prepare(one, cache_dir=str(cache_dir), store=store)
    size_one = NodeCache(cache_dir).size()
    # Make the first set old, then bound the cache to about one set.
    old = time.time() - cache_mod.IN_USE_GRACE_S - 10
    os.utime(first.root / ".last-used", (old, old))
    os.environ["RAYRELAY_CACHE_MAX_BYTES"] = str(size_one + 100)
    try:
        second = prepare(two, cache_dir=str(cache_dir), store=store)
    finally:
        del os.environ["RAYRELAY_CACHE_MAX_BYTES"]
    assert not first.root.exists() and second.root.exists()
    assert [e.digest for e in NodeCache(cache_dir).entries()] == [second.digest]


def test_concurrent_replicas_share_one_verified_copy(manifest_uri: str, tmp_path: Path) -> None:
    store = CountingStore()
    results: list[Any] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            results.append(prepare(manifest_uri, cache_dir=str(tmp_path / "c"), store=store))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r.model_path.read_bytes() == b"a" * 5000 for r in results)
    with pytest.raises(ArtifactError, match="mismatch"):
        prepare(
            manifest_uri, cache_dir=str(tmp_path / "d"), store=store, expected_digest="sha256:" + "0" * 64
        )
