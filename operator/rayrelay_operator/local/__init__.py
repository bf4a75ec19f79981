"""`rayrelay run -f FILE`: the operator's reconcile pass on this machine, no Kubernetes.

``rayrelay_operator.cli`` dispatches ``run`` here (``run_command(args)``). Every
resource of FILE goes through ``reconcile.run_pass``, the same pass the kopf
handlers run; only two things differ from the operator:

- resources live in memory (``objects.LocalObjects``) standing in for the
  Kubernetes API: metadata (namespace ``default``, generation 1, a uid) and the
  status each pass writes;
- the backend is always ``ray`` (``backends/ray.py``), on a Ray head started for
  the run (``localray.LocalRay``) or an existing one (``--ray-address``).

The package, by what each file does: ``inputs`` (read, validate and prepare
FILE), ``objects`` (the in-memory resources), ``display`` (progress bars or
lines), ``loop`` (``LocalRun``: passes until done, with the pass's backoff),
``report`` (summary, endpoints, smoke request) and ``command`` (``run_command``).

Reuse falls out of the design: a run id is the hash of the result-defining
spec, so a finished run of the same spec has a manifest in its folder and the
TrainingJob's pass marks it Succeeded without submitting anything.
"""

from rayrelay_operator.local.command import run_command

__all__ = ["run_command"]
