"""Fetch a published artifact set into a local cache and verify it before anything loads.

``model.ModelServer`` calls :func:`prepare` in its constructor. The manifest is
read through ``rayrelay_core.store`` (``s3://``, ``file://`` or a path); its
sha256 is the artifact set's digest and names the cache folder
(``$RAYRELAY_CACHE_DIR`` or ``~/.cache/rayrelay``, then ``<digest>/``), so
replicas on one node share one download and a new manifest never mixes with
an old one.

When the caller names the digest it resolved (the operator passes
``sha256:<hex>`` of the manifest it read, and reports "model verified" for
it), the manifest read here must have that very sha256: a manifest rewritten
between the operator's read and the replica's is refused, so a replica never
serves an artifact set other than the one the status names.

Only what serving loads is fetched: the chosen variant's ONNX file (and any
external-data file next to it) and the tokenizer folder without the PyTorch
weights. Every one of those files is checked against the manifest's sha256 and
size *before* it is used, including files already in the cache (a cached copy
that no longer matches is fetched again; a store copy that does not match is
refused with the file's name and both digests).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rayrelay_core.runs import FileEntry, Manifest, ManifestError, read_manifest
from rayrelay_core.store import Store, StoreError, join, open_store, sha256_file

log = logging.getLogger(__name__)

# Weights of the PyTorch model in hf/: serving runs ONNX and never loads them.
_SKIPPED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt")


class ArtifactError(RuntimeError):
    """The artifact set cannot be served; the message says which file and why."""


@dataclass
class PreparedArtifacts:
    manifest: Manifest
    digest: str
    manifest_uri: str
    variant: str
    root: Path
    model_path: Path
    tokenizer_dir: Path


def cache_root(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("RAYRELAY_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "rayrelay"


def _safe_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ArtifactError(f"manifest lists an unsafe file path {path!r}")
    return rel


def check_digest(actual: str, expected: str | None, manifest_uri: str) -> None:
    """Refuse a manifest whose sha256 is not the digest the caller resolved (``sha256:`` optional)."""
    if not expected:
        return
    wanted = expected.removeprefix("sha256:").strip().lower()
    if actual.lower() != wanted:
        raise ArtifactError(
            f"{manifest_uri}: manifest digest mismatch: expected sha256:{wanted}, got sha256:{actual}; "
            "the manifest changed after it was resolved, refusing to load it"
        )


def files_to_fetch(manifest: Manifest, variant: str) -> list[FileEntry]:
    """The manifest entries serving needs for ``variant`` (model file + tokenizer)."""
    info = manifest.variants.get(variant)
    if info is None or not info.file:
        raise ArtifactError(f"variant {variant!r} has no model file in the manifest")
    model_file = info.file
    tok_prefix = manifest.tokenizer.path.strip("/") + "/"
    needed: list[FileEntry] = []
    for entry in manifest.files:
        # model.onnx plus its external-weights file (model.onnx.data), never model.int8.onnx.
        is_model = entry.path == model_file or (
            entry.path.startswith(model_file + ".") and entry.path.endswith((".data", "_data"))
        )
        is_tokenizer = entry.path.startswith(tok_prefix) and not entry.path.endswith(_SKIPPED_SUFFIXES)
        if is_model or is_tokenizer:
            needed.append(entry)
    if not any(entry.path == model_file for entry in needed):
        raise ArtifactError(f"manifest does not list the model file {model_file!r} among its files")
    return needed


def _matches(path: Path, entry: FileEntry) -> tuple[bool, str]:
    if path.stat().st_size != entry.size:
        return False, f"size {path.stat().st_size} (manifest says {entry.size})"
    actual = sha256_file(path)
    return actual == entry.sha256, actual


def _fetch_verified(store: Store, base_uri: str, root: Path, entry: FileEntry) -> Path:
    rel = _safe_relative(entry.path)
    dest = root / rel
    if dest.exists():
        ok, _ = _matches(dest, entry)
        if ok:
            return dest
        log.warning("cached %s no longer matches the manifest; fetching it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, renamed into place only after it verified, so that
    # replicas on the same node never read each other's half-written files.
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    uri = join(base_uri, entry.path)
    try:
        store.download(uri, tmp)
    except StoreError as exc:
        raise ArtifactError(f"cannot fetch {entry.path}: {exc}") from exc
    ok, actual = _matches(tmp, entry)
    if not ok:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"checksum mismatch for {entry.path}: expected sha256 {entry.sha256}, got {actual}; "
            "the file was altered after the manifest was published, refusing to serve it"
        )
    os.replace(tmp, dest)
    return dest


def prepare(
    manifest_uri: str,
    variant: str = "auto",
    cache_dir: str | None = None,
    endpoint_url: str | None = None,
    store: Store | None = None,
    expected_digest: str | None = None,
) -> PreparedArtifacts:
    """Read the manifest, check its digest, resolve the variant, fetch and verify what serving needs."""
    if not manifest_uri.rstrip("/").endswith("manifest.json"):
        raise ArtifactError(f"{manifest_uri}: expected the URI of a manifest.json")
    store = store or open_store(manifest_uri, endpoint_url)
    try:
        manifest, digest = read_manifest(store, manifest_uri)
        check_digest(digest, expected_digest, manifest_uri)
        chosen = manifest.servable_variant(variant)
    except (ManifestError, StoreError) as exc:
        raise ArtifactError(str(exc)) from exc
    base_uri = manifest_uri.rstrip("/")[: -len("manifest.json")].rstrip("/")
    root = cache_root(cache_dir) / digest
    entries = files_to_fetch(manifest, chosen)
    paths = {entry.path: _fetch_verified(store, base_uri, root, entry) for entry in entries}
    model_file = manifest.variants[chosen].file
    assert model_file is not None  # files_to_fetch checked it
    log.info("artifact set %s (%s): %d files verified in %s", digest[:12], chosen, len(paths), root)
    return PreparedArtifacts(
        manifest=manifest,
        digest=digest,
        manifest_uri=manifest_uri,
        variant=chosen,
        root=root,
        model_path=paths[model_file],
        tokenizer_dir=root / _safe_relative(manifest.tokenizer.path),
    )
