"""`rayrelay run -f FILE`: the operator's reconcile loop on this machine, no Kubernetes.

``rayrelay_operator.cli`` dispatches ``run`` here (``run_command(args)``). The
same reconcilers the kopf handlers use (``rayrelay_operator.reconcile``) drive
every resource of FILE; only two things differ from the operator:

- resources live in an in-memory store (``LocalObjects``) standing in for the
  Kubernetes API: metadata (namespace ``default``, generation 1, a uid) and the
  status each reconcile returns;
- the backend is always ``ray`` (``backends/ray.py``), on a Ray head started for
  the run (``localray.LocalRay``) or an existing one (``--ray-address``).

Reuse falls out of the design: a run id is the hash of the result-defining
spec, so a finished run of the same spec has a manifest in its folder and the
TrainingJob reconcile marks it Succeeded without submitting anything.

Progress comes from the statuses (which the reconcilers fill from the run's
``progress.json``): rich progress bars on a terminal, one line per change
otherwise. At the end: a summary per TrainingJob (variant accuracies and sizes,
the manifest), the endpoint of each ModelDeployment with example ``curl``s for
both protocols, and a v2 smoke request. ``--once`` exits there (0 only if every
smoke request answered); otherwise it keeps serving until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from rayrelay_core.api import Backend as BackendName
from rayrelay_core.api import (
    DeploymentPhase,
    ModelDeploymentStatus,
    TrainingJobStatus,
    TrainingPhase,
)
from rayrelay_core.runs import ManifestError, read_manifest
from rayrelay_core.store import StoreError, is_s3, normalize_uri, open_store
from rayrelay_core.validation import ManifestError as YamlError
from rayrelay_core.validation import load_documents, validate_document
from rayrelay_operator import reconcile
from rayrelay_operator.backends.base import BackendUnavailable
from rayrelay_operator.backends.ray import RayBackend
from rayrelay_operator.localray import LocalRay, LocalRayError, serve_port
from rayrelay_operator.settings import Settings

NAMESPACE = "default"
DEFAULT_ARTIFACTS = "./.rayrelay/artifacts"
POLL_SECONDS = 1.0
# Whole run (training included) and the deployment after its model exists; both
# can be raised through the environment for big models on slow machines.
RUN_TIMEOUT_S = float(os.environ.get("RAYRELAY_RUN_TIMEOUT_SECONDS", 4 * 3600))
DEPLOY_TIMEOUT_S = float(os.environ.get("RAYRELAY_RUN_DEPLOY_TIMEOUT_SECONDS", 600))
SMOKE_TIMEOUT_S = 60.0
SMOKE_TEXT = "I was charged twice for my subscription this month"

TJ = "TrainingJob"
MD = "ModelDeployment"


class RunError(RuntimeError):
    """A user-facing failure of `rayrelay run`; the message is printed as is."""


# ----------------------------------------------------------------- input handling


def read_resources(path: str, console: Console) -> list[dict[str, Any]] | None:
    """The documents of FILE, validated; None (after printing why) when invalid."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        console.print(f"{path}: cannot read: {exc.strerror or exc}", markup=False)
        return None
    try:
        docs = load_documents(text)
    except YamlError as exc:
        console.print(f"{path}: {exc}", markup=False)
        return None
    if not docs:
        console.print(f"{path}: no resources found", markup=False)
        return None
    problems: list[str] = []
    for index, doc in enumerate(docs, start=1):
        problems += [str(issue) for issue in validate_document(doc, index=index)]
    if not problems:
        problems = cross_checks(docs)
    for line in problems:
        console.print(line, markup=False, soft_wrap=True)
    return None if problems else docs


def cross_checks(docs: list[dict[str, Any]]) -> list[str]:
    """Problems across documents: duplicates, references to TrainingJobs not in FILE."""
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:
            out.append(f"{key[0]}/{key[1]}: metadata.name: defined twice in this file")
        seen.add(key)
    jobs = {name for kind, name in seen if kind == TJ}
    for doc in docs:
        ref = ((doc.get("spec") or {}).get("model") or {}).get("trainingJobRef")
        if doc["kind"] == MD and ref and ref.get("name") not in jobs:
            out.append(
                f"{MD}/{doc['metadata']['name']}: spec.model.trainingJobRef.name: "
                f"TrainingJob {ref.get('name')!r} is not defined in this file"
            )
    return out


