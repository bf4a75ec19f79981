"""The ModelDeployment state machine: observe -> compute -> actions.

- *observe* (``resolve_model`` and the backend, small side effects): which
  artifact set to serve (from the referenced TrainingJob's status or
  ``spec.model.manifestUri``, its manifest read from the store) and what Serve
  runs now. A store that does not answer raises ``StoreUnavailable``.
- *compute* (``compute_deployment_status``, pure): one dispatch over the
  situation (suspended, no model yet, a model) and then over the Serve
  application's ``ServingState`` (``_BY_STATE``), each step a small function of
  a ``DeploymentPass``.
- *actions*: ``context.Deploy`` / ``Undeploy`` / events, applied by the driver.

``status.model`` is the model last seen serving: it stays while a newer one
rolls out. Serve's rolling update (Ray 2.58) stops an old replica before its
successor runs when the target leaves no room, so a rollout is deployed with a
surge (``ServingWork.surge_from``: room for one replica more than those
running, ``serveconfig.surge_autoscaling``), and the plain config once the new
version runs; while Serve applies that config (DEPLOYING, the surge replica
stopping) the model serves, so the status stays Ready (``serves_desired``). A newer model whose replicas fail (its digest check or its
warm-up: the Serve application goes DEPLOY_FAILED) is *refused*: the operator
deploys the model that served before again (``_refuse``; its replicas, kept by
the surge, match that config and keep running) and records the refusal in the
``Progressing`` condition (reason ``ModelRefused``, naming the run, its digest
and why). The refused digest is not deployed again
until the TrainingJob (or ``manifestUri``) names another model or the spec
changes (a new generation).

API keys (``spec.auth``): every pass reads the Secret (``read_api_keys``) and
hands the replicas the keys' sha256 digests in Serve's ``user_config``
(``ServingWork.key_digests``); a pass that finds other digests deployed than the
Secret's deploys again, which Serve applies with ``reconfigure`` in place (no
new replica). A Secret that is missing, empty or holds an unusable entry
deploys nothing new (``_keys_unusable``): a model that serves keeps the keys it
was given last (fail closed, never keyless), and the status names the problem.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from rayrelay_core.api import (
    Autoscaling,
    Backend,
    DeploymentPhase,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ScalingStatus,
    ServedModel,
    TrainingJobStatus,
    TrainingPhase,
)
from rayrelay_core.apikeys import ApiKeysProblem, digests_from_secret
from rayrelay_core.conditions import find_condition, rfc3339, set_condition
from rayrelay_core.runs import Manifest, ManifestError, read_manifest, serve_app_args
from rayrelay_core.serveconfig import TEXT_GENERATION, generation_caps
from rayrelay_core.store import StoreError
from rayrelay_core.variants import AUTO as AUTO_VARIANT
from rayrelay_core.variants import VariantChoice
from rayrelay_operator import naming, policy
from rayrelay_operator.reconcile.context import Action, Deploy, Event, Plan, ReconcileContext, Undeploy
from rayrelay_operator.reconcile.errors import StoreUnavailable
from rayrelay_operator.reconcile.status import (
    COND_MODEL_AVAILABLE,
    COND_PROGRESSING,
    COND_RAY_AUTH,
    COND_READY,
    backend_name,
    invalid_spec_status,
    meta_of,
    parse_typed,
    previous_status,
)
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import ServingObservation, ServingState, ServingWork

# ------------------------------------------------------------------------ observe

ENCRYPTION_KEY_REQUIRED = "EncryptionKeyRequired"
STORE_WAIT_REASON = "WaitingForArtifactStore"


@dataclass
class DesiredModel:
    """The artifact set a deployment should serve, as resolved this pass."""

    manifest_uri: str
    digest: str  # "sha256:<hex>" of the manifest
    variant: str  # resolved: fp32 | int8
    task: str | None = None  # the manifest's task (issue 16: text-generation gets its own replica)
    run_id: str | None = None  # the manifest's run, to name it in the status


@dataclass
class DeploymentObserved:
    """Everything ``compute_deployment_status`` looks at besides the spec."""

    desired: DesiredModel | None = None
    # Why there is no desired model: (reason, message, permanent).
    waiting: tuple[str, str, bool] | None = None
    serving: ServingObservation | None = None
    # The model status.model names, resolved again while another one is wanted: what a
    # refused model rolls back to (None: nothing to go back to, e.g. its manifest changed).
    previous: DesiredModel | None = None
    # While replicas start: why the artifact store did not answer a probe (None: it did, or
    # no probe). A replica waits for the store (issue 14); the status says so meanwhile.
    store_problem: str | None = None
    # spec.auth: the digests of the Secret's keys, or why they cannot be used (reason, message).
    key_digests: list[str] | None = None
    keys_problem: tuple[str, str] | None = None


def read_api_keys(
    md: ModelDeployment, ctx: ReconcileContext
) -> tuple[list[str] | None, tuple[str, str] | None]:
    """(digests, None) of ``spec.auth.apiKeysSecret``'s keys, or (None, (reason, message)).

    The keys themselves go no further than this function: only their digests are kept.
    """
    auth = md.spec.auth
    if auth is None:
        return None, None
    ns = md.metadata.namespace or "default"
    data = ctx.secret_data(ns, auth.api_keys_secret) if ctx.secret_data is not None else None
    try:
        return digests_from_secret(auth.api_keys_secret, data), None
    except ApiKeysProblem as exc:
        return None, (exc.reason, exc.message)


def serving_work(
    md: ModelDeployment, desired: DesiredModel, settings: Settings, keys: list[str] | None = None
) -> ServingWork:
    """The Serve application of a deployment for one model (pure); ``keys``: API key digests."""
    ns = md.metadata.namespace or "default"
    endpoint = md.spec.artifacts.endpoint_url or settings.s3_endpoint_url
    # The digest is what the replica verifies before it loads anything.
    args = serve_app_args(
        md.metadata.name, ns, desired.manifest_uri, md.spec, endpoint, desired.digest, task=desired.task
    )
    return ServingWork(
        app_name=md.metadata.name,
        child_name=naming.serving_child_name(md.metadata.name),
        namespace=ns,
        spec=md.spec,
        app_args=args,
        owner=naming.owner_reference(md.api_version, "ModelDeployment", md.metadata.name, md.metadata.uid),
        labels=naming.modeldeployment_labels(md.metadata.name),
        key_digests=tuple(keys) if keys is not None and md.spec.auth is not None else None,
    )


def serving_work_without_model(md: ModelDeployment, settings: Settings) -> ServingWork:
    """The application's names when no model is resolved (to observe or remove it)."""
    served = (md.status or ModelDeploymentStatus()).model
    desired = DesiredModel(
        manifest_uri=(served.manifest_uri if served else None) or "", digest="", variant=""
    )
    return serving_work(md, desired, settings)


