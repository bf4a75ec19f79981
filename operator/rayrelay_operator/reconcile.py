"""Reconcilers: the explicit state machines of TrainingJob and ModelDeployment.

One module, shared by both drivers: the kopf handlers (``handlers``) and the
local loop of ``rayrelay run`` (``local``). A driver calls, per resource and
per pass::

    ctx = ReconcileContext(settings=..., backends={"kuberay": ..., "ray": ...},
                           emit=..., get_trainingjob=...)
    status = reconcile_trainingjob(obj, ctx)      # obj: the resource as a dict
    if status_changed(obj.get("status"), status):
        write status.wire() to obj's status
    if permanent_failure(status):                  # InvalidSpec / ModelNotFound
        stop retrying (kopf.PermanentError) -- after the status is written

and on deletion ``delete_trainingjob(obj, ctx)`` / ``delete_modeldeployment``.
Exceptions out of a reconcile are classified with ``classify(exc)``: temporary
ones (backend unreachable, API 5xx/429, S3 errors) are retried with backoff.

Each reconcile is three steps:

1. *observe* (side effects, small): the backend's view of the current work and
   the run's documents in the store (``observe_run``);
2. *compute* (pure): ``compute_training_status`` / ``compute_deployment_status``
   -- one switch over the phase -- returning the new status and a list of
   ``Action``s (plain data);
3. *apply* (side effects, small): each action through the backend, events
   through ``ctx.emit``.

Work identity: a submission is named after (generation, attempt) at the time
it is made (``naming``) and recorded in ``status.rayJob``; later passes keep
observing the recorded one, so a spec change that does not change the run
(suspend, ttl, failurePolicy) never restarts the work, and a restarted
operator recomputes the same names (idempotent create stops a duplicate).
Suspension stops the work; clearing it submits again under the new
generation with the same attempt (a suspension is not a failure) into the same
run folder, so training resumes from the latest checkpoint. Failed attempts
resubmit with attempt + 1 until ``failurePolicy.backoffLimit`` is spent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import ValidationError

from rayrelay_core.api import (
    ArtifactsStatus,
    CheckpointRef,
    DeploymentPhase,
    ModelDeployment,
    ModelDeploymentStatus,
    Progress,
    RayJobRef,
    ServedModel,
    TrainingJob,
    TrainingJobStatus,
    TrainingPhase,
)
from rayrelay_core.api import (
    Backend as BackendKind,
)
from rayrelay_core.conditions import find_condition, rfc3339, set_condition
from rayrelay_core.runs import (
    FailureDoc,
    JobDocument,
    Manifest,
    ManifestError,
    ProgressDoc,
    RunLayout,
    read_doc,
    read_manifest,
    run_id_for,
    serve_app_args,
)
from rayrelay_core.store import NotFound, Store, StoreError, join, open_store
from rayrelay_core.validation import InvalidResource, parse_resource
from rayrelay_operator import naming
from rayrelay_operator.backends.base import (
    Backend,
    BackendRejected,
    BackendUnavailable,
    ServingObservation,
    ServingWork,
    TrainingObservation,
    TrainingWork,
    WorkState,
)
from rayrelay_operator.settings import Settings

log = logging.getLogger(__name__)

# Condition types.
COND_RUNNING = "Running"  # TrainingJob: the Ray job runs (False: why not)
COND_SUCCEEDED = "Succeeded"
COND_FAILED = "Failed"
COND_SUSPENDED = "Suspended"
COND_CLEANED = "ChildrenDeleted"  # ttlSecondsAfterFinished done
COND_READY = "Ready"  # ModelDeployment: the endpoint answers with a verified model
COND_MODEL_AVAILABLE = "ModelAvailable"  # ModelDeployment: the model to serve is known
COND_PROGRESSING = "Progressing"  # ModelDeployment: a (new) model is being rolled out

# Reasons that end a resource for good until its spec changes.
PERMANENT_REASONS = frozenset({"InvalidSpec", "ModelNotFound", "BackendRejected"})
# Observation reasons that mean "this attempt is dead" even if a state says otherwise.
_ATTEMPT_KILLERS = frozenset({"DriverDied", "StuckInitializing"})

ACTIVE_TRAINING = frozenset(
    {TrainingPhase.PENDING, TrainingPhase.TRAINING, TrainingPhase.EXPORTING, TrainingPhase.OPTIMIZING}
)
TERMINAL_TRAINING = frozenset({TrainingPhase.SUCCEEDED, TrainingPhase.FAILED})

_STAGE_PHASE = {
    "Training": TrainingPhase.TRAINING,
    "Exporting": TrainingPhase.EXPORTING,
    "Optimizing": TrainingPhase.OPTIMIZING,
    "Publishing": TrainingPhase.OPTIMIZING,
}


# ------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Submit:
    """Submit a training attempt (idempotent by its deterministic names)."""

    work: TrainingWork


@dataclass(frozen=True)
class Stop:
    """Stop a training attempt (suspend, deadline, giving up)."""

    work: TrainingWork


@dataclass(frozen=True)
class DeleteChildren:
    """Delete every child of a TrainingJob (ttlSecondsAfterFinished, deletion)."""

    backend: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Deploy:
    """Create or update a ModelDeployment's Serve application."""

    work: ServingWork


@dataclass(frozen=True)
class Undeploy:
    """Remove a ModelDeployment's Serve application (suspend, deletion)."""

    work: ServingWork


@dataclass(frozen=True)
class Event:
    """A Kubernetes event on the resource: type Normal|Warning, CamelCase reason."""

    type: str
    reason: str
    message: str


