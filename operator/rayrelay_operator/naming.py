"""Deterministic names, labels and annotation keys of everything the operator creates.

Child names and submission ids are a pure function of (namespace, resource,
generation, attempt): a restarted operator recomputes the very same names, so
an idempotent create (HTTP 409 / an already-used Ray submission id) is what
stops it from launching a second job for the same generation. ``reconcile``
builds the ``TrainingWork`` / ``ServingWork`` with these names; ``builders``
and ``backends`` put the labels on the children.
"""

from __future__ import annotations

import hashlib
import re

from rayrelay_core.api import GROUP

# kopf's finalizer and progress-annotation prefix (handlers.py configures both).
FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_TRAININGJOB = f"{GROUP}/trainingjob"
LABEL_MODELDEPLOYMENT = f"{GROUP}/modeldeployment"
LABEL_GENERATION = f"{GROUP}/generation"
LABEL_ATTEMPT = f"{GROUP}/attempt"
# On every pod template of a RayJob / RayService, naming it: what its NetworkPolicy selects
# (KubeRay's RayCluster names are not known when we create the child, and a RayService
# may run two clusters during an upgrade; both carry this label).
LABEL_RAY_CLUSTER = f"{GROUP}/ray-cluster"
MANAGED_BY = "rayrelay"

# KubeRay derives names from a RayJob / RayService name (RayCluster
# "{name}-raycluster-xxxxx", pods "...-head-xxxxx", Services "{name}-head-svc",
# "{name}-serve-svc"); keeping ours at 40 leaves room for those suffixes
# within the 63 characters of a DNS label.
CHILD_NAME_MAX = 40
DNS_LABEL_MAX = 63

_INVALID = re.compile(r"[^a-z0-9-]+")


def dns_name(*parts: str | int, max_len: int = DNS_LABEL_MAX) -> str:
    """Join parts into a DNS-1123 label; too long -> truncated + an 8-hex hash suffix.

    The hash is of the full untruncated name, so two long names that share a
    prefix still differ.
    """
    full = "-".join(str(p) for p in parts if str(p) != "")
    name = _INVALID.sub("-", full.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name) or "x"
    if len(name) <= max_len:
        return name
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    head = name[: max_len - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def owner_hash(namespace: str, name: str) -> str:
    """8 hex characters of sha256("{namespace}/{name}").

    Joining with ``-`` alone is ambiguous (namespace ``team`` + ``a-job`` and ``team-a`` +
    ``job`` give the same text); ``/`` cannot occur in either part, so this cannot.
    """
    return hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:8]


def training_submission_id(namespace: str, name: str, generation: int, attempt: int) -> str:
    """The Ray submission id of one attempt of one generation (unique cluster-wide).

    ``rayrelay-{namespace}-{name}-{owner_hash}-g{generation}-a{attempt}``: the readable
    parts for people, the hash so that two resources never share an id (issue 12, finding 6).
    """
    return dns_name("rayrelay", namespace, name, owner_hash(namespace, name), f"g{generation}", f"a{attempt}")


def training_child_name(name: str, generation: int, attempt: int) -> str:
    """The RayJob name of one attempt of one generation (unique in the namespace)."""
    return dns_name(name, f"g{generation}", f"a{attempt}", max_len=CHILD_NAME_MAX)


def serving_child_name(name: str) -> str:
    """The RayService name of a ModelDeployment (one per deployment; Serve rolls models in place)."""
    return dns_name(name, max_len=CHILD_NAME_MAX)


def serve_url(child_name: str, namespace: str, port: int = 8000) -> str:
    """In-cluster URL of KubeRay's Serve Service of a RayService."""
    return f"http://{child_name}-serve-svc.{namespace}.svc:{port}"


def common_labels() -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PART_OF: MANAGED_BY}


def trainingjob_labels(
    name: str, generation: int | None = None, attempt: int | None = None
) -> dict[str, str]:
    labels = {**common_labels(), LABEL_COMPONENT: "training", LABEL_TRAININGJOB: dns_name(name)}
    if generation is not None:
        labels[LABEL_GENERATION] = str(generation)
    if attempt is not None:
        labels[LABEL_ATTEMPT] = str(attempt)
    return labels


def modeldeployment_labels(name: str) -> dict[str, str]:
    return {**common_labels(), LABEL_COMPONENT: "serving", LABEL_MODELDEPLOYMENT: dns_name(name)}


def owner_reference(api_version: str, kind: str, name: str, uid: str | None) -> dict[str, object]:
    """ownerReference making a child garbage-collected with its resource."""
    ref: dict[str, object] = {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    if uid:
        ref["uid"] = uid
    return ref
