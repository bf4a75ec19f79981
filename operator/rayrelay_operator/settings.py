"""Operator settings: one documented object, read once from the environment.

Every knob of the control plane lives here so that the kopf handlers
(``handlers``), the local loop of ``rayrelay run`` (``local``) and the
reconcilers (``reconcile``) read the same values. Nothing below the drivers
reads the environment: a ``Settings`` is built once (``Settings.from_env()``)
and passed down, which keeps the reconcilers pure and their tests free of
environment tricks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from rayrelay_core.api import Backend

ENV_PREFIX = "RAYRELAY_"


@dataclass(frozen=True)
class Settings:
    """Control-plane configuration; each field maps to ``RAYRELAY_<FIELD_IN_CAPS>``."""

    # Backend used when a resource's spec.backend is omitted: kuberay (RayJob /
    # RayService objects) or ray (an existing Ray cluster at ray_address).
    default_backend: Backend = Backend.KUBERAY
    # Image of the Ray head/worker pods (kuberay backend) when spec.image is omitted.
    workload_image: str = "rayrelay-workloads:dev"
    # Artifact store used when spec.artifacts.uri is omitted (s3://bucket/prefix or a path).
    artifacts_uri: str | None = None
    # S3 endpoint of an S3-compatible store (MinIO, moto); AWS when unset.
    s3_endpoint_url: str | None = None
    # Secret (in the resource's namespace) holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    # used when spec.artifacts.credentialsSecret is omitted.
    artifacts_secret: str | None = None
    # Ray dashboard URL of an existing cluster (ray backend), e.g. http://ray-head:8265.
    ray_address: str | None = None
    # Port of the Prometheus /metrics endpoint of the operator (0 = do not serve).
    metrics_port: int = 8080
    # json: one JSON object per log line (for log pipelines); text: for people.
    log_format: str = "text"
    # How often a timer re-observes a resource whose work is active, in seconds.
    timer_interval_seconds: float = 10.0
    # A timer skips a tick while the resource changed less than this long ago
    # (the change handlers just reconciled it).
    timer_idle_seconds: float = 5.0
    # Work waiting for pods (Initializing) longer than this is StuckInitializing:
    # the attempt counts as failed, with the pods' reasons in the message.
    stuck_initializing_seconds: float = 600.0
    # A running attempt's progress is read from the store at most this often while the
    # backend's view of it stays the same (a timer tick in between reads nothing); 0: every pass.
    store_poll_seconds: float = 60.0
    # First and largest delay of temporary-error retries (doubling in between;
    # reconcile/errors.py holds the one backoff function).
    retry_base_delay_seconds: float = 5.0
    retry_max_delay_seconds: float = 300.0
    # Spread of each delay, as a fraction (0.2: +-20%), so that resources that
    # failed together do not all retry in the same second.
    retry_jitter: float = 0.2
    # Port of the Serve HTTP proxy inside a RayService (kuberay backend).
    serve_port: int = 8000
    # KubeRay's spec.upgradeStrategy.type of every RayService (kuberay backend): NewCluster
    # (a changed rayClusterConfig gets a new cluster, traffic switched when it serves) or None.
    rayservice_upgrade_strategy: str = "NewCluster"
    # Serve's HAProxy ingress (Ray's high-throughput mode, RAY_SERVE_ENABLE_HA_PROXY) in the
    # Ray pods of every RayService, and in the Ray head `rayrelay run` starts (localray.py).
    serve_haproxy: bool = True
    # Peering (replicas > 1): how long a replica's keep-alive stays valid, in
    # seconds. A standby takes over at most this long after the leader's last
    # keep-alive when the leader dies without a goodbye (SIGKILL, node loss);
    # kopf renews it 5-10 s before expiry (at least every second). kopf's own
    # default is 60. `rayrelay operator --peering-lifetime` overrides it.
    peering_lifetime_seconds: int = 10
    # --- What tenants may ask for (docs/security.md; rayrelay_operator.policy). ---
    # Images a resource's spec.image may name, comma-separated: exact, or a prefix when the
    # entry ends in '/', ':', '@' or '*'. Empty: workload_image only.
    allowed_images: str | None = None
    # S3 endpoints a resource's spec.artifacts.endpointUrl may name besides s3_endpoint_url
    # (comma-separated, exact); any other is refused before anything contacts it.
    allowed_s3_endpoints: str | None = None
    # Namespaces whose resources may use the ray backend (comma-separated): the Ray cluster
    # at ray_address is shared by everyone on it, so it is for one trusted team.
    ray_backend_namespaces: str | None = None
    # ServiceAccount of the Ray pods the kuberay backend creates (the chart creates one per
    # watched namespace); unset: the namespace's default. Its token is never mounted.
    workload_service_account: str | None = None
    # The operator's own artifact-store client: few attempts and short timeouts, so that a
    # slow or black-hole endpoint cannot hold the handler threads (finding 3).
    store_max_attempts: int = 2
    store_connect_timeout_seconds: float = 3.0
    store_read_timeout_seconds: float = 10.0
    # --- Ray's token authentication (RAY_AUTH_MODE=token, Ray >= 2.52; docs/security.md). ---
    # Every Ray cluster the kuberay backend creates: "token" (KubeRay's spec.authOptions, where
    # the installed RayJob / RayService CRDs have it: KubeRay >= 1.5.1) or "disabled".
    ray_cluster_auth: str = "token"
    # The token of the existing cluster at ray_address (ray backend), sent on every dashboard
    # call; the chart reads it from a Secret (rayAuthTokenSecret). Never printed.
    ray_auth_token: str | None = field(default=None, repr=False)
    # --- A NetworkPolicy per Ray cluster (kuberay backend; docs/security.md, finding 5). ---
    # Before each RayJob / RayService, create a NetworkPolicy owned by its resource: the
    # cluster's pods take Ray's own traffic from each other, the head's control ports
    # (8265/6379/10001) only from the operator's and KubeRay's pods, Serve's port from anyone.
    # False: none (for clusters whose admins manage NetworkPolicies themselves).
    network_policy: bool = True
    # What a training Ray cluster's policy covers. "namespace": one policy per namespace for
    # every RayJob's pods (created before the first RayJob there, re-checked every few
    # minutes), so a TrainingJob costs no policy request; training clusters of the namespace
    # then reach each other's pods. "cluster": one policy per RayJob, owned by its
    # TrainingJob, admitting only the same cluster's pods. RayServices always get their own.
    network_policy_scope: str = "namespace"
    # The operator's own pods, a peer of those policies: namespace and labels ("k=v,k=v"; the
    # chart sets its selector labels). Unset (an operator outside the cluster): no such peer.
    network_policy_operator_namespace: str | None = None
    network_policy_operator_labels: str | None = None
    # KubeRay's operator pods, the other peer: namespace and label app.kubernetes.io/name.
    network_policy_kuberay_namespace: str = "kuberay-system"
    network_policy_kuberay_name: str = "kuberay-operator"
    # The Prometheus pods that scrape Ray's own metrics port (8080) on the Ray pods: their
    # namespace and labels ("k=v,k=v"; empty: any pod there). Unset: that port stays closed to
    # them. rayrelay's serving metrics (Serve's port, /metrics) need no peer: that port is open.
    network_policy_metrics_namespace: str | None = None
    network_policy_metrics_labels: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``RAYRELAY_*`` variables; unset or empty ones keep their default."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            default = f.default
            if f.name == "default_backend":
                values[f.name] = Backend(raw.strip().lower())
            elif isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def operator_pod_labels(self) -> dict[str, str]:
        """``network_policy_operator_labels`` as a mapping (``k=v,k=v``; empty when unset)."""
        return parse_labels(self.network_policy_operator_labels or "")

    def metrics_scraper_labels(self) -> dict[str, str]:
        """``network_policy_metrics_labels`` as a mapping (``k=v,k=v``; empty when unset)."""
        return parse_labels(self.network_policy_metrics_labels or "")

    def check(self) -> None:
        """Reject values that cannot work, naming the variable."""
        if self.log_format not in ("json", "text"):
            raise ValueError(f"RAYRELAY_LOG_FORMAT must be json or text, not {self.log_format!r}")
        if self.default_backend == Backend.RAY and not self.ray_address:
            raise ValueError(
                "RAYRELAY_DEFAULT_BACKEND=ray needs RAYRELAY_RAY_ADDRESS (the Ray dashboard URL)"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"RAYRELAY_METRICS_PORT out of range: {self.metrics_port}")
        if self.timer_interval_seconds <= 0 or self.stuck_initializing_seconds <= 0:
            raise ValueError("timer and stuck-initializing intervals must be positive")
        if (
            self.store_max_attempts < 1
            or min(self.store_connect_timeout_seconds, self.store_read_timeout_seconds) <= 0
        ):
            raise ValueError("RAYRELAY_STORE_MAX_ATTEMPTS must be >= 1 and the store timeouts > 0")
        if self.rayservice_upgrade_strategy not in ("NewCluster", "None"):
            raise ValueError(
                "RAYRELAY_RAYSERVICE_UPGRADE_STRATEGY must be NewCluster or None, not "
                f"{self.rayservice_upgrade_strategy!r} (NewClusterWithIncrementalUpgrade needs the "
                "Gateway API and a KubeRay feature gate)"
            )
        try:
            self.operator_pod_labels()
        except ValueError as exc:
            raise ValueError(f"RAYRELAY_NETWORK_POLICY_OPERATOR_LABELS: {exc}") from None
        try:
            self.metrics_scraper_labels()
        except ValueError as exc:
            raise ValueError(f"RAYRELAY_NETWORK_POLICY_METRICS_LABELS: {exc}") from None
        if self.network_policy_scope not in ("namespace", "cluster"):
            raise ValueError(
                "RAYRELAY_NETWORK_POLICY_SCOPE must be namespace or cluster, not "
                f"{self.network_policy_scope!r}"
            )
        if self.ray_cluster_auth not in ("token", "disabled"):
            raise ValueError(
                f"RAYRELAY_RAY_CLUSTER_AUTH must be token or disabled, not {self.ray_cluster_auth!r}"
            )
        if self.retry_base_delay_seconds <= 0 or not 0 <= self.retry_jitter < 1:
            raise ValueError("RAYRELAY_RETRY_BASE_DELAY_SECONDS must be > 0, RAYRELAY_RETRY_JITTER in [0, 1)")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` (a label selector of equalities) as a mapping; '' is {}."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels
