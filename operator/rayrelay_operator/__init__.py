"""rayrelay operator: kopf handlers, reconcilers, builders, backends and the CLI.

The handlers stay thin and call one reconcile function per resource; builders
are pure (typed spec in, child manifests out); side effects live in the
backends (kuberay | ray). ``rayrelay_operator.cli`` is the ``rayrelay`` command.
"""
