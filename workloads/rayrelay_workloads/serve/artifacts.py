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
weights. A replica that times another variant (``variant: auto``,
``rayrelay_core.variants``) fetches just that variant's model file with
:func:`prepare_variant`, from the same manifest, into the same cache folder,
with the same checks. Every one of those files is checked against the manifest's sha256 and
size *before* it is used, including files already in the cache (a cached copy
that no longer matches is fetched again; a store copy that does not match is
refused with the file's name and both digests).

An encrypted artifact set (``manifest.encryption``, ``rayrelay_workloads.envelope``)
is cached as ciphertext only: its files are verified against their ciphertext
digests as above, then the replica's key (``RAYRELAY_ENCRYPTION_KEY``) unwraps
the data key and the model and tokenizer files are decrypted into memory, each
checked against its plaintext digest (``PreparedArtifacts.model_bytes`` and
``tokenizer_files``); no plaintext is written to disk. A missing or wrong key
is an ``ArtifactError`` that says so without quoting any key.

An S3 outage while a replica starts is waited out (``storewait.hold``): the
manifest read and each download are retried with backoff and jitter for up to
``RAYRELAY_STORE_WAIT_SECONDS`` (default 300 s), so the replica comes up once S3
returns instead of failing its start (Serve gives up on a deployment whose first
replicas fail to start 3 times in a row). The operator meanwhile probes the store
and says in the ModelDeployment's status that the replicas wait for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from rayrelay_core.runs import FileEntry, Manifest, ManifestError, read_manifest
from rayrelay_core.store import Store, StoreError, join, open_store, sha256_bytes, sha256_file
from rayrelay_core.variants import file_variant
from rayrelay_workloads import envelope
from rayrelay_workloads.serve.cache import NodeCache
from rayrelay_workloads.storewait import StoreWait, hold

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    # Encrypted sets: the decrypted model and tokenizer files (paths relative to the
    # tokenizer folder), in memory only; model_path and tokenizer_dir hold ciphertext.
    model_bytes: bytes | None = None
    tokenizer_files: dict[str, bytes] | None = None
    # Where the set came from, for fetching another variant of it (prepare_variant).
    store: Store | None = None
    cache_dir: str | None = None

    @property
    def model_source(self) -> str | bytes:
        """What onnxruntime loads: the decrypted bytes, or the verified file's path."""
        return self.model_bytes if self.model_bytes is not None else str(self.model_path)


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


def model_entries(manifest: Manifest, variant: str) -> list[FileEntry]:
    """The manifest entries of ``variant``'s model: its ONNX file and any external-data file
    (a serve-time candidate's are those of the variant whose file it runs: ``file_variant``)."""
    info = manifest.variants.get(file_variant(variant))
    if info is None or not info.file:
        raise ArtifactError(f"variant {variant!r} has no model file in the manifest")
    model_file = info.file
    # model.onnx plus its external-weights file (model.onnx.data), never model.int8.onnx.
    needed = [
        entry
        for entry in manifest.files
        if entry.path == model_file
        or (entry.path.startswith(model_file + ".") and entry.path.endswith((".data", "_data")))
    ]
    if not any(entry.path == model_file for entry in needed):
        raise ArtifactError(f"manifest does not list the model file {model_file!r} among its files")
    return needed


def files_to_fetch(manifest: Manifest, variant: str) -> list[FileEntry]:
    """The manifest entries serving needs for ``variant`` (model file + tokenizer)."""
    needed = model_entries(manifest, variant)
    tok_prefix = manifest.tokenizer.path.strip("/") + "/"
    for entry in manifest.files:
        if entry.path.startswith(tok_prefix) and not entry.path.endswith(_SKIPPED_SUFFIXES):
            needed.append(entry)
    return needed


def _matches(path: Path, entry: FileEntry, timings: dict[str, float] | None = None) -> tuple[bool, str]:
    if path.stat().st_size != entry.size:
        return False, f"size {path.stat().st_size} (manifest says {entry.size})"
    start = time.perf_counter()
    actual = sha256_file(path)
    if timings is not None:
        timings["verify_s"] = timings.get("verify_s", 0.0) + time.perf_counter() - start
    return actual == entry.sha256, actual


def _held(op: Callable[[], T], what: str, timings: dict[str, float] | None) -> T:
    """``op()`` through ``storewait.hold``; ``timings`` (optional) sums ``store_retries`` and
    ``store_wait_s`` (the seconds a start waited for the store)."""
    waited = StoreWait()
    try:
        return hold(op, what, wait=waited)
    finally:
        if timings is not None and waited.retries:
            timings["store_retries"] = timings.get("store_retries", 0) + waited.retries
            timings["store_wait_s"] = timings.get("store_wait_s", 0.0) + waited.waited_s


def _fetch_verified(
    store: Store, base_uri: str, root: Path, entry: FileEntry, timings: dict[str, float] | None = None
) -> Path:
    """The verified local copy of ``entry``; ``timings`` (optional) accumulates ``download_s``,
    ``verify_s``, ``downloaded_bytes`` and ``cached_files`` (the cold-start breakdown)."""
    rel = _safe_relative(entry.path)
    dest = root / rel
    timings = timings if timings is not None else {}
    if dest.exists():
        ok, _ = _matches(dest, entry, timings)
        if ok:
            timings["cached_files"] = timings.get("cached_files", 0) + 1
            return dest
        log.warning("cached %s no longer matches the manifest; fetching it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, renamed into place only after it verified, so that
    # replicas on the same node never read each other's half-written files.
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}-{threading.get_ident()}")
    uri = join(base_uri, entry.path)
    start = time.perf_counter()
    try:
        _held(lambda: store.download(uri, tmp), f"fetch {entry.path}", timings)
    except StoreError as exc:
        raise ArtifactError(f"cannot fetch {entry.path}: {exc}") from exc
    timings["download_s"] = timings.get("download_s", 0.0) + time.perf_counter() - start
    timings["downloaded_bytes"] = timings.get("downloaded_bytes", 0) + entry.size
    ok, actual = _matches(tmp, entry, timings)
    if not ok:
        tmp.unlink(missing_ok=True)
        raise ArtifactError(
            f"checksum mismatch for {entry.path}: expected sha256 {entry.sha256}, got {actual}; "
            "the file was altered after the manifest was published, refusing to serve it"
        )
    os.replace(tmp, dest)
    return dest


def decrypt_verified(
    manifest: Manifest, entries: list[FileEntry], paths: dict[str, Path], environ: Mapping[str, str] | None
) -> dict[str, bytes]:
    """The plaintext of each verified (ciphertext) file, checked against its plaintext digest."""
    info = manifest.encryption
    assert info is not None
    if info.scheme != envelope.SCHEME:
        raise ArtifactError(
            f"the artifact set is encrypted with {info.scheme!r}; this replica reads {envelope.SCHEME}"
        )
    try:
        data_key = envelope.unwrap_data_key(
            envelope.key_from_env(environ), info.wrapped_data_key, manifest.run_id
        )
        out: dict[str, bytes] = {}
        for entry in entries:
            plain = envelope.decrypt_blob(data_key, paths[entry.path].read_bytes(), entry.path)
            if entry.plaintext_sha256 is None or sha256_bytes(plain) != entry.plaintext_sha256:
                raise ArtifactError(
                    f"{entry.path}: the decrypted file does not match the manifest's plaintext sha256; "
                    "refusing to load it"
                )
            out[entry.path] = plain
        return out
    except envelope.EnvelopeError as exc:
        raise ArtifactError(str(exc)) from None


def _fetch_into_cache(
    store: Store,
    base_uri: str,
    cache_dir: str | None,
    digest: str,
    entries: list[FileEntry],
    timings: dict[str, float] | None,
) -> tuple[Path, dict[str, Path]]:
    """Every entry verified in the node cache's folder of ``digest`` (fetched when missing)."""
    node_cache = NodeCache(cache_root(cache_dir))
    with node_cache.use(digest) as root:
        missing = sum(e.size for e in entries if not (root / _safe_relative(e.path)).exists())
        if missing:
            node_cache.make_room(missing, keep=digest)
        paths = {entry.path: _fetch_verified(store, base_uri, root, entry, timings) for entry in entries}
    return root, paths


def _base_uri(manifest_uri: str) -> str:
    return manifest_uri.rstrip("/")[: -len("manifest.json")].rstrip("/")


def prepare(
    manifest_uri: str,
    variant: str = "auto",
    cache_dir: str | None = None,
    endpoint_url: str | None = None,
    store: Store | None = None,
    expected_digest: str | None = None,
    environ: Mapping[str, str] | None = None,
    timings: dict[str, float] | None = None,
    resolve: Callable[[Manifest, str], str] | None = None,
) -> PreparedArtifacts:
    """Read the manifest, check its digest, resolve the variant, fetch and verify what serving needs.

    The files go to the node-local cache (``cache.NodeCache``: keyed by digest, bounded,
    least recently used sets evicted first); ``timings`` receives the download/verify split.
    ``resolve(manifest, digest)`` (optional) picks the variant instead of ``variant``
    (the replica's hardware-aware start: ``rayrelay_core.variants``)."""
    if not manifest_uri.rstrip("/").endswith("manifest.json"):
        raise ArtifactError(f"{manifest_uri}: expected the URI of a manifest.json")
    store = store or open_store(manifest_uri, endpoint_url)
    try:
        manifest, digest = _held(lambda: read_manifest(store, manifest_uri), f"read {manifest_uri}", timings)
        check_digest(digest, expected_digest, manifest_uri)
        chosen = resolve(manifest, digest) if resolve is not None else manifest.servable_variant(variant)
    except (ManifestError, StoreError) as exc:
        raise ArtifactError(str(exc)) from exc
    base_uri = _base_uri(manifest_uri)
    entries = files_to_fetch(manifest, chosen)
    root, paths = _fetch_into_cache(store, base_uri, cache_dir, digest, entries, timings)
    model_file = manifest.variants[file_variant(chosen)].file
    assert model_file is not None  # files_to_fetch checked it
    log.info("artifact set %s (%s): %d files verified in %s", digest[:12], chosen, len(paths), root)
    prepared = PreparedArtifacts(
        manifest=manifest,
        digest=digest,
        manifest_uri=manifest_uri,
        variant=chosen,
        root=root,
        model_path=paths[model_file],
        tokenizer_dir=root / _safe_relative(manifest.tokenizer.path),
        store=store,
        cache_dir=cache_dir,
    )
    if manifest.encryption is not None:
        plain = decrypt_verified(manifest, entries, paths, environ)
        tok_prefix = manifest.tokenizer.path.strip("/") + "/"
        prepared.model_bytes = plain.pop(model_file)
        prepared.tokenizer_files = {
            path[len(tok_prefix) :]: data for path, data in plain.items() if path.startswith(tok_prefix)
        }
        log.info("artifact set %s: decrypted in memory (%s)", digest[:12], manifest.encryption.scheme)
    return prepared


def prepare_variant(
    prepared: PreparedArtifacts,
    variant: str,
    environ: Mapping[str, str] | None = None,
    timings: dict[str, float] | None = None,
) -> PreparedArtifacts:
    """The same artifact set with ``variant``'s model: only its model file is fetched and verified.

    The manifest is the one ``prepare`` read and verified (no second read, so the digest
    cannot change in between); the file lands in the same node-cache folder with the same
    checks, and an encrypted one is decrypted in memory. A variant the quality gate rejected
    is refused as in ``prepare``; a serve-time candidate (``fp32-openvino``) gets, and is
    gated as, the variant whose file it runs."""
    manifest = prepared.manifest
    try:
        manifest.servable_variant(file_variant(variant))
    except ManifestError as exc:
        raise ArtifactError(str(exc)) from exc
    store = prepared.store or open_store(prepared.manifest_uri)
    entries = model_entries(manifest, variant)
    base_uri = _base_uri(prepared.manifest_uri)
    _root, paths = _fetch_into_cache(store, base_uri, prepared.cache_dir, prepared.digest, entries, timings)
    model_file = str(manifest.variants[file_variant(variant)].file)  # model_entries checked it is listed
    out = replace(prepared, variant=variant, model_path=paths[model_file], model_bytes=None)
    if manifest.encryption is not None:
        out.model_bytes = decrypt_verified(manifest, entries, paths, environ)[model_file]
    log.info("artifact set %s (%s): model file verified", prepared.digest[:12], variant)
    return out


def load_tokenizer(prepared: PreparedArtifacts) -> Any:
    """The artifact set's tokenizer: from its verified folder, or from memory when encrypted.

    In memory, ``tokenizer.json`` (the fast tokenizer: normaliser, vocabulary, special
    tokens) becomes a ``tokenizers.Tokenizer`` and the class ``tokenizer_config.json``
    names (a transformers tokenizer class, nothing else) wraps it with that config, as
    ``AutoTokenizer.from_pretrained`` would from the folder.
    """
    import transformers

    if prepared.tokenizer_files is None:
        return transformers.AutoTokenizer.from_pretrained(str(prepared.tokenizer_dir), local_files_only=True)
    import json

    from tokenizers import Tokenizer

    files = prepared.tokenizer_files
    if "tokenizer.json" not in files:
        raise ArtifactError("the encrypted artifact set has no tokenizer.json (needed to load it in memory)")
    config = json.loads(files.get("tokenizer_config.json", b"{}"))
    name = str(config.get("tokenizer_class") or "")
    cls = getattr(transformers, name, None) if name.endswith(("Tokenizer", "TokenizerFast")) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        cls = transformers.PreTrainedTokenizerFast
    kwargs = {k: v for k, v in config.items() if k not in _NOT_TOKENIZER_KWARGS}
    return cls(tokenizer_object=Tokenizer.from_str(files["tokenizer.json"].decode()), **kwargs)


# tokenizer_config.json keys that describe the files rather than the tokenizer.
_NOT_TOKENIZER_KWARGS = frozenset(
    {"added_tokens_decoder", "tokenizer_class", "auto_map", "backend", "is_local", "local_files_only"}
)