def waiting_for_trainingjob(ref_name: str, tj: Mapping[str, Any] | None) -> tuple[str, str, bool] | None:
    """Why the referenced TrainingJob gives no model yet, or None when it has one."""
    if tj is None:
        return ("TrainingJobNotFound", f"TrainingJob {ref_name} not found", False)
    status = previous_status(tj, TrainingJobStatus)
    if status.phase == TrainingPhase.SUCCEEDED and status.artifacts and status.artifacts.manifest_uri:
        return None
    detail = f"{status.phase}"
    if status.progress and status.progress.percent is not None:
        detail += f", {status.progress.percent:.0f}%"
    reason = "TrainingJobFailed" if status.phase == TrainingPhase.FAILED else "WaitingForTrainingJob"
    return (reason, f"waiting for TrainingJob {ref_name} to succeed (it is {detail})", False)


# Manifests whose digest a TrainingJob recorded, keyed by (uri, digest). A digest names one
# manifest's bytes, so a pinned manifest never changes: a Ready deployment's timer then reads
# its TrainingJob (from the API server) but not the store, pass after pass (issue 14, item 7).
# A manifestUri without a TrainingJob has no pin and is read on every pass: that read is how
# a new publication at the same URI is noticed.
PINNED_MANIFESTS_MAX = 1024
_pinned_manifests: OrderedDict[tuple[str, str], Manifest] = OrderedDict()


def _remember_pinned(key: tuple[str, str], manifest: Manifest) -> None:
    _pinned_manifests[key] = manifest
    _pinned_manifests.move_to_end(key)
    while len(_pinned_manifests) > PINNED_MANIFESTS_MAX:
        _pinned_manifests.popitem(last=False)


def _read_manifest(
    ctx: ReconcileContext, md: ModelDeployment, uri: str, pinned: str | None
) -> tuple[Manifest, str]:
    """The manifest at ``uri`` and its hex digest; a pinned one that was read before, from memory."""
    if pinned and (uri, pinned) in _pinned_manifests:
        _pinned_manifests.move_to_end((uri, pinned))
        return _pinned_manifests[(uri, pinned)], pinned.removeprefix("sha256:")
    store = ctx.store_for(uri, md.spec.artifacts.endpoint_url or ctx.settings.s3_endpoint_url)
    manifest, digest = read_manifest(store, uri)
    if pinned and pinned == f"sha256:{digest}":
        _remember_pinned((uri, pinned), manifest)
    return manifest, digest


