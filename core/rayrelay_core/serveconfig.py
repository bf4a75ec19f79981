"""Ray Serve declarative config of a ModelDeployment: pure, no ray or torch imports.

A ModelDeployment becomes two Serve applications on a Ray cluster:

- ``rayrelay-gateway`` (route prefix ``/``), shared by every ModelDeployment on
  the cluster: the HTTP ingress that speaks KServe v2/v1 and forwards to a model
  application by name. Serve gives each application exactly one route prefix,
  so one shared gateway is how several models share one HTTP port.
- one application named after the ModelDeployment (``metadata.name``), holding
  the ``ModelServer`` deployment, whose route prefix is its own OIP infer path,
  ``/v2/models/{name}/infer`` (:func:`model_route_prefix`): Serve's proxy
  matches the longest prefix, so inference requests go proxy -> model replica
  in one hop, and every other path (health, metadata, readiness, KServe v1,
  metrics) falls through to the gateway at ``/``, which reaches the model by
  handle. (Configs written before this had ``route_prefix: null``; the gateway
  still serves infer for such an application.) A text-generation or
  sentence-embedding model's replica answers all of ``/v2/models/{name}``
  (:data:`WHOLE_PATH_TASKS`).

The operator's builders (KubeRay ``RayService.spec.serveConfigV2``) and the
``ray`` backend (``PUT /api/serve/applications/``) both take their entries from
:func:`application_configs`; the application builders in
``rayrelay_workloads.serve.app`` take the very same deployment options from
:func:`model_deployment_options`, so ``serve.run`` and the declarative path cannot
drift apart. A ``PUT`` replaces *every* declarative application of the cluster,
so callers merge these entries into the current list (the ``ray`` backend's
``merge_applications`` does).
"""

from __future__ import annotations

import math
import re
from typing import Any

from rayrelay_core.api import GenerationCaps, GenerationLimits, ModelDeploymentSpec
from rayrelay_core.apikeys import USER_CONFIG_KEY

# Ray Serve's request path in a replica, set where rayrelay puts Serve's HAProxy ingress (the
# local head of `rayrelay run`, RayService pods): two settings of Ray's throughput-optimized
# mode (``RAY_SERVE_THROUGHPUT_OPTIMIZED``), and a shorter drain (below). User code runs on the replica's main event loop,
# not on a loop thread of its own (one cross-thread hop less per request; every rayrelay
# replica keeps blocking work off its loop: the model runs in a worker thread, the
# text-generation decode loop in its own thread), and access-log lines are flushed in
# batches, not one write per request. Measured at concurrency 1 on the one-hop route
# (docs/performance.md, request path levers): model replicas' CPU per request 5.5-5.8 ->
# 5.1-5.2 ms, p50 5.9-6.4 -> 5.3-5.7 ms. A value already in the environment wins.
SERVE_REQUEST_PATH_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    # An ingress replica Serve stops (scale down, scale to zero, a deleted or updated
    # application) stays open at least this long before it stops, so that load balancers
    # pointing straight at its port can deregister it; Ray's default, 30 s, is sized for a
    # cloud load balancer. Behind Serve's HAProxy nothing points at the replica but HAProxy,
    # which drops it at the reload that follows the controller's broadcast (0.7 s measured
    # on an idle 2-core head), redispatches a request whose connection fails to another
    # replica or to Serve's proxy (``option redispatch``), and the drain still waits for the
    # requests in flight. Measured on a local head (AMX Xeon, 2 cores, idle): a replica
    # released to zero stopped 30.4 s after Serve's decision at 30 s (a CI run under load
    # timed out waiting 60 s for it), 6.4 s after at 5 s.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
}

