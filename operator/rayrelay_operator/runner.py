"""``rayrelay operator``: runs the kopf operator with rayrelay's handlers.

``cli`` parses the arguments and calls ``operator_command(args)`` lazily (kopf
and the Kubernetes client are heavy). This module turns them into kopf's run
options -- namespaces or cluster-wide, standalone or peering (leader election
between replicas), a liveness endpoint -- configures logging (text or JSON,
``RAYRELAY_LOG_FORMAT``) and runs ``kopf.run`` with the registry from
``handlers.build_registry``, which logs in with KUBECONFIG or the in-cluster
service account.

Peering (the chart's ``replicaCount > 1``) is kopf's: every replica writes a
keep-alive with its priority into one peering object; a replica that sees a
live peer of higher priority pauses, and one that sees a peer of the *same*
priority pauses too ("Pausing all operators, including self"). So each
replica gets a distinct priority (``peer_priority``), and a short record
lifetime (``Settings.peering_lifetime_seconds``, ``--peering-lifetime``) makes a
standby take over soon after the leader dies without saying goodbye.

Shutdown: on SIGTERM (a pod being deleted) or SIGINT kopf stops its watches and
waits for the handlers in flight; a pass is short and idempotent, so an
interrupted one is simply recomputed by the next operator. kopf gives up
waiting after ``SHUTDOWN_TIMEOUT_S`` -- its own default is 10 minutes, far past
the pod's ``terminationGracePeriodSeconds`` (30 s, the chart's and Kubernetes'
default), after which the kubelet would SIGKILL it mid-write anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

DEFAULT_PEERING = "rayrelay"
# Derived priorities lie in [1, PRIORITY_SPAN); an explicit --priority above it
# (e.g. a developer's operator on a workstation) outranks every replica.
PRIORITY_SPAN = 2**30
# Seconds kopf waits for handlers in flight after SIGTERM before it exits regardless:
# inside the pod's 30 s grace period, with room for the process to end.
SHUTDOWN_TIMEOUT_S = 20.0


def peer_priority(pod_name: str | None) -> int:
    """A replica's kopf peering priority: distinct per pod, stable for the pod's life.

    Derived from the pod's name (POD_NAME, set by the chart from the downward
    API) rather than drawn at random, so that a container restarted in the same
    pod keeps its rank and does not snatch leadership back and forth, and so
    that the ranking can be read off the peering object. Two pods of one
    Deployment collide with probability ~1e-9 (a collision would pause both,
    never run both). Without a pod name (run by hand) it is random.
    """
    if pod_name:
        digest = hashlib.sha256(pod_name.encode()).digest()
        return 1 + int.from_bytes(digest[:8], "big") % (PRIORITY_SPAN - 1)
    return random.randrange(1, PRIORITY_SPAN)


def run_options(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """kopf.run keyword arguments from the CLI arguments (pure apart from the environment).

    ``peering_name`` is passed only when peering: kopf makes peering mandatory
    whenever it gets a name, and a standalone operator with mandatory peering
    pauses every watch-stream ("peering CRD is missing") and does nothing.
    """
    env = os.environ if env is None else env
    namespaces = list(getattr(args, "namespace", None) or [])
    clusterwide = bool(getattr(args, "all_namespaces", False))
    standalone = bool(getattr(args, "standalone", False))
    peering = getattr(args, "peering", None)
    if clusterwide and namespaces:
        raise SystemExit("rayrelay operator: use either --namespace or --all-namespaces, not both")
    if standalone and peering:
        raise SystemExit("rayrelay operator: use either --standalone or --peering, not both")
    if not clusterwide and not namespaces:
        # In a pod, default to the operator's own namespace (the chart sets POD_NAMESPACE).
        own = env.get("POD_NAMESPACE")
        if not own:
            raise SystemExit("rayrelay operator: give --namespace NS (repeatable) or --all-namespaces")
        namespaces = [own]
    options: dict[str, Any] = {
        "standalone": standalone,
        "clusterwide": clusterwide,
        "namespaces": namespaces,
        "liveness_endpoint": getattr(args, "liveness", None),
    }
    if not standalone:
        pod = env.get("POD_NAME") or None
        explicit = getattr(args, "priority", None)
        options["peering_name"] = peering or DEFAULT_PEERING
        options["priority"] = explicit if explicit is not None else peer_priority(pod)
        if pod:
            # The pod's name as the peer's identity: the peering object then reads like `kubectl get pods`.
            options["identity"] = pod
    return options


def peering_lifetime(args: argparse.Namespace, default: int) -> int:
    """Seconds a peer's keep-alive stays valid (--peering-lifetime, else the setting)."""
    value = getattr(args, "peering_lifetime", None)
    lifetime = int(default if value is None else value)
    if lifetime < 2:
        raise SystemExit("rayrelay operator: --peering-lifetime must be at least 2 seconds")
    return lifetime


def operator_command(args: argparse.Namespace) -> int:
    from rayrelay_operator import diagnostics

    diagnostics.start_from_env()  # opt-in (RAYRELAY_MEMORY_PROFILE): before kopf's imports
    import kopf

    from rayrelay_operator.handlers import build_registry
    from rayrelay_operator.settings import Settings

    settings = Settings.from_env()
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=bool(getattr(args, "verbose", False)), log_format=log_format)
    options = run_options(args)
    kopf_settings = kopf.OperatorSettings()
    # kopf renews a keep-alive 5-10 s before it expires (at least every second), so a
    # short lifetime costs one small PATCH every few seconds per replica, and a
    # standby resumes at most one lifetime after the leader's last keep-alive.
    kopf_settings.peering.lifetime = peering_lifetime(args, settings.peering_lifetime_seconds)
    kopf_settings.peering.stealth = True  # keep-alives every few seconds would flood debug logs
    kopf_settings.process.ultimate_exiting_timeout = SHUTDOWN_TIMEOUT_S
    if not options["clusterwide"]:
        # The namespaces are named exactly, so there is nothing to discover: without this,
        # kopf lists namespaces, which the chart's namespaced RBAC does not grant, and
        # retries the 403 for about a minute before it falls back to the names it was given.
        # The cost: a CRD changed after start is noticed at the next restart.
        kopf_settings.scanning.disabled = True
    logging.getLogger(__name__).info(
        "starting the rayrelay operator: %s, peering lifetime %d s", options, kopf_settings.peering.lifetime
    )
    kopf.run(
        registry=build_registry(settings),
        settings=kopf_settings,
        memo=kopf.Memo(settings=settings, ctx=None),
        **options,
    )
    return 0
