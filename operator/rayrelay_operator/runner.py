"""``rayrelay operator``: runs the kopf operator with rayrelay's handlers.

``cli`` parses the arguments and calls ``operator_command(args)`` lazily (kopf
and the Kubernetes client are heavy). This module turns them into kopf's run
options -- namespaces or cluster-wide, standalone or peering (leader election
between replicas), a liveness endpoint -- configures logging (text or JSON,
``RAYRELAY_LOG_FORMAT``) and runs ``kopf.run`` with the registry from
``handlers.build_registry``. kopf itself logs in with KUBECONFIG or the
in-cluster service account.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

DEFAULT_PEERING = "rayrelay"


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """kopf.run keyword arguments from the CLI arguments (pure apart from POD_NAMESPACE)."""
    namespaces = list(getattr(args, "namespace", None) or [])
    clusterwide = bool(getattr(args, "all_namespaces", False))
    if clusterwide and namespaces:
        raise SystemExit("rayrelay operator: use either --namespace or --all-namespaces, not both")
    if not clusterwide and not namespaces:
        # In a pod, default to the operator's own namespace (the chart sets POD_NAMESPACE).
        own = os.environ.get("POD_NAMESPACE")
        if not own:
            raise SystemExit("rayrelay operator: give --namespace NS (repeatable) or --all-namespaces")
        namespaces = [own]
    return {
        "standalone": bool(getattr(args, "standalone", False)),
        "clusterwide": clusterwide,
        "namespaces": namespaces,
        "liveness_endpoint": getattr(args, "liveness", None),
        "peering_name": getattr(args, "peering", None) or DEFAULT_PEERING,
    }


def operator_command(args: argparse.Namespace) -> int:
    import kopf

    from rayrelay_operator.handlers import build_registry
    from rayrelay_operator.settings import Settings

    settings = Settings.from_env()
    log_format = kopf.LogFormat.JSON if settings.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=bool(getattr(args, "verbose", False)), log_format=log_format)
    options = run_options(args)
    logging.getLogger(__name__).info("starting the rayrelay operator: %s", options)
    kopf.run(registry=build_registry(settings), memo=kopf.Memo(settings=settings, ctx=None), **options)
    return 0