Action = Submit | Stop | DeleteChildren | Deploy | Undeploy | Event


# ------------------------------------------------------------------------ context


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ReconcileContext:
    """What a reconcile needs from its driver.

    ``backends`` maps a backend name (``kuberay``/``ray``) to an instance; a
    resource uses ``spec.backend`` or ``settings.default_backend``.
    ``get_trainingjob(namespace, name)`` returns a TrainingJob as a dict (or
    None) for ModelDeployments that reference one. ``emit`` receives events.
    """

    settings: Settings
    backends: Mapping[str, Backend]
    now: Callable[[], datetime] = utcnow
    store_for: Callable[[str, str | None], Store] = open_store
    get_trainingjob: Callable[[str, str], dict[str, Any] | None] | None = None
    emit: Callable[[Event], None] = lambda event: None


# ------------------------------------------------------------- error classification


@dataclass(frozen=True)
class ErrorClass:
    """How a driver should treat an exception out of a reconcile."""

    permanent: bool
    reason: str
    delay: float  # seconds before a retry (0 for permanent errors)


def backoff_delay(retry: int, settings: Settings | None = None) -> float:
    """Exponential backoff: base * 2**retry, capped."""
    s = settings or Settings()
    return float(min(s.retry_max_delay_seconds, s.retry_base_delay_seconds * (2 ** max(0, retry))))


def classify(exc: BaseException, retry: int = 0, settings: Settings | None = None) -> ErrorClass:
    """Permanent (retrying is useless) or temporary (retry after ``delay``)."""
    delay = backoff_delay(retry, settings)
    if isinstance(exc, InvalidResource | ValidationError):
        return ErrorClass(True, "InvalidSpec", 0)
    if isinstance(exc, BackendRejected):
        return ErrorClass(True, "BackendRejected", 0)
    if isinstance(exc, ManifestError | NotFound):
        return ErrorClass(True, "ModelNotFound", 0)
    if isinstance(exc, BackendUnavailable):
        return ErrorClass(False, "BackendUnavailable", delay)
    if isinstance(exc, StoreError):
        return ErrorClass(False, "StoreUnavailable", delay)
    status = getattr(exc, "status", None)  # kubernetes.client.ApiException and kopf's APIError
    if isinstance(status, int):
        if status == 429 or status >= 500:
            # Too many requests / server trouble: back off, longer for 429.
            return ErrorClass(False, f"ApiError{status}", delay * (2 if status == 429 else 1))
        if status in (400, 403, 422):
            return ErrorClass(True, f"ApiError{status}", 0)
        return ErrorClass(False, f"ApiError{status}", delay)
    if isinstance(exc, ConnectionError | TimeoutError | OSError):
        return ErrorClass(False, "ConnectionError", delay)
    # Unknown: a bug or something unforeseen; retrying with backoff is the safe default.
    return ErrorClass(False, type(exc).__name__, delay)


# ---------------------------------------------------------------------- helpers


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def status_patch(
    old: Mapping[str, Any] | None, new: TrainingJobStatus | ModelDeploymentStatus
) -> dict[str, Any]:
    """A JSON merge patch from the stored status to ``new`` ({} = nothing to write).

    Keys of ours that ``new`` no longer has are patched to None (= removed);
    keys we do not own (another writer's) are left alone.
    """
    old = dict(old or {})
    wire = new.wire()
    patch = {k: v for k, v in wire.items() if old.get(k) != v}
    for f in type(new).model_fields.values():
        key = f.alias or ""
        if key and key not in wire and old.get(key) is not None:
            patch[key] = None
    return patch


def status_changed(old: Mapping[str, Any] | None, new: TrainingJobStatus | ModelDeploymentStatus) -> bool:
    """Whether writing ``new`` changes the stored status."""
    return bool(status_patch(old, new))


def permanent_failure(status: TrainingJobStatus | ModelDeploymentStatus) -> str | None:
    """The message of a permanent failure (InvalidSpec, ModelNotFound, ...) or None.

    The driver raises its permanent error with it, after writing the status.
    """
    for cond in status.conditions:
        if (
            cond.reason in PERMANENT_REASONS
            and not (cond.type == COND_MODEL_AVAILABLE and cond.status == "True")
            and cond.type in (COND_FAILED, COND_READY, COND_MODEL_AVAILABLE)
        ):
            return f"{cond.reason}: {cond.message}"
    return None


def _previous_status(obj: Mapping[str, Any], model: type[Any]) -> Any:
    try:
        return model.model_validate(obj.get("status") or {})
    except ValidationError:
        # A status we cannot read (hand-edited, older schema): start from scratch.
        return model()


def _meta(obj: Mapping[str, Any]) -> tuple[str, str, int]:
    meta = obj.get("metadata") or {}
    return (
        str(meta.get("namespace") or "default"),
        str(meta.get("name") or ""),
        int(meta.get("generation") or 1),
    )


def _backend_name(spec_backend: Any, settings: Settings) -> str:
    return str(spec_backend or settings.default_backend)


_StatusT = TypeVar("_StatusT", TrainingJobStatus, ModelDeploymentStatus)


def invalid_spec_status(previous: _StatusT, message: str, now: datetime, generation: int) -> _StatusT:
    """Failed with InvalidSpec; pure. Set before the driver raises a permanent error."""
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    if isinstance(status, TrainingJobStatus):
        status.phase = TrainingPhase.FAILED
        status.conditions = set_condition(
            status.conditions, COND_FAILED, True, "InvalidSpec", message, now, generation
        )
        status.conditions = set_condition(
            status.conditions, COND_RUNNING, False, "InvalidSpec", message, now, generation
        )
    else:
        status.phase = DeploymentPhase.FAILED
        status.conditions = set_condition(
            status.conditions, COND_READY, False, "InvalidSpec", message, now, generation
        )
    return status