def probe_store(md: ModelDeployment, uri: str, ctx: ReconcileContext) -> str | None:
    """Does the artifact store answer (a HEAD of the manifest)? None if so, else why not.

    Asked only while replicas start: a replica waits for a store that does not answer
    (``rayrelay_workloads.storewait``), which Serve does not show, so the status says it.
    """
    try:
        ctx.store_for(uri, md.spec.artifacts.endpoint_url or ctx.settings.s3_endpoint_url).exists(uri)
    except StoreError as exc:
        return str(exc)
    return None


def resolve_model(md: ModelDeployment, ctx: ReconcileContext) -> DeploymentObserved:
    """Find the manifest to serve (side effects: reads a TrainingJob and the store)."""
    ns = md.metadata.namespace or "default"
    ref = md.spec.model.training_job_ref
    manifest_uri = md.spec.model.manifest_uri
    pinned: str | None = None  # the digest the TrainingJob recorded when it verified its run
    if ref is not None:
        tj = ctx.get_trainingjob(ns, ref.name) if ctx.get_trainingjob else None
        waiting = waiting_for_trainingjob(ref.name, tj)
        if waiting is not None:
            return DeploymentObserved(waiting=waiting)
        assert tj is not None
        artifacts = previous_status(tj, TrainingJobStatus).artifacts
        assert artifacts is not None
        manifest_uri, pinned = artifacts.manifest_uri, artifacts.digest
    assert manifest_uri is not None
    try:
        manifest, digest = _read_manifest(ctx, md, manifest_uri, pinned)
        variant = manifest.servable_variant(str(md.spec.model.effective_variant))
    except ManifestError as exc:
        # A TrainingJob-published manifest that vanished is as permanent as a wrong URI.
        return DeploymentObserved(waiting=("ModelNotFound", str(exc), True))
    except StoreError as exc:
        raise StoreUnavailable(manifest_uri, exc) from exc
    if pinned and pinned != f"sha256:{digest}":
        # manifest.json changed after the TrainingJob recorded it (another attempt publishing,
        # or someone writing the store): serve nothing the TrainingJob did not verify. A model
        # already serving keeps serving; this clears once the TrainingJob's status names it.
        message = (
            f"{manifest_uri} has digest sha256:{digest[:16]}..., but TrainingJob {ref.name if ref else ''} "
            f"recorded {pinned[:23]}...: waiting until the TrainingJob's status names this manifest"
        )
        return DeploymentObserved(waiting=("ModelDigestMismatch", message, False))
    if manifest.encryption is not None and md.spec.artifacts.encryption is None:
        # A replica without the key could only fail: say why instead of deploying it.
        message = (
            f"{manifest_uri} is encrypted ({manifest.encryption.scheme}): set "
            "spec.artifacts.encryption.keySecret to the Secret holding its key"
        )
        return DeploymentObserved(waiting=(ENCRYPTION_KEY_REQUIRED, message, True))
    desired = DesiredModel(manifest_uri, f"sha256:{digest}", variant, manifest.task, manifest.run_id)
    return DeploymentObserved(desired=desired, previous=_previous_model(md, ctx, desired))


def _previous_model(md: ModelDeployment, ctx: ReconcileContext, desired: DesiredModel) -> DesiredModel | None:
    """The model ``status.model`` names, while another one is wanted: what a refusal rolls back to.

    Its manifest comes from memory when a TrainingJob pinned it (no store read), else from
    the store, and only if it still has the digest that served: a manifest rewritten in
    place (the same manifestUri) cannot be deployed again, the replica would refuse it.
    """
    served = md.status.model if md.status else None
    if served is None or not served.digest or not served.manifest_uri or served.digest == desired.digest:
        return None
    try:
        manifest, digest = _read_manifest(ctx, md, served.manifest_uri, served.digest)
    except (ManifestError, StoreError):
        return None
    if f"sha256:{digest}" != served.digest:
        return None
    variant = served.variant or str(md.spec.model.effective_variant)
    return DesiredModel(served.manifest_uri, served.digest, variant, manifest.task, manifest.run_id)


# ------------------------------------------------------------------------ compute


