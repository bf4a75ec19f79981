"""Runs and their documents: the contract between the control plane and the workloads.

A TrainingJob's work is a *run* stored at
``{artifacts.uri}/{namespace}/{trainingjob}/{run-id}/`` (``RunLayout``: ``checkpoints/``,
``published/<publish-id>/{hf,onnx}/``, ``progress.json``, ``failure.json``,
``manifest.json``). Each attempt that publishes writes its files under a prefix of
its own (``publish_id_for``: the attempt number and a random token) that nobody
writes again, then replaces ``manifest.json``, whose file paths (relative to the
run folder) point into that prefix: an artifact set, once listed by a manifest,
never changes, so a replica that read a manifest fetches exactly its files even
while a later (or overlapping) attempt publishes. The run id
is derived from the spec hash, so the same spec always maps to the same folder: a
retried attempt resumes from that folder's latest checkpoint (with
``checkpointing.resume``, the default, every attempt uses the same Ray Train run
name, ``rayrelay_workloads.train.run_name_for``, and Ray Train restores it), and
`rayrelay run` can reuse a finished run whose spec hash matches.

Four small JSON documents cross the boundary between the control plane and the
workloads; the operator / CLI writes the first, the workloads the other three:

- ``job.json`` is not stored; the ``JobDocument`` travels in the entrypoint
  (``python -m rayrelay_workloads.train_job --job-json '<json>'``).
- ``progress.json`` is rewritten by rank 0 every few seconds while it runs.
- ``failure.json`` says why a run failed (reason + message) before it exits.
- ``manifest.json`` is written last; a run without it is incomplete.

Everything here is pure (no clock, no I/O) apart from the explicit store
helpers at the bottom.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from rayrelay_core.api import ModelDeploymentSpec, TrainingJobSpec
from rayrelay_core.store import NotFound, Store, TooLarge, bounded, join, sha256_bytes

MANIFEST_VERSION = 1
# The environment variable that carries the key of spec.artifacts.encryption.keySecret
# (the Secret's key of the same name) into the Ray processes that publish or serve.
ENCRYPTION_KEY_ENV = "RAYRELAY_ENCRYPTION_KEY"

# Caps on what is read from a run folder (docs/security.md, finding 3): whoever can
# write the run folder (or answer for its S3 endpoint) must not be able to make the
# operator or a replica hold an endless document. progress.json and failure.json are
# a few hundred bytes. A manifest lists every published file (~150 bytes each; a run
# has tens), so 8 MiB leaves room for a model split into thousands of shards.
DOC_MAX_BYTES = 1 << 20
MANIFEST_MAX_BYTES = 8 << 20

# Spec fields that do not change what a run produces: changing them must not
# start a new run (nor invalidate a finished one).
_NON_RESULT_FIELDS = ("suspend", "ttlSecondsAfterFinished", "failurePolicy", "backend", "image")


class Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def spec_hash(spec: TrainingJobSpec) -> str:
    """sha256 of the result-defining part of a TrainingJob spec (defaults filled in)."""
    wire = spec.wire()
    for field in _NON_RESULT_FIELDS:
        wire.pop(field, None)
    # Where artifacts are stored does not change what they are; whether they are
    # encrypted does (a plain run must not be reused for an encrypted spec, nor the
    # other way round), so encryption stays in the hash, where it is set.
    encryption = (wire.pop("artifacts", None) or {}).get("encryption")
    if encryption:
        wire["artifactsEncryption"] = encryption
    # export.targets at its default leaves the hash (and the run ids) as before it existed.
    if wire.get("export", {}).get("targets") == ["onnx"]:
        wire["export"].pop("targets")
    return hashlib.sha256(canonical_json(wire).encode()).hexdigest()


def run_id_for(spec: TrainingJobSpec) -> str:
    return f"run-{spec_hash(spec)[:12]}"


class RunLayout:
    """Where each file of a run lives, from the run's base URI."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    @classmethod
    def for_job(cls, artifacts_uri: str, namespace: str, name: str, run_id: str) -> RunLayout:
        return cls(join(artifacts_uri, namespace, name, run_id))

    @property
    def checkpoints(self) -> str:
        return join(self.base, "checkpoints")

    @property
    def hf(self) -> str:
        return join(self.base, "hf")

    @property
    def onnx(self) -> str:
        return join(self.base, "onnx")

    @property
    def manifest(self) -> str:
        return join(self.base, "manifest.json")

    def publication(self, publish_id: str) -> str:
        """The immutable folder of one publication (``publish_rel`` below the run folder)."""
        return join(self.base, publish_rel(publish_id))

    @property
    def progress(self) -> str:
        return join(self.base, "progress.json")

    @property
    def failure(self) -> str:
        return join(self.base, "failure.json")


