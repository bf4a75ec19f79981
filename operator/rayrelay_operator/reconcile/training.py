"""The TrainingJob state machine: observe -> compute -> actions.

- *observe* (``observe_trainingjob``, small side effects): the run's documents
  in the store (progress, failure, manifest) and the backend's view of the
  current attempt. A store that does not answer raises ``StoreUnavailable``
  naming its URI (``driver.run_pass`` turns it into a condition and backoff).
- *compute* (``compute_training_status``, pure): one dispatch over the phase
  (``_step_for``), then over what the backend sees of the attempt
  (``_BY_STATE``); each step is a small function of a ``TrainingPass``.
- *actions*: plain data (``context.Submit`` / ``Stop`` / ...), applied by the
  driver.

Work identity: a submission is named after (generation, attempt) at the time it
is made (``naming``) and recorded in ``status.rayJob``; later passes keep
observing the recorded one, so a spec change that does not change the run
(suspend, ttl, failurePolicy) never restarts the work, and a restarted operator
recomputes the same names (idempotent create stops a duplicate). Suspension
stops the work; clearing it submits again under the new generation with the
same attempt (a suspension is not a failure) into the same run folder, so
training resumes from the latest checkpoint. A failed attempt is stopped and the
next one (attempt + 1) is submitted only after a backoff -- never in the pass that
saw the failure, so a short outage does not burn ``failurePolicy.backoffLimit``:
``errors.attempt_backoff`` (base, 2 x base, ... capped), recorded in
``status.nextAttemptTime`` and told in the Running condition ("attempt 2 at ...").
While it waits, the failed work is not observed again; the limit spent, the job fails.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rayrelay_core.api import (
    ArtifactsStatus,
    Backend,
    CheckpointRef,
    Progress,
    RayJobRef,
    TrainingJob,
    TrainingJobStatus,
    TrainingPhase,
)
from rayrelay_core.conditions import find_condition, rfc3339, set_condition
from rayrelay_core.runs import (
    FailureDoc,
    JobDocument,
    Manifest,
    ManifestError,
    ProgressDoc,
    RunLayout,
    TeacherLineage,
    read_doc,
    read_manifest,
    run_id_for,
)
from rayrelay_core.store import NotFound, Store, StoreError, join
from rayrelay_operator import naming, policy
from rayrelay_operator.backends.base import WorkBackend
from rayrelay_operator.reconcile.context import (
    Action,
    DeleteChildren,
    Event,
    Plan,
    ReconcileContext,
    Stop,
    Submit,
)
from rayrelay_operator.reconcile.errors import StoreUnavailable, attempt_backoff
from rayrelay_operator.reconcile.status import (
    COND_CLEANED,
    COND_FAILED,
    COND_RAY_AUTH,
    COND_RUNNING,
    COND_SUCCEEDED,
    COND_SUSPENDED,
    backend_name,
    invalid_spec_status,
    meta_of,
    parse_time,
    parse_typed,
    previous_status,
)
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import RayAuth, TrainingObservation, TrainingWork, WorkState

WAITING_FOR_TEACHER = "WaitingForTeacher"
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


# ------------------------------------------------------------------------ observe


@dataclass
class RunDocs:
    """The run's documents in the store (any may be missing)."""

    progress: ProgressDoc | None = None
    failure: FailureDoc | None = None
    manifest: Manifest | None = None
    manifest_digest: str | None = None
    # Whether this pass read the progress document (None above then means "not there").
    progress_read: bool = False


@dataclass
class TrainingObserved:
    """Everything ``compute_training_status`` looks at besides the spec."""

    work: TrainingObservation | None = None  # None: nothing submitted/observed this pass
    docs: RunDocs = field(default_factory=RunDocs)
    # spec.distillation.teacher.trainingJobRef: the teacher's published manifest, or why not yet.
    teacher: TeacherLineage | None = None
    teacher_waiting: str | None = None
    # Where nothing was observed (a pass that may submit): the token authentication a child the
    # backend creates now will have, so that the submit's status already carries it.
    submit_auth: RayAuth | None = None


def observe_run(store: Store, layout: RunLayout, attempt_docs: bool = True) -> RunDocs:
    """Read the manifest of a run, and its progress and failure when ``attempt_docs`` (or when
    a manifest is there: its progress fills the status); ``StoreUnavailable`` when the store fails."""
    docs = RunDocs()
    try:
        try:
            docs.manifest, docs.manifest_digest = read_manifest(store, layout.manifest)
        except ManifestError as exc:
            if not isinstance(exc.__cause__, NotFound):
                # A manifest that exists but does not parse is a failed publish, not "not yet".
                docs.failure = FailureDoc(reason="InvalidManifest", message=str(exc), retryable=True)
                attempt_docs = True
        if attempt_docs or docs.manifest is not None:
            docs.progress = read_doc(store, layout.progress, ProgressDoc)
            docs.failure = read_doc(store, layout.failure, FailureDoc) or docs.failure
    except StoreError as exc:
        raise StoreUnavailable(layout.base, exc) from exc
    docs.progress_read = attempt_docs or docs.manifest is not None
    return docs


def observe_progress(store: Store, layout: RunLayout) -> RunDocs:
    """Read a running attempt's progress document only; ``StoreUnavailable`` when the store fails."""
    try:
        return RunDocs(progress=read_doc(store, layout.progress, ProgressDoc), progress_read=True)
    except StoreError as exc:
        raise StoreUnavailable(layout.base, exc) from exc


def store_reads_for(work: TrainingObservation | None) -> str:
    """Which of the run's documents a pass reads, from what the backend sees of the attempt (pure).

    ``none`` while the attempt waits for its cluster: nothing of this attempt can be in the
    store yet, and the status already holds what earlier attempts wrote. ``manifest`` when
    there is no attempt to observe (the first pass, a new run, a suspension, a backoff) or it
    is gone: a published run is done whatever else is seen, also after a restart.
    ``progress`` while it runs: the workload writes its failure document and the manifest
    just before its driver exits, which the backend then reports (a pass reads it only
    when due: ``observe_trainingjob``). ``all`` once it ended: progress, failure and manifest.
    """
    if work is None or work.state is WorkState.ABSENT:
        return "manifest"
    if work.state is WorkState.WAITING:
        return "none"
    if work.state is WorkState.RUNNING:
        return "progress"
    return "all"


def artifacts_uri_for(tj: TrainingJob, settings: Settings) -> str | None:
    return tj.spec.artifacts.uri or settings.artifacts_uri


def run_layout_for(tj: TrainingJob, settings: Settings) -> RunLayout:
    uri = artifacts_uri_for(tj, settings)
    if not uri:
        raise ValueError("no artifact store: set spec.artifacts.uri or RAYRELAY_ARTIFACTS_URI")
    return RunLayout.for_job(uri, tj.metadata.namespace or "default", tj.metadata.name, run_id_for(tj.spec))


def training_work(
    tj: TrainingJob, settings: Settings, generation: int, attempt: int, teacher: TeacherLineage | None = None
) -> TrainingWork:
    """The deterministic submission of one attempt of one generation (pure); ``teacher``: the
    resolved ``spec.distillation.teacher.trainingJobRef``."""
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
        teacher=teacher,
    )
    return TrainingWork(
        submission_id=naming.training_submission_id(ns, tj.metadata.name, generation, attempt),
        child_name=naming.training_child_name(tj.metadata.name, generation, attempt),
        job=job,
        owner=naming.owner_reference(tj.api_version, "TrainingJob", tj.metadata.name, tj.metadata.uid),
        labels=naming.trainingjob_labels(tj.metadata.name, generation, attempt),
    )


def recorded_work(
    tj: TrainingJob, ref: RayJobRef, attempt: int, settings: Settings, teacher: TeacherLineage | None = None
) -> TrainingWork:
    """The submission a status recorded (its names may predate this generation)."""
    work = training_work(tj, settings, tj.metadata.generation or 1, max(attempt, 1), teacher)
    return dataclasses.replace(work, submission_id=ref.job_id or "", child_name=ref.name or ref.job_id or "")


