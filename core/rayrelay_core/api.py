"""The rayrelay API: typed models of the TrainingJob and ModelDeployment resources.

This module is the single source of truth for both custom resources. The CRDs in
``crds/`` are generated from these models (``rayrelay_core.crdgen``), ``rayrelay
validate`` runs them offline (``rayrelay_core.validation``), and the operator and
the workloads parse a resource's spec once into these models and pass the models
around, never raw dicts.

Conventions:
- Field names are camelCase on the wire (as in every Kubernetes API) and
  snake_case in Python; ``model_validate`` accepts the wire form, ``wire()`` dumps
  it.
- Every field carries a description (it becomes ``kubectl explain`` text).
- Cross-field rules are written twice on purpose, in the same place: as a
  pydantic validator (Python, field path in the error) and as a CEL expression
  (``x-kubernetes-validations`` in the CRD, run by the API server). Tests evaluate
  each CEL rule on the same objects as the validator so they cannot drift apart.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "rayrelay.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A URI of an artifact store or a data file: s3://bucket/key, file:///abs/path,
# or a plain filesystem path (relative paths only make sense for local runs).
S3_URI_PATTERN = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$"
STORE_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file://.+|[^:]+)$"
# A published manifest.json in an artifact store (ModelDeployment, distillation teachers).
MANIFEST_URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/.+|file://.+|[^:]+)manifest\.json$"
# Kubernetes object names (DNS-1123 subdomain, kept to 63 so children fit labels).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes resource quantity (memory), e.g. 4Gi, 512Mi, 1000000000.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$"


class CelRule:
    """A CEL rule attached to a model; becomes one entry of x-kubernetes-validations.

    ``field_path`` is where the error is reported (relative to the object the rule
    sits on, as in the CRD's ``fieldPath``), ``message`` what users read.
    """

    def __init__(self, rule: str, message: str, field_path: str | None = None) -> None:
        self.rule = rule
        self.message = message
        self.field_path = field_path

    def as_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        return out


class RuleError(ValueError):
    """A cross-field rule failed; carries the field path relative to the model."""

    def __init__(self, loc: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


class ApiModel(BaseModel):
    """Base of every API model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )
    # CEL rules of this object, rendered into the CRD by crdgen.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes (camelCase, no unset Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)


# --------------------------------------------------------------------------- enums


class Task(StrEnum):
    SEQUENCE_CLASSIFICATION = "sequence-classification"
    TEXT_GENERATION = "text-generation"
    SENTENCE_EMBEDDING = "sentence-embedding"


class DataFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Quantize(StrEnum):
    NONE = "none"
    INT8 = "int8"


class Backend(StrEnum):
    KUBERAY = "kuberay"
    RAY = "ray"


class Variant(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    INT8 = "int8"
    BF16 = "bf16"


class ExportTarget(StrEnum):
    ONNX = "onnx"
    ORT = "ort"
    TFLITE = "tflite"


class SseType(StrEnum):
    SSE_S3 = "SSE-S3"
    SSE_KMS = "SSE-KMS"


class ExecutionProvider(StrEnum):
    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"


class TrainingPhase(StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    EXPORTING = "Exporting"
    OPTIMIZING = "Optimizing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class DeploymentPhase(StrEnum):
    PENDING = "Pending"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# ----------------------------------------------------------------- TrainingJob spec


class ModelSource(ApiModel):
    """The base model to fine-tune."""

    source: str = Field(
        min_length=1,
        max_length=1024,
        description=(
            "Where the base model comes from: a Hugging Face hub id (e.g. "
            "'bert-base-uncased'), a local path to a save_pretrained folder, an "
            "s3:// prefix holding one, or pkg://<python-package>/<folder> for a "
            "model shipped inside an installed Python package."
        ),
    )
    task: Task = Field(
        default=Task.SEQUENCE_CLASSIFICATION,
        description=(
            "The fine-tuning task: sequence-classification (an encoder with a label head, served "
            "by OIP infer) or text-generation (causal-LM fine-tuning of a GPT-style decoder, "
            "exported with its KV cache, served by OIP generate/generate_stream and OpenAI "
            "/v1/completions) or sentence-embedding (an encoder trained on anchor/positive pairs "
            "with in-batch negatives, mean-pooled and normalised, served by OpenAI /v1/embeddings "
            "and OIP infer)."
        ),
    )
    num_labels: int | None = Field(
        default=None,
        ge=2,
        le=1000,
        description=(
            "Number of classes. When omitted it is derived from the training data's "
            "label set; when given, the data must not hold more labels. "
            "sequence-classification only."
        ),
    )
    num_layers: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description=(
            "Keep only the first N encoder layers of the base model: a smaller, faster student "
            "(e.g. 3 of MiniLM's 6, about half the latency), usually trained with distillation. "
            "All layers when omitted; more than the model has is an error when it loads. "
            "sequence-classification only."
        ),
    )


class DataSpec(ApiModel):
    """The training and validation data."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "has(self.promptField) == has(self.completionField)",
            "promptField and completionField go together",
            ".promptField",
        ),
    )

    train: str = Field(
        pattern=STORE_URI_PATTERN,
        max_length=2048,
        description="URI of the training set: s3://bucket/key, file:///path or a path.",
    )
    validation: str = Field(
        pattern=STORE_URI_PATTERN,
        max_length=2048,
        description="URI of the validation set, same forms as train.",
    )
    format: DataFormat = Field(default=DataFormat.JSONL, description="File format of both sets.")
    text_field: str = Field(
        default="text", min_length=1, max_length=128, description="Field holding the text."
    )
    label_field: str = Field(
        default="label",
        min_length=1,
        max_length=128,
        description=(
            "Field holding the label (an integer id or a string class name); not read for text-generation."
        ),
    )
    prompt_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "text-generation only: field holding a prompt (with completionField). Rows with "
            "textField are trained on in full; prompt/completion rows only on the completion. "
            "Default 'prompt'."
        ),
    )
    completion_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="text-generation only: field holding the completion of promptField. Default 'completion'.",
    )
    anchor_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="sentence-embedding only: field holding a pair's anchor text. Default 'anchor'.",
    )
    positive_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "sentence-embedding only: field holding the text that matches the anchor. Default 'positive'."
        ),
    )
    negative_field: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "sentence-embedding only: field holding an optional hard negative (a text that does not "
            "match the anchor); rows may leave it out. Default 'negative'."
        ),
    )

    @model_validator(mode="after")
    def _prompt_completion_together(self) -> DataSpec:
        if (self.prompt_field is None) != (self.completion_field is None):
            raise RuleError(("promptField",), "promptField and completionField go together")
        return self


class Hyperparameters(ApiModel):
    """Optimisation settings of the fine-tuning run."""

    epochs: int = Field(default=2, ge=1, le=100, description="Passes over the training set.")
    batch_size: int = Field(
        default=32, ge=1, le=4096, description="Per-worker batch size (samples per step)."
    )
    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="Peak learning rate of AdamW.")
    max_seq_length: int = Field(
        default=128, ge=8, le=8192, description="Texts are truncated to this many tokens."
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed for a repeatable run.")
    warmup_ratio: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Fraction of steps with linear warmup; the rest decays linearly to 0.",
    )
    weight_decay: float = Field(default=0.01, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        default=1.0, gt=0, le=100, description="Gradients are clipped to this global norm."
    )


class TrainingResources(ApiModel):
    """The Ray Train workers."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "self.precision == 'fp32' || self.gpusPerWorker > 0",
            "bf16 and fp16 precision need GPUs (set gpusPerWorker > 0)",
            ".precision",
        ),
    )

    num_workers: int = Field(default=1, ge=1, le=256, description="Number of Ray Train workers.")
    cpus_per_worker: float = Field(default=1, gt=0, le=256, description="CPUs reserved for each worker.")
    gpus_per_worker: int = Field(
        default=0, ge=0, le=16, description="GPUs for each worker; > 0 trains on GPUs with NCCL."
    )
    memory: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description="Memory for each worker as a Kubernetes quantity (e.g. 8Gi).",
    )
    precision: Precision = Field(
        default=Precision.FP32,
        description="Training precision; bf16 and fp16 use autocast and need GPUs.",
    )

    @model_validator(mode="after")
    def _precision_needs_gpu(self) -> TrainingResources:
        if self.precision != Precision.FP32 and self.gpus_per_worker == 0:
            raise RuleError(("precision",), "bf16 and fp16 precision need GPUs (set gpusPerWorker > 0)")
        return self


