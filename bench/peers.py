"""The servers users would run instead of rayrelay, for ``bench.endpoint``: venvs, settings, start/stop.

Two peers, each serving the same published ONNX file with the same tokenizer
and onnxruntime thread settings as a rayrelay replica
(``bench.peer_model.OnnxTextClassifier``), over OIP v2 REST on
``/v2/models/{name}/infer`` (the request body rayrelay's endpoint takes):

- ``kserve``: KServe's Python ``ModelServer`` (``bench/peer_kserve.py``);
- ``mlserver``: Seldon MLServer with a custom runtime (``bench/peer_mlserver.py``).

Their pins conflict with each other and with ``.venv``, so each runs from a
venv of its own, made by the bench the first time it is needed (``pip`` from
the package index: a minute or two) and reused after:
``bench/.cache/peers/<name>-<hash>/``, the hash over the pins and the Python
version, so changing a pin makes a new venv. onnxruntime, tokenizers and
numpy are pinned to the versions ``.venv`` runs, so every contender runs the
same kernels. A venv is complete once ``pins.txt`` is written, last.

Each peer has a small sweep of its own documented settings (:data:`SWEEPS`);
the machine's cores (:data:`bench.common.THREADS`) are split over its worker
processes the way rayrelay splits them over replicas (one intra-op thread per
core a process gets, idle threads not spinning). Settings a tuned deployment
sets on every variant: KServe without its per-request latency log line and
without the unused gRPC server; MLServer with ``debug`` off and no metrics
server.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.common import CACHE, ROOT, THREADS, bench_env, free_port, log

PEER_PACKAGES = {
    "kserve": ("kserve==0.21.0",),
    # uvloop 0.22+ raises in asyncio.get_event_loop() without a running loop, which MLServer's
    # parallel workers call at start: with it every parallel_workers > 0 setting dies at load.
    "mlserver": ("mlserver==1.7.1", "uvloop==0.21.0"),
}
PEERS = tuple(PEER_PACKAGES)
VENVS = CACHE / "peers"
# bench.embeddings' peer (bench/peer_infinity.py), not one of bench.endpoint's: it serves the
# hf/ folder with its own engines. infinity-emb 0.0.78 wants numpy<2 and transformers<=5.0, so
# of .venv's stack only onnxruntime and torch (the CPU build, from the machine's wheel
# folder) are shared. optimum 2.x (with optimum-onnx): optimum 1.27, the last 1.x, fails to
# import beside torch 2.13 (torch.onnx.symbolic_opset14._attention_scale is gone).
EMBEDDING_PEER_PACKAGES = {
    "infinity": (
        "infinity-emb[server,torch]==0.0.78",
        "optimum[onnxruntime]==2.1.0",
        "optimum-onnx==0.1.0",
        "transformers==4.57.6",
        "sentence-transformers==3.4.1",
    ),
}


def shared_pins() -> tuple[str, ...]:
    """The model stack every contender runs: the versions of ``.venv``."""
    return tuple(f"{dist}=={version(dist)}" for dist in ("onnxruntime", "tokenizers", "numpy"))


def pins(peer: str) -> tuple[str, ...]:
    if peer in EMBEDDING_PEER_PACKAGES:
        shared = tuple(f"{dist}=={version(dist)}" for dist in ("onnxruntime", "torch"))
        return (*EMBEDDING_PEER_PACKAGES[peer], *shared)
    return (*PEER_PACKAGES[peer], *shared_pins())


def venv_dir(peer: str, pinned: tuple[str, ...] | None = None) -> Path:
    pinned = pinned or pins(peer)
    key = json.dumps([platform.python_version(), sorted(pinned)])
    return VENVS / f"{peer}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_venv(peer: str) -> Path:
    """The peer venv's python, made first if missing (``pip install`` of :func:`pins`)."""
    pinned = pins(peer)
    folder = venv_dir(peer, pinned)
    python = folder / "bin" / "python"
    if (folder / "pins.txt").is_file() and python.is_file():
        return python
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    log(f"peers: making the {peer} venv {folder} ({', '.join(pinned)})")
    base = getattr(sys, "_base_executable", sys.executable)
    pip_log = folder.with_suffix(".pip.log")
    with pip_log.open("w") as out:
        subprocess.run([base, "-m", "venv", str(folder)], check=True, stdout=out, stderr=out)
        for cmd in (
            [str(python), "-m", "pip", "install", "-q", "-U", "pip"],
            [str(python), "-m", "pip", "install", "-q", *pinned],
        ):
            if subprocess.run(cmd, stdout=out, stderr=out, timeout=1800).returncode:
                raise RuntimeError(f"pip failed making the {peer} venv: see {pip_log}")
    (folder / "pins.txt").write_text("\n".join(pinned) + "\n")
    return python


