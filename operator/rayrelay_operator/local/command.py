"""``run_command(args)``: `rayrelay run` from the command line to the exit code.

Reads FILE (``inputs``), starts or reaches Ray, runs the loop (``loop``), then
reports (``report``): 0 when every resource finished well and every endpoint
answered its smoke request, 1 otherwise (with the reason printed). Without
``--once`` it keeps passing over the resources while serving.

Ctrl-C (SIGINT) and SIGTERM (``kill``, a container runtime, systemd) stop it the
same way, at any point: the run's Serve applications come down (on a cluster
given with ``--ray-address``) or the Ray head started for the run is stopped
(with its jobs and replicas), then it exits 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM), as shells report a process killed by that signal. A
second signal while it shuts down is noted and otherwise ignored, so the head
is never left running half stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from rayrelay_core.api import Backend
from rayrelay_operator.backends.base import BackendUnavailable
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.local.display import Display
from rayrelay_operator.local.inputs import LocalSecrets, as_uri, prepare, read_resources
from rayrelay_operator.local.loop import RUN_TIMEOUT_S, LocalRun, RunError
from rayrelay_operator.local.objects import NAMESPACE, TJ, LocalObjects
from rayrelay_operator.local.report import failures, print_endpoints, summary
from rayrelay_operator.localray import LocalRay, LocalRayError, bearer, serve_port
from rayrelay_operator.settings import Settings

DEFAULT_ARTIFACTS = "./.rayrelay/artifacts"
SERVE_REFRESH_SECONDS = 5.0


def _dashboard(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


def ray_token(env: Mapping[str, str]) -> str | None:
    """The token for ``--ray-address``'s cluster: ``RAYRELAY_RAY_AUTH_TOKEN``, else Ray's own
    lookup (``RAY_AUTH_TOKEN``, the file at ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    for key in ("RAYRELAY_RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN"):
        if env.get(key, "").strip():
            return env[key].strip()
    path = (
        Path(env["RAY_AUTH_TOKEN_PATH"])
        if env.get("RAY_AUTH_TOKEN_PATH")
        else Path.home() / ".ray" / "auth_token"
    )
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _check_dashboard(url: str, token: str | None) -> None:
    try:
        resp = requests.get(f"{url}/api/version", headers=bearer(token), timeout=10)
        if resp.status_code in (401, 403):
            given = "a token it refused" if token else "no token"
            raise RunError(
                f"the Ray dashboard at {url} wants token authentication and got {given} (HTTP "
                f"{resp.status_code}); set RAYRELAY_RAY_AUTH_TOKEN (or Ray's RAY_AUTH_TOKEN) to the "
                "cluster's token"
            )
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise RunError(
            f"cannot reach the Ray dashboard at {url} ({exc.__class__.__name__}); --ray-address takes "
            "the dashboard URL of a running cluster, e.g. http://127.0.0.1:8265"
        ) from None


def _artifacts(args: argparse.Namespace, base: Path) -> tuple[str | None, str]:
    """(override for every TrainingJob or None, the default store)."""
    if args.artifacts:
        uri = as_uri(args.artifacts, base)
        return uri, uri
    return None, as_uri(DEFAULT_ARTIFACTS, base)


def _ray(args: argparse.Namespace, console: Console) -> tuple[str, str, LocalRay | None, str | None]:
    """(dashboard URL, the job's python, the head started for this run or None, its token)."""
    if args.ray_address:
        dashboard = _dashboard(args.ray_address)
        token = ray_token(os.environ)
        _check_dashboard(dashboard, token)
        console.print(f"Ray: using the cluster at {dashboard}", markup=False)
        return dashboard, "python", None, token
    console.print("Ray: starting a local head for this run ...", markup=False)
    local_ray = LocalRay()
    try:
        dashboard = local_ray.start()
    except LocalRayError as exc:
        local_ray.stop()
        raise RunError(str(exc)) from None
    auth = "token authentication on" if local_ray.auth_token else "no authentication (RAYRELAY_RAY_AUTH=0)"
    console.print(f"Ray: dashboard {dashboard} ({auth})", markup=False)
    return dashboard, sys.executable, local_ray, local_ray.auth_token


def _backend_and_settings(
    dashboard: str,
    python: str,
    default_store: str,
    secrets: LocalSecrets | None = None,
    auth_token: str | None = None,
) -> tuple[RayBackend, Settings]:
    # Serve's HTTP port, when this run is the first to start Serve on the cluster:
    # RAYRELAY_SERVE_PORT, else 8000 unless taken, else a free one.
    port = int(os.environ.get("RAYRELAY_SERVE_PORT") or serve_port())
    backend = RayBackend(
        dashboard,
        serve_host="127.0.0.1",
        serve_port=port,
        url_host="127.0.0.1",
        python=python,
        encryption_key=(secrets or LocalSecrets()).encryption_key,
        auth_token=auth_token,
    )
    settings = Settings(
        default_backend=Backend.RAY,
        ray_address=dashboard,
        artifacts_uri=default_store,
        s3_endpoint_url=os.environ.get("RAYRELAY_S3_ENDPOINT_URL") or None,
        # The progress bars follow every pass: one local run, no fleet to spare the store for.
        store_poll_seconds=0.0,
    )
    return backend, settings


def _finish(run: LocalRun, console: Console, once: bool) -> int:
    """Report; then exit, or keep serving (passes keep statuses fresh) until Ctrl-C."""
    summary(run, console)
    failed = failures(run)
    ready = print_endpoints(run, console, failed)
    if failed:
        for line in failed:
            console.print(f"error: {line}", markup=False, soft_wrap=True)
        return 1
    if once or not ready:
        console.print("done.", markup=False)
        return 0
    console.print("\nserving; press Ctrl-C to stop", markup=False)
    while True:
        for t in run.tracked:
            run.step(t)
        time.sleep(SERVE_REFRESH_SECONDS)


def run_command(args: argparse.Namespace) -> int:
    """`rayrelay run`: exit 0 on success, 1 on any failure (with the reason printed)."""
    console = Console(highlight=False, soft_wrap=True)
    secrets = LocalSecrets()
    docs = read_resources(args.file, console, secrets)
    if docs is None:
        return 1
    base = Path.cwd()
    override, default_store = _artifacts(args, base)
    objects = LocalObjects(prepare(docs, override, base))
    for doc in docs:
        if (doc.get("spec") or {}).get("backend") == "kuberay":
            console.print(
                f"{doc['kind']}/{doc['metadata']['name']}: runs on the local ray backend "
                "(spec.backend kuberay is for clusters)",
                markup=False,
            )
    local_ray: LocalRay | None = None
    run: LocalRun | None = None
    stopper = _Stopper(console)
    previous = stopper.install()
    try:
        dashboard, python, local_ray, token = _ray(args, console)
        backend, settings = _backend_and_settings(dashboard, python, default_store, secrets, token)
        console.print(f"artifacts: {override or default_store}", markup=False)
        if args.ray_address:
            _forget_finished_jobs(backend, objects)
        display = Display(console)
        run = LocalRun(objects, backend, settings, display)
        run.ctx.secret_data = secrets.data  # spec.auth.apiKeysSecret: a v1 Secret of FILE
        with display.running():
            run.drive(time.monotonic() + RUN_TIMEOUT_S)
        return _finish(run, console, args.once)
    except RunError as exc:
        console.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 1
    except BackendUnavailable as exc:
        console.print(f"error: the Ray cluster is not reachable: {exc}", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        stopper.tearing_down = True
        name = signal.Signals(stopper.signum).name
        console.print(f"\ninterrupted ({name}); shutting down", markup=False)
        return 128 + stopper.signum
    finally:
        stopper.tearing_down = True  # from here on a signal is noted, not raised
        try:
            if run is not None:
                run.teardown(remove_serving=local_ray is None)
            if local_ray is not None:
                console.print("Ray: stopping the local head", markup=False)
                local_ray.stop()
        finally:
            stopper.restore(previous)


class _Stopper:
    """SIGINT and SIGTERM as one: the first raises KeyboardInterrupt, later ones are noted.

    Python turns only SIGINT into KeyboardInterrupt by default, and a process
    started in the background by a non-interactive shell ignores SIGINT
    altogether, so both are handled here. Once tearing down, a signal must not
    interrupt the teardown that stops the Ray head; before that, every signal
    raises (should some code swallow one KeyboardInterrupt, the next still stops).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, console: Console) -> None:
        self.console = console
        self.signum = int(signal.SIGINT)  # Ctrl-C, unless a handler saw another
        self.tearing_down = False

    def install(self) -> dict[int, Any]:
        return {int(s): signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.tearing_down:
            self.console.print(f"{signal.Signals(signum).name}: still shutting down ...", markup=False)
            return
        self.signum = signum
        raise KeyboardInterrupt


def _forget_finished_jobs(backend: RayBackend, objects: LocalObjects) -> None:
    """Delete finished Ray jobs of these TrainingJobs from an earlier run on this cluster.

    A local run always counts generation 1, so its submission ids repeat from run
    to run; Ray would refuse the new submission and the loop would observe the old
    job instead. Running jobs are left alone (another run may own them).
    """
    client = backend._jobs()
    for obj in objects.of(TJ):
        name = obj["metadata"]["name"]
        for job in client.list_jobs():
            meta = job.metadata or {}
            if meta.get("rayrelay.dev/name") != name or meta.get("rayrelay.dev/namespace") != NAMESPACE:
                continue
            if str(getattr(job.status, "value", job.status)) in ("SUCCEEDED", "FAILED", "STOPPED"):
                # Gone already, or not finished after all: the backend copes with both.
                with contextlib.suppress(RuntimeError):
                    client.delete_job(job.submission_id)