def current_work(
    tj: TrainingJob, previous: TrainingJobStatus, settings: Settings, teacher: TeacherLineage | None = None
) -> TrainingWork | None:
    """The submission recorded in the status for this run, or None (pure)."""
    ref = previous.ray_job
    if ref is None or not ref.job_id or previous.run_id != run_id_for(tj.spec):
        return None
    return recorded_work(tj, ref, previous.attempt, settings, teacher)


def observe_teacher(tj: TrainingJob, ctx: ReconcileContext) -> tuple[TeacherLineage | None, str | None]:
    """The published manifest of ``spec.distillation.teacher.trainingJobRef`` (its TrainingJob's
    status, as a ModelDeployment resolves one), or why there is none yet; (None, None) without one."""
    from rayrelay_operator.reconcile.deployment import waiting_for_trainingjob

    distillation = tj.spec.distillation
    ref = distillation.teacher.training_job_ref if distillation is not None else None
    if ref is None:
        return None, None
    teacher = (
        ctx.get_trainingjob(tj.metadata.namespace or "default", ref.name) if ctx.get_trainingjob else None
    )
    waiting = waiting_for_trainingjob(ref.name, teacher)
    if waiting is not None:
        return None, f"teacher: {waiting[1]}"
    assert teacher is not None
    status = previous_status(teacher, TrainingJobStatus)
    assert status.artifacts is not None and status.artifacts.manifest_uri is not None
    lineage = TeacherLineage(
        manifest_uri=status.artifacts.manifest_uri,
        digest=status.artifacts.digest or "",
        run_id=status.run_id,
        training_job=ref.name,
    )
    return lineage, None


def observe_trainingjob(
    tj: TrainingJob, previous: TrainingJobStatus, ctx: ReconcileContext, backend: WorkBackend
) -> TrainingObserved:
    """The store's documents and the backend's view of the current attempt (side effects)."""
    observed = TrainingObserved()
    phase = TrainingPhase(previous.phase)
    same_run = previous.run_id in (None, run_id_for(tj.spec))
    if phase in TERMINAL_TRAINING and same_run:
        return observed  # only the ttl is left to watch, and it needs no I/O
    observed.teacher, observed.teacher_waiting = observe_teacher(tj, ctx)
    work = current_work(tj, previous, ctx.settings, observed.teacher)
    backing_off = previous.next_attempt_time is not None  # the recorded work has failed
    if work is not None and phase is not TrainingPhase.SUSPENDED and same_run and not backing_off:
        observed.work = backend.observe_training(work)
    if observed.work is None:
        # Optional in a backend (the kuberay one knows; cached, no request per pass).
        planned = getattr(backend, "planned_training_auth", None)
        observed.submit_auth = planned() if planned is not None else None
    # The backend first: what it sees decides which documents are worth a store request.
    reads = store_reads_for(observed.work)
    if reads == "none":
        return observed
    layout = run_layout_for(tj, ctx.settings)
    store = ctx.store_for(layout.base, tj.spec.artifacts.endpoint_url or ctx.settings.s3_endpoint_url)
    if reads != "progress":
        observed.docs = observe_run(store, layout, attempt_docs=reads == "all")
        return observed
    # A running attempt: its progress once per store_poll_seconds, or when the backend's view of
    # it changed; a tick in between reads nothing and the status keeps what the last read said.
    assert observed.work is not None and work is not None
    key, seen = f"{layout.base}#{work.submission_id}", (observed.work.state, observed.work.reason)
    now = ctx.now()
    if ctx.store_pacer.due(key, seen, now, ctx.settings.store_poll_seconds):
        observed.docs = observe_progress(store, layout)
        ctx.store_pacer.read(key, seen, now)
    return observed


# ------------------------------------------------------------------------ compute


