"""The ``ray`` backend: an existing Ray cluster reached at its dashboard URL.

Implements ``Backend`` (``backends/base.py``) for a Ray cluster the operator does
not manage: the local head of ``rayrelay run`` (``rayrelay_operator.local``) or a
long-lived cluster the operator is pointed at. The reconcilers
(``rayrelay_operator.reconcile``) call it; it never decides anything itself.
What it reports is in the values of ``rayrelay_operator.work``.

- Training goes through Ray's Job Submission API (``JobSubmissionClient``). The
  submission id is the deterministic ``TrainingWork.submission_id``, and Ray
  refuses a second job with the same id, so a resubmission (a restarted
  operator, a repeated reconcile) is a no-op rather than a duplicate run. The
  entrypoint is ``python -m rayrelay_workloads.train_job --job-json '<json>'``.
- Serving goes through Serve's REST API (``/api/serve/applications/``). Its PUT
  is declarative for *every* application of the cluster, so deploying one
  ModelDeployment is read-modify-write: GET the current config, replace this
  deployment's applications (from ``rayrelay_core.serveconfig``), keep exactly
  one shared gateway app, PUT it all back. The merge is a pure function
  (``merge_applications`` / ``remove_application``, unit-tested) and the
  read-modify-write runs under a process-wide lock so that two reconciles in
  this process never drop each other's applications.

A cluster that cannot be reached raises ``BackendUnavailable`` (retry later); a
request Ray refuses for good raises ``BackendRejected``.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import requests

import rayrelay_core.variants as variants
from rayrelay_core.runs import ENCRYPTION_KEY_ENV
from rayrelay_core.serveconfig import deployed_key_digests
from rayrelay_operator import naming
from rayrelay_operator.backends.base import BackendRejected, BackendUnavailable, RayAuthFailed, RayUnavailable
from rayrelay_operator.work import (
    ServingObservation,
    ServingState,
    ServingWork,
    TrainingObservation,
    TrainingWork,
    WorkState,
    serving_state,
)

log = logging.getLogger(__name__)

GATEWAY_APP = "rayrelay-gateway"
MODEL_DEPLOYMENT = "ModelServer"
# The gateway's /metrics is read for the replicas' ongoing requests (status.scaling) and the
# variant they serve (status.model): best effort.
METRICS_TIMEOUT_S = 3.0
# Serve applications whose import path starts with this belong to rayrelay; the
# shared gateway is removed only when none of them is left.
RAYRELAY_IMPORT_PREFIX = "rayrelay_workloads"
TRAIN_MODULE = "rayrelay_workloads.train_job"

# Job metadata keys: they tie a Ray job to its TrainingJob, so that
# delete_training finds every attempt without parsing submission ids (namespace
# and name may both contain '-', which makes ids ambiguous to split).
# Seconds after a job ended before it is deleted (Ray's job monitor polls about every second).
DELETE_GRACE_S = 5.0
META_NAMESPACE = "rayrelay.dev/namespace"
META_NAME = "rayrelay.dev/name"
META_GENERATION = "rayrelay.dev/generation"
META_ATTEMPT = "rayrelay.dev/attempt"

# Environment passed from the operator's process to the training driver, only
# where set: where S3 is, its credentials, and offline hub settings. Nothing
# else leaks from the operator's environment into the job.
PASSTHROUGH_ENV = (
    "RAYRELAY_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
)

LOG_TAIL_LINES = 20
REST_TIMEOUT_S = 30.0

# One lock per process for Serve's read-modify-write: the PUT replaces all apps.
_SERVE_LOCK = threading.Lock()


# ------------------------------------------------------------------ pure helpers


def train_entrypoint(job_json: str, python: str = "python") -> str:
    """The shell command that runs one training attempt (quoted for the shell)."""
    return f"{python} -m {TRAIN_MODULE} --job-json {shlex.quote(job_json)}"


def passthrough_env(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {key: environ[key] for key in PASSTHROUGH_ENV if environ.get(key)}


def _is_gateway(app: dict[str, Any]) -> bool:
    return app.get("name") == GATEWAY_APP


def _is_rayrelay_model(app: dict[str, Any]) -> bool:
    return not _is_gateway(app) and str(app.get("import_path", "")).startswith(RAYRELAY_IMPORT_PREFIX)


def merge_applications(current: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cluster's application list with ``wanted`` put in.

    Applications of ``wanted`` replace those of the same name (in place, so the
    order of the others is kept); new ones are appended. The gateway is shared:
    exactly one stays, the one in ``wanted`` when it brings one (the newest code's
    config), else the current one. Inputs are not modified.
    """
    wanted_by_name = {app["name"]: copy.deepcopy(app) for app in wanted}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for app in current:
        name = app.get("name")
        if name in seen:  # never PUT duplicates (Serve refuses them)
            continue
        if name in wanted_by_name:
            out.append(wanted_by_name[name])
        else:
            out.append(copy.deepcopy(app))
        seen.add(str(name))
    for name, app in wanted_by_name.items():
        if name not in seen:
            out.append(app)
            seen.add(name)
    return out


