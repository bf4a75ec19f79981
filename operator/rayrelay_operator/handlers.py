"""kopf handlers: thin adapters from kopf's events to the reconcilers.

Every handler of a kind -- create, update, resume, the timer -- ends in the
same ``_reconcile`` call, which runs ``reconcile.run_pass`` (the one pass every
driver runs) and puts its status patch into kopf's patch. Delete handlers
remove the children (kopf adds our finalizer, ``rayrelay.dev/finalizer``,
because a delete handler exists) -- for a TrainingJob only where the
garbage collector cannot (the ray backend, ``_tj_needs_finalizer``): a
kuberay TrainingJob's children are owned by it and go with it, and its
timer stops on the DELETED event (``DeletedObjects``). A pass and the object's delete
handler never overlap, and no pass acts once the deletion began (``ObjectGate``: kopf runs
the delete handler while a timer tick may still be running). ``run_pass`` has already written the
condition that explains an error; here a permanent one becomes
``kopf.PermanentError`` and a temporary one ``kopf.TemporaryError`` with the
pass's delay (kopf applies the patch either way, timers included). Nothing
here sleeps.

``build_registry(settings)`` returns a fresh ``kopf.OperatorRegistry`` so
that the runner (``runner``) and the tests (which add a login handler for the
emulator) each get their own. The ``ReconcileContext`` lives in kopf's
``memo`` (``memo.ctx``); the startup handler builds the default one (kuberay
backend over the Kubernetes API, plus the ray backend when an address is
configured) unless the caller passed one in.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kopf

from rayrelay_core.api import GROUP, VERSION, Backend
from rayrelay_operator import metrics, naming, persistence, streams
from rayrelay_operator.reconcile import Event, ReconcileContext, classify, delete_pass, run_pass
from rayrelay_operator.reconcile.context import cached_store_for
from rayrelay_operator.settings import Settings

log = logging.getLogger(__name__)

# Handler ids are constants: kopf keys each handler's progress (retries; kept in memory,
# ``persistence``) and its log lines by them.
TJ_RECONCILE = "reconcile-trainingjob"
TJ_DELETE = "delete-trainingjob"
TJ_TIMER = "observe-trainingjob"
TJ_GONE = "trainingjob-gone"
MD_RECONCILE = "reconcile-modeldeployment"
MD_DELETE = "delete-modeldeployment"
MD_TIMER = "observe-modeldeployment"
RAYJOB_WATCH = "watch-rayjobs"
RAY_GROUP, RAY_VERSION = "ray.io", "v1"

TJ_PLURAL = "trainingjobs"
MD_PLURAL = "modeldeployments"


def default_context(settings: Settings, api_client: Any | None = None) -> ReconcileContext:
    """The production context: kuberay over the cluster's API (+ ray when an address is set)."""
    from kubernetes import client, config

    from rayrelay_operator.backends.kuberay import KubeRayBackend

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    backends: dict[str, Any] = {"kuberay": KubeRayBackend(api_client, settings)}
    if settings.ray_address:
        from rayrelay_operator.backends.ray import RayBackend

        # environ={}: the operator's own environment (its AWS keys) never goes into a job's
        # runtime_env; a job gets its resource's opted-in Secret (issue 12, finding 2).
        backends["ray"] = RayBackend(
            settings.ray_address,
            serve_port=settings.serve_port,
            environ={},
            credentials=secret_credentials_getter(api_client),
            encryption_key=secret_encryption_key_getter(api_client),
            auth_token=settings.ray_auth_token,
        )
    # One S3 client per endpoint for every pass, with the operator's short timeouts.
    store_for = cached_store_for(operator_store_opener(settings))
    if settings.artifacts_uri:
        # Made now, not by the first pass of a burst: building a boto3 client costs ~0.3 s of CPU
        # (its service models), which the first TrainingJobs would wait for. No request is sent.
        store_for(settings.artifacts_uri, settings.s3_endpoint_url)
    return ReconcileContext(
        settings=settings,
        backends=backends,
        get_trainingjob=trainingjob_getter(api_client),
        store_for=store_for,
        enforce_policy=True,
        secret_labels=secret_labels_getter(api_client),
        secret_data=secret_data_getter(api_client),
    )