class DeploymentPass:
    """One pass of the ModelDeployment state machine: the status being built and its actions."""

    def __init__(
        self, md: ModelDeployment, observed: DeploymentObserved, now: datetime, settings: Settings
    ) -> None:
        previous = md.status or ModelDeploymentStatus()
        self.md = md
        self.settings = settings
        self.gen = md.metadata.generation or 1
        self.now = now
        self.s = previous.model_copy(deep=True)
        self.actions: list[Action] = []
        self.old_phase = DeploymentPhase(previous.phase)
        self.observed = observed
        self.obs = observed.serving or ServingObservation(ServingState.ABSENT)
        self.serving_now = previous.model if previous.model and previous.model.digest else None
        self.desired = observed.desired
        # The previous pass deployed a new version beside the running one (with a surge).
        progressing = find_condition(previous.conditions, COND_PROGRESSING)
        self.rollout_started = progressing is not None and progressing.reason == "RollingOut"
        # A model refused before (this generation) is not tried again: the one before it serves.
        self.refusal = refusal_of(previous, self.gen)
        self.refused: DesiredModel | None = None
        if (
            self.refusal is not None
            and self.desired is not None
            and observed.previous is not None
            and self.refusal[0] == self.desired.digest
        ):
            self.refused, self.desired = self.desired, observed.previous

    @property
    def rolling(self) -> bool:
        """A verified model serves and another one is wanted."""
        d = self.desired
        return self.serving_now is not None and d is not None and self.serving_now.digest != d.digest

    @property
    def serves_desired(self) -> bool:
        """The previous pass found the wanted model serving and replicas still run (not a first deployment)."""
        d = self.desired
        return (
            self.old_phase is DeploymentPhase.READY
            and self.serving_now is not None
            and d is not None
            and self.serving_now.digest == d.digest
            and (self.obs.ready_replicas or 0) > 0
        )

    def cond(self, type_: str, status: bool, reason: str, message: str) -> None:
        self.s.conditions = set_condition(
            self.s.conditions, type_, status, reason, message, self.now, self.gen
        )

    def done(self, phase: DeploymentPhase, reason: str, message: str) -> None:
        self.s.phase = phase
        if phase != self.old_phase:
            bad = phase in (DeploymentPhase.FAILED, DeploymentPhase.DEGRADED)
            self.actions.append(
                Event("Warning" if bad else "Normal", reason, f"{self.old_phase} -> {phase}: {message}")
            )

    def fill_serving(self) -> None:
        self.s.url = self.obs.url or self.s.url
        self.s.replicas = self.obs.replicas
        self.s.ready_replicas = self.obs.ready_replicas
        self.s.scaling = scaling_status(self.s.scaling, self.obs, self.md.spec.autoscaling, self.now)
        if self.obs.ray_auth is not None:
            auth = self.obs.ray_auth
            self.cond(COND_RAY_AUTH, auth.on, auth.reason, auth.message)


# ------------------------------------------------------------------------ scaling

SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_TO_ZERO = "ScaledToZero"
SCALED_FROM_ZERO = "ScaledFromZero"


def scaling_reason(before: int, after: int, ongoing: float | None, scaling: Autoscaling) -> tuple[str, str]:
    """(decision, reason) of Serve's autoscaler moving the target from ``before`` to ``after``."""
    target = f"{scaling.target_ongoing_requests:g}"
    load = f"{ongoing:g} requests in flight or queued" if ongoing is not None else None
    if before == 0:
        return SCALED_FROM_ZERO, (
            "a request arrived while scaled to zero; Serve held it and started a replica "
            "(no upscale delay from zero)"
        )
    if after == 0:
        return SCALED_TO_ZERO, (
            f"no request for scaleToZeroAfterSeconds ({scaling.scale_to_zero_after_seconds:g}s); "
            "the next request is held while a replica starts"
        )
    if after > before:
        seen = f"{load} at {before} replica(s)" if load else f"load at {before} replica(s)"
        return SCALED_UP, (
            f"{seen} above targetOngoingRequests {target} per replica for upscaleDelaySeconds "
            f"({scaling.upscale_delay_seconds:g}s, averaged over {scaling.metrics_window_seconds:g}s)"
        )
    seen = f"{load} at {before} replica(s)" if load else f"load at {before} replica(s)"
    return SCALED_DOWN, (
        f"{seen} below targetOngoingRequests {target} per replica for downscaleDelaySeconds "
        f"({scaling.downscale_delay_seconds:g}s)"
    )


def scaling_status(
    previous: ScalingStatus | None, obs: ServingObservation, scaling: Autoscaling, now: datetime
) -> ScalingStatus | None:
    """``status.scaling`` from the previous one and what the backend reports now (pure).

    A decision is a change of the autoscaler's target between two passes; the first
    target seen (the deployment's initial replicas) is no decision. The backend that
    reports no target (KubeRay's RayService status) leaves scaling unset.
    """
    if obs.target_replicas is None:
        return previous
    out = previous.model_copy() if previous is not None else ScalingStatus()
    before, after = out.target_replicas, obs.target_replicas
    out.target_replicas = after
    out.ongoing_requests = round(obs.ongoing_requests, 1) if obs.ongoing_requests is not None else None
    if before is not None and before != after:
        decision, reason = scaling_reason(before, after, obs.ongoing_requests, scaling)
        out.last_decision, out.last_reason = decision, reason
        out.last_from_replicas, out.last_to_replicas = before, after
        out.last_scale_time = rfc3339(now)
    return out


