"""What the `rayrelay run` tests write and how they run it, as a user does.

``training_job_yaml`` / ``model_deployment_yaml`` give the manifests of a tiny
quickstart-like run (the training fixtures' tiny BERT and data subset); each
test adds its own lines (encryption, ORT export, a long training). ``rayrelay_run``
runs the shipped command as a subprocess against a test Ray cluster's dashboard.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent

TINY_HYPERPARAMETERS = "{epochs: 1, batchSize: 16, learningRate: 0.003, maxSeqLength: 32}"


def training_job_yaml(
    name: str,
    model: str,
    train: str,
    validation: str,
    *,
    hyperparameters: str = TINY_HYPERPARAMETERS,
    workers: int = 2,
    extra: str = "",
) -> str:
    """A TrainingJob; ``extra`` is more spec lines, indented by two spaces."""
    return f"""\
apiVersion: rayrelay.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
spec:
  model:
    source: {model}
  data:
    train: {train}
    validation: {validation}
  hyperparameters: {hyperparameters}
  resources: {{numWorkers: {workers}, cpusPerWorker: 1}}
{extra}"""


def model_deployment_yaml(name: str, *, extra: str = "") -> str:
    """One replica of half a CPU serving TrainingJob ``name``'s latest run."""
    return f"""\
apiVersion: rayrelay.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}
spec:
  model:
    trainingJobRef: {{name: {name}}}
  autoscaling: {{minReplicas: 1, maxReplicas: 1}}
  resources: {{cpus: 0.5}}
{extra}"""


def rayrelay_run(
    path: Path, artifacts: str | Path, cluster: Any, timeout: float = 600, *, drop_env: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """`rayrelay run -f path --once` on ``cluster`` (tests/conftest.py's RayCluster)."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    # Serve may not run on the shared cluster yet: start it where the other tests expect it.
    env["RAYRELAY_SERVE_PORT"] = str(cluster.serve_port)
    return subprocess.run(
        [str(BIN / "rayrelay"), "run", "-f", str(path), "--once"]
        + ["--artifacts", str(artifacts), "--ray-address", cluster.dashboard_url],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=path.parent,
    )
