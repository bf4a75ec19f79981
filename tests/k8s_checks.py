"""Reusable checks on Kubernetes manifests (plain dicts), for tests.

Used by tests/unit/test_chart.py on the Helm chart's output, and meant for any
other producer of manifests (the operator's RayJob / RayService builders):

- ``schema_errors``: validation against Kubernetes' own JSON schemas, offline,
  with the ``kubernetes-validate`` package (strict: unknown fields fail).
- ``restricted_pss_errors``: the "restricted" Pod Security Standard
  (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
  plus, by default, a read-only root filesystem.
- ``resources_errors``: every container has cpu and memory requests and limits.
- ``rbac_wildcard_errors``: no ``*`` in any Role / ClusterRole rule.

Every check returns a list of human-readable messages (empty = pass), each
naming the object and the field, so that an assertion shows what is wrong.
Pods are found wherever they nest: Pod, workload templates (Deployment,
StatefulSet, DaemonSet, ReplicaSet, Job, CronJob) and KubeRay's RayCluster,
RayJob and RayService head / worker / submitter templates.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import yaml

# Kubernetes version of the schemas: kubernetes-validate 1.37 ships 1.25 to
# 1.37; 1.35 matches the kubectl and helm client here and current kind nodes.
K8S_VERSION = "1.35"

Manifest = dict[str, Any]

_WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}
# Volume types the restricted profile allows.
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
_VOLUME_META_KEYS = {"name"}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def load_manifests(text: str) -> list[Manifest]:
    """Parse a multi-document YAML stream (e.g. `helm template` output), dropping empty documents."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def object_name(obj: Manifest) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')}/{ns + '/' if ns else ''}{name}"


# ------------------------------------------------------------------ schemas