def remove_application(current: list[dict[str, Any]], app_name: str) -> list[dict[str, Any]]:
    """The application list without ``app_name``; the gateway goes with the last model app."""
    out = [copy.deepcopy(app) for app in current if app.get("name") != app_name]
    if not any(_is_rayrelay_model(app) for app in out):
        out = [app for app in out if not _is_gateway(app)]
    return out


def deploy_body(
    instance: dict[str, Any], applications: list[dict[str, Any]], http_host: str, http_port: int
) -> dict[str, Any]:
    """The PUT body: the applications plus the cluster-wide options.

    Serve fixes its HTTP host/port when it first starts; once it runs we send back
    what it reports, so that our PUT does not try to move a proxy others rely on.
    """
    http = instance.get("http_options") if _serve_running(instance) else None
    body: dict[str, Any] = {
        "http_options": {
            "host": (http or {}).get("host") or http_host,
            "port": (http or {}).get("port") or http_port,
        },
        "applications": applications,
    }
    if _serve_running(instance) and instance.get("proxy_location"):
        body["proxy_location"] = instance["proxy_location"]
    return body


def _serve_running(instance: dict[str, Any]) -> bool:
    controller = instance.get("controller_info") or {}
    return bool(controller.get("actor_id")) or bool(instance.get("applications"))