def operator_store_opener(settings: Settings) -> Callable[[str, str | None], Any]:
    """``open_store`` for the operator: few attempts, short timeouts (issue 12, finding 3)."""
    from rayrelay_core.store import LocalStore, S3Settings, S3Store, is_s3

    def open_(uri: str, endpoint_url: str | None) -> Any:
        if not is_s3(uri):
            return LocalStore()
        return S3Store(
            S3Settings(
                endpoint_url=endpoint_url or settings.s3_endpoint_url,
                max_attempts=settings.store_max_attempts,
                connect_timeout=settings.store_connect_timeout_seconds,
                read_timeout=settings.store_read_timeout_seconds,
            )
        )

    return open_


CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def secret_credentials_getter(api_client: Any) -> Callable[[str, str], dict[str, str]]:
    """``credentials(namespace, name)``: the AWS_* keys of an opted-in Secret (ray backend only).

    The kuberay backend never reads Secret data (pods get ``secretKeyRef``); the ray backend
    has no such thing, so it reads the keys of the one Secret a resource names, and only
    when that Secret carries the opt-in label (checked again here).
    """
    import base64

    from kubernetes import client

    from rayrelay_operator.backends.base import BackendRejected
    from rayrelay_operator.policy import LABEL_CREDENTIALS

    core = client.CoreV1Api(api_client)

    def get(namespace: str, name: str) -> dict[str, str]:
        secret = core.read_namespaced_secret(name, namespace)
        labels = (secret.metadata.labels or {}) if secret.metadata else {}
        if str(labels.get(LABEL_CREDENTIALS, "")).lower() != "true":
            raise BackendRejected(f"Secret {namespace}/{name} does not opt in ({LABEL_CREDENTIALS})")
        data = secret.data or {}
        return {k: base64.b64decode(data[k]).decode() for k in CREDENTIAL_KEYS if data.get(k)}

    return get


def secret_encryption_key_getter(api_client: Any) -> Callable[[str, str], str]:
    """``encryption_key(namespace, name)``: ``RAYRELAY_ENCRYPTION_KEY`` of an opted-in Secret (ray backend).

    The kuberay backend hands the key to pods by ``secretKeyRef`` and never reads it. The
    value is returned, never logged; errors name the Secret and the key name only.
    """
    import base64

    from kubernetes import client

    from rayrelay_core.runs import ENCRYPTION_KEY_ENV
    from rayrelay_operator.backends.base import BackendRejected, MissingPermission
    from rayrelay_operator.policy import LABEL_CREDENTIALS

    core = client.CoreV1Api(api_client)

    def read(namespace: str, name: str) -> str:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 403:
                raise MissingPermission(f"the operator may not read Secret {namespace}/{name}") from None
            raise BackendRejected(f"Secret {namespace}/{name} cannot be read (HTTP {exc.status})") from None
        labels = (secret.metadata.labels or {}) if secret.metadata else {}
        if str(labels.get(LABEL_CREDENTIALS, "")).lower() != "true":
            raise BackendRejected(f"Secret {namespace}/{name} does not opt in ({LABEL_CREDENTIALS})")
        value = (secret.data or {}).get(ENCRYPTION_KEY_ENV)
        if not value:
            raise BackendRejected(f"Secret {namespace}/{name} has no key {ENCRYPTION_KEY_ENV}")
        return base64.b64decode(value).decode("utf-8", errors="replace").strip()

    return read


