"""Publish a run: upload ``hf/`` and ``onnx/``, then write ``manifest.json`` last.

:func:`publish_folder` is the step every task shares: upload an export's folder,
then write the manifest that the task's :class:`ManifestBuilder` makes of the
uploaded files (classification's :func:`build_manifest` through :func:`publish`,
``embedding.manifest`` and ``textgen.pipeline`` their own). Every file is hashed
locally before upload, so the manifest's sha256 and sizes describe exactly the
bytes sent; serving verifies them before it loads anything. The manifest is
written only after every upload succeeded (a run without it is incomplete).

Each publication uploads into a folder of its own,
``{run}/published/attempt-<n>-<random>/`` (``rayrelay_core.runs.publish_id_for``),
and only then replaces the run's ``manifest.json`` (one atomic write), whose
paths point into that folder. Nothing is ever uploaded over a file a manifest
lists, so an overlapping attempt cannot change the artifact set a replica is
fetching (issue 12, finding 9; docs/security.md).

With ``spec.artifacts.encryption`` every file is encrypted before it leaves the
node (``envelope.py``: a fresh data key per publication, wrapped by the key the
Secret provides as ``RAYRELAY_ENCRYPTION_KEY``); the manifest records the scheme,
the wrapped data key, each file's ciphertext sha256 and size (what transfers are
checked against) and its plaintext sha256 and size (what a decrypted file is
checked against). The manifest itself stays readable: it holds no weights.
With ``spec.artifacts.serverSideEncryption`` every upload and the manifest ask S3
to encrypt them (``rayrelay_core.store.sse_args``).

An S3 outage during the publication is waited out (``storewait.hold``): each
upload and the manifest write is retried with backoff and jitter for up to
``RAYRELAY_STORE_WAIT_SECONDS``, so the run completes when S3 returns. Past that
budget the StoreError propagates (the attempt fails with ``StorageError``, and the
operator's next attempt publishes into a new folder); the manifest is then not
written, so a half-uploaded publication is never named by any manifest.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from rayrelay_core.runs import (
    DataLineage,
    EncryptionInfo,
    FileEntry,
    JobDocument,
    Lineage,
    Manifest,
    Parity,
    PruningInfo,
    RunLayout,
    TokenizerInfo,
    VariantInfo,
    publish_id_for,
    publish_rel,
    spec_hash,
)
from rayrelay_core.store import join, open_store, sha256_file, sse_args
from rayrelay_workloads import envelope, quality
from rayrelay_workloads.data import LoadedData
from rayrelay_workloads.export import ExportResult, RuntimeVariant
from rayrelay_workloads.quality import Int8Decision, VariantDecision
from rayrelay_workloads.storewait import StoreWait, hold


def package_version() -> str:
    try:
        return metadata.version("rayrelay")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def lineage_of(job: JobDocument, data: Any) -> Lineage:
    """Where an artifact set came from: the TrainingJob, its data files (with sha256), the code,
    and with ``spec.distillation`` the teacher's run and manifest digest."""
    return Lineage(
        training_job_uid=job.uid,
        namespace=job.namespace,
        name=job.name,
        generation=job.generation,
        spec_hash=spec_hash(job.spec),
        data=[
            DataLineage(uri=data.train.uri, sha256=data.train.sha256),
            DataLineage(uri=data.validation.uri, sha256=data.validation.sha256),
        ],
        base_model=job.spec.model.source,
        package_version=package_version(),
        teacher=job.teacher if job.spec.distillation is not None else None,
    )


def build_manifest(
    job: JobDocument,
    result: ExportResult,
    data: LoadedData,
    decision: Int8Decision,
    files: list[FileEntry],
    root: str = "",
    bf16: VariantDecision | None = None,
) -> Manifest:
    """The manifest of ``files``; ``root`` is the publication's folder (relative to the run).

    ``bf16``: the gate's decision on the bf16 variant (``quality.bf16_decision``); it is
    listed with fp32's file, the runtime that serves it and what ran when it was measured,
    or, when the export could not measure it, as not accepted with the reason."""

    def rel(path: str) -> str:
        return join(root, path) if root else path

    variants = variant_infos(job, result, decision, {f.path: f.size for f in files}, rel, bf16)
    spec = job.spec
    metrics = dict(result.metrics)
    for variant, acc in result.accuracy.items():
        metrics[f"accuracy_{variant}"] = acc
    return Manifest(
        run_id=job.run_id,
        created_at=timestamp(),
        files=files,
        variants=variants,
        recommended_variant=decision.recommended_variant,
        parity=Parity(
            max_abs_logit_diff_fp32=result.max_diff_fp32,
            max_abs_logit_diff_int8=result.max_diff_int8,
            tolerance=spec.export.parity_tolerance,
            passed=result.max_diff_fp32 <= spec.export.parity_tolerance,
            samples=result.samples,
        ),
        labels=result.labels,
        tokenizer=TokenizerInfo(
            path=rel("hf"),
            max_seq_length=spec.hyperparameters.max_seq_length,
            model_input_names=result.input_names,
            lower_case=result.lower_case,
        ),
        lineage=lineage_of(job, data),
        metrics=metrics,
    )


