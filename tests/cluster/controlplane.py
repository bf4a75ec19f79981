"""A real Kubernetes control plane for the cluster tests, started the envtest way.

``ControlPlane`` starts etcd and kube-apiserver (and, when present,
kube-controller-manager for garbage collection, namespaces' default
ServiceAccounts and Deployments) from the folder named by
``KUBEBUILDER_ASSETS`` -- ``hack/envtest.sh`` prints it -- on free loopback
ports, with token authentication, RBAC and the default admission plugins
(PodSecurity among them). It writes an admin kubeconfig and hands out
kubeconfigs for a ServiceAccount's token, so that a test can run a command
with exactly the permissions the chart grants. ``start_kuberay()`` runs
KubeRay's real controller from the same folder.

There is no kubelet and no scheduler: Pods stay Pending. Every process is
stopped with SIGTERM (then SIGKILL) and its data removed in ``stop()``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ADMIN_TOKEN = "rayrelay-admin-token"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kuberay_crds_dir(assets: Path) -> Path | None:
    """KubeRay's own CRDs: $KUBERAY_CRDS, beside the unpacked assets, or ../shared/envtest/crds."""
    for candidate in (
        os.environ.get("KUBERAY_CRDS"),
        assets.parent / "kuberay-crds",
        REPO.parent / "shared" / "envtest" / "crds",
    ):
        if candidate and Path(candidate, "ray.io_rayjobs.yaml").exists():
            return Path(candidate)
    return None


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) on loopback; see the module docstring."""

    def __init__(
        self, assets: Path, *, controller_manager: bool = True, apiserver_args: Sequence[str] = ()
    ) -> None:
        self.assets = assets
        # Extra kube-apiserver flags (bench/control_plane.py adds an audit log).
        self.apiserver_args = list(apiserver_args)
        self.dir = Path(tempfile.mkdtemp(prefix="rayrelay-envtest-"))
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        self._with_controller_manager = controller_manager and (assets / "kube-controller-manager").exists()
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 90.0) -> ControlPlane:
        d = self.dir
        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        subprocess.run(
            ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (d / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={d / 'certs'}",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                *self.apiserver_args,
            ],
        )
        self._write_kubeconfig(self.kubeconfig, ADMIN_TOKEN, user="admin")
        self._wait_ready(timeout)
        if self._with_controller_manager:
            self._spawn(
                "kube-controller-manager",
                [
                    str(self.assets / "kube-controller-manager"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={d / 'sa.key'}",
                    "--use-service-account-credentials=false",
                    "--controllers=*",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                ],
            )
        return self

    def stop(self) -> None:
        for name in reversed(list(self._procs)):
            self._terminate(name)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_kuberay(self, *extra: str) -> None:
        """Run KubeRay's real controller (its CRDs must be installed first); ``extra``: more flags."""
        if "kuberay-operator" in self._procs and self._procs["kuberay-operator"].poll() is None:
            return
        self._spawn(
            "kuberay-operator",
            [
                str(self.assets / "kuberay-operator"),
                f"--kubeconfig={self.kubeconfig}",
                "--enable-leader-election=false",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{free_port()}",
                *extra,
            ],
        )

    def stop_kuberay(self) -> None:
        self._terminate("kuberay-operator")

    @property
    def has_controller_manager(self) -> bool:
        """Whether kube-controller-manager runs (Deployments get Pods, namespaces get deleted)."""
        return self._with_controller_manager

    @property
    def has_kuberay(self) -> bool:
        return (self.assets / "kuberay-operator").exists()

    # ------------------------------------------------------------------ clients

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl (from PATH) against this server; raise with its output on failure."""
        cmd = ["kubectl", f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def get(self, *args: str, kubeconfig: Path | None = None) -> Any:
        """``kubectl get ... -o json`` parsed (None when it is not found)."""
        proc = self.kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig, check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {proc.stderr}")
        return json.loads(proc.stdout)

    def apply(self, manifest: Any, *extra: str, kubeconfig: Path | None = None) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(_as_list(manifest))
        self.kubectl("apply", "-f", "-", *extra, input=text, kubeconfig=kubeconfig)

    def service_account_kubeconfig(self, namespace: str, name: str, *, hours: int = 2) -> Path:
        """A kubeconfig whose only credential is a token of ServiceAccount NAMESPACE/NAME."""
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={hours}h").stdout.strip()
        path = self.dir / f"sa-{namespace}-{name}.kubeconfig"
        self._write_kubeconfig(path, token, user=f"{namespace}-{name}")
        return path

    def install_kuberay_crds(self) -> None:
        crds = kuberay_crds_dir(self.assets)
        if crds is None:
            raise FileNotFoundError("KubeRay CRDs not found: set KUBERAY_CRDS or run hack/envtest.sh")
        # Server-side apply: RayCluster's CRD is too large for the last-applied annotation.
        self.kubectl("apply", "--server-side", "-f", str(crds))
        self.wait_crds_established(["rayjobs.ray.io", "rayservices.ray.io", "rayclusters.ray.io"])

    def wait_crds_established(self, names: Sequence[str], timeout: float = 60.0) -> None:
        """Poll until every named CRD is Established.

        Not ``kubectl wait``: on a CRD created a moment ago, whose status has no
        conditions yet, it fails at once (".status.conditions accessor error").
        """
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            pending = [n for n in pending if not _established(self.get(f"crd/{n}"))]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not Established after {timeout} s: {pending}")
            time.sleep(0.3)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ internals

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._procs[name] = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )

    def _terminate(self, name: str) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def _wait_ready(self, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"kube-apiserver not ready in {timeout} s:\n{self.log('kube-apiserver')[-3000:]}")

    def _write_kubeconfig(self, path: Path, token: str, *, user: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "envtest", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
            "current-context": "envtest",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the test process dies, even by SIGKILL (Linux).

    ``stop()`` ends every process on a normal exit; this covers a killed pytest, so
    that no etcd or kube-apiserver outlives the session (SIGKILL: on SIGTERM a
    kube-apiserver whose etcd died with it keeps waiting for it). Linux sends it when
    the *thread* that started the process ends: start processes from the test's
    main thread (fixtures and tests run there), not from a worker thread.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _as_list(manifest: Any) -> list[Any]:
    return list(manifest) if isinstance(manifest, (list, tuple)) else [manifest]


def _established(crd: Any) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)