# How soon Serve's controller learns of a request that found no replica (scale from zero,
# issue 25). A handle (Serve's proxy, the gateway) records its queued requests every
# ``look_back_period_s * RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR`` (default 0.2)
# and pushes the recorded points every ``metrics_interval_s``; its one immediate push when a
# request finds zero replicas carries the points recorded *before* that request (all zero),
# so the controller decided to start a replica only after the next record and the next push:
# 0.8-1.6 s after the request with a 4 s window, measured from the controller's own log
# (docs/performance.md, "Scale to zero: Serve's part by step"). Recording every 1/100 of the
# window and, for a deployment that scales to zero, pushing every
# :data:`SCALE_FROM_ZERO_PUSH_INTERVAL_S` bring that to a few tenths. Set on every Ray
# process where rayrelay starts Ray (the head of `rayrelay run`, the RayService pods), unless
# the environment sets it already.
SERVE_AUTOSCALING_ENV = {"RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR": "0.01"}
SCALE_FROM_ZERO_PUSH_INTERVAL_S = 0.25

GATEWAY_APP_NAME = "rayrelay-gateway"
GATEWAY_DEPLOYMENT = "Gateway"
MODEL_DEPLOYMENT = "ModelServer"
GATEWAY_IMPORT_PATH = "rayrelay_workloads.serve.app:gateway_app"
MODEL_IMPORT_PATH = "rayrelay_workloads.serve.app:model_app"
TEXT_GENERATION = "text-generation"
SENTENCE_EMBEDDING = "sentence-embedding"
# Tasks whose replica takes all of ``/v2/models/{name}`` (one hop for each of its routes): text
# generation (generate, generate_stream streamed from the replica, issue 16) and sentence
# embedding (OIP infer and the per-model OpenAI base ``/v2/models/{name}/openai/v1``, whose
# ``/embeddings`` skips the gateway hop that the shared ``/v1/embeddings`` takes, issue 27).
# Their metadata and readiness come from a replica too: a request to them for a model scaled
# to zero is held while a replica starts, as any request to the model is.
WHOLE_PATH_TASKS = frozenset({TEXT_GENERATION, SENTENCE_EMBEDDING})