class Checkpointing(ApiModel):
    """When checkpoints are written and which are kept."""

    every_n_steps: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Also checkpoint every N optimizer steps; 0 = only at each epoch end.",
    )
    keep: int = Field(
        default=2, ge=1, le=100, description="Keep the K best checkpoints by validation accuracy."
    )
    resume: bool = Field(
        default=True,
        description="Continue from the latest checkpoint of an earlier attempt or run.",
    )


class FailurePolicy(ApiModel):
    """How failures are retried and how long a job may run."""

    max_failures: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Worker-group restarts inside one attempt (Ray Train FailureConfig).",
    )
    backoff_limit: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Attempts (whole resubmissions) after the first before the job fails.",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=30 * 24 * 3600,
        description="Fail the job when it has run longer than this many seconds.",
    )


class ExportSpec(ApiModel):
    """ONNX export, optimisation and quantisation of the trained model."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.targets) || 'onnx' in self.targets",
            "export.targets must include onnx (the format that is served)",
            ".targets",
        ),
    )

    opset: int = Field(default=17, ge=14, le=21, description="ONNX opset version.")
    optimize: bool = Field(
        default=True, description="Fuse the graph with onnxruntime's transformer optimizer."
    )
    quantize: Quantize = Field(
        default=Quantize.INT8, description="Also produce a dynamic int8 model (int8) or not."
    )
    parity_tolerance: float = Field(
        default=1e-3,
        gt=0,
        le=1,
        description="Largest |logit difference| allowed between ONNX fp32 and PyTorch.",
    )
    targets: list[ExportTarget] = Field(
        default_factory=lambda: [ExportTarget.ONNX],
        min_length=1,
        max_length=4,
        description=(
            "Formats to publish: onnx (always; what is served), ort (onnxruntime's mobile "
            "format, .ort, with its reduced operator config) and tflite (LiteRT: model.tflite in "
            "fp32 and, with quantize int8, model.int8.tflite in dynamic-range int8, at batch 1 and "
            "the maximum sequence length; sequence-classification only), each accuracy-checked on "
            "the validation set in its own runtime."
        ),
    )
    bf16: bool | None = Field(
        default=None,
        description=(
            "Measure the bf16 variant (OpenVINO running onnx/model.onnx in bf16) on the validation "
            "set, so that replicas on CPUs with bf16 instructions (AMX) may serve it. Unset: "
            "measured where the export host has bf16 instructions, else recorded as not measured "
            "(auto then never serves it); true: measured everywhere, emulated by OpenVINO on a "
            "host without them (the pass takes many times fp32's); false: no bf16 variant."
        ),
    )

    @model_validator(mode="after")
    def _onnx_target(self) -> ExportSpec:
        if ExportTarget.ONNX not in self.targets:
            raise RuleError(("targets",), "export.targets must include onnx (the format that is served)")
        return self


class QualityGate(ApiModel):
    """Numbers a run must reach before its artifacts are published as servable."""

    min_eval_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Fail the job when the trained model's validation accuracy is lower.",
    )
    max_int8_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "Largest accuracy drop of int8 vs ONNX fp32; a larger drop rejects the int8 "
            "model (fp32 is served instead). Only with export.quantize: int8. "
            "sequence-classification only."
        ),
    )
    max_bf16_accuracy_drop: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "Largest accuracy drop of the bf16 variant (OpenVINO running the fp32 ONNX in bf16, "
            "measured on the validation set at export) vs ONNX fp32; a larger drop rejects bf16, "
            "and variant auto never serves it. Unset: any drop is accepted, but a bf16 the export "
            "could not measure (OpenVINO missing) is never accepted. sequence-classification only "
            "(text-generation publishes no bf16 variant)."
        ),
    )
    max_val_perplexity: float | None = Field(
        default=None,
        ge=1,
        le=1e12,
        description=(
            "text-generation only: fail the job when the trained model's validation perplexity "
            "(exp of the mean token loss) is higher."
        ),
    )
    max_int8_perplexity_increase: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description=(
            "text-generation only: largest relative rise of the int8 model's validation perplexity "
            "over ONNX fp32 (0.05 = 5%); a larger rise rejects int8 (fp32 is served instead)."
        ),
    )
    min_recall_at1: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "sentence-embedding only: fail the job when the trained model's recall@1 on the validation "
            "pairs is lower (each anchor's own positive must rank first among every validation positive)."
        ),
    )
    min_mrr: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description=(
            "sentence-embedding only: fail the job when the trained model's mean reciprocal rank on the "
            "validation pairs is lower."
        ),
    )
    min_int8_cosine: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description=(
            "sentence-embedding only: smallest cosine similarity allowed between an int8 embedding and "
            "PyTorch's of the same validation text; a lower one rejects int8 (fp32 is served instead)."
        ),
    )
    min_bf16_cosine: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description=(
            "sentence-embedding only: smallest cosine similarity allowed between a bf16 embedding "
            "(OpenVINO running the fp32 ONNX in bf16, measured at export) and PyTorch's of the same "
            "validation text; a lower one rejects bf16, and variant auto never serves it. Unset: any "
            "is accepted, but a bf16 the export could not measure is never accepted."
        ),
    )


class ArtifactEncryption(ApiModel):
    """Client-side encryption of every published model file (AES-256-GCM, docs/security.md)."""

    key_secret: str = Field(
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description=(
            'Secret (same namespace, label rayrelay.dev/credentials: "true") whose key '
            "RAYRELAY_ENCRYPTION_KEY holds a 256-bit key (64 hex digits or base64 of 32 bytes). "
            "A per-run data key wrapped by it encrypts every file before upload; a ModelDeployment "
            "of the run needs the same Secret."
        ),
    )


class ServerSideEncryption(ApiModel):
    """S3 server-side encryption of every object written (the store encrypts and decrypts)."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.kmsKeyId) || self.type == 'SSE-KMS'",
            "kmsKeyId is only for type SSE-KMS",
            ".kmsKeyId",
        ),
    )

    type: SseType = Field(description="SSE-S3 (AES256, S3-managed keys) or SSE-KMS (aws:kms).")
    kms_key_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=r"^\S+$",
        description="KMS key id or ARN for SSE-KMS; the bucket's default KMS key when omitted.",
    )

    @model_validator(mode="after")
    def _kms_key_only_with_kms(self) -> ServerSideEncryption:
        if self.kms_key_id is not None and self.type != SseType.SSE_KMS:
            raise RuleError(("kmsKeyId",), "kmsKeyId is only for type SSE-KMS")
        return self


