"""What the serving fault cases share: a closed-loop load, artifact copies, ModelDeployment passes.

- :class:`ClosedLoad`: ``clients`` threads, each with exactly one request in
  flight on its own keep-alive connection, on the one-hop v2 infer route (or
  the gateway's v1 route); every answer is kept (when, how long, status,
  ``Retry-After``), so a test counts failures in any window it likes.
- :func:`copy_run`: a run's artifact set copied to a new folder as another run
  (its own ``runId``, so its manifest has its own digest), optionally broken the
  way a bad publication is: a file's bytes changed after the manifest was
  written (the digest check fails) or one label more than the model has (the
  warm-up inference fails).
- :class:`Deployment`: one ModelDeployment reconciled by the product's own pass
  (``run_pass``, what the kopf handlers and ``rayrelay run`` call) against the
  real ``ray`` backend, with its TrainingJob a plain dict whose status names the
  published run, as the TrainingJob controller writes it.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from rayrelay_core.store import LocalStore, sha256_file

TEXT = "my card was charged twice"


@dataclass
class Answer:
    at: float  # time.monotonic() when the request was sent
    seconds: float
    status: int  # HTTP status; 0: no answer (connection error, timeout)
    retry_after: str | None
    detail: str  # the body's start when not 200, or the exception


@dataclass
class ClosedLoad:
    url: str  # e.g. http://127.0.0.1:8000/v2/models/name/infer
    clients: int = 2
    v1: bool = False
    answers: list[Answer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self._lock = threading.Lock()

    def _body(self) -> dict[str, Any]:
        if self.v1:
            return {"instances": [TEXT]}
        return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [TEXT]}]}

    def _client(self) -> None:
        session = requests.Session()
        body = self._body()
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                resp = session.post(self.url, json=body, timeout=60)
                answer = Answer(
                    sent,
                    time.monotonic() - sent,
                    resp.status_code,
                    resp.headers.get("Retry-After"),
                    "" if resp.status_code == 200 else resp.text[:300],
                )
            except requests.RequestException as exc:
                answer = Answer(sent, time.monotonic() - sent, 0, None, repr(exc)[:300])
                session = requests.Session()
            with self._lock:
                self.answers.append(answer)

    def __enter__(self) -> ClosedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def since(self, start: float, end: float | None = None) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= start and (end is None or a.at < end)]

    def wait_answers(self, n: int, timeout: float) -> None:
        """Block until ``n`` answers of 200 arrived (the load is really flowing)."""
        deadline = time.monotonic() + timeout
        while sum(1 for a in list(self.answers) if a.status == 200) < n:
            assert time.monotonic() < deadline, f"fewer than {n} answers in {timeout} s: {self.answers[-3:]}"
            time.sleep(0.1)


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def codes(answers: list[Answer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in answers:
        out[str(a.status)] = out.get(str(a.status), 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ artifact sets


def copy_run(manifest_uri: str, dest: Path, run_id: str, *, tamper: str | None = None) -> Path:
    """The run at ``manifest_uri`` (a file:// set) copied to ``dest`` as run ``run_id``; its manifest path.

    ``tamper``: None (a good new model), ``"bytes"`` (the fp32 model file's bytes changed after
    the manifest: the replica's digest check refuses it) or ``"labels"`` (a label more than
    the model's outputs: the warm-up inference refuses it).
    """
    src = Path(manifest_uri.removeprefix("file://")).parent
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("checkpoints", "steps"))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["runId"] = run_id
    if tamper == "labels":
        manifest["labels"] = [*manifest["labels"], "extra-label"]
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if tamper == "bytes":
        with open(dest / manifest["variants"]["fp32"]["file"], "r+b") as fh:
            fh.seek(64)
            fh.write(b"tampered")
    return dest / "manifest.json"


def trainingjob(name: str, manifest: Path) -> dict[str, Any]:
    """A Succeeded TrainingJob as its controller records a published run (uri and digest)."""
    return {
        "metadata": {"name": name, "namespace": "faults"},
        "status": {
            "phase": "Succeeded",
            "artifacts": {"manifestUri": f"file://{manifest}", "digest": f"sha256:{sha256_file(manifest)}"},
        },
    }


# ------------------------------------------------------------------ the ModelDeployment


class Deployment:
    """One ModelDeployment (trainingJobRef) reconciled pass by pass on the real ray backend."""

    def __init__(self, ray_cluster: Any, name: str, manifest: Path, replicas: int = 1) -> None:
        from rayrelay_operator.backends.ray import RayBackend
        from rayrelay_operator.reconcile import ReconcileContext
        from rayrelay_operator.settings import Settings

        self.name = name
        self.backend = RayBackend(
            ray_cluster.dashboard_url, serve_host="127.0.0.1", serve_port=ray_cluster.serve_port
        )
        self.tj = trainingjob(f"{name}-tj", manifest)
        self.events: list[Any] = []
        self.ctx = ReconcileContext(
            settings=Settings(),
            backends={"ray": self.backend},
            store_for=lambda uri, endpoint: LocalStore(),
            get_trainingjob=lambda ns, tj_name: self.tj,
            emit=self.events.append,
        )
        self.obj: dict[str, Any] = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": "faults", "uid": f"uid-{name}", "generation": 1},
            "spec": {
                "backend": "ray",
                "model": {"trainingJobRef": {"name": f"{name}-tj", "variant": "fp32"}},
                "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas},
                "resources": {"cpus": 0.5},
            },
        }
        self.url = f"http://127.0.0.1:{ray_cluster.serve_port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    @property
    def predict_url(self) -> str:
        return f"{self.url}/v1/models/{self.name}:predict"

    def publish(self, manifest: Path) -> None:
        self.tj = trainingjob(f"{self.name}-tj", manifest)

    def step(self) -> dict[str, Any]:
        from rayrelay_operator.reconcile import run_pass

        result = run_pass("ModelDeployment", self.obj, self.ctx)
        if result.patch:
            self.obj["status"] = result.status.wire()
        return dict(self.obj.get("status") or {})

    def condition(self, type_: str) -> dict[str, Any]:
        conds = (self.obj.get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == type_), {})

    def app(self) -> dict[str, Any]:
        return dict((self.backend.serve_instance().get("applications") or {}).get(self.name) or {})

    def replicas(self) -> list[dict[str, Any]]:
        deps = self.app().get("deployments") or {}
        return list((deps.get("ModelServer") or {}).get("replicas") or [])

    def until(self, what: str, predicate: Any, timeout: float, interval: float = 0.5) -> dict[str, Any]:
        """Run passes until ``predicate(status)`` holds; the status then."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.step()
            self._trace(status)
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"not {what} after {timeout} s: {json.dumps(status)[:3000]}"
            time.sleep(interval)

    def _trace(self, status: dict[str, Any]) -> None:
        """Print each change of phase, conditions' reasons and replica states (shown with -s)."""
        try:
            app = self.app()
        except Exception as exc:  # the trace only
            app = {"status": repr(exc)[:80]}
        deps = app.get("deployments") or {}
        replicas = [r.get("state") for r in (deps.get("ModelServer") or {}).get("replicas") or []]
        conds = {c["type"]: c["reason"] for c in status.get("conditions") or []}
        line = f"{status.get('phase')} {conds} app={app.get('status')} replicas={replicas}"
        if line != getattr(self, "_last_trace", None):
            self._last_trace = line
            print(f"{time.monotonic():.1f} {self.name}: {line}", flush=True)

    def ready_with(self, digest: str, timeout: float = 240) -> dict[str, Any]:
        return self.until(
            f"Ready serving {digest[:20]}",
            lambda s: s.get("phase") == "Ready" and (s.get("model") or {}).get("digest") == digest,
            timeout,
        )

    def remove(self) -> None:
        from rayrelay_operator.reconcile import delete_pass

        delete_pass("ModelDeployment", self.obj, self.ctx)