def secret_data_getter(api_client: Any) -> Callable[[str, str], dict[str, str] | None]:
    """``secret_data(namespace, name)``: a Secret's data, decoded (None when it does not exist).

    Read for ``spec.auth.apiKeysSecret`` only, after the policy checked its opt-in label,
    on every pass (``get``, which the chart grants already; no ``list``/``watch`` on Secrets):
    the reconciler keeps the keys' digests and drops the values. Never logged.
    """
    import base64

    from kubernetes import client

    from rayrelay_operator.backends.base import MissingPermission

    core = client.CoreV1Api(api_client)

    def read(namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 403:
                raise MissingPermission(f"the operator may not read Secret {namespace}/{name}") from None
            raise
        return {
            key: base64.b64decode(value).decode("utf-8", errors="replace")
            for key, value in (secret.data or {}).items()
        }

    return read


# Asks the API server for a Secret's metadata only: the policy check never fetches Secret data.
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def secret_labels_getter(api_client: Any) -> Callable[[str, str], dict[str, str] | None]:
    """``secret_labels(namespace, name)``: a Secret's labels (None when it does not exist).

    RBAC cannot grant metadata without ``get`` on secrets, so the chart grants ``get`` (no
    ``list``/``watch``) and the request asks for PartialObjectMetadata: the data never
    leaves the API server.
    """
    import json as _json

    from kubernetes.client.exceptions import ApiException

    def get(namespace: str, name: str) -> dict[str, str] | None:
        try:
            response = api_client.call_api(
                "/api/v1/namespaces/{namespace}/secrets/{name}",
                "GET",
                path_params={"namespace": namespace, "name": name},
                header_params={"Accept": _METADATA_ONLY},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        doc = _json.loads(response.data)
        return dict((doc.get("metadata") or {}).get("labels") or {})

    return get


def trainingjob_getter(api_client: Any) -> Callable[[str, str], dict[str, Any] | None]:
    """``get_trainingjob(namespace, name)`` over the Kubernetes API (None when absent)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(api_client)

    def get(namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(api.get_namespaced_custom_object(GROUP, VERSION, namespace, TJ_PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return get


def _with_events(ctx: ReconcileContext, body: kopf.Body) -> ReconcileContext:
    def emit(event: Event) -> None:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message[:1000])

    return dataclasses.replace(ctx, emit=emit)


def _as_object(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The resource as ``run_pass`` takes it: a plain dict with its stored status."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": kind,
        "metadata": dict(body.get("metadata") or {}),
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


class ObjectGate:
    """Keeps an object's reconcile passes and its delete handler apart, across kopf's threads.

    kopf stops an object's timer when its deletion starts, but runs the delete handler at the
    same time, and a tick already running in a worker thread runs on: a ModelDeployment's
    tick that planned its deploy before the delete handler took the Serve application down
    put it back after, with the finalizer gone and nothing left to remove it (the likely
    cause of a CI run in which something was still there two minutes after the delete).
    The delete handler marks the object as being deleted, then takes its lock, so it waits
    for a pass in flight; a pass that starts after the mark does nothing (a deletion is never
    undone). Locks are striped by object: no per-object state to clean up, and two objects
    share a lock only by hash, rarely and briefly.
    """

    def __init__(self, stripes: int = 256, limit: int = 100_000) -> None:
        self._locks = tuple(threading.Lock() for _ in range(stripes))
        self._deleting = DeletedObjects(limit)
        self._marks = threading.Lock()

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[zlib.crc32(key.encode()) % len(self._locks)]

    @contextmanager
    def passing(self, key: str) -> Iterator[bool]:
        """Held for one pass; yields False when the object is being deleted (skip the pass)."""
        with self._lock(key):
            with self._marks:
                deleting = key in self._deleting
            yield not deleting

    @contextmanager
    def deleting(self, key: str) -> Iterator[None]:
        """Held for one call of the delete handler, after marking the object."""
        with self._marks:
            self._deleting.add(key)
        with self._lock(key):
            yield


def _key(kind: str, body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{kind}/{meta.get('uid') or ''}/{meta.get('namespace')}/{meta.get('name')}"


def _reconcile(
    kind: str, body: kopf.Body, patch: kopf.Patch, memo: Any, *, timer: bool, gate: ObjectGate
) -> None:
    """One ``run_pass``; its patch goes into kopf's, its error into kopf's retry machinery.

    The pass holds the object's lock in ``gate`` and is skipped once the object's deletion began.
    """
    with gate.passing(_key(kind, body)) as live:
        if live:
            _run(kind, body, patch, memo, timer=timer)


def _run(kind: str, body: kopf.Body, patch: kopf.Patch, memo: Any, *, timer: bool) -> None:
    ctx: ReconcileContext = memo.ctx
    meta = body.get("metadata") or {}
    started = time.monotonic()
    try:
        result = run_pass(kind, _as_object(kind, body), _with_events(ctx, body))
    finally:
        metrics.DURATION.labels(kind).observe(time.monotonic() - started)
    for field, value in result.patch.items():
        patch.status[field] = value
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    metrics.record_phase(kind, key, str(result.status.phase))
    metrics.record_status(kind, key, result.status)
    if result.error is None:
        now = ctx.now().timestamp()  # the pass's clock (the wall clock, but for tests)
        metrics.record_submit(kind, body, result.status, now)
        metrics.record_retry(kind, body, result.status, now)
        metrics.RECONCILES.labels(kind, "ok").inc()
        return
    metrics.ERRORS.labels(kind, result.error.reason).inc()
    metrics.RECONCILES.labels(kind, "permanent" if result.permanent else "temporary").inc()
    if result.temporary:
        metrics.RETRY_DELAY.labels(kind).observe(result.delay or 0)
        # kopf applies the patch (the Reconciled condition) and calls again after the delay.
        raise kopf.TemporaryError(result.problem or result.error.reason, delay=result.delay or 0)
    if not timer:
        # The status that explains it is in the patch, which kopf applies before it gives up.
        raise kopf.PermanentError(result.problem)


def _tj_needs_finalizer(spec: Mapping[str, Any], memo: Any, **_: Any) -> bool:
    """Whether deleting this TrainingJob must wait for our delete handler (kopf's finalizer).

    Only where nothing else removes the work: the ray backend's Ray job runs on a cluster
    the API server knows nothing of. A kuberay TrainingJob's children (its RayJobs, and
    their NetworkPolicies where per cluster) carry an ownerReference to it, so Kubernetes'
    garbage collector deletes them with it, and the finalizer would cost a metadata PATCH
    (and one more watch event) per TrainingJob for nothing (``bench/control_plane.py``). An
    object that carries our finalizer from an earlier version loses it on its next event.
    """
    ctx = memo.get("ctx") if hasattr(memo, "get") else None
    settings = ctx.settings if ctx is not None else (memo.get("settings") if hasattr(memo, "get") else None)
    default = settings.default_backend if settings is not None else Backend.KUBERAY
    return str(spec.get("backend") or default) != Backend.KUBERAY.value


class DeletedObjects:
    """The uids of objects seen DELETED, bounded (the oldest go first): what stops their timers.

    kopf stops a timer on deletion only while its finalizer holds the object; a kuberay
    TrainingJob has none (``_tj_needs_finalizer``), so kopf would keep ticking on a body that
    no longer exists. The DELETED event puts the uid here, and the timer's filter, re-checked
    by kopf in the same processing cycle, then mismatches and kopf stops the timer.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._uids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, uid: str) -> None:
        self._uids[uid] = None
        while len(self._uids) > self._limit:
            self._uids.popitem(last=False)

    def __contains__(self, uid: object) -> bool:
        return uid in self._uids


def _deletion(**kwargs: Any) -> bool:
    """kopf ``on.event`` filter: the watch event that says the object is gone."""
    return bool(kwargs.get("type") == "DELETED")


def _without_finalizer(registry: kopf.OperatorRegistry, handler_id: str) -> None:
    """Let a timer run without kopf's finalizer (``kopf.timer`` always asks for one).

    kopf has no public option for it; the handler is a frozen dataclass in the registry's
    spawning handlers, replaced here by a copy with ``requires_finalizer=False``. The timer
    is stopped on deletion by its filter instead (``DeletedObjects``).
    """
    spawning = registry._spawning
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if h.id == handler_id else h
        for h in spawning._handlers
    ]