def as_uri(value: str, base: Path) -> str:
    """An s3:// or file:// URI as is; a path made absolute, as a file:// URI."""
    if is_s3(value) or value.startswith("file://"):
        return value
    return "file://" + normalize_uri(value, base)


def local_source(source: str, base: Path) -> str:
    """model.source: a relative path that exists becomes absolute; hub ids stay as they are."""
    if "://" in source or Path(source).is_absolute():
        return source
    candidate = base / source
    if source.startswith(".") or candidate.exists():
        return str(candidate.resolve())
    return source


def prepare(docs: list[dict[str, Any]], artifacts: str | None, base: Path) -> list[dict[str, Any]]:
    """Resources as the local loop runs them: paths absolute, backend ray, metadata filled."""
    out = []
    for doc in docs:
        obj = json.loads(json.dumps(doc))  # a private copy
        meta = obj["metadata"]
        meta["namespace"] = NAMESPACE
        meta["generation"] = 1
        meta["uid"] = str(uuid.uuid4())
        obj.pop("status", None)
        spec = obj["spec"]
        spec["backend"] = "ray"
        if obj["kind"] == TJ:
            data = spec["data"]
            data["train"] = as_uri(data["train"], base)
            data["validation"] = as_uri(data["validation"], base)
            spec["model"]["source"] = local_source(spec["model"]["source"], base)
            arts = spec.setdefault("artifacts", {})
            if artifacts:
                arts["uri"] = artifacts
            elif arts.get("uri"):
                arts["uri"] = as_uri(arts["uri"], base)
        elif spec["model"].get("manifestUri"):
            spec["model"]["manifestUri"] = as_uri(spec["model"]["manifestUri"], base)
        out.append(obj)
    return out


# ------------------------------------------------------------------ object store


@dataclass
class LocalObjects:
    """The resources of one run, standing in for the Kubernetes API."""

    objects: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.objects:
            meta = obj["metadata"]
            if obj["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
                return obj
        return None

    def get_trainingjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(TJ, namespace, name)


@dataclass
class Tracked:
    """What the loop knows about one resource beyond its status."""

    obj: dict[str, Any]
    error: str | None = None  # a permanent failure outside the status (e.g. BackendRejected)
    last_temporary: str | None = None
    temporary_failures: int = 0
    submitted: bool = False  # a training job was submitted during this run
    ready_since: float | None = None
    waiting_since: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return str(self.obj["kind"])

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})


def training_done(t: Tracked) -> bool:
    return t.error is not None or t.status.get("phase") in (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)


def deployment_done(t: Tracked, objects: LocalObjects) -> bool:
    if t.error is not None:
        return True
    phase = t.status.get("phase")
    if phase in (DeploymentPhase.READY, DeploymentPhase.FAILED):
        return True
    return referenced_training_failed(t, objects) is not None


def referenced_training_failed(t: Tracked, objects: LocalObjects) -> str | None:
    """Why a ModelDeployment will never get its model, when its TrainingJob failed."""
    ref = ((t.obj["spec"].get("model") or {}).get("trainingJobRef") or {}).get("name")
    tj = objects.get_trainingjob(NAMESPACE, ref) if ref else None
    if tj is None:
        return None
    status = tj.get("status") or {}
    if status.get("phase") == TrainingPhase.FAILED:
        return f"its TrainingJob {ref} failed"
    return None


# ------------------------------------------------------------------------ display