# ------------------------------------------------------------------------ refusal

MODEL_REFUSED = "ModelRefused"
# The replica's own refusals of an artifact set (serve/artifacts.py: digest and checksum checks;
# serve/model.py: the warm-up's output check). They do not pass on a retry, so a rollout whose
# new replica reports one is refused at its first failure, without waiting for Serve to give up
# (DEPLOY_FAILED), which would refuse requests meanwhile even though old replicas still run.
REPLICA_REFUSALS = (
    "checksum mismatch",
    "manifest digest mismatch",
    "does not match the manifest's plaintext sha256",
    "failed: the model gave",
)
_REFUSED = re.compile(r"^refused (?P<digest>sha256:[0-9a-f]{64}) ")


def refusal_message(refused: DesiredModel, why: str, previous: DesiredModel) -> str:
    """The Progressing condition's message of a refused model; it starts with the refused digest."""
    run = f"run {refused.run_id}" if refused.run_id else "the model"
    before = f" (run {previous.run_id})" if previous.run_id else ""
    # Serve's reason goes last: a message over the condition's bound loses its tail only.
    return (
        f"refused {refused.digest} ({run}, {refused.manifest_uri}): serving the previous model "
        f"{previous.digest}{before} again until another model is published or the spec changes; "
        f"its replicas failed: {why}"
    )


def refusal_of(status: ModelDeploymentStatus, generation: int) -> tuple[str, str] | None:
    """(digest, message) of the model this generation refused, from the Progressing condition."""
    cond = find_condition(status.conditions, COND_PROGRESSING)
    if cond is None or cond.reason != MODEL_REFUSED or cond.observed_generation != generation:
        return None
    match = _REFUSED.match(cond.message or "")
    return (match.group("digest"), cond.message or "") if match else None


def _refuse(p: DeploymentPass, why: str) -> None:
    """The new model's replicas failed: deploy the one that served before, say why (pure)."""
    assert p.desired is not None and p.observed.previous is not None
    previous = p.observed.previous
    message = refusal_message(p.desired, why, previous)
    p.actions = [a for a in p.actions if not isinstance(a, Deploy)]  # not the refused one again
    p.actions.append(Deploy(serving_work(p.md, previous, p.settings, p.observed.key_digests)))
    p.cond(COND_PROGRESSING, False, MODEL_REFUSED, message)
    ready = (p.obs.ready_replicas or 0) > 0
    p.cond(
        COND_READY,
        ready,
        "ServingPrevious" if ready else "RollingBack",
        f"{'serving' if ready else 'starting'} {previous.digest} again",
    )
    p.done(DeploymentPhase.DEGRADED, MODEL_REFUSED, message)


def _keep_refusal(p: DeploymentPass) -> None:
    """After the step for the previous model: the refusal stays in the status, the phase Degraded."""
    assert p.refusal is not None and p.desired is not None
    p.cond(COND_PROGRESSING, False, MODEL_REFUSED, p.refusal[1])
    if p.obs.state is not ServingState.RUNNING:
        # Serve still runs (or fails) the refused model's config, or brings the previous one back.
        serving = (p.obs.ready_replicas or 0) > 0
        detail = f": {p.obs.message}" if p.obs.message and not serving else ""
        p.cond(
            COND_READY,
            serving,
            "ServingPrevious" if serving else "RollingBack",
            f"{'serving' if serving else 'starting'} {p.desired.digest} again{detail}",
        )
        p.s.model = p.serving_now
    p.s.phase = DeploymentPhase.DEGRADED


def compute_deployment_status(
    md: ModelDeployment, observed: DeploymentObserved, now: datetime, settings: Settings
) -> tuple[ModelDeploymentStatus, list[Action]]:
    """The ModelDeployment's new status and the actions to take; pure.

    ``md.status`` is the previous status.
    """
    p = DeploymentPass(md, observed, now, settings)
    p.s.observed_generation = p.gen
    p.s.backend = Backend(backend_name(md.spec.backend, settings))
    _step_for(p)(p)
    if p.refused is not None:
        _keep_refusal(p)
    return p.s, p.actions


def _step_for(p: DeploymentPass) -> Callable[[DeploymentPass], None]:
    """The dispatch: suspended, no model to serve, or a model (then by Serve's state)."""
    if p.md.spec.suspend:
        return _suspended
    if p.observed.keys_problem is not None:
        return _keys_unusable
    if p.desired is None:
        return _no_model
    return _with_model