def _tj_needs_timer(
    status: Mapping[str, Any], spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any
) -> bool:
    """Terminal jobs need no polling, except to honour ttlSecondsAfterFinished.

    Nor does a generation the change handler has not reconciled yet (no
    ``observedGeneration`` for it): a tick then would race that handler -- in a
    burst it can wait for a worker thread past the timer's idle time -- and submit
    the same attempt a second time (1.8 RayJob creates per TrainingJob with 200
    created at once, bench/control_plane.py). kopf re-checks this filter on every
    event, so the timer starts with the handler's status patch.
    """
    if (status.get("observedGeneration") or 0) < (meta.get("generation") or 1):
        return False
    if status.get("phase") not in ("Succeeded", "Failed"):
        return True
    cleaned = any(c.get("type") == "ChildrenDeleted" for c in status.get("conditions") or [])
    return spec.get("ttlSecondsAfterFinished") is not None and not cleaned


LOGIN = "login-via-client"


def _add_fallback_login(registry: kopf.OperatorRegistry) -> None:
    """Log in the way kopf's default registry does: in-cluster ServiceAccount, else KUBECONFIG.

    A bare ``kopf.OperatorRegistry`` has no login handler (kopf adds them only
    to its own default registry), and the operator stops with ``LoginError:
    Ran out of valid credentials``. ``kopf.login_via_client`` loads the
    Kubernetes client's configuration -- the pod's ServiceAccount token (re-read
    on re-login, so rotated tokens work), else KUBECONFIG / ~/.kube/config --
    which is also what ``default_context`` gives the kuberay backend. It is
    registered as a *fallback*, exactly like kopf's own (kopf has no public
    decorator for that): an explicit ``@kopf.on.login`` on the same registry,
    such as the emulator tests', replaces it rather than competing with it.
    """
    from kopf._core.intents import causes
    from kopf._core.intents.handlers import ActivityHandler

    registry._activities.append(
        ActivityHandler(
            id=kopf.HandlerId(LOGIN),
            fn=kopf.login_via_client,
            activity=causes.Activity.AUTHENTICATION,
            errors=kopf.ErrorsMode.IGNORED,
            param=None,
            timeout=None,
            retries=None,
            backoff=None,
            _fallback=True,
        )
    )