# ------------------------------------------------------------ TrainingJob: observe


@dataclass
class RunDocs:
    """The run's documents in the store (any may be missing)."""

    progress: ProgressDoc | None = None
    failure: FailureDoc | None = None
    manifest: Manifest | None = None
    manifest_digest: str | None = None


@dataclass
class TrainingObserved:
    """Everything ``compute_training_status`` looks at besides the spec."""

    work: TrainingObservation | None = None  # None: nothing submitted/observed this pass
    docs: RunDocs = field(default_factory=RunDocs)


def observe_run(store: Store, layout: RunLayout) -> RunDocs:
    """Read progress, failure and manifest of a run (side effect; StoreError propagates)."""
    docs = RunDocs(
        progress=read_doc(store, layout.progress, ProgressDoc),
        failure=read_doc(store, layout.failure, FailureDoc),
    )
    try:
        docs.manifest, docs.manifest_digest = read_manifest(store, layout.manifest)
    except ManifestError as exc:
        if isinstance(exc.__cause__, NotFound):
            return docs  # not published yet: the normal case while training
        # A manifest that exists but does not parse is a failed publish, not "not yet".
        docs.failure = docs.failure or FailureDoc(reason="InvalidManifest", message=str(exc), retryable=True)
    return docs


def artifacts_uri_for(tj: TrainingJob, settings: Settings) -> str | None:
    return tj.spec.artifacts.uri or settings.artifacts_uri


def run_layout_for(tj: TrainingJob, settings: Settings) -> RunLayout:
    uri = artifacts_uri_for(tj, settings)
    if not uri:
        raise ValueError("no artifact store: set spec.artifacts.uri or RAYRELAY_ARTIFACTS_URI")
    return RunLayout.for_job(uri, tj.metadata.namespace or "default", tj.metadata.name, run_id_for(tj.spec))


def training_work(
    tj: TrainingJob, settings: Settings, generation: int, attempt: int, resume_from: str | None = None
) -> TrainingWork:
    """The deterministic submission of one attempt of one generation (pure)."""
    ns = tj.metadata.namespace or "default"
    layout = run_layout_for(tj, settings)
    job = JobDocument(
        namespace=ns,
        name=tj.metadata.name,
        uid=tj.metadata.uid or "",
        generation=generation,
        run_id=run_id_for(tj.spec),
        run_uri=layout.base,
        attempt=attempt,
        spec=tj.spec,
        endpoint_url=tj.spec.artifacts.endpoint_url or settings.s3_endpoint_url,
        resume_from=resume_from,
    )
    return TrainingWork(
        submission_id=naming.training_submission_id(ns, tj.metadata.name, generation, attempt),
        child_name=naming.training_child_name(tj.metadata.name, generation, attempt),
        job=job,
        owner=naming.owner_reference(tj.api_version, "TrainingJob", tj.metadata.name, tj.metadata.uid),
        labels=naming.trainingjob_labels(tj.metadata.name, generation, attempt),
    )


def current_work(tj: TrainingJob, previous: TrainingJobStatus, settings: Settings) -> TrainingWork | None:
    """The submission recorded in the status for this run, or None (pure)."""
    ref = previous.ray_job
    if ref is None or not ref.job_id or previous.run_id != run_id_for(tj.spec):
        return None
    work = training_work(tj, settings, tj.metadata.generation or 1, max(previous.attempt, 1))
    return dataclasses.replace(work, submission_id=ref.job_id, child_name=ref.name or ref.job_id)


# ------------------------------------------------------------ TrainingJob: compute