class Display:
    """Progress of every resource: live bars on a terminal, one line per change otherwise."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self._lines: dict[str, str] = {}
        self._tasks: dict[str, TaskID] = {}
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )

    @contextmanager
    def running(self) -> Iterator[Display]:
        if self.live:
            with self.progress:
                yield self
        else:
            yield self

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True, highlight=False)

    def update(self, t: Tracked) -> None:
        description, completed, total, detail = describe(t)
        if self.live:
            task = self._tasks.get(t.label)
            if task is None:
                task = self._tasks[t.label] = self.progress.add_task(description, total=total, detail="")
            self.progress.update(
                task, description=description, completed=completed, total=total, detail=detail
            )
            return
        line = f"{description} {detail}".rstrip()
        # Without a terminal, print a line on each change of phase or each 10% of progress.
        key = f"{description}|{int(100 * completed / total) // 10 if total else ''}"
        if t.kind == MD:
            key += f"|{detail}"  # replica counts and Serve's messages are the news here
        if self._lines.get(t.label) != key:
            self._lines[t.label] = key
            self.note(line)


def describe(t: Tracked) -> tuple[str, float, float | None, str]:
    """(description, completed, total or None, detail) of one resource's progress bar."""
    status = t.status
    phase = str(status.get("phase") or "Pending")
    if t.error:
        return f"{t.label}: Failed", 0, None, t.error
    if t.kind == TJ:
        progress = status.get("progress") or {}
        step, total = progress.get("step"), progress.get("totalSteps")
        details = []
        if step is not None and total:
            details.append(f"step {step}/{total}")
        if progress.get("loss") is not None:
            details.append(f"loss {progress['loss']:.4f}")
        if phase == TrainingPhase.TRAINING and progress.get("etaSeconds") is not None:
            details.append(f"ETA {_duration(progress['etaSeconds'])}")
        if phase in (TrainingPhase.EXPORTING, TrainingPhase.OPTIMIZING):
            details = [{"Exporting": "ONNX export", "Optimizing": "fusion, int8, parity, publish"}[phase]]
        if phase in (TrainingPhase.PENDING, TrainingPhase.FAILED):
            details = [_condition_message(status, "Running" if phase == "Pending" else "Failed")]
        if phase == TrainingPhase.SUCCEEDED:
            return f"{t.label}: Succeeded", 1, 1, ""
        if phase == TrainingPhase.TRAINING and step is not None and total:
            return f"{t.label}: {phase}", float(step), float(total), " ".join(details)
        return f"{t.label}: {phase}", 0, None, " ".join(d for d in details if d)
    replicas = f"replicas {status.get('readyReplicas') or 0}/{status.get('replicas') or 0}"
    if phase == DeploymentPhase.READY:
        return f"{t.label}: Ready", 1, 1, str(status.get("url") or "")
    message = _condition_message(status, "Ready")
    return f"{t.label}: {phase}", 0, None, f"{replicas} {message}".strip()


def _condition_message(status: dict[str, Any], type_: str) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("message") or "")[:160]
    return ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# --------------------------------------------------------------------- the loop