def publish_id_for(attempt: int, token: str) -> str:
    """The id of one attempt's publication; ``token`` (random, from the caller) keeps two
    publications of the same attempt number (a restarted driver) apart."""
    return f"attempt-{attempt}-{token}"


def publish_rel(publish_id: str) -> str:
    """Where a publication's files live, relative to the run folder."""
    return f"published/{publish_id}"


class TeacherLineage(Doc):
    """The teacher of a distilled run (spec.distillation): which published run, which bytes."""

    manifest_uri: str
    digest: str = Field(description="sha256:<hex> of the teacher's manifest.json.")
    run_id: str | None = Field(default=None, description="The teacher's run id (its manifest's runId).")
    training_job: str | None = Field(
        default=None, description="The teacher TrainingJob's name, when named by trainingJobRef."
    )


class JobDocument(Doc):
    """Everything the training entrypoint needs, passed by the control plane."""

    namespace: str
    name: str
    uid: str = ""
    generation: int = 1
    run_id: str
    run_uri: str = Field(description="Base URI of the run folder (RunLayout.base).")
    attempt: int = 1
    spec: TrainingJobSpec
    endpoint_url: str | None = None
    # spec.distillation.teacher.trainingJobRef, resolved by the control plane to the teacher
    # TrainingJob's published manifest and its digest (the workloads cannot look it up).
    teacher: TeacherLineage | None = None
    # No "resume point" field: an attempt resumes from its own run folder's latest
    # checkpoint (same run id, same Ray Train run name), so the submitter has nothing
    # to pass. Unknown keys are ignored (``Doc``), so a submitter that still sends
    # ``resumeFrom`` keeps working.


class CheckpointInfo(Doc):
    step: int
    uri: str
    accuracy: float | None = None


class ProgressDoc(Doc):
    """Written by rank 0 while the run goes; read to fill status.progress."""

    stage: str = Field(description="Training, Pruning, Exporting, Optimizing, Publishing, Succeeded, Failed.")
    attempt: int = 1
    epoch: float | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    val_perplexity: float | None = None  # text-generation: at the latest checkpoint
    samples_per_second: float | None = None
    eta_seconds: float | None = None
    update_time: str | None = None
    last_checkpoint: CheckpointInfo | None = None
    message: str | None = None


class FailureDoc(Doc):
    """Why a run failed; reason is a CamelCase condition reason."""

    reason: str
    message: str
    retryable: bool = True
    # The attempt that wrote it: a document left by an earlier attempt must not be
    # read as the reason the current one failed. None = not tied to an attempt.
    attempt: int | None = None


class FileEntry(Doc):
    path: str = Field(description="Path relative to the run folder.")
    sha256: str = Field(description="Of the bytes stored (the ciphertext when encrypted): transfer checks.")
    size: int
    plaintext_sha256: str | None = Field(
        default=None, description="Encrypted sets: sha256 of the decrypted file (load checks)."
    )
    plaintext_size: int | None = None


class EncryptionInfo(Doc):
    """How the files of an encrypted artifact set were encrypted (never the key itself)."""

    scheme: str = Field(description="rayrelay_workloads.envelope.SCHEME")
    key_secret: str | None = Field(default=None, description="Name of the Secret the key came from.")
    wrapped_data_key: str = Field(description="The run's data key, AES-GCM-wrapped by the Secret's key.")