def schema_errors(
    obj: Manifest, version: str = K8S_VERSION, *, allow_unknown_kind: bool = False
) -> list[str]:
    """Validate one object against Kubernetes' strict JSON schema of its kind.

    A kind without a schema (custom resources such as RayJob or ServiceMonitor)
    is an error unless ``allow_unknown_kind``; check those against their CRD.
    """
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "<root>"
        return [f"{object_name(obj)}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [] if allow_unknown_kind else [f"{object_name(obj)}: {e.message}"]
    return []


# ------------------------------------------------------------------ pods


def pod_specs(obj: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (location, pod spec) for every pod template inside the object."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    where = object_name(obj)
    if kind == "Pod":
        yield where, spec
    elif kind in _WORKLOAD_KINDS:
        yield f"{where} spec.template", (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        tmpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
        yield f"{where} spec.jobTemplate.spec.template", tmpl.get("spec") or {}
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(where, "spec", spec)
    elif kind == "RayJob":
        if spec.get("rayClusterSpec"):
            yield from _ray_cluster_pods(where, "spec.rayClusterSpec", spec["rayClusterSpec"])
        if spec.get("submitterPodTemplate"):
            yield f"{where} spec.submitterPodTemplate", spec["submitterPodTemplate"].get("spec") or {}
    elif kind == "RayService" and spec.get("rayClusterConfig"):
        yield from _ray_cluster_pods(where, "spec.rayClusterConfig", spec["rayClusterConfig"])


def _ray_cluster_pods(
    where: str, prefix: str, cluster: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any]]]:
    head = cluster.get("headGroupSpec") or {}
    yield f"{where} {prefix}.headGroupSpec.template", (head.get("template") or {}).get("spec") or {}
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        label = group.get("groupName", i)
        yield (
            f"{where} {prefix}.workerGroupSpecs[{label}].template",
            (group.get("template") or {}).get("spec") or {},
        )


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(field) or []:
            yield f"{field}[{c.get('name', '?')}]", c


def restricted_pss_errors(objs: Iterable[Manifest], *, require_read_only_root: bool = True) -> list[str]:
    """Violations of the restricted Pod Security Standard in every pod of ``objs``."""
    errors: list[str] = []
    for obj in objs:
        for where, pod in pod_specs(obj):
            errors += _pod_pss_errors(where, pod, require_read_only_root)
    return errors


def _pod_pss_errors(where: str, pod: dict[str, Any], require_ro: bool) -> list[str]:
    errs: list[str] = []
    psc = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            errs.append(f"{where}: {host} must not be true")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        errs.append(f"{where}: securityContext.windowsOptions.hostProcess must not be true")
    for v in pod.get("volumes") or []:
        types = set(v) - _VOLUME_META_KEYS
        if not types <= _RESTRICTED_VOLUMES:
            errs.append(f"{where}: volume {v.get('name')!r} of type {sorted(types)} is not allowed")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in _SAFE_SYSCTLS:
            errs.append(f"{where}: sysctl {s.get('name')!r} is not allowed")
    if psc.get("runAsUser") == 0:
        errs.append(f"{where}: securityContext.runAsUser must not be 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        errs.append(f"{where}: securityContext.seccompProfile.type must be RuntimeDefault or Localhost")

    for cwhere, c in _containers(pod):
        loc = f"{where} {cwhere}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            errs.append(f"{loc}: privileged must not be true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            errs.append(f"{loc}: windowsOptions.hostProcess must not be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            errs.append(f"{loc}: securityContext.allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            errs.append(f"{loc}: runAsNonRoot must be true (container or pod securityContext)")
        if sc.get("runAsUser") == 0:
            errs.append(f"{loc}: securityContext.runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            errs.append(f"{loc}: seccompProfile.type must be RuntimeDefault or Localhost (container or pod)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            errs.append(f"{loc}: securityContext.capabilities.drop must include ALL")
        extra = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if extra:
            errs.append(f"{loc}: capabilities.add may only hold NET_BIND_SERVICE, not {sorted(extra)}")
        if (sc.get("procMount") or "Default") != "Default":
            errs.append(f"{loc}: securityContext.procMount must be Default")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                errs.append(f"{loc}: hostPort {p['hostPort']} is not allowed")
        if require_ro and sc.get("readOnlyRootFilesystem") is not True:
            errs.append(f"{loc}: securityContext.readOnlyRootFilesystem must be true")
    return errs


def resources_errors(objs: Iterable[Manifest], *, keys: tuple[str, ...] = ("cpu", "memory")) -> list[str]:
    """Containers (init containers included) lacking a request or a limit for any of ``keys``."""
    errs: list[str] = []
    for obj in objs:
        for where, pod in pod_specs(obj):
            for cwhere, c in _containers(pod):
                if cwhere.startswith("ephemeralContainers"):
                    continue  # ephemeral containers may not set resources
                res = c.get("resources") or {}
                for kind in ("requests", "limits"):
                    missing = [k for k in keys if k not in (res.get(kind) or {})]
                    if missing:
                        errs.append(f"{where} {cwhere}: resources.{kind} lacks {', '.join(missing)}")
    return errs


# ------------------------------------------------------------------ RBAC


def rbac_wildcard_errors(objs: Iterable[Manifest]) -> list[str]:
    """Any ``*`` in the verbs, resources, apiGroups, resourceNames or nonResourceURLs of a role."""
    errs: list[str] = []
    for obj in objs:
        if obj.get("kind") not in ("Role", "ClusterRole"):
            continue
        if obj.get("aggregationRule"):
            errs.append(f"{object_name(obj)}: aggregationRule grants whatever matching roles grant")
        for i, rule in enumerate(obj.get("rules") or []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                bad = [v for v in rule.get(field) or [] if "*" in v]
                if bad:
                    errs.append(f"{object_name(obj)}: rules[{i}].{field} has a wildcard: {bad}")
    return errs


def rbac_grants(objs: Iterable[Manifest]) -> dict[tuple[str, str], set[str]]:
    """Flatten roles into {(apiGroup, resource): verbs} (union over every Role/ClusterRole given)."""
    grants: dict[tuple[str, str], set[str]] = {}
    for obj in objs:
        if obj.get("kind") not in ("Role", "ClusterRole"):
            continue
        for rule in obj.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for res in rule.get("resources") or []:
                    grants.setdefault((group, res), set()).update(rule.get("verbs") or [])
    return grants