def timestamp() -> str:
    """A manifest's ``created_at``: now, UTC, to the second."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def onnx_variants(
    root: str, files: list[FileEntry], fp32_file: str, int8_file: str | None, decision: Int8Decision
) -> dict[str, VariantInfo]:
    """The variants of a task whose export writes an fp32 ONNX file and, maybe, an int8 one:
    PyTorch (no file), fp32, and int8 as the gate decided, each with its published path and size."""
    sizes = {f.path: f.size for f in files}
    fp32 = join(root, fp32_file)
    variants = {
        "pytorch": VariantInfo(file=None, accepted=True),
        "fp32": VariantInfo(file=fp32, size=sizes.get(fp32)),
    }
    if int8_file:
        int8 = join(root, int8_file)
        variants["int8"] = VariantInfo(
            file=int8, accepted=decision.accepted, reason=decision.reason, size=sizes.get(int8)
        )
    return variants


def variant_infos(
    job: JobDocument,
    result: ExportResult,
    decision: Int8Decision,
    sizes: dict[str, int],
    rel: Callable[[str], str],
    bf16: VariantDecision | None,
) -> dict[str, VariantInfo]:
    """The manifest's variants: PyTorch, fp32, int8 (the gate's ``decision``), bf16, other formats."""
    fp32_file = rel(result.fp32_file)
    variants = {
        "pytorch": VariantInfo(file=None, accuracy=result.accuracy.get("pytorch"), accepted=True),
        "fp32": VariantInfo(file=fp32_file, accuracy=result.accuracy.get("fp32"), size=sizes.get(fp32_file)),
    }
    if result.int8_file:
        int8_file = rel(result.int8_file)
        variants["int8"] = VariantInfo(
            file=int8_file,
            accuracy=result.accuracy.get("int8"),
            accepted=decision.accepted,
            reason=decision.reason,
            size=sizes.get(int8_file),
        )
    if bf16 is not None and (result.bf16 is not None or result.bf16_missing):
        variants["bf16"] = bf16_info(
            result.bf16, bf16, fp32_file, sizes.get(fp32_file), result.accuracy.get("bf16")
        )
    for name, extra in result.extra_files.items():  # other formats (export.targets), e.g. fp32-ort
        path = rel(extra)
        # A format of int8 is as good as int8 itself: the same gate decides. LiteRT's int8 is a
        # quantisation of its own (ai-edge-quantizer), so the gate judges its own accuracy
        # against LiteRT fp32's.
        int8_based = name.startswith("int8")
        gate = decision
        if name == "int8-tflite":
            fp32_tflite = result.accuracy.get("fp32-tflite", result.accuracy.get("fp32", 0.0))
            gate = quality.int8_decision(job.spec.quality_gate, fp32_tflite, result.accuracy.get(name))
        variants[name] = VariantInfo(
            file=path,
            accuracy=result.accuracy.get(name),
            accepted=gate.accepted if int8_based else True,
            reason=gate.reason if int8_based else None,
            size=sizes.get(path),
        )
    return variants


def bf16_info(
    ran: RuntimeVariant | None,
    bf16: VariantDecision,
    fp32_file: str | None,
    fp32_size: int | None,
    accuracy: float | None = None,
    logits: bool = True,
) -> VariantInfo:
    """bf16 is served from fp32's file by another runtime; unmeasured, it is listed as not accepted.

    ``ran``: what the export measured (None: not measured); ``logits``: whether the task's
    figures include the logit differences (classification's; an embedding model has none)."""
    measured = ran is not None
    with_logits = ran if measured and logits else None
    return VariantInfo(
        file=fp32_file if measured else None,
        accuracy=accuracy,
        accepted=bf16.accepted and measured,
        reason=bf16.reason,
        size=fp32_size if measured else None,
        runtime=ran.runtime if ran is not None else "openvino",
        measured=ran.measured if ran is not None else None,
        max_abs_logit_diff=with_logits.max_diff_pytorch if with_logits else None,
        max_abs_logit_diff_fp32=with_logits.max_diff_fp32 if with_logits else None,
        labels_equal_fp32=with_logits.labels_equal_fp32 if with_logits else None,
    )


def store_sse(job: JobDocument) -> dict[str, str] | None:
    sse = job.spec.artifacts.server_side_encryption
    return sse_args(str(sse.type), sse.kms_key_id) if sse is not None else None


def _data_key(job: JobDocument, environ: dict[str, str] | None) -> tuple[bytes | None, EncryptionInfo | None]:
    """With ``spec.artifacts.encryption``: a new data key for this publication and the manifest's record
    of it (wrapped with the key-encryption key read from ``environ``); else (None, None)."""
    encryption = job.spec.artifacts.encryption
    if encryption is None:
        return None, None
    kek = envelope.key_from_env(environ)
    data_key = envelope.new_data_key()
    info = EncryptionInfo(
        scheme=envelope.SCHEME,
        key_secret=encryption.key_secret,
        wrapped_data_key=envelope.wrap_data_key(kek, data_key, job.run_id),
    )
    return data_key, info


class ManifestBuilder(Protocol):
    """A task's manifest of one publication: ``files`` as uploaded, ``root`` their folder (relative to the run)."""

    def __call__(self, files: list[FileEntry], root: str) -> Manifest: ...


EXPORT_FOLDERS = ("hf", "onnx", "ort", "tflite")  # what an export may write that a replica reads


def publish(
    job: JobDocument,
    result: ExportResult,
    data: LoadedData,
    decision: Int8Decision,
    token: str | None = None,
    environ: dict[str, str] | None = None,
    pruning: PruningInfo | None = None,
    wait: StoreWait | None = None,
    bf16: VariantDecision | None = None,
) -> tuple[Manifest, str]:
    """Publish a classification export: :func:`publish_folder` with :func:`build_manifest`.

    ``bf16``: the gate's decision on the bf16 variant; ``pruning``: spec.optimization.pruning's
    record (``prune.py``), None without it. The other arguments are :func:`publish_folder`'s."""

    def build(files: list[FileEntry], root: str) -> Manifest:
        manifest = build_manifest(job, result, data, decision, files, root, bf16=bf16)
        manifest.pruning = pruning
        return manifest

    return publish_folder(job, result.out_dir, build, token=token, environ=environ, wait=wait)


def publish_folder(
    job: JobDocument,
    out_dir: Path,
    build: ManifestBuilder,
    *,
    folders: tuple[str, ...] = EXPORT_FOLDERS,
    token: str | None = None,
    environ: dict[str, str] | None = None,
    wait: StoreWait | None = None,
) -> tuple[Manifest, str]:
    """Upload ``folders`` of ``out_dir`` into a new publication folder, then ``build``'s manifest.

    Returns the manifest and its URI (the run's ``manifest.json``). ``token`` names
    the publication (random when not given; tests pass their own). ``environ``: where
    the encryption key is read (default ``os.environ``). ``wait`` (optional) sums the
    retries and the seconds spent waiting for the store (``storewait.hold``). The manifest
    gets the publication's encryption record (None without ``spec.artifacts.encryption``).
    """
    layout = RunLayout(job.run_uri)
    store = open_store(layout.base, job.endpoint_url, sse=store_sse(job))
    root = publish_rel(publish_id_for(job.attempt, token or uuid.uuid4().hex[:12]))
    data_key, info = _data_key(job, environ)
    files: list[FileEntry] = []
    sealed_dir = Path(tempfile.mkdtemp(prefix="rr-sealed-")) if data_key else None
    try:
        for folder in folders:
            for path in sorted((out_dir / folder).rglob("*")):
                if not path.is_file():
                    continue
                rel = join(root, path.relative_to(out_dir).as_posix())
                entry, sent = _prepare_file(path, rel, data_key, sealed_dir)
                files.append(entry)
                target = join(layout.base, rel)
                hold(lambda: store.upload(sent, target), f"publish {rel}", wait=wait)  # noqa: B023 - called now
                if sent != path:
                    sent.unlink()
    finally:
        if sealed_dir is not None:
            shutil.rmtree(sealed_dir, ignore_errors=True)
    manifest = build(files, root)
    manifest.encryption = info
    body = manifest.to_json().encode()
    hold(lambda: store.write_bytes(layout.manifest, body), "publish manifest.json", wait=wait)
    return manifest, layout.manifest


def _prepare_file(
    path: Path, rel: str, data_key: bytes | None, sealed_dir: Path | None
) -> tuple[FileEntry, Path]:
    """The manifest entry of one file and the local file to upload (its ciphertext when encrypting)."""
    plain_sha, plain_size = sha256_file(path), path.stat().st_size
    if data_key is None or sealed_dir is None:
        return FileEntry(path=rel, sha256=plain_sha, size=plain_size), path
    sealed = sealed_dir / rel
    envelope.encrypt_file(data_key, path, sealed, rel)
    entry = FileEntry(
        path=rel,
        sha256=sha256_file(sealed),
        size=sealed.stat().st_size,
        plaintext_sha256=plain_sha,
        plaintext_size=plain_size,
    )
    return entry, sealed
