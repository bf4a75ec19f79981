"""Reconcilers: the explicit state machines of TrainingJob and ModelDeployment.

Every driver -- the kopf handlers, ``rayrelay run``, the benchmarks, the
tests -- runs a resource through ``run_pass(kind, obj, ctx)`` and writes the
``PassResult``'s patch. The package, by what each file does:

- ``driver.py``: ``run_pass`` / ``delete_pass``, and how errors reach the status;
- ``training.py``, ``deployment.py``: one state machine each (observe -> compute
  -> actions; ``compute_*`` is a dispatch over the phase);
- ``status.py``: condition types and the pure status helpers both share;
- ``errors.py``: permanent vs temporary (``classify``) and the one backoff;
- ``context.py``: ``ReconcileContext`` (what a driver provides), the actions,
  and ``apply_actions``.
"""

from rayrelay_operator.reconcile.context import (
    Action,
    DeleteChildren,
    Deploy,
    Event,
    Plan,
    ReconcileContext,
    Stop,
    Submit,
    Undeploy,
)
from rayrelay_operator.reconcile.driver import (
    MODELDEPLOYMENT,
    TRAININGJOB,
    PassResult,
    delete_pass,
    run_pass,
)
from rayrelay_operator.reconcile.errors import (
    ErrorClass,
    StoreUnavailable,
    backoff_delay,
    classify,
)
from rayrelay_operator.reconcile.status import permanent_failure, status_changed, status_patch

__all__ = [
    "MODELDEPLOYMENT",
    "TRAININGJOB",
    "Action",
    "DeleteChildren",
    "Deploy",
    "ErrorClass",
    "Event",
    "PassResult",
    "Plan",
    "ReconcileContext",
    "Stop",
    "StoreUnavailable",
    "Submit",
    "Undeploy",
    "backoff_delay",
    "classify",
    "delete_pass",
    "permanent_failure",
    "run_pass",
    "status_changed",
    "status_patch",
]