class _TJ:
    """Mutable builder for one pass of the TrainingJob state machine."""

    def __init__(self, tj: TrainingJob, previous: TrainingJobStatus, now: datetime) -> None:
        self.tj = tj
        self.gen = tj.metadata.generation or 1
        self.now = now
        self.s = previous.model_copy(deep=True)
        self.actions: list[Action] = []

    def cond(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.s.conditions = set_condition(
            self.s.conditions, type_, status, reason, message, self.now, self.gen
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(Event(type_, reason, message))

    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        self.s.phase = TrainingPhase.SUCCEEDED if succeeded else TrainingPhase.FAILED
        self.s.completion_time = self.s.completion_time or rfc3339(self.now)
        self.cond(COND_SUCCEEDED, succeeded, reason, message)
        self.cond(COND_FAILED, not succeeded, reason, message)
        self.cond(COND_RUNNING, False, reason, message)
        self.event("Normal" if succeeded else "Warning", reason, message)


def compute_training_status(
    tj: TrainingJob,
    observed: TrainingObserved,
    now: datetime,
    settings: Settings,
) -> tuple[TrainingJobStatus, list[Action]]:
    """The TrainingJob's new status and the actions to take; pure.

    ``tj.status`` is the previous status. One switch over the phase after the
    run-level checks (new run, terminal, suspend, deadline).
    """
    previous = tj.status or TrainingJobStatus()
    m = _TJ(tj, previous, now)
    s = m.s
    spec = tj.spec
    run_id = run_id_for(spec)
    backend = _backend_name(spec.backend, settings)
    s.observed_generation = m.gen
    s.backend = BackendKind(backend)
    docs = observed.docs
    work = current_work(tj, previous, settings)

    # A changed result-defining spec is a new run: stop the old work, start over.
    if previous.run_id is not None and previous.run_id != run_id:
        if previous.ray_job and previous.ray_job.job_id and previous.phase in ACTIVE_TRAINING:
            old = training_work(tj, settings, m.gen, max(previous.attempt, 1))
            old = dataclasses.replace(
                old, submission_id=previous.ray_job.job_id, child_name=previous.ray_job.name or ""
            )
            m.actions.append(Stop(old))
        m.event("Normal", "NewRun", f"spec changed: run {previous.run_id} -> {run_id}")
        s = m.s = TrainingJobStatus(observed_generation=m.gen, backend=backend, conditions=[])
        work = None
        observed = TrainingObserved(work=None, docs=docs)
    s.run_id = run_id
    phase = TrainingPhase(s.phase)

    # Terminal: only ttl cleanup remains.
    if phase in TERMINAL_TRAINING:
        ttl = spec.ttl_seconds_after_finished
        done = parse_time(s.completion_time)
        cleaned = find_condition(s.conditions, COND_CLEANED)
        if ttl is not None and done is not None and cleaned is None and now >= done + timedelta(seconds=ttl):
            m.actions.append(DeleteChildren(backend, tj.metadata.namespace or "default", tj.metadata.name))
            m.cond(COND_CLEANED, True, "TTLExpired", f"children deleted {ttl}s after the job finished")
            m.event("Normal", "TTLExpired", "deleted the job's Ray children (ttlSecondsAfterFinished)")
        return s, m.actions

    # A published manifest for this very run: the job is done, whatever else we see
    # (also covers a restart that finds a run finished while nobody watched).
    if docs.manifest is not None and phase is not TrainingPhase.SUSPENDED:
        _fill_progress(m, docs.progress)
        _fill_artifacts(m, tj, settings, docs)
        m.finish(True, "Succeeded", f"published {s.artifacts.manifest_uri if s.artifacts else ''}")
        return s, m.actions

    # Suspend: stop the work; the run folder keeps the checkpoints.
    if spec.suspend:
        if phase is not TrainingPhase.SUSPENDED:
            if work is not None:
                m.actions.append(Stop(work))
            s.phase = TrainingPhase.SUSPENDED
            m.cond(COND_SUSPENDED, True, "Suspended", "spec.suspend is true; the work is stopped")
            m.cond(COND_RUNNING, False, "Suspended", "suspended")
            m.event(
                "Normal",
                "Suspended",
                "work stopped; clearing spec.suspend resumes from the latest checkpoint",
            )
            # The next submission is a new one (new generation), not the stopped one.
            s.ray_job = None
        return s, m.actions
    if phase is TrainingPhase.SUSPENDED:
        # Resume: a new submission under this generation, same attempt, same run folder.
        m.cond(COND_SUSPENDED, False, "Resumed", "spec.suspend cleared; resuming from the latest checkpoint")
        m.event("Normal", "Resumed", "resuming from the latest checkpoint")
        s.start_time = None  # the deadline counts from the resumption (as for Kubernetes Jobs)
        return _submit(m, tj, settings, max(s.attempt, 1), "Resumed"), m.actions

    # Deadline over the whole job (from start or resumption).
    deadline = spec.failure_policy.active_deadline_seconds
    started = parse_time(s.start_time)
    if deadline is not None and started is not None and now >= started + timedelta(seconds=deadline):
        if work is not None:
            m.actions.append(Stop(work))
        m.finish(False, "DeadlineExceeded", f"ran longer than activeDeadlineSeconds={deadline}")
        return s, m.actions

    # Active phases: nothing submitted yet -> submit the first attempt.
    if work is None:
        return _submit(m, tj, settings, max(s.attempt, 1), "Submitted"), m.actions
    obs = observed.work or TrainingObservation(state=WorkState.ABSENT)
    if obs.dashboard_url and s.ray_job is not None:
        s.ray_job.dashboard_url = obs.dashboard_url
    # An older attempt's progress still counts for step/checkpoint: the retry resumes from it.
    _fill_progress(m, docs.progress)

    # The one switch over what the backend sees of the current attempt.
    state = WorkState(obs.state)
    started_at = parse_time(obs.started_at)
    stuck_after = timedelta(seconds=settings.stuck_initializing_seconds)
    waiting_too_long = started_at is not None and now - started_at > stuck_after
    if state is WorkState.WAITING and obs.reason not in _ATTEMPT_KILLERS and waiting_too_long:
        # KubeRay leaves such jobs "Initializing" forever; we say why and retry.
        obs = dataclasses.replace(
            obs,
            reason="StuckInitializing",
            message=(
                f"still initializing after {settings.stuck_initializing_seconds:.0f}s"
                + (f": {obs.reason}: {obs.message}" if obs.reason or obs.message else "")
            ),
        )
    if obs.reason in _ATTEMPT_KILLERS:
        return _attempt_failed(m, tj, settings, work, obs.reason, obs.message, retryable=True), m.actions
    if state is WorkState.ABSENT:
        # Submitted but gone (deleted by someone, or a restarted Ray cluster): submit it again
        # under the same names; an idempotent create makes this safe if it still exists.
        m.actions.append(Submit(work))
        s.phase = TrainingPhase.PENDING
        m.cond(COND_RUNNING, False, "Resubmitted", f"{work.child_name} was not found; submitted it again")
        return s, m.actions
    if state is WorkState.WAITING:
        s.phase = TrainingPhase.PENDING
        reason = obs.reason or "WaitingForResources"
        message = obs.message or "waiting for the Ray cluster and its workers to start"
        running = find_condition(s.conditions, COND_RUNNING)
        if reason != "WaitingForResources" and running is not None and running.reason != reason:
            m.event("Warning", reason, message)
        m.cond(COND_RUNNING, False, reason, message)
        return s, m.actions
    if state is WorkState.RUNNING:
        stage = docs.progress.stage if docs.progress and docs.progress.attempt == s.attempt else "Training"
        new_phase = _STAGE_PHASE.get(stage, TrainingPhase.TRAINING)
        if new_phase != phase:
            m.event("Normal", str(new_phase), f"phase {phase} -> {new_phase}")
        s.phase = new_phase
        m.cond(COND_RUNNING, True, str(new_phase), f"attempt {s.attempt}: {stage}")
        return s, m.actions
    # A failure document of an earlier attempt does not explain this one.
    failure = docs.failure if docs.failure and docs.failure.attempt in (None, s.attempt) else None
    if state is WorkState.SUCCEEDED:
        # The driver exited 0 but no manifest (checked above): the publish did not happen.
        if failure is not None:
            return _attempt_failed(
                m, tj, settings, work, failure.reason, failure.message, failure.retryable
            ), m.actions
        return _attempt_failed(
            m, tj, settings, work, "ManifestMissing", "the job exited 0 without publishing a manifest", True
        ), m.actions
    # FAILED or STOPPED (not by us: we are not suspended).
    if failure is not None:
        reason, message, retryable = failure.reason, failure.message, failure.retryable
    else:
        reason = obs.reason or "TrainingFailed"
        message = obs.message or f"the Ray job {work.submission_id} {str(state).lower()}"
        retryable = True
    return _attempt_failed(m, tj, settings, work, reason, message, retryable), m.actions


def _fill_progress(m: _TJ, progress: ProgressDoc | None) -> None:
    if progress is None:
        return
    percent = None
    if progress.step is not None and progress.total_steps:
        percent = round(100.0 * progress.step / progress.total_steps, 1)
    m.s.progress = Progress(
        epoch=progress.epoch,
        step=progress.step,
        total_steps=progress.total_steps,
        percent=percent,
        loss=progress.loss,
        samples_per_second=progress.samples_per_second,
        eta_seconds=progress.eta_seconds,
        last_update_time=progress.update_time,
    )
    if progress.last_checkpoint is not None:
        m.s.last_checkpoint = CheckpointRef(
            step=progress.last_checkpoint.step, uri=progress.last_checkpoint.uri
        )


def _fill_artifacts(m: _TJ, tj: TrainingJob, settings: Settings, docs: RunDocs) -> None:
    manifest = docs.manifest
    assert manifest is not None
    layout = run_layout_for(tj, settings)
    models = {
        name: join(layout.base, info.file)
        for name, info in sorted(manifest.variants.items())
        if info.file and info.accepted
    }
    m.s.artifacts = ArtifactsStatus(
        manifest_uri=layout.manifest,
        models=models,
        digest=f"sha256:{docs.manifest_digest}" if docs.manifest_digest else None,
        recommended_variant=manifest.recommended_variant,
    )
    metrics = {k: float(v) for k, v in manifest.metrics.items()}
    for name, info in manifest.variants.items():
        if info.accuracy is not None:
            metrics.setdefault(f"accuracy_{name}", float(info.accuracy))
    if manifest.parity.max_abs_logit_diff_fp32 is not None:
        metrics.setdefault("parity_max_abs_logit_diff_fp32", manifest.parity.max_abs_logit_diff_fp32)
    if manifest.parity.max_abs_logit_diff_int8 is not None:
        metrics.setdefault("parity_max_abs_logit_diff_int8", manifest.parity.max_abs_logit_diff_int8)
    m.s.metrics = metrics
    if m.s.progress is not None and m.s.progress.total_steps:
        m.s.progress.step = m.s.progress.total_steps
        m.s.progress.percent = 100.0


def _submit(m: _TJ, tj: TrainingJob, settings: Settings, attempt: int, reason: str) -> TrainingJobStatus:
    work = training_work(tj, settings, m.gen, attempt)
    m.actions.append(Submit(work))
    s = m.s
    s.attempt = attempt
    s.phase = TrainingPhase.PENDING
    s.start_time = s.start_time or rfc3339(m.now)
    s.completion_time = None
    s.ray_job = RayJobRef(
        name=work.child_name if _backend_name(tj.spec.backend, settings) == "kuberay" else None,
        job_id=work.submission_id,
        dashboard_url=s.ray_job.dashboard_url if s.ray_job else None,
    )
    m.cond(COND_RUNNING, False, "WaitingForResources", f"submitted {work.submission_id} (attempt {attempt})")
    m.event("Normal", reason, f"submitted {work.submission_id} (attempt {attempt})")
    return s


def _attempt_failed(
    m: _TJ,
    tj: TrainingJob,
    settings: Settings,
    work: TrainingWork,
    reason: str,
    message: str,
    retryable: bool,
) -> TrainingJobStatus:
    """One attempt is over without success: retry (attempt + 1) or fail the job."""
    limit = tj.spec.failure_policy.backoff_limit
    attempt = max(m.s.attempt, 1)
    # Stop whatever is left of it (a head pod of a dead driver, a stuck cluster).
    m.actions.append(Stop(work))
    if retryable and attempt <= limit:
        m.event("Warning", reason, f"attempt {attempt} failed: {message}; retrying ({attempt}/{limit})")
        _submit(m, tj, settings, attempt + 1, "Retrying")
        m.cond(
            COND_RUNNING,
            False,
            reason,
            f"attempt {attempt} failed: {message}; attempt {attempt + 1} submitted",
        )
        return m.s
    why = message if not retryable else f"{message} (backoffLimit {limit} reached after {attempt} attempts)"
    m.finish(False, reason, why)
    return m.s


# ------------------------------------------------------------ TrainingJob: driver


def _parse(obj: Mapping[str, Any], kind: str) -> tuple[Any, str | None]:
    """The typed resource, or the InvalidSpec message."""
    doc = {k: v for k, v in obj.items() if k != "status"}
    try:
        parsed = parse_resource(doc)
    except InvalidResource as exc:
        return None, "; ".join(f"{i.path}: {i.message}" for i in exc.issues)
    if parsed.kind != kind:
        return None, f"expected a {kind}, got {parsed.kind}"
    return parsed, None


def _check_backend(spec_backend: Any, ctx: ReconcileContext) -> tuple[str, str | None]:
    name = _backend_name(spec_backend, ctx.settings)
    if name not in ctx.backends:
        return name, f"backend {name!r} is not configured in this operator (have: {', '.join(ctx.backends)})"
    return name, None


def reconcile_trainingjob(obj: Mapping[str, Any] | TrainingJob, ctx: ReconcileContext) -> TrainingJobStatus:
    """Observe, compute, apply; return the status to write (only if ``status_changed``)."""
    raw: Mapping[str, Any] = obj.wire() if isinstance(obj, TrainingJob) else obj
    ns, name, gen = _meta(raw)
    previous = _previous_status(raw, TrainingJobStatus)
    now = ctx.now()
    tj, problem = _parse(raw, "TrainingJob")
    backend_name = ""
    if tj is not None:
        backend_name, problem = _check_backend(tj.spec.backend, ctx)
        if problem is None and not artifacts_uri_for(tj, ctx.settings):
            problem = (
                "spec.artifacts.uri: no artifact store (set it, or RAYRELAY_ARTIFACTS_URI in the operator)"
            )
    if problem is not None:
        status = invalid_spec_status(previous, problem, now, gen)
        if find_condition(previous.conditions, COND_FAILED) is None or previous.phase != TrainingPhase.FAILED:
            _emit(ctx, Event("Warning", "InvalidSpec", problem))
        return status
    assert tj is not None
    tj = tj.model_copy(update={"status": previous})
    tj.metadata.namespace = ns
    tj.metadata.generation = gen
    backend = ctx.backends[backend_name]

    observed = TrainingObserved()
    phase = TrainingPhase(previous.phase)
    same_run = previous.run_id in (None, run_id_for(tj.spec))
    if phase not in TERMINAL_TRAINING or not same_run:
        layout = run_layout_for(tj, ctx.settings)
        store = ctx.store_for(layout.base, tj.spec.artifacts.endpoint_url or ctx.settings.s3_endpoint_url)
        observed.docs = observe_run(store, layout)
        work = current_work(tj, previous, ctx.settings)
        if work is not None and phase is not TrainingPhase.SUSPENDED and same_run:
            observed.work = backend.observe_training(work)
    status, actions = compute_training_status(tj, observed, now, ctx.settings)
    _apply(actions, ctx, backend)
    return status


def delete_trainingjob(obj: Mapping[str, Any], ctx: ReconcileContext) -> None:
    """Remove every child of a TrainingJob (the finalizer's job). Artifacts stay in the store."""
    ns, name, _ = _meta(obj)
    spec_backend = (obj.get("spec") or {}).get("backend")
    backend = ctx.backends.get(_backend_name(spec_backend, ctx.settings))
    if backend is not None:
        backend.delete_training(ns, name)


# -------------------------------------------------------- ModelDeployment: compute


@dataclass
class DesiredModel:
    """The artifact set a deployment should serve, as resolved this pass."""

    manifest_uri: str
    digest: str  # "sha256:<hex>" of the manifest
    variant: str  # resolved: fp32 | int8


@dataclass
class DeploymentObserved:
    """Everything ``compute_deployment_status`` looks at besides the spec."""

    desired: DesiredModel | None = None
    # Why there is no desired model: (reason, message, permanent).
    waiting: tuple[str, str, bool] | None = None
    serving: ServingObservation | None = None


def serving_work(md: ModelDeployment, desired: DesiredModel, settings: Settings) -> ServingWork:
    """The Serve application of a deployment for one model (pure)."""
    ns = md.metadata.namespace or "default"
    endpoint = md.spec.artifacts.endpoint_url or settings.s3_endpoint_url
    args = serve_app_args(md.metadata.name, ns, desired.manifest_uri, md.spec, endpoint)
    args["digest"] = desired.digest
    return ServingWork(
        app_name=md.metadata.name,
        child_name=naming.serving_child_name(md.metadata.name),
        namespace=ns,
        spec=md.spec,
        app_args=args,
        owner=naming.owner_reference(md.api_version, "ModelDeployment", md.metadata.name, md.metadata.uid),
        labels=naming.modeldeployment_labels(md.metadata.name),
    )


def _serving_work_without_model(md: ModelDeployment, settings: Settings) -> ServingWork:
    served = (md.status or ModelDeploymentStatus()).model
    desired = DesiredModel(
        manifest_uri=(served.manifest_uri if served else None) or "", digest="", variant=""
    )
    return serving_work(md, desired, settings)


def compute_deployment_status(
    md: ModelDeployment, observed: DeploymentObserved, now: datetime, settings: Settings
) -> tuple[ModelDeploymentStatus, list[Action]]:
    """The ModelDeployment's new status and the actions to take; pure.

    ``md.status`` is the previous status; ``status.model`` is the model last
    seen serving (it stays while a newer one rolls out or fails to).
    """
    previous = md.status or ModelDeploymentStatus()
    gen = md.metadata.generation or 1
    s = previous.model_copy(deep=True)
    s.observed_generation = gen
    s.backend = BackendKind(_backend_name(md.spec.backend, settings))
    actions: list[Action] = []
    old_phase = DeploymentPhase(previous.phase)

    def cond(type_: str, status: bool, reason: str, message: str) -> None:
        s.conditions = set_condition(s.conditions, type_, status, reason, message, now, gen)

    def done(phase: DeploymentPhase, reason: str, message: str) -> tuple[ModelDeploymentStatus, list[Action]]:
        s.phase = phase
        if phase != old_phase:
            bad = phase in (DeploymentPhase.FAILED, DeploymentPhase.DEGRADED)
            actions.append(
                Event("Warning" if bad else "Normal", reason, f"{old_phase} -> {phase}: {message}")
            )
        return s, actions

    obs = observed.serving or ServingObservation(state="Absent")
    serving_now = previous.model if previous.model and previous.model.digest else None

    if md.spec.suspend:
        if obs.state != "Absent":
            actions.append(Undeploy(_serving_work_without_model(md, settings)))
        s.url, s.replicas, s.ready_replicas, s.model = None, 0, 0, None
        cond(COND_READY, False, "Suspended", "spec.suspend is true; the endpoint is down")
        return done(DeploymentPhase.PENDING, "Suspended", "suspended")

    desired = observed.desired
    if desired is None:
        reason, message, permanent = observed.waiting or ("WaitingForModel", "no model yet", False)
        cond(COND_MODEL_AVAILABLE, False, reason, message)
        if serving_now is not None and obs.state == "Running":
            # The source is gone or retraining: keep serving what we verified.
            _fill_serving(s, obs)
            cond(COND_READY, True, "Serving", f"serving {serving_now.digest}; {message}")
            return done(DeploymentPhase.READY, "Ready", "serving")
        cond(COND_READY, False, reason, message)
        return done(DeploymentPhase.FAILED if permanent else DeploymentPhase.PENDING, reason, message)

    cond(COND_MODEL_AVAILABLE, True, "ModelResolved", f"{desired.manifest_uri} ({desired.variant})")
    work = serving_work(md, desired, settings)
    # Deploy is idempotent in every backend, so asking again while the backend cannot
    # tell which version it runs (serving_args None) costs a comparison, not a restart.
    if obs.state == "Absent" or obs.serving_args != work.app_args:
        actions.append(Deploy(work))
    if obs.serving_args is not None and obs.serving_args != work.app_args and obs.state == "Running":
        # An older version runs: Serve rolls over without dropping requests.
        _fill_serving(s, obs)
        cond(COND_PROGRESSING, True, "RollingOut", f"deploying {desired.digest} ({desired.variant})")
        cond(
            COND_READY,
            True,
            "Serving",
            f"serving {serving_now.digest if serving_now else 'a previous model'}",
        )
        return done(DeploymentPhase.READY, "RollingOut", f"rolling out {desired.digest}")
    rolling = serving_now is not None and serving_now.digest != desired.digest
    if obs.state == "Absent":
        cond(COND_PROGRESSING, True, "Deploying", f"deploying {desired.digest} ({desired.variant})")
        cond(COND_READY, False, "Deploying", f"deploying {desired.digest} ({desired.variant})")
        s.url, s.replicas, s.ready_replicas = None, 0, 0
        return done(DeploymentPhase.DEPLOYING, "Deploying", f"deploying {desired.digest}")
    _fill_serving(s, obs)
    if obs.state == "Running":
        s.model = ServedModel(
            manifest_uri=desired.manifest_uri, digest=desired.digest, variant=desired.variant
        )
        cond(COND_PROGRESSING, False, "RolledOut", f"serving {desired.digest}")
        cond(
            COND_READY, True, "Serving", f"model verified and warmed up: {desired.digest} ({desired.variant})"
        )
        return done(DeploymentPhase.READY, "Ready", f"serving {desired.digest}")
    if obs.state == "Deploying":
        cond(COND_PROGRESSING, True, "RollingOut" if rolling else "Deploying", f"deploying {desired.digest}")
        if rolling:
            cond(COND_READY, True, "Serving", f"serving {serving_now.digest if serving_now else ''}")
            return done(DeploymentPhase.READY, "RollingOut", f"rolling out {desired.digest}")
        cond(COND_READY, False, "Deploying", obs.message or "replicas starting")
        return done(DeploymentPhase.DEPLOYING, "Deploying", obs.message or "replicas starting")
    # DeployFailed / Unhealthy.
    reason = "ModelRolloutFailed" if obs.state == "DeployFailed" else "Unhealthy"
    message = obs.message or f"the Serve application is {obs.state}"
    cond(COND_PROGRESSING, False, reason, message)
    if rolling:
        # Serve keeps the old replicas while new ones fail verification or warm-up.
        cond(
            COND_READY, True, "ServingPrevious", f"still serving {serving_now.digest if serving_now else ''}"
        )
        return done(DeploymentPhase.DEGRADED, reason, f"new model {desired.digest} failed: {message}")
    if obs.state == "Unhealthy" and (obs.ready_replicas or 0) > 0:
        cond(COND_READY, True, "Unhealthy", message)
        return done(DeploymentPhase.DEGRADED, reason, message)
    s.model = None
    cond(COND_READY, False, reason, message)
    return done(DeploymentPhase.FAILED, reason, message)


def _fill_serving(s: ModelDeploymentStatus, obs: ServingObservation) -> None:
    s.url = obs.url or s.url
    s.replicas = obs.replicas
    s.ready_replicas = obs.ready_replicas


# --------------------------------------------------------- ModelDeployment: driver


def resolve_model(md: ModelDeployment, ctx: ReconcileContext) -> DeploymentObserved:
    """Find the manifest to serve (side effects: reads a TrainingJob and the store)."""
    ns = md.metadata.namespace or "default"
    ref = md.spec.model.training_job_ref
    manifest_uri = md.spec.model.manifest_uri
    if ref is not None:
        tj = ctx.get_trainingjob(ns, ref.name) if ctx.get_trainingjob else None
        if tj is None:
            return DeploymentObserved(
                waiting=("TrainingJobNotFound", f"TrainingJob {ref.name} not found", False)
            )
        tj_status = _previous_status(tj, TrainingJobStatus)
        artifacts = tj_status.artifacts
        if tj_status.phase != TrainingPhase.SUCCEEDED or artifacts is None or not artifacts.manifest_uri:
            detail = f"{tj_status.phase}"
            if tj_status.progress and tj_status.progress.percent is not None:
                detail += f", {tj_status.progress.percent:.0f}%"
            failed = tj_status.phase == TrainingPhase.FAILED
            return DeploymentObserved(
                waiting=(
                    "TrainingJobFailed" if failed else "WaitingForTrainingJob",
                    f"waiting for TrainingJob {ref.name} to succeed (it is {detail})",
                    False,
                )
            )
        manifest_uri = artifacts.manifest_uri
    assert manifest_uri is not None
    store = ctx.store_for(manifest_uri, md.spec.artifacts.endpoint_url or ctx.settings.s3_endpoint_url)
    try:
        manifest, digest = read_manifest(store, manifest_uri)
        variant = manifest.servable_variant(str(md.spec.model.effective_variant))
    except ManifestError as exc:
        if (
            exc.__cause__ is not None
            and isinstance(exc.__cause__, StoreError)
            and not isinstance(exc.__cause__, NotFound)
        ):
            raise exc.__cause__ from exc
        # A TrainingJob-published manifest that vanished is as permanent as a wrong URI.
        return DeploymentObserved(waiting=("ModelNotFound", str(exc), True))
    return DeploymentObserved(desired=DesiredModel(manifest_uri, f"sha256:{digest}", variant))


def reconcile_modeldeployment(
    obj: Mapping[str, Any] | ModelDeployment, ctx: ReconcileContext
) -> ModelDeploymentStatus:
    """Observe, compute, apply; return the status to write (only if ``status_changed``)."""
    raw: Mapping[str, Any] = obj.wire() if isinstance(obj, ModelDeployment) else obj
    ns, name, gen = _meta(raw)
    previous = _previous_status(raw, ModelDeploymentStatus)
    now = ctx.now()
    md, problem = _parse(raw, "ModelDeployment")
    backend_name = ""
    if md is not None:
        backend_name, problem = _check_backend(md.spec.backend, ctx)
    if problem is not None:
        if previous.phase != DeploymentPhase.FAILED:
            _emit(ctx, Event("Warning", "InvalidSpec", problem))
        return invalid_spec_status(previous, problem, now, gen)
    assert md is not None
    md = md.model_copy(update={"status": previous})
    md.metadata.namespace = ns
    md.metadata.generation = gen
    backend = ctx.backends[backend_name]
    observed = DeploymentObserved() if md.spec.suspend else resolve_model(md, ctx)
    probe = (
        serving_work(md, observed.desired, ctx.settings)
        if observed.desired
        else (_serving_work_without_model(md, ctx.settings))
    )
    observed.serving = backend.observe_serving(probe)
    status, actions = compute_deployment_status(md, observed, now, ctx.settings)
    _apply(actions, ctx, backend)
    return status


def delete_modeldeployment(obj: Mapping[str, Any], ctx: ReconcileContext) -> None:
    """Take the endpoint down (the finalizer's job)."""
    ns, name, _ = _meta(obj)
    spec = obj.get("spec") or {}
    backend = ctx.backends.get(_backend_name(spec.get("backend"), ctx.settings))
    if backend is None:
        return
    md, _problem = _parse(obj, "ModelDeployment")
    if md is None:
        # An invalid spec never deployed anything under a typed model; nothing to build from.
        return
    md.metadata.namespace = ns
    backend.delete_serving(_serving_work_without_model(md, ctx.settings))


# ------------------------------------------------------------------------- apply


def _emit(ctx: ReconcileContext, event: Event) -> None:
    try:
        ctx.emit(event)
    except Exception:  # an event is best effort; it must never fail a reconcile
        log.warning("could not emit event %s", event, exc_info=True)


def _apply(actions: list[Action], ctx: ReconcileContext, backend: Backend) -> None:
    """Carry out actions in order; backend errors propagate (the driver classifies them)."""
    for action in actions:
        if isinstance(action, Event):
            _emit(ctx, action)
        elif isinstance(action, Submit):
            backend.submit_training(action.work)
        elif isinstance(action, Stop):
            backend.stop_training(action.work)
        elif isinstance(action, DeleteChildren):
            ctx.backends.get(action.backend, backend).delete_training(action.namespace, action.name)
        elif isinstance(action, Deploy):
            backend.deploy_serving(action.work)
        elif isinstance(action, Undeploy):
            backend.delete_serving(action.work)