def current_applications(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """The submitted configs of every application Serve runs now.

    Raises ``BackendRejected`` for applications deployed with Serve's Python API:
    they have no config to send back, and a declarative PUT would delete them.
    """
    out: list[dict[str, Any]] = []
    imperative: list[str] = []
    for name, details in (instance.get("applications") or {}).items():
        config = details.get("deployed_app_config")
        if details.get("status") == "DELETING":
            continue  # on its way out (an earlier PUT removed it): nothing to keep
        if details.get("source") == "imperative" or not config:
            imperative.append(name)
            continue
        out.append(config)
    if imperative:
        raise BackendRejected(
            "Serve on this Ray cluster runs applications deployed from Python "
            f"({', '.join(sorted(imperative))}); rayrelay deploys declaratively through "
            "the REST API and would remove them. Use a cluster without them."
        )
    return out


def app_args_of(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if not config:
        return None
    args = config.get("args")
    return dict(args) if isinstance(args, dict) else None


_TRACEBACK = "Traceback (most recent call last):"


def condense(message: str) -> str:
    """Serve's message with any Python traceback cut to its last line (the exception and why).

    A replica whose constructor raised (a wrong encryption key, a checksum mismatch) makes
    Serve report the whole traceback after its own words ("failed to start 3 times in a
    row ..."); the condition must say why within its first words, so the exception comes
    first and Serve's words follow in parentheses.
    """
    if _TRACEBACK not in message:
        return message
    head, _, rest = message.partition(_TRACEBACK)
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    last = lines[-1] if lines else "an exception"
    # Serve's own sentence is the first line; what follows it is Ray's frame of the replica.
    first = next((line.strip() for line in head.splitlines() if line.strip()), "")
    return f"{last} ({first})" if first else last


SERVE_REPLICA_FAILED = "A replica failed to start"  # Serve 2.58's deployment message on a retry


def observe_app(instance: dict[str, Any], app_name: str, url: str | None) -> ServingObservation:
    """What Serve reports about one ModelDeployment's application (pure)."""
    apps = instance.get("applications") or {}
    details = apps.get(app_name)
    if details is None:
        return ServingObservation(ServingState.ABSENT)
    status = str(details.get("status", "NOT_STARTED"))
    state = serving_state(status)
    messages = [condense(str(details.get("message") or ""))]
    replicas = ready = 0
    for dep_name, dep in (details.get("deployments") or {}).items():
        live = dep.get("replicas") or []
        replicas += len(live)
        ready += sum(1 for r in live if r.get("state") == "RUNNING")
        failing = dep.get("status") in ("UNHEALTHY", "DEPLOY_FAILED")
        # Serve says so from a new replica's first failure on ("A replica failed to start ...
        # Retrying"), long before DEPLOY_FAILED: a refused model is told (and rolled back) then.
        if dep.get("message") and (failing or SERVE_REPLICA_FAILED in str(dep["message"])):
            messages.append(f"{dep_name}: {condense(str(dep['message']))}")
    gateway = apps.get(GATEWAY_APP)
    if state is ServingState.RUNNING and app_name != GATEWAY_APP:
        # The model answers through the gateway: not Running until it runs too.
        gw_status = str((gateway or {}).get("status", "NOT_STARTED"))
        if gw_status in ("DEPLOY_FAILED", "UNHEALTHY"):
            state = serving_state(gw_status)
            messages.append(f"{GATEWAY_APP}: {(gateway or {}).get('message', '')}")
        elif gw_status != "RUNNING" and gateway is not None:
            state = ServingState.DEPLOYING
            messages.append(f"{GATEWAY_APP} is {gw_status.lower()}")
    message = "; ".join(m for m in messages if m)
    model = (details.get("deployments") or {}).get(MODEL_DEPLOYMENT) or {}
    target = model.get("target_num_replicas")
    return ServingObservation(
        state=state,
        url=url if state in (ServingState.RUNNING, ServingState.UNHEALTHY) else None,
        replicas=replicas,
        ready_replicas=ready,
        message=message,
        serving_args=(
            app_args_of(details.get("deployed_app_config")) if state is ServingState.RUNNING else None
        ),
        target_replicas=int(target) if isinstance(target, int | float) else None,
        serving_key_digests=deployed_key_digests(details.get("deployed_app_config")),
    )


def ongoing_requests(metrics_text: str, model: str) -> float | None:
    """Sum of ``rayrelay_ongoing_requests{model=...}`` in the gateway's /metrics (None: absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total: float | None = None
    try:
        for family in text_string_to_metric_families(metrics_text):
            if family.name != "rayrelay_ongoing_requests":
                continue
            for sample in family.samples:
                if sample.labels.get("model") == model:
                    total = (total or 0.0) + float(sample.value)
    except ValueError:  # not an exposition (an error page): unknown
        return None
    return total


def served_variant(metrics_text: str, model: str) -> variants.VariantChoice | None:
    """The variant a replica of ``model`` reports on /metrics (``rayrelay_core.variants``), or None.

    With several replicas in the scrape, the first one's (each chose on its own hardware)."""
    from prometheus_client.parser import text_string_to_metric_families

    info: dict[str, str] | None = None
    timings: dict[str, dict[str, float]] = {}
    try:
        for family in text_string_to_metric_families(metrics_text):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model") != model:
                    continue
                if sample.name == variants.INFO_METRIC and info is None and sample.value == 1:
                    info = dict(labels)
                elif sample.name == variants.TIMING_METRIC:
                    by_variant = timings.setdefault(labels.get("replica", ""), {})
                    by_variant[labels.get("variant", "")] = float(sample.value)
    except ValueError:  # not an exposition (an error page): unknown
        return None
    if info is None or not info.get("variant"):
        return None
    batch = info.get("batch", "0")
    return variants.VariantChoice(
        requested=info.get("requested", ""),
        variant=info["variant"],
        isa=info.get("isa", ""),
        provider=info.get("provider", ""),
        batch=int(batch) if batch.isdigit() else 0,
        timings_s=timings.get(info.get("replica", ""), {}),
        timed=info.get("timed", variants.NOT_TIMED),
        runtime=info.get("runtime", ""),
        precision=info.get("precision", ""),
        unavailable=variants.parse_not_timed(info.get("not_timed", "")),
    )


def training_observation(info: dict[str, Any], logs_tail: str, dashboard_url: str) -> TrainingObservation:
    """A Ray job's details (as a dict) in backend-neutral terms (pure)."""
    status = str(info.get("status", ""))
    message = str(info.get("message") or "")
    common: dict[str, Any] = {
        "dashboard_url": dashboard_url,
        "started_at": _ms_to_rfc3339(info.get("start_time")),
    }
    if status == "PENDING":
        return TrainingObservation(WorkState.WAITING, "WaitingForResources", message, **common)
    if status == "RUNNING":
        return TrainingObservation(WorkState.RUNNING, "Running", message, **common)
    if status == "SUCCEEDED":
        return TrainingObservation(WorkState.SUCCEEDED, "Succeeded", message, **common)
    if status == "STOPPED":
        return TrainingObservation(WorkState.STOPPED, "Stopped", message or "stopped on request", **common)
    if status == "FAILED":
        error_type = str(info.get("error_type") or "")
        reason = "DriverFailed" if error_type in ("", "JOB_ENTRYPOINT_COMMAND_ERROR") else _camel(error_type)
        text = message
        if logs_tail.strip():
            text = f"{message}\nlast log lines:\n{logs_tail.rstrip()}" if message else logs_tail.rstrip()
        return TrainingObservation(WorkState.FAILED, reason, text, **common)
    return TrainingObservation(WorkState.WAITING, "Unknown", f"Ray reports job status {status!r}", **common)


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.lower().split("_"))


def _ms_to_rfc3339(value: Any) -> str | None:
    if not value:
        return None
    from datetime import datetime, timezone

    from rayrelay_core.conditions import rfc3339

    return rfc3339(datetime.fromtimestamp(float(value) / 1000.0, tz=timezone.utc))


def _server_error(exc: Exception) -> bool:
    return re.search(r"status code (5\d\d|429)", str(exc)) is not None


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def job_owner_problem(meta: dict[str, Any], namespace: str, name: str) -> str:
    """Why a Ray job's metadata says it is not this TrainingJob's ("" when it is; pure)."""
    owner = (meta.get(META_NAMESPACE), meta.get(META_NAME))
    if owner == (namespace, name):
        return ""
    if owner == (None, None):
        return "was not submitted by rayrelay"
    return f"belongs to {str(owner[0])[:63]}/{str(owner[1])[:253]}"


def app_owner_problem(config: dict[str, Any] | None, namespace: str) -> str:
    """Why a Serve application is not this namespace's ModelDeployment's ("" when it is; pure).

    The application (and URL) name is the ModelDeployment's name, so two namespaces'
    deployments of one name would share it: the namespace in the app's args tells whose it is.
    """
    if config is None:
        return ""
    args = app_args_of(config) or {}
    if not str(config.get("import_path", "")).startswith(RAYRELAY_IMPORT_PREFIX):
        return "is not a rayrelay application"
    if args.get("namespace") != namespace:
        return f"belongs to namespace {str(args.get('namespace'))[:63]}"
    return ""


def _jobs_of(jobs: list[dict[str, Any]], namespace: str, name: str) -> list[str]:
    """Submission ids of a TrainingJob's Ray jobs: by metadata, else by id shape (with its hash)."""
    prefix = re.escape(f"rayrelay-{namespace}-{name}-{naming.owner_hash(namespace, name)}")
    id_shape = re.compile(rf"^{prefix}-g\d+-a\d+$")
    out = []
    for job in jobs:
        sid = job.get("submission_id")
        if not sid:
            continue
        meta = job.get("metadata") or {}
        if META_NAME in meta:
            if meta.get(META_NAME) == name and meta.get(META_NAMESPACE) == namespace:
                out.append(sid)
        elif id_shape.match(sid):
            out.append(sid)
    return out


# --------------------------------------------------------------------- backend


class RayBackend:
    """``Backend`` for an existing Ray cluster (Job Submission API + Serve REST API)."""

    name = "ray"

    def __init__(
        self,
        dashboard_url: str,
        *,
        serve_host: str = "0.0.0.0",
        serve_port: int = 8000,
        url_host: str | None = None,
        python: str = "python",
        environ: dict[str, str] | None = None,
        client_factory: Callable[[str], Any] | None = None,
        credentials: Callable[[str, str], dict[str, str]] | None = None,
        encryption_key: Callable[[str, str], str] | None = None,
        auth_token: str | None = None,
    ) -> None:
        """
        dashboard_url: http://host:8265 of the cluster's head.
        serve_host/serve_port: where Serve's HTTP proxy listens when this backend
            is the first to start Serve (http_options).
        url_host: the host clients use in status.url (default: the dashboard's
            host when serve_host binds every interface, else serve_host).
        python: the interpreter the job's entrypoint runs on the cluster.
        environ: where pass-through variables are read (default: os.environ). The
            operator passes {}: its own environment (AWS keys) never goes into a job,
            whose runtime_env Ray's job list shows to anyone who reaches the dashboard.
        credentials: ``credentials(namespace, secret)`` -> the AWS_* keys of a
            resource's opted-in credentials Secret (the operator; issue 12, finding 2).
        encryption_key: ``encryption_key(namespace, secret)`` -> the key text of
            ``spec.artifacts.encryption.keySecret`` (``RAYRELAY_ENCRYPTION_KEY``), given to the
            training job and the model's Serve application through ``runtime_env`` only.
            Without it an encrypted resource is refused (``BackendRejected``).
        auth_token: the cluster's Ray token (``RAY_AUTH_MODE=token``), sent as
            ``Authorization: Bearer`` on every dashboard call (Job API, Serve REST API).
            A cluster that wants one and gets none or another answers 401 / 403:
            ``RayAuthFailed``, which says so without quoting any token.
        """
        if "://" not in dashboard_url:
            dashboard_url = f"http://{dashboard_url}"
        self.dashboard_url = dashboard_url.rstrip("/")
        self.serve_host = serve_host
        self.serve_port = serve_port
        if url_host is None:
            url_host = (
                urlparse(self.dashboard_url).hostname or "127.0.0.1"
                if serve_host in ("0.0.0.0", "::", "")
                else serve_host
            )
        self.url_host = url_host
        self.python = python
        self._environ = environ
        self._credentials = credentials
        self._encryption_key = encryption_key
        self._client_factory = client_factory
        self._headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------- training

    def _jobs(self) -> Any:
        from ray.exceptions import AuthenticationError

        with self._client_lock:
            if self._client is None:
                try:
                    if self._client_factory is not None:
                        self._client = self._client_factory(self.dashboard_url)
                    else:
                        from ray.job_submission import JobSubmissionClient

                        self._client = JobSubmissionClient(self.dashboard_url, headers=dict(self._headers))
                except AuthenticationError as exc:
                    raise self._auth_failed("connect") from exc
                except (ConnectionError, requests.exceptions.RequestException) as exc:
                    raise RayUnavailable(
                        f"Ray dashboard at {self.dashboard_url} is not reachable: {exc}"
                    ) from exc
            return self._client

    def _auth_failed(self, what: str, status: int | str = "401/403") -> RayAuthFailed:
        given = "a token that it refused" if self._headers else "no token"
        return RayAuthFailed(
            f"Ray at {self.dashboard_url} wants token authentication and got {given} ({what}: HTTP "
            f"{status}); the operator's token is RAYRELAY_RAY_AUTH_TOKEN (chart value rayAuthTokenSecret)"
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from ray.exceptions import AuthenticationError

        try:
            return fn()
        except AuthenticationError as exc:
            raise self._auth_failed(what) from exc
        except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            # Reconnect next time: the head may have restarted on the same address.
            self._client = None
            raise RayUnavailable(f"Ray at {self.dashboard_url} is not reachable: {what}: {exc}") from exc

    def submit_training(self, work: TrainingWork) -> None:
        job_json = work.job.model_dump_json(by_alias=True, exclude_none=True)
        environ = self._environ if self._environ is not None else os.environ
        env_vars = passthrough_env(environ)
        secret = work.job.spec.artifacts.credentials_secret
        if secret and self._credentials is not None:
            # The resource's own Secret (the policy checked its opt-in label). Ray has no
            # secret store: runtime_env is readable by whoever reaches the dashboard, which
            # is why this backend serves one trusted team only (docs/security.md).
            env_vars.update(self._credentials(work.job.namespace, secret))
        env_vars.update(self._key_env(work.job.namespace, work.job.spec.artifacts.encryption))
        if work.job.endpoint_url:
            env_vars["RAYRELAY_S3_ENDPOINT_URL"] = work.job.endpoint_url
        metadata = {
            META_NAMESPACE: work.job.namespace,
            META_NAME: work.job.name,
            META_GENERATION: str(work.job.generation),
            META_ATTEMPT: str(work.job.attempt),
        }
        client = self._jobs()
        key = env_vars.get(ENCRYPTION_KEY_ENV, "")
        try:
            self._submit(work, client, job_json, env_vars, metadata)
        except (BackendRejected, BackendUnavailable) as exc:
            text = redact(str(exc), [key])  # Ray's error text may quote the runtime_env
            if text != str(exc):
                raise type(exc)(text) from None
            raise

    def _submit(
        self,
        work: TrainingWork,
        client: Any,
        job_json: str,
        env_vars: dict[str, str],
        metadata: dict[str, str],
    ) -> None:
        try:
            self._call(
                "submit job",
                lambda: client.submit_job(
                    entrypoint=train_entrypoint(job_json, self.python),
                    submission_id=work.submission_id,
                    runtime_env={"env_vars": env_vars} if env_vars else None,
                    metadata=metadata,
                ),
            )
        except RuntimeError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            if "already exists" in str(exc):
                # Ray refuses a second job with this id: the attempt was submitted
                # before (a repeated reconcile or a restarted operator), unless the job
                # is someone else's, which is refused, never adopted (finding 6).
                self._check_job_owner(work)
                log.debug("job %s already submitted", work.submission_id)
                return
            if _server_error(exc):
                # e.g. "No available agent to submit job": the head is still starting.
                raise BackendUnavailable(f"Ray at {self.dashboard_url}: submit job: {exc}") from exc
            raise BackendRejected(f"Ray refused job {work.submission_id}: {exc}") from exc

    def _key_env(self, namespace: str, encryption: Any) -> dict[str, str]:
        """``RAYRELAY_ENCRYPTION_KEY`` for a resource with ``spec.artifacts.encryption``, else nothing."""
        if encryption is None:
            return {}
        if self._encryption_key is None:
            raise BackendRejected(
                "spec.artifacts.encryption: this backend was given no way to read encryption keys"
            )
        return {ENCRYPTION_KEY_ENV: self._encryption_key(namespace, encryption.key_secret)}

    def _check_job_owner(self, work: TrainingWork) -> None:
        """``BackendRejected`` unless the job with our id carries this TrainingJob's metadata."""
        info = self._job_info(work.submission_id) or {}
        problem = job_owner_problem(info.get("metadata") or {}, work.job.namespace, work.job.name)
        if problem:
            raise BackendRejected(f"Ray job {work.submission_id} exists and {problem}: refusing to adopt it")

    def _job_info(self, submission_id: str) -> dict[str, Any] | None:
        client = self._jobs()
        try:
            info = self._call("get job info", lambda: client.get_job_info(submission_id))
        except RuntimeError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise BackendUnavailable(f"Ray at {self.dashboard_url}: get job info: {exc}") from exc
        data = info.dict() if hasattr(info, "dict") else dict(info)
        return {k: (v.value if hasattr(v, "value") else v) for k, v in data.items()}

    def observe_training(self, work: TrainingWork) -> TrainingObservation:
        info = self._job_info(work.submission_id)
        if info is None:
            return TrainingObservation(WorkState.ABSENT, dashboard_url=self.dashboard_url)
        logs = ""
        if info.get("status") == "FAILED":
            client = self._jobs()
            try:
                logs = tail(self._call("get job logs", lambda: client.get_job_logs(work.submission_id)))
            except RuntimeError:
                logs = ""  # the failure message alone still says what happened
        return training_observation(info, logs, self.dashboard_url)

    def stop_training(self, work: TrainingWork) -> None:
        client = self._jobs()
        try:
            self._call("stop job", lambda: client.stop_job(work.submission_id))
        except RuntimeError as exc:
            if isinstance(exc, BackendUnavailable):
                raise
            if "404" in str(exc) or "does not exist" in str(exc):
                return
            raise BackendUnavailable(f"Ray at {self.dashboard_url}: stop job: {exc}") from exc

    def delete_training(self, namespace: str, name: str) -> None:
        """Stop and delete every Ray job of the TrainingJob.

        Ray deletes only finished jobs: a job still stopping raises
        ``BackendUnavailable`` so that the caller retries later (it never waits here).
        Success means a listing found none of its jobs: a call that deleted some
        raises too, and the next call checks that they stayed gone. Ray's job
        monitor writes a job back as FAILED when it finds the info of a job whose
        supervisor it still watches deleted, so a job is deleted only
        ``DELETE_GRACE_S`` after it ended, and deleted again if it comes back.
        """
        client = self._jobs()
        jobs = self._call("list jobs", client.list_jobs)
        as_dicts = []
        for job in jobs:
            data = job.dict() if hasattr(job, "dict") else dict(job)
            as_dicts.append({k: (v.value if hasattr(v, "value") else v) for k, v in data.items()})
        status = {j["submission_id"]: j.get("status") for j in as_dicts if j.get("submission_id")}
        pending: list[str] = []
        deleted: list[str] = []
        ended = {j["submission_id"]: j.get("end_time") for j in as_dicts if j.get("submission_id")}
        now_ms = time.time() * 1000
        for sid in _jobs_of(as_dicts, namespace, name):
            if status.get(sid) in ("PENDING", "RUNNING"):
                self._call("stop job", functools.partial(client.stop_job, sid))
                pending.append(sid)
                continue
            if not ended.get(sid) or now_ms - float(ended[sid] or 0) < DELETE_GRACE_S * 1000:
                pending.append(sid)  # its supervisor may still be watched: see the docstring
                continue
            try:
                self._call("delete job", functools.partial(client.delete_job, sid))
                deleted.append(sid)
            except RuntimeError as exc:
                if isinstance(exc, BackendUnavailable):
                    raise
                if "404" in str(exc) or "does not exist" in str(exc):
                    continue
                if "terminal" in str(exc) or "not in a terminal state" in str(exc):
                    pending.append(sid)
                    continue
                raise BackendUnavailable(f"Ray at {self.dashboard_url}: delete job {sid}: {exc}") from exc
        if pending:
            raise BackendUnavailable(f"waiting for Ray job(s) to stop before deleting: {', '.join(pending)}")
        if deleted:
            raise BackendUnavailable(f"deleted Ray job(s) {', '.join(deleted)}; checking that they stay gone")

    # -------------------------------------------------------------- serving

    def _rest(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.dashboard_url}/api/serve/applications/"
        try:
            resp = requests.request(method, url, json=body, headers=self._headers, timeout=REST_TIMEOUT_S)
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise RayUnavailable(f"Serve REST API at {url} is not reachable: {exc}") from exc
        if resp.status_code in (401, 403):
            raise self._auth_failed(f"{method} Serve REST API", resp.status_code)
        if resp.status_code >= 500 or resp.status_code in (404, 429, 503):
            # 404: the dashboard's Serve module is still starting.
            raise BackendUnavailable(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:500]}")
        if resp.status_code >= 400:
            raise BackendRejected(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:2000]}")
        if method == "GET":
            try:
                return dict(resp.json())
            except ValueError as exc:
                raise BackendUnavailable(f"GET {url}: not JSON: {resp.text[:200]}") from exc
        return {}

    def serve_instance(self) -> dict[str, Any]:
        """Serve's whole state as the REST API reports it."""
        return self._rest("GET")

    def url(self, instance: dict[str, Any] | None = None) -> str:
        port = self.serve_port
        if instance is not None and _serve_running(instance):
            port = int((instance.get("http_options") or {}).get("port") or port)
        return f"http://{self.url_host}:{port}"

    def deploy_serving(self, work: ServingWork) -> None:
        from rayrelay_core.serveconfig import application_configs

        # spec.auth: the API keys' digests ride in user_config (serveconfig), never the keys.
        wanted = application_configs(work.app_args, work.surge_from, work.key_digest_list)
        key_env = self._key_env(work.namespace, work.spec.artifacts.encryption)
        if key_env:
            # The model application's replicas only (the gateway never reads a model). Like a
            # job's runtime_env, Serve's REST API shows it to whoever reaches the dashboard.
            for app in wanted:
                if app["name"] == work.app_name:
                    app["runtime_env"] = {"env_vars": key_env}
        try:
            self._deploy(work, wanted)
        except (BackendRejected, BackendUnavailable) as exc:
            # Serve's error text may quote the config it refused: never pass the key on.
            text = redact(str(exc), key_env.values())
            if text != str(exc):
                raise type(exc)(text) from None
            raise

    def _deploy(self, work: ServingWork, wanted: list[dict[str, Any]]) -> None:
        with _SERVE_LOCK:
            instance = self.serve_instance()
            current = current_applications(instance)
            self._check_app_owner(current, work)
            merged = merge_applications(current, wanted)
            if _same(merged, current):
                return  # nothing changed: a PUT would only make Serve re-check everything
            self._rest("PUT", deploy_body(instance, merged, self.serve_host, self.serve_port))
            log.info("Serve applications written for %s: %s", work.app_name, _names(merged))

    def _check_app_owner(self, current: list[dict[str, Any]], work: ServingWork) -> None:
        mine = next((app for app in current if app.get("name") == work.app_name), None)
        problem = app_owner_problem(mine, work.namespace)
        if problem:
            raise BackendRejected(
                f"Serve application {work.app_name!r} on this Ray cluster {problem}: refusing to replace "
                "it (the model name must be unique per Ray cluster)"
            )

    def observe_serving(self, work: ServingWork) -> ServingObservation:
        instance = self.serve_instance()
        obs = observe_app(instance, work.app_name, self.url(instance))
        if obs.state is ServingState.RUNNING and obs.url:
            text = self._metrics(obs.url)
            if text is not None:
                obs.ongoing_requests = ongoing_requests(text, work.app_name)
                obs.variant = served_variant(text, work.app_name)
        return obs

    def _metrics(self, url: str) -> str | None:
        """The gateway's /metrics (the replicas' series merged in); None when it does not answer."""
        try:
            resp = requests.get(f"{url}/metrics", timeout=METRICS_TIMEOUT_S)
        except requests.exceptions.RequestException:
            return None
        return resp.text if resp.status_code == 200 else None

    def delete_serving(self, work: ServingWork) -> None:
        with _SERVE_LOCK:
            instance = self.serve_instance()
            if work.app_name not in (instance.get("applications") or {}):
                listed = sorted(instance.get("applications") or {})
                log.info(
                    "Serve application %s: not listed (Serve has %s), nothing to delete",
                    work.app_name,
                    listed,
                )
                return
            current = current_applications(instance)
            mine = next((app for app in current if app.get("name") == work.app_name), None)
            if app_owner_problem(mine, work.namespace):
                return  # another namespace's application: never ours to remove
            remaining = remove_application(current, work.app_name)
            self._rest("PUT", deploy_body(instance, remaining, self.serve_host, self.serve_port))
            log.info("Serve application %s: deleted; applications left: %s", work.app_name, _names(remaining))


def _names(apps: list[dict[str, Any]]) -> list[str]:
    return sorted(str(app.get("name")) for app in apps)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced (for error messages that may quote a config)."""
    for value in secrets:
        if value:
            text = text.replace(value, "[redacted]")
    return text


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Same applications, whatever the order. Python equality on purpose: Serve hands
    configs back with numbers normalised (0 -> 0.0), which a textual comparison would
    take for a change, and a PUT per reconcile keeps every application DEPLOYING."""
    return {str(app.get("name")): app for app in a} == {str(app.get("name")): app for app in b}