@dataclass(frozen=True)
class Model:
    """What a peer serves: one published ONNX file and the set's tokenizer and labels."""

    name: str
    onnx: Path
    tokenizer: Path
    labels: list[str]
    max_length: int

    @classmethod
    def from_run(cls, name: str, run: Path, variant: str) -> Model:
        doc = json.loads((run / "manifest.json").read_text())
        file = doc["variants"][variant]["file"]
        tok = doc.get("tokenizer") or {}
        return cls(
            name,
            run / file,
            run / str(tok.get("path") or "hf"),
            list(doc["labels"]),
            int(tok["maxSeqLength"]),
        )


@dataclass(frozen=True)
class Setting:
    """One point of a peer's sweep: its own settings, and how the cores are split over its processes."""

    peer: str
    label: str
    workers: int  # processes running the model
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def threads(self) -> int:
        return max(1, THREADS // max(1, self.workers))


SWEEPS: dict[str, tuple[Setting, ...]] = {
    "kserve": (
        Setting("kserve", "workers 1", 1),
        Setting("kserve", "workers 2", 2),
    ),
    "mlserver": (
        # parallel_workers 0: inference on the server's own event loop, one process.
        Setting("mlserver", "parallel_workers 0", 1, {"parallel_workers": 0}),
        Setting("mlserver", "parallel_workers 2", 2, {"parallel_workers": 2}),
        Setting(
            "mlserver",
            "parallel_workers 2, adaptive batching 8 / 5 ms",
            2,
            {"parallel_workers": 2, "max_batch_size": 8, "max_batch_time": 0.005},
        ),
        Setting(
            "mlserver",
            "parallel_workers 0, adaptive batching 8 / 5 ms",
            1,
            {"parallel_workers": 0, "max_batch_size": 8, "max_batch_time": 0.005},
        ),
    ),
}


def mlserver_folder(folder: Path, model: Model, setting: Setting, ports: tuple[int, int, int]) -> Path:
    """An MLServer repository: ``settings.json`` (server) and ``<model>/model-settings.json``."""
    http, grpc, metrics = ports
    folder.mkdir(parents=True, exist_ok=True)
    server = {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": grpc,
        "metrics_port": metrics,
        "metrics_endpoint": None,
        "parallel_workers": int(setting.options.get("parallel_workers", 1)),
        "metrics_dir": str(folder / ".metrics"),
        "environments_dir": str(folder / ".envs"),
    }
    (folder / "settings.json").write_text(json.dumps(server, indent=2))
    model_dir = folder / model.name
    model_dir.mkdir(exist_ok=True)
    model_settings: dict[str, Any] = {
        "name": model.name,
        "implementation": "bench.peer_mlserver.TextClassifierRuntime",
        "parameters": {"extra": _model_args(model, setting)},
    }
    for key in ("max_batch_size", "max_batch_time"):
        if key in setting.options:
            model_settings[key] = setting.options[key]
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return folder


def _model_args(model: Model, setting: Setting) -> dict[str, Any]:
    return {
        "onnx": str(model.onnx),
        "tokenizer": str(model.tokenizer),
        "labels": model.labels,
        "max_length": model.max_length,
        "threads": setting.threads,
    }


def kserve_command(python: Path, model: Model, setting: Setting, port: int) -> list[str]:
    args = _model_args(model, setting)
    return [
        str(python), "-m", "bench.peer_kserve",
        "--model_name", model.name, "--http_port", str(port), "--grpc_port", str(free_port()),
        "--workers", str(setting.workers), "--enable_grpc", "false",
        "--enable_latency_logging", "false",
        "--onnx", args["onnx"], "--tokenizer", args["tokenizer"], "--labels", json.dumps(args["labels"]),
        "--max-length", str(args["max_length"]), "--threads", str(args["threads"]),
    ]  # fmt: skip


@dataclass
class Running:
    setting: Setting
    proc: subprocess.Popen[bytes]
    url: str  # the OIP v2 infer URL
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The server's whole process group: KServe's and MLServer's workers are its children.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


def start(setting: Setting, model: Model, scratch: Path, timeout: float = 300) -> Running:
    """Start one peer with ``setting`` and wait until its model answers ready (OIP v2)."""
    python = ensure_venv(setting.peer)
    port = free_port()
    env = bench_env()
    env["PYTHONPATH"] = str(ROOT)  # bench.peer_*: nothing of .venv
    env["OMP_NUM_THREADS"] = "1"
    scratch.mkdir(parents=True, exist_ok=True)
    if setting.peer == "kserve":
        cmd, cwd = kserve_command(python, model, setting, port), ROOT
    else:
        folder = scratch / f"mlserver-{port}"
        mlserver_folder(folder, model, setting, (port, free_port(), free_port()))
        cmd, cwd = [str(python.parent / "mlserver"), "start", str(folder)], folder
    log_path = scratch / f"{setting.peer}-{port}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    running = Running(setting, proc, f"{base}/v2/models/{model.name}/infer", log_path)

    deadline = time.monotonic() + timeout
    try:
        while not _ready(f"{base}/v2/models/{model.name}/ready"):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{setting.peer} ({setting.label}) exited during start-up:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{setting.peer} ({setting.label}) not ready after {timeout:.0f}s: see {log_path}"
                )
            time.sleep(0.5)
    except BaseException:
        running.stop()
        raise
    return running


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