def _suspended(p: DeploymentPass) -> None:
    if p.obs.state is not ServingState.ABSENT:
        p.actions.append(Undeploy(serving_work_without_model(p.md, p.settings)))
    p.s.url, p.s.replicas, p.s.ready_replicas, p.s.model = None, 0, 0, None
    p.cond(COND_READY, False, "Suspended", "spec.suspend is true; the endpoint is down")
    p.done(DeploymentPhase.PENDING, "Suspended", "suspended")


def _no_model(p: DeploymentPass) -> None:
    reason, message, permanent = p.observed.waiting or ("WaitingForModel", "no model yet", False)
    p.cond(COND_MODEL_AVAILABLE, False, reason, message)
    if p.serving_now is not None and p.obs.state is ServingState.RUNNING:
        # The source is gone or retraining: keep serving what we verified.
        p.fill_serving()
        p.cond(COND_READY, True, "Serving", f"serving {p.serving_now.digest}; {message}")
        p.done(DeploymentPhase.READY, "Ready", "serving")
        return
    p.cond(COND_READY, False, reason, message)
    p.done(DeploymentPhase.FAILED if permanent else DeploymentPhase.PENDING, reason, message)


def _keys_unusable(p: DeploymentPass) -> None:
    """spec.auth's Secret gives no usable key: deploy nothing new; what serves keeps its last keys."""
    assert p.observed.keys_problem is not None
    reason, message = p.observed.keys_problem
    if p.serving_now is not None and p.obs.state is ServingState.RUNNING:
        p.fill_serving()
        p.cond(
            COND_READY,
            True,
            reason,
            f"serving {p.serving_now.digest} with the API keys it was given last; {message}",
        )
        p.done(DeploymentPhase.DEGRADED, reason, message)
        return
    p.cond(COND_READY, False, reason, message)
    p.done(DeploymentPhase.PENDING, reason, message)


def _with_model(p: DeploymentPass) -> None:
    desired = p.desired
    assert desired is not None
    p.cond(COND_MODEL_AVAILABLE, True, "ModelResolved", f"{desired.manifest_uri} ({desired.variant})")
    work = serving_work(p.md, desired, p.settings, p.observed.key_digests)
    # spec.auth: the Secret's keys changed (rotation): the same config with other digests in
    # user_config, which Serve applies to the running replicas in place (reconfigure).
    keys_changed = work.key_digests is not None and p.obs.serving_key_digests != work.key_digest_list
    older_runs = p.obs.serving_args is not None and p.obs.serving_args != work.app_args
    if older_runs and p.obs.state is ServingState.RUNNING:
        # The new version starts beside the running replicas, which stop only once it runs.
        p.actions.append(Deploy(replace(work, surge_from=p.obs.ready_replicas or 0)))
        _rolling_over(p)
        return
    # Deploy is idempotent in every backend, so asking again while the backend cannot
    # tell which version it runs (serving_args None) costs a comparison, not a restart;
    # except during a rollout, whose config (with its surge) was deployed already.
    if p.obs.state is ServingState.ABSENT or (
        (p.obs.serving_args != work.app_args or keys_changed) and not p.rollout_started
    ):
        p.actions.append(Deploy(work))
    _BY_STATE[ServingState(p.obs.state)](p)


def _rolling_over(p: DeploymentPass) -> None:
    """An older version runs: Serve rolls over without dropping requests."""
    assert p.desired is not None
    p.fill_serving()
    p.cond(COND_PROGRESSING, True, "RollingOut", f"deploying {p.desired.digest} ({p.desired.variant})")
    serving = p.serving_now.digest if p.serving_now else "a previous model"
    p.cond(COND_READY, True, "Serving", f"serving {serving}")
    p.done(DeploymentPhase.READY, "RollingOut", f"rolling out {p.desired.digest}")


def _absent(p: DeploymentPass) -> None:
    assert p.desired is not None
    what = f"deploying {p.desired.digest} ({p.desired.variant})"
    p.cond(COND_PROGRESSING, True, "Deploying", what)
    p.cond(COND_READY, False, "Deploying", what)
    p.s.url, p.s.replicas, p.s.ready_replicas = None, 0, 0
    p.done(DeploymentPhase.DEPLOYING, "Deploying", f"deploying {p.desired.digest}")