class TrainingPass:
    """One pass of the TrainingJob state machine: the status being built and its actions."""

    def __init__(
        self, tj: TrainingJob, observed: TrainingObserved, now: datetime, settings: Settings
    ) -> None:
        previous = tj.status or TrainingJobStatus()
        self.tj = tj
        self.spec = tj.spec
        self.settings = settings
        self.gen = tj.metadata.generation or 1
        self.now = now
        self.s = previous.model_copy(deep=True)
        self.actions: list[Action] = []
        self.docs = observed.docs
        self.obs = observed.work or TrainingObservation(WorkState.ABSENT)
        self.teacher, self.teacher_waiting = observed.teacher, observed.teacher_waiting
        self.submit_auth = observed.submit_auth
        self.work = current_work(tj, previous, settings, self.teacher)
        self.backend = backend_name(tj.spec.backend, settings)

    @property
    def phase(self) -> TrainingPhase:
        return TrainingPhase(self.s.phase)

    def cond(self, type_: str, status: bool | str, reason: str, message: str) -> None:
        self.s.conditions = set_condition(
            self.s.conditions, type_, status, reason, message, self.now, self.gen
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(Event(type_, reason, message))

    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        self.s.phase = TrainingPhase.SUCCEEDED if succeeded else TrainingPhase.FAILED
        self.s.next_attempt_time = None
        self.s.completion_time = self.s.completion_time or rfc3339(self.now)
        self.cond(COND_SUCCEEDED, succeeded, reason, message)
        self.cond(COND_FAILED, not succeeded, reason, message)
        self.cond(COND_RUNNING, False, reason, message)
        self.event("Normal" if succeeded else "Warning", reason, message)

    def submit(self, attempt: int, reason: str) -> None:
        """Submit ``attempt`` under this generation's names and record it."""
        work = training_work(self.tj, self.settings, self.gen, attempt, self.teacher)
        self.actions.append(Submit(work))
        s = self.s
        s.attempt = attempt
        s.phase = TrainingPhase.PENDING
        s.start_time = s.start_time or rfc3339(self.now)
        s.completion_time = None
        s.ray_job = RayJobRef(
            name=work.child_name if self.backend == Backend.KUBERAY else None,
            job_id=work.submission_id,
            dashboard_url=s.ray_job.dashboard_url if s.ray_job else None,
        )
        message = f"submitted {work.submission_id} (attempt {attempt})"
        self.cond(COND_RUNNING, False, "WaitingForResources", message)
        auth = self.submit_auth
        if auth is not None:  # what the first observation of the new child will say
            self.cond(COND_RAY_AUTH, auth.on, auth.reason, auth.message)
        self.event("Normal", reason, message)

    def attempt_failed(self, reason: str, message: str, retryable: bool) -> None:
        """One attempt is over without success: schedule the next (attempt + 1) or fail the job."""
        assert self.work is not None
        limit = self.spec.failure_policy.backoff_limit
        attempt = max(self.s.attempt, 1)
        # Stop whatever is left of it (a head pod of a dead driver, a stuck cluster).
        self.actions.append(Stop(self.work))
        if retryable and attempt <= limit:
            key = f"{self.tj.metadata.namespace}/{self.tj.metadata.name}/{self.s.run_id}"
            delay = attempt_backoff(key, attempt, self.settings)
            at = rfc3339(self.now + timedelta(seconds=delay))
            self.s.next_attempt_time = at
            self.s.phase = TrainingPhase.PENDING
            # When first: the failure's message may end in a long log tail that bounded() cuts.
            said = f"attempt {attempt + 1} at {at} (in {delay:.0f}s); attempt {attempt} failed: {message}"
            self.event("Warning", reason, f"{said}; retry {attempt} of {limit}")
            self.cond(COND_RUNNING, False, reason, said)
            return
        # The limit first: the failure's message may end in a long log tail that bounded() cuts.
        why = (
            message if not retryable else f"backoffLimit {limit} reached after {attempt} attempts: {message}"
        )
        self.finish(False, reason, why)


def compute_training_status(
    tj: TrainingJob, observed: TrainingObserved, now: datetime, settings: Settings
) -> tuple[TrainingJobStatus, list[Action]]:
    """The TrainingJob's new status and the actions to take; pure.

    ``tj.status`` is the previous status. Run-level checks first (new run,
    terminal, published, suspend, deadline), then the attempt's state.
    """
    p = TrainingPass(tj, observed, now, settings)
    _start_new_run_if_changed(p)
    p.s.observed_generation = p.gen
    p.s.backend = Backend(p.backend)
    _step_for(p)(p)
    return p.s, p.actions


def _step_for(p: TrainingPass) -> Callable[[TrainingPass], None]:
    """The dispatch over the phase: which step this pass takes."""
    phase = p.phase
    if phase in TERMINAL_TRAINING:
        return _terminal
    if p.docs.manifest is not None and phase is not TrainingPhase.SUSPENDED:
        return _published
    if p.spec.suspend:
        return _suspend
    if phase is TrainingPhase.SUSPENDED:
        return _resume
    if _deadline_passed(p):
        return _deadline_exceeded
    if p.s.next_attempt_time is not None:
        return _backing_off
    if p.work is None:
        return _wait_for_teacher if p.teacher_waiting else _submit_first
    return _attempt


def _start_new_run_if_changed(p: TrainingPass) -> None:
    """A changed result-defining spec is a new run: stop the old work, start over."""
    previous = p.s
    run_id = run_id_for(p.spec)
    if previous.run_id is not None and previous.run_id != run_id:
        if previous.ray_job and previous.ray_job.job_id and previous.phase in ACTIVE_TRAINING:
            p.actions.append(Stop(recorded_work(p.tj, previous.ray_job, previous.attempt, p.settings)))
        p.event("Normal", "NewRun", f"spec changed: run {previous.run_id} -> {run_id}")
        p.s = TrainingJobStatus(conditions=[])
        p.work = None
        p.obs = TrainingObservation(WorkState.ABSENT)
    p.s.run_id = run_id


def _terminal(p: TrainingPass) -> None:
    """Succeeded or Failed: only the ttl cleanup remains."""
    ttl = p.spec.ttl_seconds_after_finished
    done = parse_time(p.s.completion_time)
    if ttl is None or done is None or find_condition(p.s.conditions, COND_CLEANED) is not None:
        return
    if p.now >= done + timedelta(seconds=ttl):
        p.actions.append(DeleteChildren(p.backend, p.tj.metadata.namespace or "default", p.tj.metadata.name))
        p.cond(COND_CLEANED, True, "TTLExpired", f"children deleted {ttl}s after the job finished")
        p.event("Normal", "TTLExpired", "deleted the job's Ray children (ttlSecondsAfterFinished)")


def _published(p: TrainingPass) -> None:
    """A manifest for this very run: done, whatever else we see (also after a restart)."""
    _fill_progress(p, p.docs.progress)
    _fill_artifacts(p)
    p.finish(True, "Succeeded", f"published {p.s.artifacts.manifest_uri if p.s.artifacts else ''}")


def _suspend(p: TrainingPass) -> None:
    """Stop the work; the run folder keeps the checkpoints."""
    if p.phase is TrainingPhase.SUSPENDED:
        return
    if p.work is not None:
        p.actions.append(Stop(p.work))
    if p.s.next_attempt_time is not None:
        # Suspended while a failed attempt backed off: resuming starts the next attempt.
        p.s.next_attempt_time = None
        p.s.attempt = max(p.s.attempt, 1) + 1
    p.s.phase = TrainingPhase.SUSPENDED
    p.cond(COND_SUSPENDED, True, "Suspended", "spec.suspend is true; the work is stopped")
    p.cond(COND_RUNNING, False, "Suspended", "suspended")
    p.event("Normal", "Suspended", "work stopped; clearing spec.suspend resumes from the latest checkpoint")
    p.s.ray_job = None  # the next submission is a new one (new generation), not the stopped one


def _resume(p: TrainingPass) -> None:
    """A new submission under this generation, same attempt, same run folder."""
    p.cond(COND_SUSPENDED, False, "Resumed", "spec.suspend cleared; resuming from the latest checkpoint")
    p.event("Normal", "Resumed", "resuming from the latest checkpoint")
    p.s.start_time = None  # the deadline counts from the resumption (as for Kubernetes Jobs)
    p.submit(max(p.s.attempt, 1), "Resumed")


def _deadline_passed(p: TrainingPass) -> bool:
    deadline = p.spec.failure_policy.active_deadline_seconds
    started = parse_time(p.s.start_time)
    return deadline is not None and started is not None and p.now >= started + timedelta(seconds=deadline)


def _deadline_exceeded(p: TrainingPass) -> None:
    """The deadline covers the whole job, from its start or resumption."""
    if p.work is not None:
        p.actions.append(Stop(p.work))
    deadline = p.spec.failure_policy.active_deadline_seconds
    p.finish(False, "DeadlineExceeded", f"ran longer than activeDeadlineSeconds={deadline}")


def _backing_off(p: TrainingPass) -> None:
    """A failed attempt waits out its backoff; then the next attempt, same run folder."""
    at = parse_time(p.s.next_attempt_time)
    p.s.phase = TrainingPhase.PENDING
    if at is not None and p.now < at:
        return  # the Running condition already says when (set by attempt_failed)
    p.s.next_attempt_time = None
    waited = find_condition(p.s.conditions, COND_RUNNING)
    attempt = max(p.s.attempt, 1) + 1
    p.submit(attempt, "Retrying")
    if waited is not None and waited.status == "False" and waited.reason:
        # Until the new attempt runs, the condition keeps saying why there is one.
        why = (waited.message or "").split("; ", 1)[-1]
        p.cond(COND_RUNNING, False, waited.reason, f"attempt {attempt} submitted; {why}")


def _submit_first(p: TrainingPass) -> None:
    p.submit(max(p.s.attempt, 1), "Submitted")


def _wait_for_teacher(p: TrainingPass) -> None:
    """Distillation from a TrainingJob that has not published yet: nothing to submit, not a failure."""
    message = p.teacher_waiting or "waiting for the teacher"
    running = find_condition(p.s.conditions, COND_RUNNING)
    if running is None or running.reason != WAITING_FOR_TEACHER:
        p.event("Normal", WAITING_FOR_TEACHER, message)
    p.s.phase = TrainingPhase.PENDING
    p.cond(COND_RUNNING, False, WAITING_FOR_TEACHER, message)


def _attempt(p: TrainingPass) -> None:
    """The current attempt as the backend sees it: the switch over its state."""
    if p.obs.dashboard_url and p.s.ray_job is not None:
        p.s.ray_job.dashboard_url = p.obs.dashboard_url
    if p.obs.ray_auth is not None:
        p.cond(COND_RAY_AUTH, p.obs.ray_auth.on, p.obs.ray_auth.reason, p.obs.ray_auth.message)
    # An older attempt's progress still counts for step/checkpoint: the retry resumes from it.
    _fill_progress(p, p.docs.progress)
    p.obs = _stuck_initializing(p.obs, p.now, p.settings)
    if p.obs.reason in _ATTEMPT_KILLERS:
        p.attempt_failed(p.obs.reason, p.obs.message, retryable=True)
        return
    _BY_STATE[WorkState(p.obs.state)](p)


def _stuck_initializing(obs: TrainingObservation, now: datetime, settings: Settings) -> TrainingObservation:
    """Waiting past the threshold is StuckInitializing (KubeRay would wait forever)."""
    started_at = parse_time(obs.started_at)
    stuck_after = timedelta(seconds=settings.stuck_initializing_seconds)
    if obs.state is not WorkState.WAITING or obs.reason in _ATTEMPT_KILLERS:
        return obs
    if started_at is None or now - started_at <= stuck_after:
        return obs
    detail = f": {obs.reason}: {obs.message}" if obs.reason or obs.message else ""
    message = f"still initializing after {settings.stuck_initializing_seconds:.0f}s{detail}"
    return dataclasses.replace(obs, reason="StuckInitializing", message=message)


def _absent(p: TrainingPass) -> None:
    """Submitted but gone (deleted, a restarted Ray cluster): submit it again, same names."""
    assert p.work is not None
    p.actions.append(Submit(p.work))
    p.s.phase = TrainingPhase.PENDING
    p.cond(COND_RUNNING, False, "Resubmitted", f"{p.work.child_name} was not found; submitted it again")


def _waiting(p: TrainingPass) -> None:
    p.s.phase = TrainingPhase.PENDING
    reason = p.obs.reason or "WaitingForResources"
    running = find_condition(p.s.conditions, COND_RUNNING)
    message = p.obs.message
    if not message:
        # Nothing new from the backend: what the condition says for this reason stands (the
        # submit's "submitted ... (attempt n)"), so the first tick after a submit writes nothing.
        message = "waiting for the Ray cluster and its workers to start"
        if running is not None and running.status == "False" and running.reason == reason:
            message = running.message or message
    if reason != "WaitingForResources" and running is not None and running.reason != reason:
        p.event("Warning", reason, message)
    p.cond(COND_RUNNING, False, reason, message)


def _running(p: TrainingPass) -> None:
    progress = p.docs.progress
    if not p.docs.progress_read and p.phase in _STAGE_PHASE.values():
        return  # progress not read this pass (not due): what the status says stands
    stage = progress.stage if progress and progress.attempt == p.s.attempt else "Training"
    new_phase = _STAGE_PHASE.get(stage, TrainingPhase.TRAINING)
    if new_phase != p.phase:
        p.event("Normal", str(new_phase), f"phase {p.phase} -> {new_phase}")
    p.s.phase = new_phase
    p.cond(COND_RUNNING, True, str(new_phase), f"attempt {p.s.attempt}: {stage}")


def _this_attempts_failure(p: TrainingPass) -> FailureDoc | None:
    """The failure document, unless it is an earlier attempt's."""
    failure = p.docs.failure
    return failure if failure and failure.attempt in (None, p.s.attempt) else None


def _exited_without_manifest(p: TrainingPass) -> None:
    """The driver exited 0 but no manifest (checked before): the publish did not happen."""
    failure = _this_attempts_failure(p)
    if failure is not None:
        p.attempt_failed(failure.reason, failure.message, failure.retryable)
        return
    p.attempt_failed("ManifestMissing", "the job exited 0 without publishing a manifest", True)


def _ended(p: TrainingPass) -> None:
    """FAILED, or STOPPED by someone else (we are not suspended)."""
    assert p.work is not None
    failure = _this_attempts_failure(p)
    if failure is not None:
        p.attempt_failed(failure.reason, failure.message, failure.retryable)
        return
    reason = p.obs.reason or "TrainingFailed"
    message = p.obs.message or f"the Ray job {p.work.submission_id} {WorkState(p.obs.state).value.lower()}"
    p.attempt_failed(reason, message, True)


_BY_STATE: dict[WorkState, Callable[[TrainingPass], None]] = {
    WorkState.ABSENT: _absent,
    WorkState.WAITING: _waiting,
    WorkState.RUNNING: _running,
    WorkState.SUCCEEDED: _exited_without_manifest,
    WorkState.FAILED: _ended,
    WorkState.STOPPED: _ended,
}


def _fill_progress(p: TrainingPass, progress: ProgressDoc | None) -> None:
    if progress is None:
        return
    percent = None
    if progress.step is not None and progress.total_steps:
        percent = round(100.0 * progress.step / progress.total_steps, 1)
    p.s.progress = Progress(
        epoch=progress.epoch,
        step=progress.step,
        total_steps=progress.total_steps,
        percent=percent,
        loss=progress.loss,
        val_perplexity=progress.val_perplexity,
        samples_per_second=progress.samples_per_second,
        eta_seconds=progress.eta_seconds,
        last_update_time=progress.update_time,
    )
    if progress.last_checkpoint is not None:
        p.s.last_checkpoint = CheckpointRef(
            step=progress.last_checkpoint.step, uri=progress.last_checkpoint.uri
        )


def _fill_artifacts(p: TrainingPass) -> None:
    manifest = p.docs.manifest
    assert manifest is not None
    layout = run_layout_for(p.tj, p.settings)
    models = {
        name: join(layout.base, info.file)
        for name, info in sorted(manifest.variants.items())
        if info.file and info.accepted
    }
    digest = p.docs.manifest_digest
    p.s.artifacts = ArtifactsStatus(
        manifest_uri=layout.manifest,
        models=models,
        digest=f"sha256:{digest}" if digest else None,
        recommended_variant=manifest.recommended_variant,
    )
    p.s.metrics = _metrics_of(manifest)
    if p.s.progress is not None and p.s.progress.total_steps:
        p.s.progress.step = p.s.progress.total_steps
        p.s.progress.percent = 100.0


def _metrics_of(manifest: Manifest) -> dict[str, float]:
    metrics = {k: float(v) for k, v in manifest.metrics.items()}
    for name, info in manifest.variants.items():
        if info.accuracy is not None:
            metrics.setdefault(f"accuracy_{name}", float(info.accuracy))
    if manifest.parity.max_abs_logit_diff_fp32 is not None:
        metrics.setdefault("parity_max_abs_logit_diff_fp32", manifest.parity.max_abs_logit_diff_fp32)
    if manifest.parity.max_abs_logit_diff_int8 is not None:
        metrics.setdefault("parity_max_abs_logit_diff_int8", manifest.parity.max_abs_logit_diff_int8)
    return metrics


# ------------------------------------------------------------------------ pass


def _spec_problem(
    tj: TrainingJob | None, problem: str | None, ctx: ReconcileContext, ns: str
) -> tuple[str, str] | None:
    """(reason, message) of why the spec cannot run here, or None."""
    if tj is None:
        return ("InvalidSpec", problem) if problem is not None else None
    name = backend_name(tj.spec.backend, ctx.settings)
    if name not in ctx.backends:
        have = ", ".join(ctx.backends)
        return "InvalidSpec", f"backend {name!r} is not configured in this operator (have: {have})"
    if not artifacts_uri_for(tj, ctx.settings):
        return (
            "InvalidSpec",
            "spec.artifacts.uri: no artifact store (set it, or RAYRELAY_ARTIFACTS_URI in the operator)",
        )
    if ctx.enforce_policy:
        tj.metadata.namespace = ns
        refusal = policy.check_trainingjob(tj, name, ctx.settings, ctx.secret_labels)
        if refusal is not None:
            return refusal.reason, refusal.message
    return None


def plan_trainingjob(obj: Mapping[str, Any], ctx: ReconcileContext) -> Plan:
    """Parse, observe and compute one pass (observe errors propagate to the driver)."""
    ns, _name, gen = meta_of(obj)
    previous = previous_status(obj, TrainingJobStatus)
    now = ctx.now()
    tj, problem = parse_typed(obj, "TrainingJob")
    refused = _spec_problem(tj, problem, ctx, ns)
    if refused is not None:
        reason, message = refused
        actions: list[Action] = []
        if find_condition(previous.conditions, COND_FAILED) is None or previous.phase != TrainingPhase.FAILED:
            actions.append(Event("Warning", reason, message))
        return Plan(invalid_spec_status(previous, message, now, gen, reason), actions, None)
    assert tj is not None
    tj = tj.model_copy(update={"status": previous})
    tj.metadata.namespace = ns
    tj.metadata.generation = gen
    backend = ctx.backends[backend_name(tj.spec.backend, ctx.settings)]
    observed = observe_trainingjob(tj, previous, ctx, backend)
    status, actions = compute_training_status(tj, observed, now, ctx.settings)
    return Plan(status, actions, backend)


def delete_trainingjob(obj: Mapping[str, Any], ctx: ReconcileContext) -> None:
    """Remove every child of a TrainingJob (the finalizer's job). Artifacts stay in the store."""
    ns, name, _ = meta_of(obj)
    spec_backend = (obj.get("spec") or {}).get("backend")
    backend = ctx.backends.get(backend_name(spec_backend, ctx.settings))
    if backend is not None:
        backend.delete_training(ns, name)