def build_registry(settings: Settings) -> kopf.OperatorRegistry:
    """All of rayrelay's handlers in a fresh registry, with a login that works in a pod and outside."""
    registry = kopf.OperatorRegistry()
    _add_fallback_login(registry)
    # Objects reach kopf without metadata.managedFields: kopf keeps each TrainingJob's body.
    streams.install()
    interval = settings.timer_interval_seconds
    idle = settings.timer_idle_seconds

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.persistence.finalizer = naming.FINALIZER
        # What was handled is the status's observedGeneration; retries live in memory: no
        # metadata PATCH per object (``persistence``).
        settings.persistence.progress_storage = persistence.MemoryProgressStorage(naming.ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = persistence.GenerationDiffBaseStorage()
        settings.posting.level = logging.INFO
        # Sync handlers block a worker thread on API calls; a few run side by side.
        settings.execution.max_workers = 8
        ours: Settings = memo.get("settings") or Settings.from_env()
        memo["settings"] = ours
        if memo.get("ctx") is None:
            memo["ctx"] = default_context(ours)
        metrics.serve(memo.get("metrics_port", ours.metrics_port))
        metrics.track_leadership(peering=bool(settings.peering.mandatory))

    gate = ObjectGate()
    _register_trainingjob(registry, interval, idle, gate)
    _register_modeldeployment(registry, interval, idle, gate)
    return registry


def _register_trainingjob(
    registry: kopf.OperatorRegistry, interval: float, idle: float, gate: ObjectGate
) -> None:
    """TrainingJob: create/update/resume and the timer run the pass; delete removes the children
    (only where the garbage collector does not: ``_tj_needs_finalizer``)."""
    gone = DeletedObjects()

    def needs_timer(
        status: Mapping[str, Any], spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any
    ) -> bool:
        return str(meta.get("uid") or "") not in gone and _tj_needs_timer(status, spec, meta)

    @kopf.on.create(GROUP, VERSION, TJ_PLURAL, id=TJ_RECONCILE, registry=registry)
    @kopf.on.update(GROUP, VERSION, TJ_PLURAL, id=TJ_RECONCILE, field="spec", registry=registry)
    @kopf.on.resume(GROUP, VERSION, TJ_PLURAL, id=TJ_RECONCILE, registry=registry)
    def trainingjob_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        _reconcile("TrainingJob", body, patch, memo, timer=False, gate=gate)

    @kopf.timer(
        GROUP,
        VERSION,
        TJ_PLURAL,
        id=TJ_TIMER,
        interval=interval,
        idle=idle,
        when=needs_timer,
        registry=registry,
    )
    def trainingjob_tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        _reconcile("TrainingJob", body, patch, memo, timer=True, gate=gate)

    _without_finalizer(registry, TJ_TIMER)

    @kopf.on.delete(GROUP, VERSION, TJ_PLURAL, id=TJ_DELETE, when=_tj_needs_finalizer, registry=registry)
    def trainingjob_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        _delete("TrainingJob", body, memo, retry, gate)

    @kopf.on.event(GROUP, VERSION, TJ_PLURAL, id=TJ_GONE, when=_deletion, registry=registry)
    async def trainingjob_gone(body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        gone.add(str(meta.get("uid") or ""))
        metrics.record_phase("TrainingJob", f"{meta.get('namespace')}/{meta.get('name')}", None)

    # The RayJobs of TrainingJobs, as the watch sees them: a pass reads its RayJob from here
    # instead of a GET every timer tick (backends.kuberay.RayJobCache). Async: no thread hop.
    @kopf.on.event(
        RAY_GROUP,
        RAY_VERSION,
        "rayjobs",
        id=RAYJOB_WATCH,
        labels={naming.LABEL_TRAININGJOB: kopf.PRESENT},
        registry=registry,
    )
    async def rayjob_seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        ctx: ReconcileContext | None = memo.get("ctx")
        cache = getattr(ctx.backends.get("kuberay"), "rayjobs", None) if ctx is not None else None
        if cache is not None:
            cache.seen(event.get("type"), event.get("object") or {})


def _register_modeldeployment(
    registry: kopf.OperatorRegistry, interval: float, idle: float, gate: ObjectGate
) -> None:
    """ModelDeployment: the same three handlers as a TrainingJob's (its timer always runs)."""

    @kopf.on.create(GROUP, VERSION, MD_PLURAL, id=MD_RECONCILE, registry=registry)
    @kopf.on.update(GROUP, VERSION, MD_PLURAL, id=MD_RECONCILE, field="spec", registry=registry)
    @kopf.on.resume(GROUP, VERSION, MD_PLURAL, id=MD_RECONCILE, registry=registry)
    def deployment_changed(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        _reconcile("ModelDeployment", body, patch, memo, timer=False, gate=gate)

    @kopf.timer(GROUP, VERSION, MD_PLURAL, id=MD_TIMER, interval=interval, idle=idle, registry=registry)
    def deployment_tick(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        _reconcile("ModelDeployment", body, patch, memo, timer=True, gate=gate)

    @kopf.on.delete(GROUP, VERSION, MD_PLURAL, id=MD_DELETE, registry=registry)
    def deployment_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
        _delete("ModelDeployment", body, memo, retry, gate)


def _delete(kind: str, body: kopf.Body, memo: Any, retry: int, gate: ObjectGate) -> None:
    ctx: ReconcileContext = memo.ctx
    meta = body.get("metadata") or {}
    try:
        with gate.deleting(_key(kind, body)):
            delete_pass(kind, _as_object(kind, body), ctx)
    except Exception as exc:
        err = classify(exc, retry, ctx.settings)
        metrics.ERRORS.labels(kind, err.reason).inc()
        metrics.RETRY_DELAY.labels(kind).observe(err.delay)
        # A finalizer must not be dropped while children may remain: always retry.
        raise kopf.TemporaryError(f"{err.reason}: {exc}", delay=err.delay) from exc
    metrics.record_phase(kind, f"{meta.get('namespace')}/{meta.get('name')}", None)
    kopf.info(body, reason="Deleted", message=f"{kind} children removed")