def _running(p: DeploymentPass) -> None:
    d = p.desired
    assert d is not None
    p.fill_serving()
    if p.rollout_started:  # rolled out: the spec's own autoscaling again, without the surge
        p.actions.append(Deploy(serving_work(p.md, d, p.settings, p.observed.key_digests)))
    p.s.model = served_model(d, p.obs, p.s.model, p.md.spec)
    p.cond(COND_PROGRESSING, False, "RolledOut", f"serving {d.digest}")
    p.cond(
        COND_READY, True, "Serving", f"digest verified, model loaded and warmed up: {d.digest} ({d.variant})"
    )
    p.done(DeploymentPhase.READY, "Ready", f"serving {d.digest}")


def served_model(
    desired: DesiredModel,
    obs: ServingObservation,
    previous: ServedModel | None,
    spec: ModelDeploymentSpec | None = None,
) -> ServedModel:
    """``status.model``: the manifest served and the variant a replica reports (``rayrelay_core.variants``).

    Each replica chooses on its own hardware and the scrape reaches one of them, so the first
    report of a choice stays until a replica reports another one (no status churn between
    replicas' timings); without a report, the manifest's recommendation as resolved. A
    text-generation model also shows the caps its replicas decode under (from ``spec``).
    """
    caps = generation_caps(spec) if spec is not None and desired.task == TEXT_GENERATION else None
    model = ServedModel(
        manifest_uri=desired.manifest_uri,
        digest=desired.digest,
        variant=desired.variant,
        task=desired.task,
        generation=caps,
    )
    report = obs.variant
    same = previous is not None and previous.digest == desired.digest and previous.variant_reason is not None
    if same and previous is not None and (report is None or _same_choice(report, previous)):
        update = {"manifest_uri": desired.manifest_uri, "task": desired.task, "generation": caps}
        return previous.model_copy(update=update)
    if report is not None:
        model.variant = report.variant
        model.variant_reason = report.reason
        model.instruction_set = report.isa
        model.variant_timings_ms = {k: round(v * 1000, 2) for k, v in report.timings_s.items()}
        model.runtime, model.precision = report.runtime or None, report.precision or None
    return model


def _same_choice(report: VariantChoice, previous: ServedModel) -> bool:
    """The same variant, chosen the same way (auto or forced) as the one the status shows."""
    was_auto = (previous.variant_reason or "").startswith(f"{AUTO_VARIANT}:")
    return report.variant == previous.variant and (report.requested == AUTO_VARIANT) == was_auto


def _deploying(p: DeploymentPass) -> None:
    assert p.desired is not None
    refusable = p.rolling and p.rollout_started and p.observed.previous is not None
    if refusable and any(marker in p.obs.message for marker in REPLICA_REFUSALS):
        p.fill_serving()
        _refuse(p, p.obs.message)
        return
    p.fill_serving()
    rolling = p.rolling or p.rollout_started  # a new model, or the same one with a new spec
    deploying = f"deploying {p.desired.digest}"
    if p.observed.store_problem:
        deploying += f"; its replicas wait for the artifact store: {p.observed.store_problem}"
    if not rolling and p.serves_desired:
        # Serve applies another config of the model that serves (after a rollout: the spec's
        # own autoscaling, the surge replica stopping); its replicas answer meanwhile.
        p.cond(COND_PROGRESSING, True, "Updating", f"{deploying}; its replicas serve meanwhile")
        p.cond(COND_READY, True, "Serving", f"serving {p.desired.digest}")
        p.done(DeploymentPhase.READY, "Ready", f"serving {p.desired.digest}")
        return
    p.cond(COND_PROGRESSING, True, "RollingOut" if rolling else "Deploying", deploying)
    if rolling:
        p.cond(COND_READY, True, "Serving", f"serving {p.serving_now.digest if p.serving_now else ''}")
        p.done(DeploymentPhase.READY, "RollingOut", f"rolling out {p.desired.digest}")
        return
    if p.observed.store_problem:
        waiting = f"replicas wait for the artifact store, which does not answer: {p.observed.store_problem}"
        p.cond(COND_READY, False, STORE_WAIT_REASON, waiting)
        p.done(DeploymentPhase.DEPLOYING, STORE_WAIT_REASON, waiting)
        return
    p.cond(COND_READY, False, "Deploying", p.obs.message or "replicas starting")
    p.done(DeploymentPhase.DEPLOYING, "Deploying", p.obs.message or "replicas starting")