# The gateway only parses JSON and forwards; it must not take a CPU that a model
# replica could use (Serve's own proxy does the same).
GATEWAY_OPTIONS: dict[str, Any] = {
    "num_replicas": 1,
    "ray_actor_options": {"num_cpus": 0},
    "max_ongoing_requests": 1000,
}

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``4Gi``, ``512M``, ``1000``) in bytes."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r} (expected e.g. 512Mi or 4Gi)")
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def batching_user_config(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """What ``ModelServer.reconfigure`` receives: batching can change without a restart."""
    return {
        "maxBatchSize": spec.batching.max_batch_size,
        "batchWaitTimeoutMs": spec.batching.batch_wait_timeout_ms,
    }


# Requests beyond a text-generation replica's batch and queue that Serve still hands it: the
# ones it answers 429 at once, and the gateway's calls (metadata, stats) beside the streams.
TEXTGEN_ONGOING_HEADROOM = 8


def max_ongoing_requests(spec: ModelDeploymentSpec, task: str | None = None) -> int:
    """Requests a replica accepts at once.

    Above the autoscaling target (twice it), so the autoscaler sees queueing
    before requests are refused, and at least a full batch, so that dynamic
    batching can fill ``maxBatchSize`` from concurrent requests.

    A text-generation replica (``task``) bounds its work itself (``spec.generation``: the
    decode batch, then its own queue, then 429), so Serve hands it the batch, the queue and
    :data:`TEXTGEN_ONGOING_HEADROOM` more: the replica's scheduler, not Serve's queue, is the
    limit a client meets, and the 429 is what fires when it is full.
    """
    target = spec.autoscaling.target_ongoing_requests
    base = max(2 * math.ceil(target), spec.batching.max_batch_size, 2)
    if task != TEXT_GENERATION:
        return base
    gen = spec.generation or GenerationLimits()
    return max(base, gen.max_batch_size + gen.max_queued_requests + TEXTGEN_ONGOING_HEADROOM)


def generation_caps(spec: ModelDeploymentSpec) -> GenerationCaps:
    """``status.model.generation``: the caps a text-generation replica decodes under, as deployed."""
    gen = spec.generation or GenerationLimits()
    return GenerationCaps(
        max_batch_size=gen.max_batch_size,
        max_cached_tokens=gen.max_cached_tokens,
        max_queued_requests=gen.max_queued_requests,
        max_ongoing_requests=max_ongoing_requests(spec, TEXT_GENERATION),
    )


def metrics_push_interval(window_s: float, scale_to_zero: bool = False) -> float:
    """Serve's ``metrics_interval_s`` for a metrics window: a quarter of it, within [0.5, 10] s;
    :data:`SCALE_FROM_ZERO_PUSH_INTERVAL_S` for a deployment that scales to zero (a request held
    at zero replicas reaches the controller at the next push)."""
    if scale_to_zero:
        return SCALE_FROM_ZERO_PUSH_INTERVAL_S
    return round(min(10.0, max(0.5, window_s / 4)), 3)


def autoscaling_config(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` of the model deployment, from ``spec.autoscaling``.

    Scale-to-zero (``minReplicas: 0``) still starts one replica first
    (``initial_replicas``), so that Ready means a verified model passed its
    warm-up; Serve then releases it after ``scaleToZeroAfterSeconds`` without
    requests (``downscale_to_zero_delay_s``), and a request that finds no
    replica is held by Serve's proxy (or the gateway's handle) while the
    autoscaler starts one: Serve scales up from zero without the upscale delay.
    """
    scaling = spec.autoscaling
    config: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "initial_replicas": max(scaling.min_replicas, 1),
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_seconds,
        "downscale_delay_s": scaling.downscale_delay_seconds,
        "look_back_period_s": scaling.metrics_window_seconds,
        # How often replicas and handles push their request counts to Serve's controller.
        # Serve marks the field deprecated (env vars are to replace it) but 2.58 still uses it,
        # and its default (10 s) would make every decision up to 10 s late and warn for
        # windows <= 10 s. A quarter of the window: several points per window, and cheap;
        # with scale-to-zero, SCALE_FROM_ZERO_PUSH_INTERVAL_S (the first request's wait).
        "metrics_interval_s": metrics_push_interval(
            scaling.metrics_window_seconds, scale_to_zero=scaling.min_replicas == 0
        ),
    }
    if scaling.min_replicas == 0:
        config["downscale_to_zero_delay_s"] = scaling.scale_to_zero_after_seconds
    return config


def model_deployment_options(
    spec: ModelDeploymentSpec, key_digests: list[str] | None = None, task: str | None = None
) -> dict[str, Any]:
    """Serve deployment options of ``ModelServer`` (the same keys as the config schema).

    With ``spec.auth``, ``user_config`` carries the sha256 digests of the endpoint's API keys
    (``rayrelay_core.apikeys``; never the keys): Serve hands a changed ``user_config`` to
    each running replica's ``reconfigure`` in place, so a rotation restarts nothing. Without
    digests (none resolved) the list is empty and the replicas refuse every model request.
    """
    actor: dict[str, Any] = {"num_cpus": spec.resources.cpus}
    if spec.resources.gpus:
        actor["num_gpus"] = spec.resources.gpus
    if spec.resources.memory:
        actor["memory"] = quantity_bytes(spec.resources.memory)
    return {
        "autoscaling_config": autoscaling_config(spec),
        "ray_actor_options": actor,
        "max_ongoing_requests": max_ongoing_requests(spec, task),
        "user_config": user_config(spec, key_digests),
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
    }


def user_config(spec: ModelDeploymentSpec, key_digests: list[str] | None = None) -> dict[str, Any]:
    """The model deployment's ``user_config``: batching, plus the API key digests with ``spec.auth``."""
    config = batching_user_config(spec)
    if spec.auth is not None:
        config[USER_CONFIG_KEY] = sorted(key_digests or [])
    return config


def deployed_key_digests(app_config: dict[str, Any] | None) -> list[str] | None:
    """The API key digests in a model application's config as deployed (None: none there)."""
    for dep in (app_config or {}).get("deployments") or []:
        if isinstance(dep, dict) and dep.get("name") == MODEL_DEPLOYMENT:
            digests = (dep.get("user_config") or {}).get(USER_CONFIG_KEY)
            return sorted(str(d) for d in digests) if isinstance(digests, list) else None
    return None


def gateway_application(args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shared gateway's entry; identical for every ModelDeployment."""
    return {
        "name": GATEWAY_APP_NAME,
        "route_prefix": "/",
        "import_path": GATEWAY_IMPORT_PATH,
        "args": dict(args or {}),
        "deployments": [{"name": GATEWAY_DEPLOYMENT, **GATEWAY_OPTIONS}],
    }


def model_route_prefix(name: str, task: str | None = None) -> str:
    """The model application's own route: the OIP v2 infer path of ``name`` (the hot path), or,
    for the tasks whose replica answers every ``/v2/models/{name}/...`` path itself
    (:data:`WHOLE_PATH_TASKS`), that whole prefix."""
    return f"/v2/models/{name}" if task in WHOLE_PATH_TASKS else f"/v2/models/{name}/infer"


def surge_autoscaling(config: dict[str, Any], running: int) -> dict[str, Any]:
    """``autoscaling_config`` while a new model rolls out: one replica more than the ``running`` ones.

    Serve's rolling update (Ray 2.58) starts a new-version replica only where the target
    leaves room, and stops an old one first when it does not: with the target at the
    replicas running, the only replica of a one-replica deployment stops before its
    successor has loaded and warmed up. A config change sets the target to
    ``initial_replicas``, so running + 1 leaves room for one new replica beside the old
    ones; each old one stops only once a new one runs, and one that never does (a model
    failing its digest check or warm-up) stops none. ``min_replicas`` is kept; the operator
    deploys the plain config again when the rollout ends. A cluster without room for one
    more replica keeps serving the old model while the new replica waits for resources.
    """
    out = dict(config)
    out["initial_replicas"] = running + 1
    out["max_replicas"] = max(int(config["max_replicas"]), running + 1)
    return out


def model_application(
    app_args: dict[str, Any], surge_from: int | None = None, key_digests: list[str] | None = None
) -> dict[str, Any]:
    """The model application's entry, from ``rayrelay_core.runs.serve_app_args``.

    ``surge_from``: the replicas running the previous model while this one rolls out
    (:func:`surge_autoscaling`); None outside a rollout. ``key_digests``: sha256 digests of
    the endpoint's API keys (``spec.auth``), which go into ``user_config``, not the args: a
    change of keys reconfigures the replicas in place instead of rolling out new ones.
    """
    for key in ("name", "manifestUri", "spec"):
        if key not in app_args:
            raise ValueError(f"serve application args lack {key!r}")
    spec = ModelDeploymentSpec.model_validate(app_args["spec"])
    name = str(app_args["name"])
    task = app_args.get("task")
    options = model_deployment_options(spec, key_digests, str(task) if task else None)
    if surge_from is not None:
        options["autoscaling_config"] = surge_autoscaling(options["autoscaling_config"], surge_from)
    if name == GATEWAY_APP_NAME:
        raise ValueError(f"{GATEWAY_APP_NAME!r} is reserved for the gateway; rename the ModelDeployment")
    return {
        "name": name,
        # A text-generation or sentence-embedding replica answers all of /v2/models/{name}/...
        # itself (WHOLE_PATH_TASKS); a classifier's, infer only.
        "route_prefix": model_route_prefix(name, str(task) if task else None),
        "import_path": MODEL_IMPORT_PATH,
        "args": dict(app_args),
        "deployments": [{"name": MODEL_DEPLOYMENT, **options}],
    }


def application_configs(
    app_args: dict[str, Any], surge_from: int | None = None, key_digests: list[str] | None = None
) -> list[dict[str, Any]]:
    """Entries of ``applications`` for one ModelDeployment: the gateway, then the model."""
    return [gateway_application(), model_application(app_args, surge_from, key_digests)]
