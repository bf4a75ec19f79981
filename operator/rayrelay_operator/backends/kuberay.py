"""The ``kuberay`` backend: KubeRay RayJob / RayService objects over the Kubernetes API.

``rayrelay_operator.reconcile`` decides what should exist; this module creates, patches, deletes
and reads the KubeRay objects that ``builders.kuberay`` produces (the only
side effects of the kuberay path), and translates what KubeRay reports into
the backend-neutral observations of ``rayrelay_operator.work``. It goes further than
KubeRay's own status on the two complaints its users raise most:

- a job whose ``jobStatus`` still says RUNNING while its driver is dead (the
  submitter Job failed, or the head pod failed) is reported as ``DriverDied``;
- a job waiting in ``Initializing`` reports *why*: ``ImagePullFailed`` or
  ``Unschedulable`` from the Ray pods, and ``started_at`` so that the
  reconciler can call it ``StuckInitializing`` past a threshold.

With ``Settings.network_policy`` (the default) each RayService gets a
NetworkPolicy of the same name (``builders.kuberay.build_network_policy``),
created *before* the child so that no Ray pod ever runs unprotected, owned by
the ModelDeployment (garbage-collected with it). RayJobs, by
``Settings.network_policy_scope``: ``namespace`` (the default), one policy for every
RayJob of a namespace (``build_training_network_policy``), made sure of before the
first RayJob there and then every ``NAMESPACE_POLICY_RECHECK_S``, so that a
TrainingJob costs no policy request; ``cluster``, one per RayJob, owned by its
TrainingJob and deleted with that RayJob (one per attempt: they must not pile up).

A running RayJob's pods and submitter Job (driver death, pod problems) are read
again only when its status changed or after ``POD_RECHECK_S``.

Creation is idempotent (HTTP 409 = already there), deletion tolerates 404.
API 429/5xx and connection failures raise ``BackendUnavailable`` (retried with
backoff); 403 raises ``MissingPermission`` naming the call (retried: an RBAC
fix ends it, the spec cannot); other 4xx raise ``BackendRejected`` (the
resource fails with the API server's words).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from rayrelay_core.serveconfig import deployed_key_digests
from rayrelay_operator import naming
from rayrelay_operator.backends.base import BackendRejected, BackendUnavailable, MissingPermission
from rayrelay_operator.builders.kuberay import (
    ANNOTATION_APP_ARGS,
    AUTH_MODE_TOKEN,
    PolicyPeers,
    build_rayjob,
    build_rayjob_network_policy,
    build_rayservice,
    build_rayservice_network_policy,
    build_training_network_policy,
)
from rayrelay_operator.settings import Settings
from rayrelay_operator.work import (
    RayAuth,
    ServingObservation,
    ServingState,
    ServingWork,
    TrainingObservation,
    TrainingWork,
    WorkState,
    serving_state,
)

log = logging.getLogger(__name__)
# KubeRay's API group (rayrelay's own is rayrelay_core.api.GROUP).
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
# Writes refuse unknown fields instead of having the server prune them silently (its default
# for API clients): a builder field KubeRay's schema lacks fails loudly, never vanishes.
STRICT = "Strict"
T = TypeVar("T")

# Where a RayJob / RayService keeps its RayClusterSpec, which holds authOptions (KubeRay >= 1.5.1).
CLUSTER_SPEC_FIELD = {"rayjobs": "rayClusterSpec", "rayservices": "rayClusterConfig"}
# How long the answer to "does the installed CRD have authOptions" is kept.
AUTH_FIELD_TTL_S = 300.0
# How long a RayJob seen on the operator's watch stands for the API server's copy (None: as long
# as the watch holds). A deletion missed while the watch reconnected is caught by the relisting
# instead (``RayJobCache``): a timed refresh cost one GET per waiting TrainingJob every period
# (at 10,000 waiting TrainingJobs, 2,024 GETs in 12 s at 120 s; bench/control_plane.py).
RAYJOB_CACHE_REFRESH_S: float | None = None
# How long a namespace's training NetworkPolicy, once made sure of, is taken to be there.
NAMESPACE_POLICY_RECHECK_S = 300.0
# How long what a RayJob's pods and submitter Job said stands while its status stays the same.
POD_RECHECK_S = 60.0
POD_VIEWS_MAX = 100_000

_IMAGE_PULL = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
_WAITING_DEPLOYMENT = {"", "New", "Initializing", "Waiting", "Retrying", "Scheduling"}


class _NotFound(Exception):
    pass


class _Conflict(Exception):
    pass


def _undecoded(response: Any) -> None:
    """Read a response's bytes without decoding them (reading returns its connection to the pool).

    For a create whose echo nothing reads: the created RayJob comes back on the watch. The
    Kubernetes client otherwise decodes the whole RayJob it echoes (pod templates,
    managedFields) into objects it then throws away: ~4 % of the operator's CPU in a burst
    of 2,000 (py-spy, ``bench/control_plane.py --profile``).
    """
    getattr(response, "data", None)


def _call(what: str, fn: Callable[[], T]) -> T:
    """Run one API call, translating errors into the backend's vocabulary."""
    from kubernetes.client.exceptions import ApiException

    try:
        return fn()
    except ApiException as exc:
        if exc.status == 404:
            raise _NotFound(what) from exc
        if exc.status == 409:
            raise _Conflict(what) from exc
        if exc.status in (429,) or (exc.status or 0) >= 500:
            raise BackendUnavailable(f"{what}: Kubernetes API {exc.status}: {exc.reason}") from exc
        if exc.status == 403:
            # RBAC, not the spec: say which permission, and retry (a fixed Role ends it).
            raise MissingPermission(
                f"{what}: forbidden (HTTP 403): the operator's ServiceAccount needs this permission"
            ) from exc
        raise BackendRejected(f"{what}: Kubernetes API {exc.status}: {exc.reason}: {exc.body}") from exc
    except (OSError, ConnectionError) as exc:
        raise BackendUnavailable(f"{what}: cannot reach the Kubernetes API: {exc}") from exc
    except Exception as exc:  # urllib3's MaxRetryError and friends
        if type(exc).__module__.startswith("urllib3"):
            raise BackendUnavailable(f"{what}: cannot reach the Kubernetes API: {exc}") from exc
        raise