class ArtifactsSpec(ApiModel):
    """Where artifacts go and how to reach the store."""

    uri: str | None = Field(
        default=None,
        pattern=STORE_URI_PATTERN,
        max_length=2048,
        description=(
            "Base URI of the artifact store (s3://bucket/prefix or a local folder). "
            "Defaults to the operator's configured store."
        ),
    )
    endpoint_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="S3 endpoint of an S3-compatible store (MinIO, moto); AWS when omitted.",
    )
    credentials_secret: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=253,
        description=(
            "Secret (same namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
            "credentials never go in the spec."
        ),
    )
    encryption: ArtifactEncryption | None = Field(
        default=None,
        description=(
            "Encrypt every model file at rest (AES-256-GCM) with a key from a Secret; serving "
            "decrypts in memory only."
        ),
    )
    server_side_encryption: ServerSideEncryption | None = Field(
        default=None,
        description="Ask S3 to encrypt each object it stores (SSE-S3 or SSE-KMS); s3:// stores only.",
    )


class TeacherJobRef(ApiModel):
    """A TrainingJob in the same namespace whose latest published run teaches."""

    name: str = Field(
        min_length=1, max_length=253, pattern=NAME_PATTERN, description="The teacher TrainingJob's name."
    )


class Teacher(ApiModel):
    """The teacher model: exactly one of trainingJobRef and manifestUri."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "has(self.trainingJobRef) != has(self.manifestUri)",
            "exactly one of trainingJobRef and manifestUri must be set",
        ),
    )

    training_job_ref: TeacherJobRef | None = Field(
        default=None,
        description=(
            "The latest published run of this TrainingJob (same namespace); the job waits "
            "(condition WaitingForTeacher) until that TrainingJob has succeeded."
        ),
    )
    manifest_uri: str | None = Field(
        default=None,
        pattern=MANIFEST_URI_PATTERN,
        max_length=2048,
        description="URI of a published manifest.json (s3://..., file://... or a path) of the teacher.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Teacher:
        if (self.training_job_ref is None) == (self.manifest_uri is None):
            raise RuleError((), "exactly one of trainingJobRef and manifestUri must be set")
        return self


class Distillation(ApiModel):
    """Knowledge distillation: train model.source (the student) on a teacher's softened logits too."""

    teacher: Teacher = Field(
        description=(
            "A published classification model with the same labels; its fp32 ONNX model scores "
            "the training texts inside the Ray Train workers."
        )
    )
    temperature: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description=(
            "Softens both logit sets before they are compared (T). 2 exposes the teacher's "
            "ranking of the wrong classes without flattening it; the soft loss is scaled by T^2 "
            "so its gradients keep their size as T changes."
        ),
    )
    alpha: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "Weight of the teacher's soft targets: loss = alpha * KL(teacher || student) * T^2 + "
            "(1 - alpha) * cross-entropy on the labels. 0.5 weighs both equally, which suits a "
            "teacher fine-tuned on the same data."
        ),
    )