class VariantInfo(Doc):
    file: str | None = Field(default=None, description="Relative path of the model file.")
    accuracy: float | None = None
    accepted: bool = True
    reason: str | None = None
    size: int | None = None
    runtime: str | None = Field(
        default=None, description="The runtime that serves it, when not onnxruntime (bf16: openvino)."
    )
    measured: str | None = Field(
        default=None,
        description=(
            "What ran when the export measured it, when that is not plain onnxruntime: e.g. "
            "'openvino 2026.4.1, bf16' or 'openvino 2026.4.1, bf16-emulated' (the export host "
            "lacks bf16 instructions and OpenVINO emulated them; the numerics are bf16's)."
        ),
    )
    max_abs_logit_diff: float | None = Field(
        default=None, description="Largest |logit difference| to PyTorch on the validation set."
    )
    max_abs_logit_diff_fp32: float | None = Field(
        default=None, description="Largest |logit difference| to ONNX fp32 on the validation set."
    )
    labels_equal_fp32: float | None = Field(
        default=None, description="Fraction of validation texts given the same label as ONNX fp32."
    )


class Parity(Doc):
    max_abs_logit_diff_fp32: float | None = None
    max_abs_logit_diff_int8: float | None = None
    tolerance: float
    passed: bool
    samples: int = 0


class TokenizerInfo(Doc):
    path: str = Field(default="hf", description="Folder (relative) holding the tokenizer files.")
    max_seq_length: int
    model_input_names: list[str] = Field(default_factory=list)
    lower_case: bool | None = None


class DataLineage(Doc):
    uri: str
    sha256: str


class Lineage(Doc):
    training_job_uid: str = ""
    namespace: str = ""
    name: str = ""
    generation: int = 1
    spec_hash: str
    data: list[DataLineage] = Field(default_factory=list)
    base_model: str
    package_version: str
    teacher: TeacherLineage | None = Field(
        default=None, description="spec.distillation: the teacher's run and manifest digest."
    )


class PruningInfo(Doc):
    """What spec.optimization.pruning removed before export (rayrelay_workloads.prune)."""

    heads_fraction: float
    ffn_fraction: float
    heads_per_layer_before: int
    heads_per_layer_after: int
    heads_kept: list[list[int]] = Field(description="Per layer, the original indices of the heads kept.")
    ffn_per_layer_before: int
    ffn_per_layer_after: int
    parameters_before: int
    parameters_after: int
    importance: str = Field(default="|activation x gradient|", description="How units were ranked.")
    importance_batches: int
    recovery_steps: int
    accuracy_unpruned: float | None = Field(
        default=None, description="Validation accuracy (PyTorch) of the trained model before pruning."
    )
    accuracy_before_recovery: float | None = None
    accuracy_after_recovery: float | None = None
    seconds: float | None = None