def pod_problems(pods: list[dict[str, Any]]) -> tuple[str, str]:
    """(reason, message) of the first pod problem worth telling: image pulls, scheduling (pure)."""
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _IMAGE_PULL:
                return (
                    "ImagePullFailed",
                    f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip(),
                )
        for cond in status.get("conditions") or []:
            unschedulable = cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
            if cond.get("type") == "PodScheduled" and unschedulable:
                return "Unschedulable", f"pod {name}: {cond.get('message', 'cannot be scheduled')}"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CrashLoopBackOff":
                name = (pod.get("metadata") or {}).get("name", "?")
                return "CrashLoopBackOff", f"pod {name}: {waiting.get('message', 'crash loop')}"
    return "", ""


def training_observation(
    rayjob: dict[str, Any], pods: list[dict[str, Any]], submitter_job: dict[str, Any] | None
) -> TrainingObservation:
    """KubeRay's RayJob status (+ its pods and submitter Job) in backend-neutral terms (pure)."""
    meta = rayjob.get("metadata") or {}
    status = rayjob.get("status") or {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    job = str(status.get("jobStatus") or "")
    message = str(status.get("message") or "")
    common: dict[str, Any] = {
        "dashboard_url": status.get("dashboardURL") or None,
        "started_at": status.get("startTime") or meta.get("creationTimestamp"),
    }
    if job == "SUCCEEDED" or (deployment == "Complete" and job in ("", "SUCCEEDED")):
        return TrainingObservation(WorkState.SUCCEEDED, "Succeeded", message, **common)
    if job == "FAILED" or deployment == "Failed":
        reason = str(status.get("reason") or "TrainingFailed")  # e.g. KubeRay's DeadlineExceeded
        return TrainingObservation(
            WorkState.FAILED, reason, message or f"RayJob {deployment or job}", **common
        )
    if job == "STOPPED" or deployment in ("Suspended", "Suspending"):
        return TrainingObservation(WorkState.STOPPED, "Stopped", message or "RayJob stopped", **common)
    if job == "RUNNING" or deployment == "Running":
        died = _driver_death(pods, submitter_job)
        if died:
            return TrainingObservation(WorkState.RUNNING, "DriverDied", died, **common)
        return TrainingObservation(WorkState.RUNNING, "Running", message, **common)
    reason, problem = pod_problems(pods)
    if deployment not in _WAITING_DEPLOYMENT:
        problem = problem or f"RayJob jobDeploymentStatus {deployment!r}"
    return TrainingObservation(
        WorkState.WAITING,
        reason or "WaitingForResources",
        # Empty when there is nothing specific to say: the reconciler keeps what its status says.
        problem or message,
        **common,
    )


def _driver_death(pods: list[dict[str, Any]], submitter_job: dict[str, Any] | None) -> str:
    """Why the driver is dead although KubeRay says RUNNING, or ''."""
    if submitter_job is not None:
        js = submitter_job.get("status") or {}
        for cond in js.get("conditions") or []:
            if cond.get("type") == "Failed" and cond.get("status") == "True":
                return f"the submitter Job failed ({cond.get('reason', '')}: {cond.get('message', '')})"
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get("ray.io/node-type") == "head":
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Failed", "Succeeded"):
                return f"the Ray head pod {pod['metadata'].get('name')} is {phase}"
    return ""


def serving_observation(rayservice: dict[str, Any], app_name: str, url: str) -> ServingObservation:
    """KubeRay's RayService status in backend-neutral terms (pure)."""
    meta = rayservice.get("metadata") or {}
    status = rayservice.get("status") or {}
    active = status.get("activeServiceStatus") or {}
    apps = active.get("applicationStatuses") or {}
    app = apps.get(app_name)
    args_text = (meta.get("annotations") or {}).get(ANNOTATION_APP_ARGS)
    serving_args = json.loads(args_text) if args_text else None
    key_digests = _serve_config_key_digests(rayservice, app_name)
    cluster = active.get("rayClusterStatus") or {}
    replicas = cluster.get("desiredWorkerReplicas")
    ready = cluster.get("availableWorkerReplicas", cluster.get("readyWorkerReplicas"))
    if app is None:
        return ServingObservation(
            state=ServingState.DEPLOYING,
            replicas=replicas,
            ready_replicas=ready,
            message="waiting for the Ray cluster and the Serve application",
            serving_args=serving_args,
            serving_key_digests=key_digests,
        )
    state = serving_state(str(app.get("status") or ""))
    messages = [str(app.get("message") or "")]
    for dep_name, dep in (app.get("serveDeploymentStatuses") or {}).items():
        if dep.get("status") in ("UNHEALTHY", "DEPLOY_FAILED") and dep.get("message"):
            messages.append(f"{dep_name}: {dep['message']}")
    return ServingObservation(
        state=state,
        url=url if state in (ServingState.RUNNING, ServingState.UNHEALTHY) else None,
        replicas=replicas,
        ready_replicas=ready,
        message="; ".join(m for m in messages if m),
        serving_args=serving_args,
        serving_key_digests=key_digests,
    )


def _serve_config_key_digests(rayservice: dict[str, Any], app_name: str) -> list[str] | None:
    """The API key digests (spec.auth) in the RayService's serveConfigV2 for ``app_name``."""
    import yaml

    try:
        config = yaml.safe_load((rayservice.get("spec") or {}).get("serveConfigV2") or "") or {}
    except yaml.YAMLError:
        return None
    apps = config.get("applications") if isinstance(config, dict) else None
    app = next((a for a in apps or [] if isinstance(a, dict) and a.get("name") == app_name), None)
    return deployed_key_digests(app)


def crd_has_auth_options(crd: dict[str, Any], cluster_field: str) -> bool:
    """Whether a RayJob / RayService CRD's served v1 schema has ``spec.<cluster_field>.authOptions`` (pure)."""
    for version in (crd.get("spec") or {}).get("versions") or []:
        if version.get("name") != RAY_VERSION:
            continue
        props: Any = ((version.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties") or {}
        for key in ("spec", cluster_field):
            props = ((props or {}).get(key) or {}).get("properties") or {}
        return "authOptions" in props
    return False


def ray_auth_status(
    child: dict[str, Any], cluster_field: str, *, wanted: bool, installed: bool, network_policy: bool
) -> RayAuth:
    """The ``RayAuthenticated`` condition of one RayJob / RayService (pure).

    On when KubeRay kept ``authOptions.mode: token`` in its cluster spec; otherwise the
    reason says why not: switched off, KubeRay too old for the field, or a child made
    before the field was installed.
    """
    cluster = (child.get("spec") or {}).get(cluster_field) or {}
    if ((cluster.get("authOptions") or {}).get("mode") or "") == AUTH_MODE_TOKEN:
        return RayAuth(
            True,
            "TokenAuthentication",
            "the Ray cluster requires Ray's token on its dashboard, Job API and GCS (KubeRay "
            "authOptions; KubeRay keeps the token in a Secret of the namespace)",
        )
    guard = (
        "its NetworkPolicy admits only the operator and KubeRay to the control ports"
        if network_policy
        else "nothing guards its control ports (RAYRELAY_NETWORK_POLICY is off too)"
    )
    if not wanted:
        return RayAuth(
            False, "Disabled", f"token authentication is off (RAYRELAY_RAY_CLUSTER_AUTH=disabled); {guard}"
        )
    if not installed:
        return RayAuth(
            False,
            "NotSupportedByKubeRay",
            f"the installed KubeRay CRD has no spec.{cluster_field}.authOptions (KubeRay < 1.5.1), so the "
            f"Ray cluster runs without token authentication; {guard}",
        )
    return RayAuth(
        False,
        "CreatedWithoutAuth",
        f"this child was created before KubeRay's CRD had spec.{cluster_field}.authOptions; {guard}",
    )


def rayjob_summary(rayjob: Mapping[str, Any]) -> dict[str, Any]:
    """What ``observe_training`` reads of a RayJob: its creation time, status and auth mode (pure).

    A RayJob carries its whole cluster spec (pod templates); a cache of thousands keeps
    only this.
    """
    meta = rayjob.get("metadata") or {}
    cluster = (rayjob.get("spec") or {}).get(CLUSTER_SPEC_FIELD["rayjobs"]) or {}
    summary: dict[str, Any] = {
        "metadata": {k: meta[k] for k in ("name", "namespace", "creationTimestamp") if k in meta},
        "status": copy.deepcopy(dict(rayjob.get("status") or {})),
    }
    if "authOptions" in cluster:
        summary["spec"] = {CLUSTER_SPEC_FIELD["rayjobs"]: {"authOptions": dict(cluster["authOptions"])}}
    return summary


class RayJobCache:
    """The operator's RayJobs as its watch last saw them, so that a pass needs no GET.

    Fed by a kopf ``on.event`` handler on RayJobs (``handlers``): every ADDED/MODIFIED
    event stores the RayJob's summary, DELETED removes it. ``get`` answers None -- ask
    the API server -- for a RayJob not seen, or not seen since the watch last relisted,
    or (with ``refresh_s``) not heard of for that long; ``put`` records what that GET found.
    A RayJob the operator just created and whose ADDED has not arrived yet is simply
    read with a GET, so nothing here can make a pass see "absent" wrongly.

    A watch that resumes from its resourceVersion replays every event it missed; one
    whose version expired (410) relists, and a deletion in the gap has no event. kopf
    hands a listing's objects to the handler with type None: the first of a run of them
    starts a new *epoch*, and an entry not seen (nor ``put``) since then is asked for
    again. So an entry stands while the watch holds, with no timed refresh: a waiting
    TrainingJob's tick sends nothing. A listing that interleaves with watch events (one
    stream per namespace) starts several epochs: a few more GETs, never a wrong answer.
    """

    def __init__(
        self, refresh_s: float | None = RAYJOB_CACHE_REFRESH_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.refresh_s = refresh_s
        self._clock = clock
        self._items: dict[tuple[str, str], tuple[dict[str, Any], float]] = {}
        self._lock = threading.Lock()
        self._epoch = float("-inf")  # when the latest listing began
        self._listing = False

    @staticmethod
    def _key(rayjob: Mapping[str, Any]) -> tuple[str, str]:
        meta = rayjob.get("metadata") or {}
        return str(meta.get("namespace") or ""), str(meta.get("name") or "")

    def seen(self, event_type: str | None, rayjob: Mapping[str, Any]) -> None:
        """One watch event (``None``: kopf's initial listing)."""
        key = self._key(rayjob)
        now = self._clock()
        with self._lock:
            if event_type is None and not self._listing:
                self._epoch = now  # a (re)listing begins: what it does not show may be gone
            self._listing = event_type is None
            if event_type == "DELETED":
                self._items.pop(key, None)
            else:
                self._items[key] = (rayjob_summary(rayjob), now)

    def put(self, rayjob: Mapping[str, Any]) -> None:
        with self._lock:
            self._items[self._key(rayjob)] = (rayjob_summary(rayjob), self._clock())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self._items.get((namespace, name))
            epoch = self._epoch
        if entry is None or entry[1] < epoch:
            return None
        if self.refresh_s is not None and self._clock() - entry[1] > self.refresh_s:
            return None
        return copy.deepcopy(entry[0])

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._items.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._items)


class KubeRayBackend:
    """Backend over KubeRay; ``api_client`` is a configured ``kubernetes.client.ApiClient``.

    ``rayjobs`` holds the RayJobs the operator's watch has seen (``RayJobCache``); the
    handlers feed it, and ``observe_training`` reads it before it asks the API server.
    """

    name = "kuberay"

    def __init__(self, api_client: Any, settings: Settings) -> None:
        from kubernetes import client

        self.settings = settings
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)
        # plural -> (the installed CRD has authOptions, when that was read); warned once each.
        self._auth_fields: dict[str, tuple[bool, float]] = {}
        self._auth_lock = threading.Lock()
        self.rayjobs = RayJobCache()
        self._auth_warned: set[str] = set()
        self.clock: Callable[[], float] = time.monotonic  # for the two memos below
        # namespace -> when its training NetworkPolicy was last made sure of (monotonic).
        self._namespace_policies: dict[str, float] = {}
        self._policy_lock = threading.Lock()
        # (namespace, RayJob) -> (when, its status then, the observation made of it and its pods).
        self._pod_views: OrderedDict[tuple[str, str], tuple[float, str, TrainingObservation]] = OrderedDict()
        self._views_lock = threading.Lock()

    # ---------------------------------------------------------- network policies

    def _peers(self) -> PolicyPeers:
        s = self.settings
        return PolicyPeers(
            kuberay_namespace=s.network_policy_kuberay_namespace,
            kuberay_name=s.network_policy_kuberay_name,
            operator_namespace=s.network_policy_operator_namespace,
            operator_labels=s.operator_pod_labels(),
            metrics_namespace=s.network_policy_metrics_namespace,
            metrics_labels=s.metrics_scraper_labels(),
        )

    def _ensure_network_policy(self, body: dict[str, Any]) -> None:
        """Create the policy (409: patch its spec when it differs from ``body``'s)."""
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        what = f"NetworkPolicy {ns}/{name} (verb %s on networkpolicies.networking.k8s.io)"
        try:
            _call(
                what % "create",
                lambda: self.networking.create_namespaced_network_policy(ns, body, field_validation=STRICT),
            )
            log.info("created NetworkPolicy %s/%s", ns, name)
            return
        except _Conflict:
            pass
        try:
            current = _call(
                what % "get",
                lambda: self.networking.read_namespaced_network_policy(name, ns, _preload_content=False),
            )
        except _NotFound as exc:  # deleted since the 409: the next pass creates it
            raise BackendUnavailable(f"NetworkPolicy {ns}/{name} vanished while being created") from exc
        if json.loads(current.data).get("spec") == body["spec"]:
            return
        # A JSON patch replacing the whole spec: a merge patch would keep stale selector keys.
        replace = [{"op": "replace", "path": "/spec", "value": body["spec"]}]
        _call(
            what % "patch",
            lambda: self.networking.patch_namespaced_network_policy(
                name, ns, replace, field_validation=STRICT
            ),
        )
        log.info("updated NetworkPolicy %s/%s", ns, name)

    def _ensure_namespace_policy(self, ns: str) -> None:
        """The namespace's training policy exists (``build_training_network_policy``) before a RayJob.

        Checked with the API server once, then again only after ``NAMESPACE_POLICY_RECHECK_S``
        (a policy someone deleted comes back with the next RayJob after that): a burst's
        TrainingJobs pay nothing for it. One thread at a time, so that a burst's worker
        threads do not all create it together; a failure is not remembered.
        """
        with self._policy_lock:
            checked = self._namespace_policies.get(ns)
            if checked is not None and self.clock() - checked < NAMESPACE_POLICY_RECHECK_S:
                return
            self._ensure_network_policy(build_training_network_policy(ns, self._peers()))
            self._namespace_policies[ns] = self.clock()

    def _delete_network_policy(self, ns: str, name: str) -> None:
        """An attempt's own policy (scope ``cluster``; the namespace's one stays)."""
        if not self.settings.network_policy or self.settings.network_policy_scope != "cluster":
            return
        try:
            _call(
                f"NetworkPolicy {ns}/{name} (verb delete on networkpolicies.networking.k8s.io)",
                lambda: self.networking.delete_namespaced_network_policy(name, ns),
            )
            log.info("deleted NetworkPolicy %s/%s", ns, name)
        except _NotFound:
            pass

    # ------------------------------------------------------------ Ray token auth

    def _auth_options_installed(self, plural: str) -> bool:
        """Whether the installed CRD of ``plural`` has ``authOptions`` in its cluster spec.

        Read from the API server (not guessed from a version string), at most every
        ``AUTH_FIELD_TTL_S``, so that upgrading KubeRay's CRDs takes effect without a
        restart. A missing CRD counts as no field (creating the child then fails on its own).
        """
        # One reader at a time: a burst's worker threads all miss an empty cache at once, and
        # each read parses KubeRay's whole CRD (a sixth of the operator's CPU in a 50-job
        # burst, py-spy in bench/control_plane.py); the others then find the answer cached.
        with self._auth_lock:
            return self._auth_options_read(plural)

    def _auth_options_read(self, plural: str) -> bool:
        now = time.monotonic()
        known = self._auth_fields.get(plural)
        if known is not None and now - known[1] < AUTH_FIELD_TTL_S:
            return known[0]
        name = f"{plural}.{RAY_GROUP}"
        try:
            result = _call(
                f"get CustomResourceDefinition {name} (verb get on customresourcedefinitions)",
                lambda: self.extensions.read_custom_resource_definition(name, _preload_content=False),
            )
            found = crd_has_auth_options(json.loads(result.data), CLUSTER_SPEC_FIELD[plural])
        except _NotFound:
            found = False
        self._auth_fields[plural] = (found, now)
        if not found and plural not in self._auth_warned:
            self._auth_warned.add(plural)
            log.warning(
                "the installed %s CRD has no spec.%s.authOptions (KubeRay < 1.5.1): Ray clusters run "
                "without token authentication; their NetworkPolicy guards the control ports",
                name,
                CLUSTER_SPEC_FIELD[plural],
            )
        return found

    def _ray_auth_wanted(self, plural: str) -> bool:
        return self.settings.ray_cluster_auth == "token" and self._auth_options_installed(plural)

    def _ray_auth_of(self, child: dict[str, Any], plural: str) -> RayAuth | None:
        """What the ``RayAuthenticated`` condition says of a RayJob / RayService as it stands
        (None, leaving the condition as it was, while the CRD cannot be read)."""
        wanted = self.settings.ray_cluster_auth == "token"
        try:
            installed = wanted and self._auth_options_installed(plural)
        except BackendUnavailable as exc:
            log.debug("RayAuthenticated left as it was: %s", exc)
            return None
        return ray_auth_status(
            child,
            CLUSTER_SPEC_FIELD[plural],
            wanted=wanted,
            installed=installed,
            network_policy=self.settings.network_policy,
        )

    # ----------------------------------------------------------------- training

    def _rayjob_body(self, work: TrainingWork, ray_auth: bool = False) -> dict[str, Any]:
        spec = work.job.spec
        return build_rayjob(
            work,
            image=spec.image or self.settings.workload_image,
            endpoint_url=work.job.endpoint_url,
            credentials_secret=spec.artifacts.credentials_secret or self.settings.artifacts_secret,
            service_account=self.settings.workload_service_account,
            encryption_secret=spec.artifacts.encryption.key_secret if spec.artifacts.encryption else None,
            ray_auth=ray_auth,
        )

    def planned_training_auth(self) -> RayAuth | None:
        """What ``RayAuthenticated`` will say of a RayJob ``submit_training`` creates now (None:
        the CRD cannot be read). Same answer as ``_ray_auth_of`` on that RayJob once it exists, so
        a submit's status write carries the condition and the first tick after it has nothing to add."""
        try:
            wanted = self._ray_auth_wanted("rayjobs")
        except BackendUnavailable:
            return None
        child = {"spec": {CLUSTER_SPEC_FIELD["rayjobs"]: {"authOptions": {"mode": AUTH_MODE_TOKEN}}}}
        return self._ray_auth_of(child if wanted else {}, "rayjobs")

    def submit_training(self, work: TrainingWork) -> None:
        body = self._rayjob_body(work, self._ray_auth_wanted("rayjobs"))
        ns = work.job.namespace
        if self.settings.network_policy:
            if self.settings.network_policy_scope == "namespace":
                self._ensure_namespace_policy(ns)
            else:
                self._ensure_network_policy(build_rayjob_network_policy(work, self._peers()))
        try:
            _call(
                f"create RayJob {ns}/{work.child_name}",
                lambda: _undecoded(
                    self.custom.create_namespaced_custom_object(
                        RAY_GROUP,
                        RAY_VERSION,
                        ns,
                        "rayjobs",
                        body,
                        field_validation=STRICT,
                        _preload_content=False,
                    )
                ),
            )
            log.info("created RayJob %s/%s", ns, work.child_name)
        except _Conflict:
            # Already there: the deterministic name is what makes a resubmission a no-op.
            log.info("RayJob %s/%s exists already", ns, work.child_name)

    def _get(self, ns: str, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                _call(
                    f"get {plural} {ns}/{name}",
                    lambda: self.custom.get_namespaced_custom_object(
                        RAY_GROUP, RAY_VERSION, ns, plural, name
                    ),
                )
            )
        except _NotFound:
            return None

    def _pods(self, ns: str, selector: str) -> list[dict[str, Any]]:
        result = _call(
            f"list pods {ns} {selector}",
            lambda: self.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False),
        )
        items = json.loads(result.data).get("items") or []
        # Filter again here: a server that ignores labelSelector (an emulator) must not
        # make another cluster's pods look like ours.
        key, _, value = selector.partition("=")
        return [p for p in items if ((p.get("metadata") or {}).get("labels") or {}).get(key) == value]

    def _submitter_job(self, ns: str, name: str) -> dict[str, Any] | None:
        """KubeRay's submitter Job, or None when there is none.

        A 403 is not "none": without reading it a failed submitter would look
        like a running job, so ``MissingPermission`` (naming ``get`` on
        ``batch/v1`` ``jobs``) goes up and the resource's status says so.
        """
        try:
            result = _call(
                f"get batch/v1 Job {ns}/{name} (verb get on jobs.batch)",
                lambda: self.batch.read_namespaced_job(name, ns, _preload_content=False),
            )
        except _NotFound:
            return None
        return dict(json.loads(result.data))

    def observe_training(self, work: TrainingWork) -> TrainingObservation:
        ns = work.job.namespace
        rayjob = self.rayjobs.get(ns, work.child_name)
        if rayjob is None:
            rayjob = self._get(ns, "rayjobs", work.child_name)
            if rayjob is None:
                return TrainingObservation(WorkState.ABSENT)
            self.rayjobs.put(rayjob)
        status = rayjob.get("status") or {}
        cluster = status.get("rayClusterName")
        key, seen = (ns, work.child_name), json.dumps(status, sort_keys=True, default=str)
        # The pods and the submitter Job once per POD_RECHECK_S while the RayJob's status stays
        # the same: a running job's tick then sends no request (what changes, KubeRay reports).
        with self._views_lock:
            view = self._pod_views.get(key)
        if cluster and view is not None and view[1] == seen and self.clock() - view[0] < POD_RECHECK_S:
            obs = view[2]
        else:
            pods = self._pods(ns, f"ray.io/cluster={cluster}") if cluster else []
            job_running = (
                status.get("jobStatus") == "RUNNING" or status.get("jobDeploymentStatus") == "Running"
            )
            # KubeRay names the K8sJobMode submitter Job after the RayJob.
            submitter = self._submitter_job(ns, work.child_name) if job_running else None
            obs = training_observation(rayjob, pods, submitter)
            if cluster:
                with self._views_lock:
                    self._pod_views[key] = (self.clock(), seen, obs)
                    self._pod_views.move_to_end(key)
                    while len(self._pod_views) > POD_VIEWS_MAX:
                        self._pod_views.popitem(last=False)
        return dataclasses.replace(obs, ray_auth=self._ray_auth_of(rayjob, "rayjobs"))

    def _delete(self, ns: str, plural: str, name: str) -> None:
        try:
            _call(
                f"delete {plural} {ns}/{name}",
                lambda: self.custom.delete_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, ns, plural, name, propagation_policy="Background"
                ),
            )
            log.info("deleted %s %s/%s", plural, ns, name)
        except _NotFound:
            pass

    def _forget(self, ns: str, name: str) -> None:
        self.rayjobs.forget(ns, name)
        with self._views_lock:
            self._pod_views.pop((ns, name), None)

    def stop_training(self, work: TrainingWork) -> None:
        # Deleting the RayJob stops the job and tears its cluster down; checkpoints stay in the store.
        self._forget(work.job.namespace, work.child_name)
        self._delete(work.job.namespace, "rayjobs", work.child_name)
        self._delete_network_policy(work.job.namespace, work.child_name)

    def delete_training(self, namespace: str, name: str) -> None:
        selector = f"{naming.LABEL_TRAININGJOB}={naming.dns_name(name)}"
        listed = _call(
            f"list RayJobs {namespace} {selector}",
            lambda: self.custom.list_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, namespace, "rayjobs", label_selector=selector
            ),
        )
        for item in listed.get("items") or []:
            labels = (item.get("metadata") or {}).get("labels") or {}
            if labels.get(naming.LABEL_TRAININGJOB) == naming.dns_name(name):  # see _pods
                self._forget(namespace, item["metadata"]["name"])
                self._delete(namespace, "rayjobs", item["metadata"]["name"])
                self._delete_network_policy(namespace, item["metadata"]["name"])

    # ------------------------------------------------------------------ serving

    def _rayservice_body(self, work: ServingWork, ray_auth: bool = False) -> dict[str, Any]:
        return build_rayservice(
            work,
            image=work.spec.image or self.settings.workload_image,
            endpoint_url=work.spec.artifacts.endpoint_url or self.settings.s3_endpoint_url,
            credentials_secret=work.spec.artifacts.credentials_secret or self.settings.artifacts_secret,
            service_account=self.settings.workload_service_account,
            encryption_secret=(
                work.spec.artifacts.encryption.key_secret if work.spec.artifacts.encryption else None
            ),
            upgrade_strategy=self.settings.rayservice_upgrade_strategy,
            haproxy=self.settings.serve_haproxy,
            ray_auth=ray_auth,
        )

    def deploy_serving(self, work: ServingWork) -> None:
        body = self._rayservice_body(work, self._ray_auth_wanted("rayservices"))
        ns, name = work.namespace, work.child_name
        if self.settings.network_policy:
            self._ensure_network_policy(build_rayservice_network_policy(work, self._peers()))
        try:
            _call(
                f"create RayService {ns}/{name}",
                lambda: self.custom.create_namespaced_custom_object(
                    RAY_GROUP, RAY_VERSION, ns, "rayservices", body, field_validation=STRICT
                ),
            )
            log.info("created RayService %s/%s", ns, name)
            return
        except _Conflict:
            pass
        current = self._get(ns, "rayservices", name) or {}
        same_spec = current.get("spec") == body["spec"]
        same_args = (current.get("metadata") or {}).get("annotations", {}).get(ANNOTATION_APP_ARGS) == body[
            "metadata"
        ]["annotations"][ANNOTATION_APP_ARGS]
        if same_spec and same_args:
            return
        # KubeRay applies a new serveConfigV2 in place: Serve rolls replicas over without dropping requests.
        patch = {"metadata": {"annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
        _call(
            f"patch RayService {ns}/{name}",
            lambda: self.custom.patch_namespaced_custom_object(
                RAY_GROUP, RAY_VERSION, ns, "rayservices", name, patch, field_validation=STRICT
            ),
        )
        log.info("updated RayService %s/%s", ns, name)

    def observe_serving(self, work: ServingWork) -> ServingObservation:
        rayservice = self._get(work.namespace, "rayservices", work.child_name)
        if rayservice is None:
            return ServingObservation(ServingState.ABSENT)
        url = naming.serve_url(work.child_name, work.namespace, self.settings.serve_port)
        obs = serving_observation(rayservice, work.app_name, url)
        return dataclasses.replace(obs, ray_auth=self._ray_auth_of(rayservice, "rayservices"))

    def delete_serving(self, work: ServingWork) -> None:
        self._delete(work.namespace, "rayservices", work.child_name)