class Pruning(ApiModel):
    """Structured pruning before export: the least important attention heads and FFN neurons go."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "double(self.heads) > 0.0 || double(self.ffn) > 0.0",
            "optimization.pruning removes nothing: set heads or ffn above 0",
        ),
    )

    heads: float = Field(
        default=0.0,
        ge=0,
        le=0.9,
        description=(
            "Fraction of each layer's attention heads to remove, the least important first (every "
            "layer keeps the same number, and at least one). Up to 0.9: beyond that too little "
            "of the model is left for a short recovery to repair."
        ),
    )
    ffn: float = Field(
        default=0.0,
        ge=0,
        le=0.9,
        description=(
            "Fraction of each layer's feed-forward (intermediate) neurons to remove, the least "
            "important first. The Linear layers shrink, so the exported graph is smaller and faster."
        ),
    )
    importance_batches: int = Field(
        default=8,
        ge=1,
        le=1000,
        description=(
            "Training batches on which each head's and neuron's importance (|activation x gradient|) "
            "is summed. 8 batches rank them stably and cost seconds."
        ),
    )
    recovery_steps: int = Field(
        default=100,
        ge=0,
        le=100000,
        description=(
            "Fine-tuning steps on the training data after pruning (hyperparameters' batch size and "
            "learning rate), run where the model is exported. 100 steps recover most of what "
            "moderate pruning loses at a small share of a training run; 0 skips recovery."
        ),
    )

    @model_validator(mode="after")
    def _removes_something(self) -> Pruning:
        if self.heads <= 0 and self.ffn <= 0:
            raise RuleError((), "optimization.pruning removes nothing: set heads or ffn above 0")
        return self


class OptimizationSpec(ApiModel):
    """Compression of the trained model before export (int8 quantisation is export.quantize)."""

    pruning: Pruning | None = Field(
        default=None,
        description=(
            "Remove attention heads and FFN neurons (BERT-family encoders, sequence-classification), "
            "then fine-tune briefly; off when omitted."
        ),
    )


class TrainingJobSpec(ApiModel):
    """What to fine-tune, on what, with what, and where the results go."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "!has(self.qualityGate) || !has(self.qualityGate.maxInt8AccuracyDrop) || "
            "!has(self.export) || !has(self.export.quantize) || self.export.quantize == 'int8'",
            "qualityGate.maxInt8AccuracyDrop needs export.quantize: int8",
            ".qualityGate.maxInt8AccuracyDrop",
        ),
        CelRule(
            "self.model.task == 'sequence-classification' || !has(self.model.numLabels)",
            "model.numLabels is only for task sequence-classification",
            ".model.numLabels",
        ),
        CelRule(
            "self.model.task != 'text-generation' || !has(self.qualityGate) || "
            "(!has(self.qualityGate.minEvalAccuracy) && !has(self.qualityGate.maxInt8AccuracyDrop))",
            "qualityGate.minEvalAccuracy and maxInt8AccuracyDrop are for sequence-classification; "
            "text-generation uses maxValPerplexity and maxInt8PerplexityIncrease",
            ".qualityGate",
        ),
        CelRule(
            "self.model.task == 'text-generation' || !has(self.qualityGate) || "
            "(!has(self.qualityGate.maxValPerplexity) && !has(self.qualityGate.maxInt8PerplexityIncrease))",
            "qualityGate.maxValPerplexity and maxInt8PerplexityIncrease are only for task text-generation",
            ".qualityGate",
        ),
        CelRule(
            "self.model.task == 'text-generation' || "
            "(!has(self.data.promptField) && !has(self.data.completionField))",
            "data.promptField and data.completionField are only for task text-generation",
            ".data",
        ),
        CelRule(
            "self.model.task == 'sequence-classification' || !has(self.distillation)",
            "distillation is only for task sequence-classification (a teacher's logits are label scores)",
            ".distillation",
        ),
        CelRule(
            "self.model.task == 'sequence-classification' || !has(self.model.numLayers)",
            "model.numLayers is only for task sequence-classification",
            ".model.numLayers",
        ),
        CelRule(
            "self.model.task == 'sequence-classification' || !has(self.optimization) || "
            "!has(self.optimization.pruning)",
            "optimization.pruning is only for task sequence-classification",
            ".optimization.pruning",
        ),
        CelRule(
            "self.model.task != 'text-generation' || !has(self.export) || !has(self.export.targets) || "
            "!('tflite' in self.export.targets)",
            "export.targets tflite is only for task sequence-classification",
            ".export.targets",
        ),
        CelRule(
            "self.model.task != 'sentence-embedding' || !has(self.qualityGate) || "
            "(!has(self.qualityGate.minEvalAccuracy) && !has(self.qualityGate.maxInt8AccuracyDrop) && "
            "!has(self.qualityGate.maxBf16AccuracyDrop))",
            "qualityGate.minEvalAccuracy, maxInt8AccuracyDrop and maxBf16AccuracyDrop are for "
            "sequence-classification; sentence-embedding uses minRecallAt1, minMrr, minInt8Cosine and "
            "minBf16Cosine",
            ".qualityGate",
        ),
        CelRule(
            "self.model.task == 'sentence-embedding' || !has(self.qualityGate) || "
            "(!has(self.qualityGate.minRecallAt1) && !has(self.qualityGate.minMrr) && "
            "!has(self.qualityGate.minInt8Cosine) && !has(self.qualityGate.minBf16Cosine))",
            "qualityGate.minRecallAt1, minMrr, minInt8Cosine and minBf16Cosine are only for task "
            "sentence-embedding",
            ".qualityGate",
        ),
        CelRule(
            "self.model.task == 'sentence-embedding' || "
            "(!has(self.data.anchorField) && !has(self.data.positiveField) && !has(self.data.negativeField))",
            "data.anchorField, positiveField and negativeField are only for task sentence-embedding",
            ".data",
        ),
        CelRule(
            "self.model.task != 'sentence-embedding' || !has(self.export) || !has(self.export.targets) || "
            "self.export.targets.all(t, t == 'onnx')",
            "export.targets other than onnx are not supported for task sentence-embedding",
            ".export.targets",
        ),
    )

    model: ModelSource = Field(description="The base model and task.")
    data: DataSpec = Field(description="Training and validation data.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )
    resources: TrainingResources = Field(default_factory=TrainingResources, description="Ray Train workers.")
    checkpointing: Checkpointing = Field(
        default_factory=Checkpointing, description="Checkpoint cadence and retention."
    )
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Retries and deadline.")
    export: ExportSpec = Field(
        default_factory=ExportSpec, description="ONNX export, optimisation, quantisation."
    )
    quality_gate: QualityGate = Field(default_factory=QualityGate, description="Minimum quality to publish.")
    distillation: Distillation | None = Field(
        default=None,
        description=(
            "Train the model on a teacher's softened logits as well as the labels "
            "(sequence-classification only); off when omitted."
        ),
    )
    optimization: OptimizationSpec | None = Field(
        default=None,
        description="Model compression before export (structured pruning); none when omitted.",
    )
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec, description="The artifact store.")
    backend: Backend | None = Field(
        default=None,
        description="kuberay (KubeRay RayJob) or ray (an existing Ray cluster); operator default when omitted.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Workload image for the Ray pods (kuberay backend); operator default when omitted.",
    )
    suspend: bool = Field(
        default=False,
        description="Stop the work; clearing it resumes from the latest checkpoint.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=365 * 24 * 3600,
        description="Delete the job's children (Ray jobs, clusters) this long after it finished.",
    )

    @model_validator(mode="after")
    def _int8_gate_needs_int8(self) -> TrainingJobSpec:
        if self.quality_gate.max_int8_accuracy_drop is not None and self.export.quantize != Quantize.INT8:
            raise RuleError(
                ("qualityGate", "maxInt8AccuracyDrop"),
                "qualityGate.maxInt8AccuracyDrop needs export.quantize: int8",
            )
        return self

    @model_validator(mode="after")
    def _task_fields(self) -> TrainingJobSpec:
        gate, generation = self.quality_gate, self.model.task == Task.TEXT_GENERATION
        # What holds for text generation about classification's fields holds for every other task.
        other = self.model.task != Task.SEQUENCE_CLASSIFICATION
        if other and self.model.num_labels is not None:
            raise RuleError(
                ("model", "numLabels"), "model.numLabels is only for task sequence-classification"
            )
        if generation and (gate.min_eval_accuracy is not None or gate.max_int8_accuracy_drop is not None):
            raise RuleError(
                ("qualityGate",),
                "qualityGate.minEvalAccuracy and maxInt8AccuracyDrop are for sequence-classification; "
                "text-generation uses maxValPerplexity and maxInt8PerplexityIncrease",
            )
        if not generation and (
            gate.max_val_perplexity is not None or gate.max_int8_perplexity_increase is not None
        ):
            raise RuleError(
                ("qualityGate",),
                "qualityGate.maxValPerplexity and maxInt8PerplexityIncrease are only for task text-generation",
            )
        if not generation and (self.data.prompt_field is not None or self.data.completion_field is not None):
            raise RuleError(
                ("data",), "data.promptField and data.completionField are only for task text-generation"
            )
        if other and self.distillation is not None:
            raise RuleError(
                ("distillation",),
                "distillation is only for task sequence-classification (a teacher's logits are label scores)",
            )
        if other and self.model.num_layers is not None:
            raise RuleError(
                ("model", "numLayers"), "model.numLayers is only for task sequence-classification"
            )
        if other and self.optimization is not None and self.optimization.pruning is not None:
            raise RuleError(
                ("optimization", "pruning"), "optimization.pruning is only for task sequence-classification"
            )
        if generation and ExportTarget.TFLITE in self.export.targets:
            # litert-torch 0.10 cannot trace the decoder's key/value cache (docs/litert.md).
            raise RuleError(
                ("export", "targets"), "export.targets tflite is only for task sequence-classification"
            )
        self._embedding_fields()
        return self

    def _embedding_fields(self) -> None:
        """The sentence-embedding task's fields, and the other tasks' fields it does not take."""
        gate, data = self.quality_gate, self.data
        embedding = self.model.task == Task.SENTENCE_EMBEDDING
        if embedding and (
            gate.min_eval_accuracy is not None
            or gate.max_int8_accuracy_drop is not None
            or gate.max_bf16_accuracy_drop is not None
        ):
            raise RuleError(
                ("qualityGate",),
                "qualityGate.minEvalAccuracy, maxInt8AccuracyDrop and maxBf16AccuracyDrop are for "
                "sequence-classification; sentence-embedding uses minRecallAt1, minMrr, minInt8Cosine and "
                "minBf16Cosine",
            )
        if not embedding and (
            gate.min_recall_at1 is not None
            or gate.min_mrr is not None
            or gate.min_int8_cosine is not None
            or gate.min_bf16_cosine is not None
        ):
            raise RuleError(
                ("qualityGate",),
                "qualityGate.minRecallAt1, minMrr, minInt8Cosine and minBf16Cosine are only for task "
                "sentence-embedding",
            )
        if not embedding and any(
            f is not None for f in (data.anchor_field, data.positive_field, data.negative_field)
        ):
            raise RuleError(
                ("data",),
                "data.anchorField, positiveField and negativeField are only for task sentence-embedding",
            )
        if embedding and any(t != ExportTarget.ONNX for t in self.export.targets):
            raise RuleError(
                ("export", "targets"),
                "export.targets other than onnx are not supported for task sentence-embedding",
            )