class Manifest(Doc):
    """The published artifact set: every file with sha256 and size, metrics, parity, lineage.

    Written last (``RunLayout.manifest``): a run without it is incomplete and never
    served. Its own sha256 is the artifact set's digest (``read_manifest``).
    """

    version: int = MANIFEST_VERSION
    run_id: str
    created_at: str
    files: list[FileEntry]
    variants: dict[str, VariantInfo] = Field(
        description=(
            "pytorch, fp32, int8, bf16 (OpenVINO running fp32's file in bf16), and with "
            "export.targets ort: fp32-ort, int8-ort (.ort files); with tflite: fp32-tflite, "
            "int8-tflite (LiteRT .tflite files, never served by the endpoint: for edge devices)."
        )
    )
    recommended_variant: str = Field(
        description="int8 when accepted, else fp32: what an auto replica loads first, then times against the rest."
    )
    task: str = Field(
        default="sequence-classification",
        description=(
            "The TrainingJob's model.task; text-generation sets are served by textgen.serving, "
            "sentence-embedding sets by embedding.serving."
        ),
    )
    generation: dict[str, Any] | None = Field(
        default=None,
        description="text-generation: the decoder's inputs, EOS id, context length and parity figures.",
    )
    embedding: dict[str, Any] | None = Field(
        default=None,
        description=(
            "sentence-embedding: the vector size and output name, and each variant's cosine similarity "
            "to PyTorch and recall@1 / MRR on the validation pairs."
        ),
    )
    parity: Parity
    labels: list[str]
    tokenizer: TokenizerInfo
    lineage: Lineage
    metrics: dict[str, float] = Field(default_factory=dict)
    encryption: EncryptionInfo | None = Field(
        default=None, description="Set when every file is encrypted (serving needs the key)."
    )
    pruning: PruningInfo | None = Field(
        default=None, description="Set when spec.optimization.pruning made the model smaller before export."
    )

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def servable_variant(self, wanted: str) -> str:
        """Resolve auto/fp32/int8 against what this run published and accepted."""
        if wanted in ("auto", "", None):
            return self.recommended_variant
        info = self.variants.get(wanted)
        if info is None or info.file is None:
            raise ManifestError(f"variant {wanted!r} is not in this artifact set")
        if not info.accepted:
            raise ManifestError(f"variant {wanted!r} was rejected by the quality gate: {info.reason}")
        return wanted


class ManifestError(ValueError):
    """A manifest is missing, malformed, or does not match its files."""


def parse_manifest(data: bytes, uri: str = "manifest.json") -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        # Where and what, never the input: the document's text is not ours to echo.
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0] if errors else {"loc": (), "msg": str(exc.title)}
        where = ".".join(str(part) for part in first["loc"]) or "(document)"
        raise ManifestError(
            bounded(
                f"{uri}: not a valid rayrelay manifest: {len(errors)} problem(s), first at {where}: "
                f"{first['msg']}"
            )
        ) from None
    except ValueError as exc:
        raise ManifestError(bounded(f"{uri}: not a valid rayrelay manifest: {type(exc).__name__}")) from None


def read_manifest(store: Store, uri: str, max_bytes: int = MANIFEST_MAX_BYTES) -> tuple[Manifest, str]:
    """The manifest at ``uri`` and its sha256 (the artifact set's digest); at most ``max_bytes``."""
    try:
        data = store.read_bytes(uri, max_bytes=max_bytes)
    except NotFound as exc:
        raise ManifestError(f"{uri}: no manifest (the run is missing or incomplete)") from exc
    except TooLarge as exc:
        raise ManifestError(str(exc)) from None
    return parse_manifest(data, uri), sha256_bytes(data)


def read_doc(store: Store, uri: str, model: type[Doc], max_bytes: int = DOC_MAX_BYTES) -> Any:
    """A progress/failure document, or None when it is not there (yet).

    Larger than ``max_bytes``: ``TooLarge`` (a ``StoreError``), read no further.
    """
    try:
        data = store.read_bytes(uri, max_bytes=max_bytes)
    except NotFound:
        return None
    try:
        return model.model_validate_json(data)
    except ValueError:
        # A half-written document from a store without atomic writes: skip a beat.
        return None


def serve_app_args(
    name: str,
    namespace: str,
    manifest_uri: str,
    spec: ModelDeploymentSpec,
    endpoint_url: str | None,
    digest: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """The arguments of the Serve application builder (JSON-serialisable).

    ``digest`` (``sha256:<hex>`` of the manifest, as ``read_manifest`` gives it) is the
    artifact set the caller resolved: the replica refuses to load a manifest with
    another sha256 (``rayrelay_workloads.serve.artifacts.check_digest``).
    """
    args: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "manifestUri": manifest_uri,
        "variant": str(spec.model.effective_variant),
        "endpointUrl": endpoint_url,
        "spec": spec.wire(),
    }
    if task and task != "sequence-classification":
        args["task"] = task  # the manifest's task picks the replica class (serve/app.py)
    if digest:
        args["digest"] = digest if digest.startswith("sha256:") else f"sha256:{digest}"
    return args
