"""The operator as the installed chart runs it, started as a plain subprocess.

``install_chart`` runs ``helm install`` of the repository's chart
(``charts/rayrelay``) into the control plane and reads the operator container's
``args`` and ``env`` back from ``helm get manifest``. ``OperatorProcess`` then
runs ``rayrelay operator <those args>`` with exactly that environment, resolved
the way the kubelet resolves it (``fieldRef`` from the pod's name and
namespace, ``secretKeyRef`` from the Secret in the cluster), the image's own
``ENV`` (operator/Dockerfile) and a KUBECONFIG whose only credential is a token
of the chart's ServiceAccount -- so the chart's RBAC is what the operator gets.
Nothing of the test process leaks in (its AWS_* or RAYRELAY_* variables).

One deliberate difference from a pod: every process here shares one network
namespace, so the two ports the container binds (``RAYRELAY_METRICS_PORT`` and
the ``--liveness`` address) are moved to free loopback ports per process.

The kopf liveness endpoint tells when a process is up; ``log`` is its combined
stdout/stderr; ``stop()`` sends SIGTERM then SIGKILL, ``kill()`` SIGKILL only
(a crash, no goodbye to its peers).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.cluster.controlplane import REPO, ControlPlane, _die_with_parent, free_port

CHART = REPO / "charts" / "rayrelay"
BIN = Path(sys.executable).parent
# operator/Dockerfile's ENV, less its PATH (the venv's bin stands in for /opt/rayrelay/bin).
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/tmp"}
S3_SECRET = "rayrelay-s3"
# In a pod the kubelet mounts the ServiceAccount's token and CA at fixed paths under
# /var/run/secrets/kubernetes.io/serviceaccount; this runs the same CLI entry point with
# the client's in-cluster loader pointed at a folder holding them (argv: token, ca, args).
IN_POD = (
    "import sys\n"
    "from kubernetes.config import incluster_config as c\n"
    "c.SERVICE_TOKEN_FILENAME, c.SERVICE_CERT_FILENAME = sys.argv[1], sys.argv[2]\n"
    "from rayrelay_operator.cli import main\n"
    "sys.exit(main(sys.argv[3:]))\n"
)
# Quicker observation than the defaults (10 s / 5 s), set the way a user would: the chart's extraEnv.
FAST_TIMERS = {
    "extraEnv": [
        {"name": "RAYRELAY_TIMER_INTERVAL_SECONDS", "value": "2"},
        {"name": "RAYRELAY_TIMER_IDLE_SECONDS", "value": "1"},
        # A running attempt's progress read on every tick too (the default paces it to a minute).
        {"name": "RAYRELAY_STORE_POLL_SECONDS", "value": "2"},
    ]
}
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # reported at the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last error: {last!r}")


@dataclass
class ChartRelease:
    """An installed release and the operator container as its Deployment defines it."""

    plane: ControlPlane
    name: str
    namespace: str
    manifests: list[dict[str, Any]]

    @property
    def deployment(self) -> dict[str, Any]:
        (dep,) = [m for m in self.manifests if m.get("kind") == "Deployment"]
        return dep

    @property
    def container(self) -> dict[str, Any]:
        (c,) = [
            c for c in self.deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"
        ]
        return dict(c)

    @property
    def args(self) -> list[str]:
        return list(self.container["args"])

    @property
    def service_account(self) -> str:
        return str(self.deployment["spec"]["template"]["spec"]["serviceAccountName"])

    def env(self, pod_name: str) -> dict[str, str]:
        """The container's env as the kubelet would resolve it for pod ``pod_name``."""
        out: dict[str, str] = {}
        for var in self.container.get("env") or []:
            if "value" in var:
                out[var["name"]] = str(var["value"])
                continue
            source = var.get("valueFrom") or {}
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                fields = {"metadata.name": pod_name, "metadata.namespace": self.namespace}
                assert path in fields, f"fieldRef {path} not filled by this harness"
                out[var["name"]] = fields[path]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.plane.get("secret", ref["name"], "-n", self.namespace)
                assert secret is not None, f"Secret {self.namespace}/{ref['name']} missing"
                out[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            else:
                raise AssertionError(f"env {var['name']}: unsupported source {source}")
        return out

    def uninstall(self) -> None:
        helm(self.plane, "uninstall", self.name, "-n", self.namespace, "--wait=false", check=False)


def helm(plane: ControlPlane, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["helm", f"--kubeconfig={plane.kubeconfig}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def install_chart(plane: ControlPlane, namespace: str, values: Mapping[str, Any]) -> ChartRelease:
    """``helm install`` of the repository's chart with VALUES; the release's manifests read back."""
    name = f"rr-{uuid.uuid4().hex[:6]}"
    values_file = plane.dir / f"{name}-values.yaml"
    values_file.write_text(yaml.safe_dump(dict(values)))
    helm(plane, "install", name, str(CHART), "-n", namespace, "-f", str(values_file))
    text = helm(plane, "get", "manifest", name, "-n", namespace).stdout
    manifests = [d for d in yaml.safe_load_all(text) if d]
    return ChartRelease(plane, name, namespace, manifests)


def s3_values(s3_server: str, uri: str) -> dict[str, Any]:
    """Chart values for an S3 store on moto's server, with credentials from a Secret."""
    return {
        "artifacts": {
            "uri": uri,
            "s3EndpointUrl": s3_server,
            "region": "us-east-1",
            "credentialsSecret": S3_SECRET,
        }
    }


def create_s3_secret(plane: ControlPlane, namespace: str) -> None:
    """The credentials Secret docs/install.md has users create (moto accepts any keys)."""
    plane.kubectl(
        "create",
        "secret",
        "generic",
        S3_SECRET,
        "-n",
        namespace,
        "--from-literal=AWS_ACCESS_KEY_ID=testing",
        "--from-literal=AWS_SECRET_ACCESS_KEY=testing",
    )


@dataclass
class OperatorProcess:
    """``rayrelay operator`` run with a release's args and env, as one pod of its Deployment."""

    release: ChartRelease
    pod_name: str
    kubeconfig: Path
    # A folder with the pod's ServiceAccount mount (token, ca.crt): log in as in a pod, no KUBECONFIG.
    pod_mount: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    health_url: str = ""
    log_path: Path = field(default_factory=Path)

    def argv(self) -> list[str]:
        args = []
        for arg in self.release.args:
            if arg.startswith("--liveness="):
                # Own network namespace in a pod; a free loopback port here.
                port = free_port()
                self.health_url = f"http://127.0.0.1:{port}/healthz"
                arg = f"--liveness={self.health_url}"
            args.append(arg)
        if self.pod_mount is not None:
            mount = [str(self.pod_mount / "token"), str(self.pod_mount / "ca.crt")]
            return [str(BIN / "python"), "-c", IN_POD, *mount, *args]
        return [str(BIN / "rayrelay"), *args]

    def environment(self) -> dict[str, str]:
        env = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", **IMAGE_ENV}
        env.update(self.release.env(self.pod_name))
        if "RAYRELAY_METRICS_PORT" in env:
            env["RAYRELAY_METRICS_PORT"] = str(free_port())
        if self.pod_mount is not None:
            # What the kubelet sets in every container: the API server's service address.
            url = self.release.plane.url.removeprefix("https://")
            env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"] = url.rsplit(":", 1)
        else:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def start(self) -> OperatorProcess:
        argv = self.argv()
        assert "operator" in argv[1:] and argv[0].startswith(str(BIN)), argv
        self.log_path = self.release.plane.dir / f"operator-{self.pod_name}.log"
        out = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        # Killed with the test process too (a killed pytest leaves no operator behind).
        self.proc = subprocess.Popen(
            argv,
            env=self.environment(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.release.plane.dir,
            preexec_fn=_die_with_parent,
        )
        out.close()
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"operator {self.pod_name} exited ({code}):\n{self.log[-4000:]}")
        return True

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until kopf's liveness endpoint answers 200 (the operator has started)."""

        def healthy() -> bool:
            self.alive()
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(f"operator {self.pod_name} to answer {self.health_url}", healthy, timeout)

    def kill(self) -> None:
        """SIGKILL: the process dies without removing itself from the peering object."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


def start_operator(
    release: ChartRelease, pod_suffix: str | None = None, *, in_pod: bool = False
) -> OperatorProcess:
    """One replica: a pod name like the ReplicaSet's, the chart ServiceAccount's token.

    The token comes in a kubeconfig (KUBECONFIG), or with ``in_pod`` where a pod has it: a
    ServiceAccount mount with the token and the API server's CA, and no KUBECONFIG at all.
    """
    pod = f"{release.name}-rayrelay-{pod_suffix or uuid.uuid4().hex[:5]}"
    kubeconfig = release.plane.service_account_kubeconfig(release.namespace, release.service_account)
    mount = None
    if in_pod:
        mount = release.plane.dir / f"serviceaccount-{pod}"
        mount.mkdir()
        (mount / "token").write_text(yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"])
        (mount / "ca.crt").write_bytes((release.plane.dir / "certs" / "apiserver.crt").read_bytes())
    return OperatorProcess(release, pod, kubeconfig, pod_mount=mount).start()


@dataclass
class Operators:
    """Operator processes started by a test; all stopped at its end, whatever happened."""

    started: list[OperatorProcess] = field(default_factory=list)

    def start(
        self, release: ChartRelease, pod_suffix: str | None = None, *, in_pod: bool = False
    ) -> OperatorProcess:
        op = start_operator(release, pod_suffix, in_pod=in_pod)
        self.started.append(op)
        return op

    def stop_all(self) -> None:
        for op in self.started:
            op.stop()
            # Shown by pytest only when the test failed.
            print(f"----- operator {op.pod_name} log (tail) -----\n{op.log[-6000:]}")


def operators_fixture() -> Iterator[Operators]:
    ops = Operators()
    try:
        yield ops
    finally:
        ops.stop_all()


def namespace_fixture(plane: ControlPlane) -> Iterator[str]:
    """A namespace for the chart's release (the operator's own), apart from the jobs'."""
    name = f"rayrelay-system-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def trainingjob(name: str, *, gpus: int, workers: int) -> dict[str, Any]:
    """examples/trainingjob.yaml asking for GPU workers (the store is the chart's default)."""
    tj = yaml.safe_load((REPO / "examples" / "trainingjob.yaml").read_text())
    tj["metadata"]["name"] = name
    tj["spec"]["resources"].update({"gpusPerWorker": gpus, "numWorkers": workers})
    return dict(tj)


def rayjobs_of(plane: ControlPlane, namespace: str, tj_name: str) -> list[dict[str, Any]]:
    return list(plane.get("rayjobs", "-n", namespace, "-l", f"rayrelay.dev/trainingjob={tj_name}")["items"])


def assert_kept(built: Any, stored: Any, path: str = "") -> None:
    """Every field the builder wrote is in the stored object with the same value (nothing pruned).

    The server may add fields (defaults, uid, status); it must not drop or change ours.
    """
    if isinstance(built, dict):
        assert isinstance(stored, dict), f"{path or '.'}: stored {type(stored).__name__}, built a mapping"
        for key, value in built.items():
            assert key in stored, f"{path}.{key}: sent, but the server did not keep it (pruned)"
            assert_kept(value, stored[key], f"{path}.{key}")
    elif isinstance(built, list):
        assert isinstance(stored, list) and len(stored) == len(built), f"{path}: list differs: {stored!r}"
        for i, (b, s) in enumerate(zip(built, stored, strict=True)):
            assert_kept(b, s, f"{path}[{i}]")
    else:
        assert built == stored, f"{path}: sent {built!r}, stored {stored!r}"