def _failing(p: DeploymentPass) -> None:
    """DeployFailed or Unhealthy: degraded while something still serves, else failed."""
    assert p.desired is not None
    p.fill_serving()
    state = ServingState(p.obs.state)
    reason = "ModelRolloutFailed" if state is ServingState.DEPLOY_FAILED else "Unhealthy"
    message = p.obs.message or f"the Serve application is {state.value}"
    refusable = p.rolling and p.rollout_started and p.observed.previous is not None
    if refusable and state is ServingState.DEPLOY_FAILED:
        _refuse(p, message)
        return
    if p.refused is not None:  # rolling back after a refusal: _keep_refusal says how far
        p.done(DeploymentPhase.DEGRADED, reason, message)
        return
    p.cond(COND_PROGRESSING, False, reason, message)
    if p.rolling:
        # Nothing to roll back to (the old manifest changed in place): say what still runs.
        serving = p.serving_now.digest if p.serving_now else ""
        p.cond(COND_READY, True, "ServingPrevious", f"still serving {serving}")
        p.done(DeploymentPhase.DEGRADED, reason, f"new model {p.desired.digest} failed: {message}")
        return
    if state is ServingState.UNHEALTHY and (p.obs.ready_replicas or 0) > 0:
        p.cond(COND_READY, True, "Unhealthy", message)
        p.done(DeploymentPhase.DEGRADED, reason, message)
        return
    p.s.model = None
    p.cond(COND_READY, False, reason, message)
    p.done(DeploymentPhase.FAILED, reason, message)


_BY_STATE: dict[ServingState, Callable[[DeploymentPass], None]] = {
    ServingState.ABSENT: _absent,
    ServingState.RUNNING: _running,
    ServingState.DEPLOYING: _deploying,
    ServingState.DEPLOY_FAILED: _failing,
    ServingState.UNHEALTHY: _failing,
}


# ------------------------------------------------------------------------ pass


def _rejected_already(previous: ModelDeploymentStatus, generation: int) -> bool:
    """The backend refused this generation: asking again before the spec changes is pointless."""
    ready = find_condition(previous.conditions, COND_READY)
    return (
        previous.phase == DeploymentPhase.FAILED
        and ready is not None
        and ready.reason == "BackendRejected"
        and previous.observed_generation == generation
    )


def plan_modeldeployment(obj: Mapping[str, Any], ctx: ReconcileContext) -> Plan:
    """Parse, observe and compute one pass (observe errors propagate to the driver)."""
    ns, _name, gen = meta_of(obj)
    previous = previous_status(obj, ModelDeploymentStatus)
    md, problem = parse_typed(obj, "ModelDeployment")
    if md is not None and backend_name(md.spec.backend, ctx.settings) not in ctx.backends:
        name = backend_name(md.spec.backend, ctx.settings)
        problem = f"backend {name!r} is not configured in this operator (have: {', '.join(ctx.backends)})"
    reason = "InvalidSpec"
    if problem is None and md is not None and ctx.enforce_policy:
        md.metadata.namespace = ns
        name = backend_name(md.spec.backend, ctx.settings)
        refusal = policy.check_modeldeployment(md, name, ctx.settings, ctx.secret_labels)
        if refusal is not None:
            reason, problem = refusal.reason, refusal.message
    if problem is not None:
        events = [Event("Warning", reason, problem)] if previous.phase != DeploymentPhase.FAILED else []
        return Plan(invalid_spec_status(previous, problem, ctx.now(), gen, reason), list(events), None)
    assert md is not None
    if _rejected_already(previous, gen):
        return Plan(previous, [], None)
    md = md.model_copy(update={"status": previous})
    md.metadata.namespace = ns
    md.metadata.generation = gen
    backend = ctx.backends[backend_name(md.spec.backend, ctx.settings)]
    observed = DeploymentObserved() if md.spec.suspend else resolve_model(md, ctx)
    if not md.spec.suspend:
        observed.key_digests, observed.keys_problem = read_api_keys(md, ctx)
    desired = observed.desired
    probe = (
        serving_work(md, desired, ctx.settings) if desired else serving_work_without_model(md, ctx.settings)
    )
    observed.serving = backend.observe_serving(probe)
    if desired is not None and observed.serving.state is ServingState.DEPLOYING:
        observed.store_problem = probe_store(md, desired.manifest_uri, ctx)
    status, actions = compute_deployment_status(md, observed, ctx.now(), ctx.settings)
    return Plan(status, actions, backend)


def delete_modeldeployment(obj: Mapping[str, Any], ctx: ReconcileContext) -> None:
    """Take the endpoint down (the finalizer's job)."""
    ns, _name, _ = meta_of(obj)
    spec = obj.get("spec") or {}
    backend = ctx.backends.get(backend_name(spec.get("backend"), ctx.settings))
    if backend is None:
        return
    md, _problem = parse_typed(obj, "ModelDeployment")
    if md is None:
        # An invalid spec never deployed anything under a typed model; nothing to build from.
        return
    md.metadata.namespace = ns
    backend.delete_serving(serving_work_without_model(md, ctx.settings))