# ------------------------------------------------------------- ModelDeployment spec


class TrainingJobRef(ApiModel):
    """A TrainingJob in the same namespace whose published model is served."""

    name: str = Field(
        min_length=1, max_length=253, pattern=NAME_PATTERN, description="The TrainingJob's name."
    )
    variant: Variant = Field(
        default=Variant.AUTO,
        description=(
            "auto (the default) = the fastest variant that passed its quality gate, timed by each "
            "replica on its own CPU/GPU at start (int8's gain depends on the CPU; bf16, OpenVINO "
            "in bf16, is timed only on CPUs with bf16 instructions such as AMX; on a GPU fp32 "
            "runs on the CUDA provider); or force fp32, int8 or bf16, never timed."
        ),
    )


class ModelRef(ApiModel):
    """Which artifact set to serve: exactly one of trainingJobRef and manifestUri."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "has(self.trainingJobRef) != has(self.manifestUri)",
            "exactly one of trainingJobRef and manifestUri must be set",
        ),
        CelRule(
            "!has(self.variant) || has(self.manifestUri)",
            "variant is only for manifestUri; use trainingJobRef.variant",
            ".variant",
        ),
    )

    training_job_ref: TrainingJobRef | None = Field(
        default=None, description="Serve the latest published run of this TrainingJob."
    )
    manifest_uri: str | None = Field(
        default=None,
        pattern=MANIFEST_URI_PATTERN,
        max_length=2048,
        description="URI of a published manifest.json (s3://..., file://... or a path).",
    )
    variant: Variant | None = Field(
        default=None,
        description=(
            "Variant to serve from manifestUri (default auto: the fastest accepted one, timed by "
            "each replica on its own hardware; fp32, int8 or bf16 forced; as trainingJobRef.variant)."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelRef:
        if (self.training_job_ref is None) == (self.manifest_uri is None):
            raise RuleError((), "exactly one of trainingJobRef and manifestUri must be set")
        if self.variant is not None and self.manifest_uri is None:
            raise RuleError(("variant",), "variant is only for manifestUri; use trainingJobRef.variant")
        return self

    @property
    def effective_variant(self) -> Variant:
        if self.training_job_ref is not None:
            return Variant(self.training_job_ref.variant)
        return Variant(self.variant or Variant.AUTO)


class Autoscaling(ApiModel):
    """Ray Serve autoscaling of the replicas.

    The defaults suit a small encoder model on CPU (a MiniLM/BERT-base replica
    answers a short text in milliseconds and starts in a few seconds): react to
    load within seconds, release a replica only after a couple of quiet minutes.
    """

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            ".minReplicas",
        ),
    )

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Fewest replicas. 0 scales to zero: after scaleToZeroAfterSeconds without a request the "
            "last replica is released, and the next request is held (not refused) while one starts."
        ),
    )
    max_replicas: int = Field(default=2, ge=1, le=1000, description="Most replicas.")
    target_ongoing_requests: float = Field(
        default=4,
        gt=0,
        le=10_000,
        description=(
            "Requests in flight per replica that autoscaling aims for (replicas = ongoing requests / "
            "this). 4 keeps a batch of a few texts forming in each replica (dynamic batching) while "
            "queueing stays short for a model that answers in milliseconds."
        ),
    )
    upscale_delay_seconds: float = Field(
        default=10,
        ge=0,
        le=3600,
        description=(
            "How long load must stay high before scaling up. A few seconds: a CPU replica of a small "
            "model starts in seconds, so adding one late costs more than adding one for a short burst."
        ),
    )
    downscale_delay_seconds: float = Field(
        default=120,
        ge=0,
        le=36_000,
        description=(
            "How long load must stay low before scaling down (to minReplicas when above 0). Minutes, "
            "so that a bursty load does not pay a replica start on every burst."
        ),
    )
    scale_to_zero_after_seconds: float = Field(
        default=300,
        ge=0,
        le=86_400,
        description=(
            "With minReplicas 0: seconds without any request before the last replica is released "
            "(Serve's downscale_to_zero_delay_s). Unused when minReplicas is above 0."
        ),
    )
    metrics_window_seconds: float = Field(
        default=10,
        ge=1,
        le=600,
        description=(
            "Window over which ongoing requests are averaged for each decision (Serve's "
            "look_back_period_s; Serve's own default is 30). 10 s follows a step in load within "
            "seconds; longer windows smooth bursty traffic."
        ),
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise RuleError(("minReplicas",), "minReplicas must not exceed maxReplicas")
        return self


class ReplicaResources(ApiModel):
    """Resources of one serving replica."""

    cpus: float = Field(default=1, ge=0, le=256, description="CPUs per replica.")
    gpus: float = Field(default=0, ge=0, le=16, description="GPUs per replica (uses the CUDA provider).")
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Memory per replica (Kubernetes quantity)."
    )


class Batching(ApiModel):
    """Dynamic batching of concurrent requests inside a replica."""

    max_batch_size: int = Field(default=16, ge=1, le=512, description="Most texts in one model call.")
    batch_wait_timeout_ms: float = Field(
        default=5, ge=0, le=10_000, description="How long a batch waits to fill, in milliseconds."
    )


class Runtime(ApiModel):
    """onnxruntime settings of each replica."""

    execution_providers: list[ExecutionProvider] = Field(
        default_factory=lambda: [ExecutionProvider.CPU],
        min_length=1,
        max_length=4,
        description="onnxruntime providers in order of preference; CUDA needs GPUs.",
    )
    intra_op_threads: int = Field(
        default=0, ge=0, le=256, description="Threads inside an operator; 0 = onnxruntime's default."
    )
    inter_op_threads: int = Field(
        default=0, ge=0, le=256, description="Threads across operators; 0 = onnxruntime's default."
    )


class RequestLimits(ApiModel):
    """Bounds on what one request may ask; beyond them a request gets a 4xx."""

    max_texts_per_request: int = Field(default=64, ge=1, le=10_000, description="Most texts in one request.")
    max_text_chars: int = Field(default=4096, ge=1, le=1_000_000, description="Longest text, in characters.")
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, le=64 * 1_048_576, description="Largest request body, in bytes."
    )


class GenerationLimits(ApiModel):
    """Bounds of a text-generation request (a model trained with task text-generation)."""

    max_prompt_tokens: int = Field(
        default=512,
        ge=1,
        le=131_072,
        description="Longest prompt, in tokens; a longer one gets 400 (the model's context also bounds it).",
    )
    max_new_tokens: int = Field(
        default=128,
        ge=1,
        le=32_768,
        description="Most tokens one request may ask for (max_tokens / max_new_tokens); more gets 400.",
    )
    max_stop_sequences: int = Field(default=4, ge=0, le=64, description="Most stop sequences in one request.")
    max_batch_size: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Most requests one replica decodes together (continuous batching: a request joins the "
            "running batch at the next decode step and leaves it when it ends); more wait in the queue."
        ),
    )
    max_cached_tokens: int = Field(
        default=8192,
        ge=16,
        le=1_048_576,
        description=(
            "Most key/value cache positions one replica holds, counted as the batch is laid out: "
            "requests x the longest one's prompt + max_tokens. A request waits in the queue until it "
            "fits; one whose prompt + max_tokens alone exceed it gets 400. Memory: about twice this "
            "x layers x 2 x hidden size x 4 bytes during a step."
        ),
    )
    max_queued_requests: int = Field(
        default=32,
        ge=0,
        le=10_000,
        description=(
            "Most requests one replica holds waiting for a place in the batch; beyond, a request "
            "gets 429 at once (Serve's max_ongoing_requests also bounds what reaches a replica)."
        ),
    )


class EndpointAuth(ApiModel):
    """API keys the endpoint asks of every model request (docs/security.md, "Endpoint API keys")."""

    api_keys_secret: str = Field(
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description=(
            'Secret (same namespace, label rayrelay.dev/credentials: "true") holding the API keys: '
            "one data entry per key, named as you like (e.g. ci, alice-2026-12), each value a key of "
            "16 to 4096 characters without spaces (e.g. openssl rand -hex 32). Every model route "
            "(OIP v2 infer, metadata and ready, KServe v1, generate, generate_stream, OpenAI "
            "/v1/completions) then answers 401 unless the request carries 'Authorization: Bearer "
            "<key>' with one of them; /v2/health/live, /v2/health/ready and /metrics stay open. "
            "Rotate by adding the new entry and removing the old one: the operator re-reads the "
            "Secret on every pass and the replicas take the change without a restart. Only sha256 "
            "digests of the keys reach Ray."
        ),
    )


class ModelDeploymentSpec(ApiModel):
    """What to serve and how."""

    model: ModelRef = Field(description="The artifact set to serve.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Replica autoscaling.")
    resources: ReplicaResources = Field(
        default_factory=ReplicaResources, description="Per-replica resources."
    )
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching.")
    runtime: Runtime = Field(default_factory=Runtime, description="onnxruntime settings.")
    limits: RequestLimits = Field(default_factory=RequestLimits, description="Request bounds.")
    generation: GenerationLimits | None = Field(
        default=None,
        description=(
            "Limits of generation requests, for a model trained with task text-generation "
            "(defaults apply when omitted); a classification model ignores them."
        ),
    )
    artifacts: ArtifactsSpec = Field(
        default_factory=ArtifactsSpec,
        description="How to reach the store of manifestUri (endpoint, credentials); uri is unused here.",
    )
    backend: Backend | None = Field(
        default=None, description="kuberay (RayService) or ray; operator default when omitted."
    )
    image: str | None = Field(default=None, max_length=512, description="Workload image (kuberay backend).")
    suspend: bool = Field(default=False, description="Take the endpoint down; clearing it deploys again.")
    auth: EndpointAuth | None = Field(
        default=None,
        description=(
            "Require an API key (Authorization: Bearer) on every model route; off (no key) when omitted."
        ),
    )


# ------------------------------------------------------------------------- status


class Condition(ApiModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type, e.g. Ready, Succeeded, Failed.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason.")
    message: str = Field(default="", description="What happened, for people.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The generation this condition was computed for."
    )


class Progress(ApiModel):
    """Where training is."""

    epoch: float | None = Field(default=None, description="Current epoch (fractional).")
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps in the run.")
    percent: float | None = Field(default=None, description="step / totalSteps in percent.")
    loss: float | None = Field(default=None, description="Recent training loss.")
    val_perplexity: float | None = Field(
        default=None, description="Validation perplexity at the latest checkpoint (text-generation)."
    )
    samples_per_second: float | None = Field(default=None, description="Training throughput.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds left in training.")
    last_update_time: str | None = Field(default=None, description="When the workers last reported.")


class CheckpointRef(ApiModel):
    """The latest checkpoint written."""

    step: int | None = Field(default=None, description="Step of the checkpoint.")
    uri: str | None = Field(default=None, description="Where it is.")


class ArtifactsStatus(ApiModel):
    """What the run published."""

    manifest_uri: str | None = Field(default=None, description="URI of manifest.json.")
    models: dict[str, str] = Field(default_factory=dict, description="Variant name to model URI.")
    digest: str | None = Field(default=None, description="sha256 of the manifest.")
    recommended_variant: str | None = Field(
        default=None,
        description="The run's recommendation (int8 when accepted); auto replicas start with it, then time.",
    )


class RayJobRef(ApiModel):
    """The Ray work behind a TrainingJob."""

    name: str | None = Field(default=None, description="RayJob object name (kuberay backend).")
    job_id: str | None = Field(default=None, description="Ray submission id.")
    dashboard_url: str | None = Field(default=None, description="Ray dashboard URL.")


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob, computed by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: TrainingPhase = Field(default=TrainingPhase.PENDING, description="Lifecycle phase.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    progress: Progress | None = Field(default=None, description="Training progress.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics per variant.")
    attempt: int = Field(default=0, description="Attempt number (1 for the first).")
    next_attempt_time: str | None = Field(
        default=None,
        description="While a failed attempt backs off: when the next one is submitted (RFC 3339;"
        " exponential backoff from the operator's retry settings). Unset otherwise.",
    )
    last_checkpoint: CheckpointRef | None = Field(default=None, description="Latest checkpoint.")
    artifacts: ArtifactsStatus | None = Field(default=None, description="Published artifacts.")
    ray_job: RayJobRef | None = Field(default=None, description="The Ray job.")
    backend: Backend | None = Field(default=None, description="Backend in use.")
    run_id: str | None = Field(default=None, description="Run id (folder in the store).")
    start_time: str | None = Field(default=None, description="When work started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When the job finished.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")


class GenerationCaps(ApiModel):
    """The batch caps of one text-generation replica, as deployed (``spec.generation`` and Serve's bound)."""

    max_batch_size: int = Field(description="Requests one replica decodes together.")
    max_cached_tokens: int = Field(description="Key/value cache positions one replica holds at most.")
    max_queued_requests: int = Field(
        description="Requests one replica holds waiting; one more gets 429 at once."
    )
    max_ongoing_requests: int = Field(
        description=(
            "Serve's max_ongoing_requests per replica: above maxBatchSize + maxQueuedRequests, so "
            "the replica's own queue and its 429 are what bound a request, not Serve's queue."
        )
    )


class ServedModel(ApiModel):
    """The model a ModelDeployment serves."""

    manifest_uri: str | None = Field(default=None, description="Manifest served.")
    digest: str | None = Field(default=None, description="sha256 of that manifest.")
    variant: str | None = Field(
        default=None,
        description=(
            "fp32, int8, bf16 or fp32-openvino (auto only, where replicas offer it: fp32's file run by "
            "OpenVINO): what a replica reports it serves (with auto, the fastest it timed); "
            "the manifest's recommendation until one reports (and on the kuberay backend)."
        ),
    )
    variant_reason: str | None = Field(
        default=None,
        description="Why: forced by the spec, or auto's per-batch timings on the replica's CPU/GPU.",
    )
    instruction_set: str | None = Field(
        default=None,
        description="The replica's CPU vector instruction set (amx, avx512_vnni, avx_vnni, avx512, avx2): int8's gain depends on it.",
    )
    variant_timings_ms: dict[str, float] = Field(
        default_factory=dict,
        description="auto: milliseconds per timing batch of each accepted variant, measured by the replica.",
    )
    runtime: str | None = Field(
        default=None,
        description="The runtime of the served variant: onnxruntime (fp32, int8) or openvino (bf16, fp32-openvino).",
    )
    precision: str | None = Field(
        default=None,
        description=(
            "The precision it runs in: fp32, int8, bf16, or bf16-emulated (forced bf16 on a CPU "
            "without bf16 instructions)."
        ),
    )
    task: str | None = Field(
        default=None, description="The manifest's task: sequence-classification or text-generation."
    )
    generation: GenerationCaps | None = Field(
        default=None,
        description="text-generation: the caps each replica decodes under (from spec.generation).",
    )


class ScalingStatus(ApiModel):
    """What autoscaling decided last, as the operator observed it."""

    target_replicas: int | None = Field(
        default=None, description="Replicas Serve's autoscaler wants now (running ones may lag behind)."
    )
    ongoing_requests: float | None = Field(
        default=None,
        description="Requests in flight or queued across the replicas when last observed (when known).",
    )
    last_decision: str | None = Field(
        default=None,
        description="The last change of targetReplicas: ScaledUp, ScaledDown, ScaledToZero or ScaledFromZero.",
    )
    last_reason: str | None = Field(default=None, description="Why, for people: the numbers it followed.")
    last_from_replicas: int | None = Field(default=None, description="targetReplicas before that change.")
    last_to_replicas: int | None = Field(default=None, description="targetReplicas after that change.")
    last_scale_time: str | None = Field(default=None, description="When that change was observed (RFC 3339).")


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment, computed by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: DeploymentPhase = Field(default=DeploymentPhase.PENDING, description="Lifecycle phase.")
    url: str | None = Field(default=None, description="Base URL of the endpoint.")
    replicas: int | None = Field(
        default=None,
        description="Replicas that exist (starting, running or stopping) as Serve reports them; 0 when scaled to zero.",
    )
    ready_replicas: int | None = Field(
        default=None, description="Replicas running and healthy (taking requests)."
    )
    scaling: ScalingStatus | None = Field(
        default=None,
        description="Autoscaling: the target replicas and the last scaling decision with its reason.",
    )
    model: ServedModel | None = Field(default=None, description="Model being served.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    backend: Backend | None = Field(default=None, description="Backend in use.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")


# ------------------------------------------------------------------ whole objects


class ObjectMeta(ApiModel):
    """The part of metadata rayrelay reads (the rest passes through)."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description="Object name.")
    namespace: str | None = Field(default=None, description="Namespace.")
    uid: str | None = Field(default=None, description="UID.")
    generation: int | None = Field(default=None, description="Generation.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")


class TrainingJob(ApiModel):
    """A fine-tuning run from data to a published, checked ONNX artifact set."""

    KIND: ClassVar[str] = "TrainingJob"
    PLURAL: ClassVar[str] = "trainingjobs"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("tj",)

    api_version: Literal["rayrelay.dev/v1alpha1"] = Field(description="API version.")
    kind: Literal["TrainingJob"] = Field(description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")


class ModelDeployment(ApiModel):
    """An autoscaled HTTP endpoint serving a published artifact set with Ray Serve."""

    KIND: ClassVar[str] = "ModelDeployment"
    PLURAL: ClassVar[str] = "modeldeployments"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("md",)

    api_version: Literal["rayrelay.dev/v1alpha1"] = Field(description="API version.")
    kind: Literal["ModelDeployment"] = Field(description="Kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired state.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")


RESOURCES: dict[str, type[TrainingJob] | type[ModelDeployment]] = {
    "TrainingJob": TrainingJob,
    "ModelDeployment": ModelDeployment,
}