class LocalRun:
    """One `rayrelay run`: reconcile until done, report, smoke-test, serve."""

    def __init__(
        self,
        objects: LocalObjects,
        backend: RayBackend,
        settings: Settings,
        display: Display,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.objects = objects
        self.backend = backend
        self.settings = settings
        self.display = display
        self.clock = clock
        self.tracked = [Tracked(o) for o in objects.of(TJ)] + [Tracked(o) for o in objects.of(MD)]
        self._current: Tracked | None = None
        self.ctx = reconcile.ReconcileContext(
            settings=settings,
            backends={"ray": backend},
            get_trainingjob=objects.get_trainingjob,
            emit=self._event,
        )

    def _event(self, event: reconcile.Event) -> None:
        t = self._current
        if t is not None and event.reason == "Submitted":
            t.submitted = True
        if event.type == "Warning" and t is not None:
            self.display.note(f"{t.label}: warning: {event.reason}: {event.message}")

    def step(self, t: Tracked) -> None:
        """One reconcile pass of one resource; errors are kept on ``t``, never raised."""
        if t.error is not None:
            return
        self._current = t
        try:
            if t.kind == TJ:
                before = t.status.get("rayJob")
                tj_status = reconcile.reconcile_trainingjob(t.obj, self.ctx)
                status: TrainingJobStatus | ModelDeploymentStatus = tj_status
                if tj_status.ray_job is not None and tj_status.ray_job.job_id and not before:
                    t.submitted = True
            else:
                status = reconcile.reconcile_modeldeployment(t.obj, self.ctx)
        except Exception as exc:  # classified: permanent ends this resource, temporary retries
            verdict = reconcile.classify(exc, settings=self.settings)
            if verdict.permanent:
                t.error = f"{verdict.reason}: {exc}"
            else:
                # A cluster still starting fails a few calls; say so only when it persists.
                t.temporary_failures += 1
                if t.temporary_failures == 5 or (t.temporary_failures > 5 and str(exc) != t.last_temporary):
                    self.display.note(f"{t.label}: retrying: {exc}")
                t.last_temporary = str(exc)
            return
        finally:
            self._current = None
        t.last_temporary, t.temporary_failures = None, 0
        if reconcile.status_changed(t.obj.get("status"), status):
            t.obj["status"] = status.wire()
        problem = reconcile.permanent_failure(status)
        if problem is not None:
            t.error = problem

    def drive(self, deadline: float) -> None:
        """Reconcile every resource until each is finished (or the deadline passes)."""
        announced: set[str] = set()
        while True:
            for t in self.tracked:
                done = training_done(t) if t.kind == TJ else deployment_done(t, self.objects)
                if not done:
                    self.step(t)
                self.display.update(t)
                if t.kind == TJ and t.label not in announced and training_done(t):
                    announced.add(t.label)
                    self._announce_training(t)
                if t.kind == MD and t.status.get("phase") == DeploymentPhase.READY and t.ready_since is None:
                    t.ready_since = self.clock()
            if all(
                training_done(t) if t.kind == TJ else deployment_done(t, self.objects) for t in self.tracked
            ):
                return
            now = self.clock()
            if now > deadline:
                raise RunError(f"timed out after {RUN_TIMEOUT_S:.0f}s: {self._pending()}")
            for t in self.tracked:
                if t.kind != MD or deployment_done(t, self.objects):
                    continue
                if t.status.get("phase") == DeploymentPhase.DEPLOYING:
                    if now - t.waiting_since > DEPLOY_TIMEOUT_S:
                        t.error = (
                            f"not Ready within {DEPLOY_TIMEOUT_S:.0f}s of deploying "
                            f"({_condition_message(t.status, 'Ready') or 'no message from Serve'})"
                        )
                else:
                    t.waiting_since = now
            time.sleep(POLL_SECONDS)

    def _pending(self) -> str:
        return ", ".join(
            f"{t.label} is {t.status.get('phase', 'Pending')}"
            for t in self.tracked
            if not (training_done(t) if t.kind == TJ else deployment_done(t, self.objects))
        )

    def _announce_training(self, t: Tracked) -> None:
        status = t.status
        if status.get("phase") == TrainingPhase.SUCCEEDED and not t.submitted:
            manifest = (status.get("artifacts") or {}).get("manifestUri", "")
            self.display.note(
                f"{t.label}: reusing the finished run {status.get('runId')} (same spec; "
                f"not retrained): {manifest}"
            )

    # ----------------------------------------------------------------- report

    def failures(self) -> list[str]:
        out = []
        for t in self.tracked:
            status = t.status
            if t.error:
                out.append(f"{t.label}: {t.error}")
            elif t.kind == TJ and status.get("phase") == TrainingPhase.FAILED:
                out.append(f"{t.label}: training failed: {_failure_text(status)}")
            elif t.kind == MD and status.get("phase") == DeploymentPhase.FAILED:
                out.append(f"{t.label}: deployment failed: {_condition_message(status, 'Ready')}")
            elif t.kind == MD and (why := referenced_training_failed(t, self.objects)):
                out.append(f"{t.label}: not deployed: {why}")
        return out

    def summary(self, console: Console) -> None:
        for t in self.tracked:
            if t.kind == TJ and t.status.get("phase") == TrainingPhase.SUCCEEDED:
                training_summary(t, console, self.settings)

    def endpoints(self) -> list[tuple[Tracked, str]]:
        return [
            (t, str(t.status["url"]))
            for t in self.tracked
            if t.kind == MD and t.status.get("phase") == DeploymentPhase.READY and t.status.get("url")
        ]

    def teardown(self, remove_serving: bool) -> None:
        """Take this run's Serve applications down (on a cluster we do not own)."""
        if not remove_serving:
            return
        for t in self.tracked:
            if t.kind == MD and t.obj.get("status"):
                try:
                    reconcile.delete_modeldeployment(t.obj, self.ctx)
                except Exception as exc:  # best effort at exit: say so, do not mask the result
                    self.display.note(f"{t.label}: could not remove its Serve application: {exc}")


def _failure_text(status: dict[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason')}: {cond.get('message')}"
    return "no reason recorded"


def training_summary(t: Tracked, console: Console, settings: Settings) -> None:
    status = t.status
    arts = status.get("artifacts") or {}
    uri = arts.get("manifestUri")
    if not uri:
        return
    endpoint = (t.obj["spec"].get("artifacts") or {}).get("endpointUrl") or settings.s3_endpoint_url
    try:
        manifest, _ = read_manifest(open_store(uri, endpoint), uri)
    except (ManifestError, StoreError) as exc:
        console.print(f"{t.label}: cannot read the manifest: {exc}", markup=False)
        return
    table = Table(title=f"{t.label} (run {manifest.run_id})", title_justify="left")
    for column in ("variant", "accuracy", "size", "served by auto", "note"):
        table.add_column(column)
    for name, info in manifest.variants.items():
        size = info.size
        if size is None and info.file:
            try:
                size = manifest.file(info.file).size
            except KeyError:
                size = None
        table.add_row(
            name,
            f"{info.accuracy:.4f}" if info.accuracy is not None else "-",
            f"{size / 1e6:.1f} MB" if size else "-",
            "yes" if name == manifest.recommended_variant else "",
            ("rejected: " + (info.reason or "")) if not info.accepted else "",
        )
    console.print(table)
    parity = manifest.parity
    if parity.max_abs_logit_diff_fp32 is not None:
        # The tolerance applies to fp32 only; int8 is judged by its accuracy (qualityGate).
        line = (
            f"parity vs PyTorch, max |logit diff|: fp32 {parity.max_abs_logit_diff_fp32:.2e}"
            f" (tolerance {parity.tolerance:g}, {'passed' if parity.passed else 'FAILED'})"
        )
        if parity.max_abs_logit_diff_int8 is not None:
            line += f"; int8 {parity.max_abs_logit_diff_int8:.2e} (judged by accuracy)"
        console.print(line, markup=False)
    console.print(f"manifest: {uri}", markup=False, soft_wrap=True)


def v2_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def curl_examples(url: str, name: str) -> list[str]:
    v2 = json.dumps(v2_body([SMOKE_TEXT]))
    v1 = json.dumps({"instances": [SMOKE_TEXT]})
    return [
        f"curl -s -X POST {url}/v2/models/{name}/infer -H 'Content-Type: application/json' -d '{v2}'",
        f"curl -s -X POST {url}/v1/models/{name}:predict -H 'Content-Type: application/json' -d '{v1}'",
    ]


def smoke_request(url: str, name: str, timeout: float = SMOKE_TIMEOUT_S) -> str:
    """One v2 infer request; returns a one-line answer or raises RunError."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            resp = requests.post(f"{url}/v2/models/{name}/infer", json=v2_body([SMOKE_TEXT]), timeout=30)
            if resp.status_code == 200:
                return _answer(resp.json())
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if 400 <= resp.status_code < 500 and resp.status_code not in (404, 408, 429):
                break  # the request itself is refused: asking again will not help
        except (requests.RequestException, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    raise RunError(f"smoke request to {url}/v2/models/{name}/infer failed: {last}")


def _answer(doc: dict[str, Any]) -> str:
    outputs = {o.get("name"): o for o in doc.get("outputs") or []}
    labels = (outputs.get("labels") or {}).get("data") or []
    probs = (outputs.get("probabilities") or {}).get("data") or []
    if not labels:
        return json.dumps(doc)[:300]
    n = len(probs) // max(len(labels), 1) if probs else 0
    best = max(probs[:n]) if n else None
    return f"{labels[0]!r}" + (f" (p={best:.3f})" if best is not None else "")


# ------------------------------------------------------------------------ command


def _dashboard(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


def _check_dashboard(url: str) -> None:
    try:
        requests.get(f"{url}/api/version", timeout=10).raise_for_status()
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


def run_command(args: argparse.Namespace) -> int:
    """`rayrelay run`: exit 0 on success, 1 on any failure (with the reason printed)."""
    console = Console(highlight=False, soft_wrap=True)
    docs = read_resources(args.file, console)
    if docs is None:
        return 1
    base = Path.cwd()
    override, default_store = _artifacts(args, base)
    objects = LocalObjects(prepare(docs, override, base))
    for doc in docs:
        if (doc.get("spec") or {}).get("backend") == "kuberay":
            console.print(
                f"{doc['kind']}/{doc['metadata']['name']}: runs on the local ray backend (spec.backend kuberay is for clusters)",
                markup=False,
            )
    local_ray: LocalRay | None = None
    run: LocalRun | None = None
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if args.ray_address:
            dashboard = _dashboard(args.ray_address)
            _check_dashboard(dashboard)
            console.print(f"Ray: using the cluster at {dashboard}", markup=False)
            python = "python"
        else:
            console.print("Ray: starting a local head for this run ...", markup=False)
            local_ray = LocalRay()
            try:
                dashboard = local_ray.start()
            except LocalRayError as exc:
                raise RunError(str(exc)) from None
            console.print(f"Ray: dashboard {dashboard}", markup=False)
            python = sys.executable
        # Serve's HTTP port, when this run is the first to start Serve on the cluster:
        # RAYRELAY_SERVE_PORT, else 8000 unless taken, else a free one.
        port = int(os.environ.get("RAYRELAY_SERVE_PORT") or serve_port())
        backend = RayBackend(
            dashboard, serve_host="127.0.0.1", serve_port=port, url_host="127.0.0.1", python=python
        )
        settings = Settings(
            default_backend=BackendName.RAY,
            ray_address=dashboard,
            artifacts_uri=default_store,
            s3_endpoint_url=os.environ.get("RAYRELAY_S3_ENDPOINT_URL") or None,
        )
        console.print(f"artifacts: {override or default_store}", markup=False)
        if args.ray_address:
            _forget_finished_jobs(backend, objects)
        display = Display(console)
        run = LocalRun(objects, backend, settings, display)
        with display.running():
            run.drive(time.monotonic() + RUN_TIMEOUT_S)
        run.summary(console)
        failures = run.failures()
        endpoints = run.endpoints()
        answered = 0
        for t, url in endpoints:
            console.print(f"\n{t.label} is Ready: {url}", markup=False)
            console.print(
                f"  v2: {url}/v2/models/{t.name}/infer    v1: {url}/v1/models/{t.name}:predict", markup=False
            )
            for line in curl_examples(url, t.name):
                console.print(f"  {line}", markup=False, soft_wrap=True)
            try:
                answer = smoke_request(url, t.name)
            except RunError as exc:
                failures.append(f"{t.label}: {exc}")
                continue
            answered += 1
            console.print(f"  smoke request (v2 infer) {SMOKE_TEXT!r} -> {answer}", markup=False)
        if failures:
            for line in failures:
                console.print(f"error: {line}", markup=False, soft_wrap=True)
            return 1
        if args.once or not endpoints:
            console.print("done.", markup=False)
            return 0
        console.print("\nserving; press Ctrl-C to stop", markup=False)
        while True:  # keep statuses fresh while serving; Ctrl-C ends it
            for t in run.tracked:
                run.step(t)
            time.sleep(5.0)
    except RunError as exc:
        console.print(f"error: {exc}", markup=False, soft_wrap=True)
        return 1
    except BackendUnavailable as exc:
        console.print(f"error: the Ray cluster is not reachable: {exc}", markup=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print("\ninterrupted; shutting down", markup=False)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if run is not None:
            run.teardown(remove_serving=local_ray is None)
        if local_ray is not None:
            console.print("Ray: stopping the local head", markup=False)
            local_ray.stop()


def _raise_interrupt(signum: int, frame: Any) -> None:
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
