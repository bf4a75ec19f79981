"""Benchmark 4, control plane: the shipped operator with N TrainingJobs created at once, on a real API server.

Everything is what a user runs, on loopback:

- a real control plane, etcd + kube-apiserver, from ``tests/cluster/controlplane.py``
  (binaries from ``hack/envtest.sh``), with rayrelay's CRDs (``crds/``) and
  KubeRay's CRDs installed, so that every RayJob is validated by KubeRay's real
  schema; KubeRay's controller and kube-controller-manager do not run, so the
  figures are the operator's own. The API server writes an audit log (level
  Metadata), which is how requests are counted per client;
- moto's ``ThreadedMotoServer`` as the artifact store (an ``s3://`` bucket), in
  this process;
- the operator as the chart runs it: ``helm install`` of ``charts/rayrelay``
  (all namespaces, standalone, the kuberay backend, default timers), then
  ``rayrelay operator`` as a subprocess with the chart's args and env and a
  token of the chart's ServiceAccount (``tests/cluster/chart_operator.py``,
  the cluster tests' harness, reused as is);
- a watcher subprocess (``--watch``) that watches RayJobs and TrainingJobs
  and records when each event *arrives* (``time.time()``, microseconds; object
  creationTimestamps have 1 s resolution), apart from this process so that the
  burst below does not delay its clock readings.

The burst: N TrainingJobs (``examples/trainingjob.yaml``, renamed) created with
the Python client from a pool of 16 threads; each one's creation time is when
its 201 came back. Figures per N (a fresh control plane each):

- create → RayJob ADDED at the watcher, p50/p99/max;
- all reconciled: until every TrainingJob has a status written by the operator
  that records its RayJob (``status.rayJob``, ``observedGeneration``);
- API requests per TrainingJob: the operator's requests (audit events of its
  ServiceAccount) from the burst until all were reconciled, by verb/resource;
  and over one timer interval after that (the steady state);
- ``submit`` calls per TrainingJob: the operator's RayJob creates (201 + 409)
  over the whole run, steady state included;
- the operator process's RSS when idle and its peak (``VmHWM``);
- store requests per TrainingJob, by method, from the store's own request log (a
  WSGI wrapper around moto's server: what reached the store), in the burst and in
  the steady state (per TrainingJob per minute).

Then the *running* steady state (``--running-window``, 65 s by default; 0 skips it): every
RayJob's status set to RUNNING with a RayCluster name, as KubeRay's controller writes it;
once every TrainingJob says Training, the operator's API requests (by kind, writes apart)
and store requests per TrainingJob per minute over the window, while nothing changes.

Then, on the same API server with the operator stopped, KubeRay's own controller
(``kuberay-operator`` from the envtest archive, its default single reconcile
worker, watching one fresh namespace): the same N RayJobs the operator made,
created as prebuilt bodies by a minimal client (the same 16 threads), turned
into RayClusters. The time those creates take is the *floor*: what this API
server needs to accept N RayJobs at all. Figures: create -> RayCluster ADDED
p50/p99, all N RayClusters, KubeRay's CPU per RayJob, and the ratios of the
operator's "all reconciled" to KubeRay's "all RayClusters" and to the floor.

Last, the operator's own *ceiling*: the burst's TrainingJobs removed (the operator
stopped), N new ones created while no operator runs, then the operator started on
them: the time from its process start until all are reconciled, its CPU per
TrainingJob after it was ready, its requests and submits per TrainingJob, and that
time over the floor above (the issue's goal: at most 1.5x).

``--quick`` runs 50 TrainingJobs (the cluster smoke test runs it); ``--sizes``
picks others. ``--burst-only`` skips KubeRay's phase and the ceiling (a first look at
a new size: 10,000); ``--memory-profile DIR`` runs the operator with
``RAYRELAY_MEMORY_PROFILE`` (tracemalloc snapshots, ``rayrelay_operator.diagnostics``);
during the burst a line every 30 s gives the operator's RSS and CPU. Results:
``bench/results/control_plane.json`` (``--results-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import ROOT, apply_env, bench_env, load_average, log, peak_rss_mib, percentile, rss_mib
from bench.common import write_result as _write_result

apply_env()
# The admin kubeconfig skips TLS verification (a throwaway loopback API server): no warning per request.
warnings.filterwarnings("ignore", message="Unverified HTTPS request")

GROUP, VERSION = "rayrelay.dev", "v1alpha1"
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
LABEL_TJ = "rayrelay.dev/trainingjob"
CREATE_THREADS = 16
TIMER_INTERVAL_S = 10.0  # the chart's default (RAYRELAY_TIMER_INTERVAL_SECONDS unset)
GOALS = {500: 1.0, 2000: 2.0}  # p99 create -> RayJob, seconds
RSS_GOAL_MIB = 250.0
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""


def envtest_assets() -> Path:
    """The control plane's binaries, found the way ``make test`` finds them."""
    out = subprocess.run(
        [str(ROOT / "hack" / "envtest.sh")], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.strip()
    if not out or not Path(out, "kube-apiserver").exists():
        raise SystemExit(
            "control plane: no envtest binaries (hack/envtest.sh printed nothing; see docs/install.md)"
        )
    return Path(out)


# ------------------------------------------------------------------ watcher process


def watch_main(kubeconfig: str, namespace: str, n: int, out: Path, ready: Path, timeout_s: float) -> None:
    """Record the arrival time of each RayJob and of each TrainingJob's reconciled status."""
    from kubernetes import client, config, watch

    api = client.CustomObjectsApi(config.new_client_from_config(kubeconfig))
    rayjob_at: dict[str, float] = {}
    rayjobs_per_tj: Counter[str] = Counter()
    reconciled_at: dict[str, float] = {}
    done = threading.Event()

    def rayjob_event(obj: dict[str, Any], kind: str, now: float) -> None:
        tj = ((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_TJ)
        if kind == "ADDED" and tj:
            rayjob_at.setdefault(tj, now)
            rayjobs_per_tj[tj] += 1

    def tj_event(obj: dict[str, Any], kind: str, now: float) -> None:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        if status.get("rayJob") and (status.get("observedGeneration") or 0) >= (meta.get("generation") or 1):
            reconciled_at.setdefault(meta["name"], now)

    def follow(group: str, version: str, plural: str, on_event: Any) -> None:
        # List first, then watch from its resourceVersion: nothing created after `ready` is missed.
        rv = api.list_namespaced_custom_object(group, version, namespace, plural)["metadata"][
            "resourceVersion"
        ]
        started.release()
        while not done.is_set():
            for ev in watch.Watch().stream(
                api.list_namespaced_custom_object,
                group,
                version,
                namespace,
                plural,
                resource_version=rv,
                timeout_seconds=60,
            ):
                now = time.time()
                obj = ev["object"]
                rv = obj["metadata"]["resourceVersion"]
                on_event(obj, ev["type"], now)
                if len(rayjob_at) >= n and len(reconciled_at) >= n:
                    done.set()
                if done.is_set():
                    return

    started = threading.Semaphore(0)
    threads = [
        threading.Thread(target=follow, args=(RAY_GROUP, RAY_VERSION, "rayjobs", rayjob_event), daemon=True),
        threading.Thread(target=follow, args=(GROUP, VERSION, "trainingjobs", tj_event), daemon=True),
    ]
    for t in threads:
        t.start()
    for _ in threads:
        started.acquire()
    ready.write_text("ready")
    done.wait(timeout_s)
    out.write_text(
        json.dumps(
            {"rayjob_at": rayjob_at, "rayjobs_per_tj": dict(rayjobs_per_tj), "reconciled_at": reconciled_at}
        )
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ audit log


class StoreLog:
    """The artifact store's own request log: every request moto's server answers, with its time.

    Installed as a WSGI wrapper around the server's application, so it counts what reached
    the store (from any client), not what the operator thinks it sent.
    """

    def __init__(self, server: Any) -> None:
        self.entries: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        app = server._server.app  # werkzeug's server reads .app per request

        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            with self._lock:
                self.entries.append((time.time(), str(environ.get("REQUEST_METHOD"))))
            return app(environ, start_response)

        server._server.app = counted

    def between(self, since: float, until: float) -> Counter[str]:
        with self._lock:
            return Counter(method for at, method in self.entries if since <= at < until)


def audit_requests(path: Path, user: str, since: float, until: float) -> list[dict[str, Any]]:
    """The requests USER made that the API server received in [since, until), one per audit ID."""
    from datetime import datetime

    seen: dict[str, dict[str, Any]] = {}
    with path.open() as f:
        for line in f:
            ev = json.loads(line)
            if (ev.get("user") or {}).get("username") != user or ev["auditID"] in seen:
                continue
            at = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if since <= at < until:
                seen[ev["auditID"]] = ev
    return list(seen.values())


def request_kind(ev: dict[str, Any]) -> str:
    ref = ev.get("objectRef") or {}
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{ev['verb']} {ref.get('resource', ev.get('requestURI', '?'))}{sub}"


def submits(requests: list[dict[str, Any]]) -> Counter[int]:
    """The operator's RayJob creates by response code (201 created, 409 already there)."""
    return Counter(
        int((ev.get("responseStatus") or {}).get("code") or 0)
        for ev in requests
        if ev["verb"] == "create" and (ev.get("objectRef") or {}).get("resource") == "rayjobs"
    )


# ------------------------------------------------------------------ one scale


def start_watcher(plane: Any, ns: str, n: int, out: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    """The watcher subprocess (``watch_main``) on namespace ``ns``, once its watches are open."""
    ready = out.with_suffix(".ready")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "bench.control_plane", "--watch", str(plane.kubeconfig), ns, str(n)]
        + [str(out), str(ready), str(timeout_s)],
        cwd=ROOT,
        env=bench_env(),
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if watcher.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the watcher did not start")
        time.sleep(0.1)
    return watcher


def create_trainingjobs(api: Any, ns: str, n: int) -> dict[str, float]:
    """N TrainingJobs (examples/trainingjob.yaml, renamed) from CREATE_THREADS threads: name -> when its 201 came."""
    from tests.cluster.chart_operator import trainingjob

    template = trainingjob("tj", gpus=0, workers=2)  # parsed once: 10,000 YAML loads took ~1 min
    bodies = []
    for i in range(n):
        body = copy.deepcopy(template)
        body["metadata"].update(name=f"tj-{i:04d}", namespace=ns)
        bodies.append(body)
    created: dict[str, float] = {}

    def create(body: dict[str, Any]) -> None:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", body)
        created[body["metadata"]["name"]] = time.time()

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, bodies))
    return created


def running_phase(
    api: Any, ns: str, n: int, audit_log: Path, user: str, store_log: StoreLog, window_s: float
) -> dict[str, Any]:
    """The steady state of N *running* TrainingJobs: KubeRay's part played (every RayJob's status
    set to RUNNING with a RayCluster name, as its controller writes it), then, once every
    TrainingJob says Training, what the operator sends to the API server and the store over
    ``window_s`` while nothing changes (the issue's goal: no API write, at most one store
    request per TrainingJob per minute)."""
    names = [
        i["metadata"]["name"]
        for i in api.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayjobs")["items"]
    ]

    def run(name: str) -> None:
        status = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "rayClusterName": f"{name}-rc"}
        api.patch_namespaced_custom_object_status(
            RAY_GROUP, RAY_VERSION, ns, "rayjobs", name, {"status": status}
        )

    started = time.time()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(run, names))
    deadline = time.monotonic() + 120
    training = 0
    while time.monotonic() < deadline:
        items = api.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs")["items"]
        training = sum((i.get("status") or {}).get("phase") == "Training" for i in items)
        if training >= n:
            break
        time.sleep(0.5)
    all_training = time.time()
    time.sleep(window_s)
    end = time.time()
    reqs = audit_requests(audit_log, user, all_training, end)
    writes = [ev for ev in reqs if ev["verb"] not in ("get", "list", "watch")]
    minutes = (end - all_training) / 60
    return {
        "trainingjobs": n,
        "training": training,
        "until_all_training_s": all_training - started,
        "window_s": end - all_training,
        "api_requests_per_tj_per_minute": len(reqs) / n / minutes,
        "api_writes": len(writes),
        "api_requests_by_kind": dict(Counter(request_kind(ev) for ev in reqs).most_common()),
        "store_requests_per_tj_per_minute": sum(store_log.between(all_training, end).values()) / n / minutes,
    }


def remove_trainingjobs(api: Any, ns: str) -> None:
    """Delete every TrainingJob of ``ns`` while no operator runs (their finalizers dropped first)."""
    names = [
        i["metadata"]["name"]
        for i in api.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs")["items"]
    ]

    def remove(name: str) -> None:
        patch = {"metadata": {"finalizers": None}}
        api.patch_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", name, patch)
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", name)

    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(remove, names))


def ceiling_phase(
    plane: Any,
    api: Any,
    release: Any,
    audit_log: Path,
    user: str,
    burst_ns: str,
    n: int,
    work: Path,
    timeout_s: float,
) -> dict[str, Any]:
    """The operator's own ceiling: started on N TrainingJobs that already exist, until all are reconciled.

    The burst's TrainingJobs are removed first, so that the started operator has these N
    to do and nothing else; the creates are not in the figure (they all came before).
    """
    from tests.cluster.chart_operator import start_operator

    ns = "ceiling"
    remove_trainingjobs(api, burst_ns)
    plane.kubectl("create", "namespace", ns)
    create_trainingjobs(api, ns, n)
    out = work / "ceiling.json"
    watcher = start_watcher(plane, ns, n, out, timeout_s)
    op = None
    try:
        started = time.time()
        op = start_operator(release)
        assert op.proc is not None
        pid = op.proc.pid
        op.wait_ready()
        ready_s, cpu_ready = time.time() - started, cpu_s(pid)
        watcher.wait(timeout_s)
        cpu_end = cpu_s(pid)
        seen = json.loads(out.read_text())
        reconciled_at = seen["reconciled_at"]
        done = max(reconciled_at.values()) if len(reconciled_at) >= n else None
        reqs = audit_requests(audit_log, user, started, done or time.time())
        made = submits(reqs)
        return {
            "trainingjobs": n,
            "reconciled": len(reconciled_at),
            "operator_ready_s": ready_s,
            "all_reconciled_s": (done - started) if done else None,
            "all_reconciled_after_ready_s": (done - started - ready_s) if done else None,
            "cpu_ms_per_tj_after_ready": 1000 * (cpu_end - cpu_ready) / n,
            "api_requests_per_tj": len(reqs) / n,
            "submit_calls_per_tj": sum(made.values()) / n,
            "rayjobs_per_tj_max": max(seen["rayjobs_per_tj"].values(), default=0),
        }
    finally:
        if watcher.poll() is None:
            watcher.terminate()
            watcher.wait(30)
        if op is not None:
            op.stop()


def kuberay_phase(plane: Any, api: Any, source_ns: str, timeout_s: float) -> dict[str, Any]:
    """KubeRay's controller alone on the same API server: the operator's RayJobs, created again
    by a minimal client in a namespace of their own, turned into RayClusters."""
    from kubernetes import watch

    ns = "kuberay-bench"
    listed = api.list_namespaced_custom_object("ray.io", "v1", source_ns, "rayjobs")["items"]
    bodies = [
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": i["metadata"]["name"]},
            "spec": i["spec"],
        }
        for i in listed
    ]
    plane.kubectl("create", "namespace", ns)
    plane.start_kuberay(f"--watch-namespace={ns}")
    pid = plane._procs["kuberay-operator"].pid
    time.sleep(2.0)  # its informers synced
    cpu_before = cpu_s(pid)
    cluster_at: dict[str, float] = {}
    stop = threading.Event()

    def follow() -> None:  # RayCluster ADDED arrivals, by owning RayJob
        w = watch.Watch()
        for ev in w.stream(
            api.list_namespaced_custom_object,
            "ray.io",
            "v1",
            ns,
            "rayclusters",
            timeout_seconds=int(timeout_s),
        ):
            owner = next(
                (
                    o["name"]
                    for o in ev["object"]["metadata"].get("ownerReferences") or []
                    if o["kind"] == "RayJob"
                ),
                None,
            )
            if ev["type"] == "ADDED" and owner:
                cluster_at.setdefault(owner, time.time())
            if stop.is_set() or len(cluster_at) >= len(bodies):
                w.stop()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(1.0)  # the watch is open before the first create
    created: dict[str, float] = {}

    def create(body: dict[str, Any]) -> None:
        api.create_namespaced_custom_object("ray.io", "v1", ns, "rayjobs", body)
        created[body["metadata"]["name"]] = time.time()

    start = time.time()
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(create, bodies))
    floor_s = time.time() - start
    follower.join(timeout_s)
    stop.set()
    cpu_used = cpu_s(pid) - cpu_before
    plane.stop_kuberay()
    latencies = [cluster_at[k] - created[k] for k in created if k in cluster_at]
    all_s = (max(cluster_at.values()) - start) if len(cluster_at) >= len(bodies) else None
    return {
        "rayjobs": len(bodies),
        "floor_create_s": floor_s,
        "rayclusters_seen": len(latencies),
        "create_to_raycluster_p50_s": percentile(latencies, 50),
        "create_to_raycluster_p99_s": percentile(latencies, 99),
        "all_rayclusters_s": all_s,
        "cpu_ms_per_rayjob": 1000 * cpu_used / max(1, len(bodies)),
    }


def log_progress(pid: int, since: float, done: threading.Event, every_s: float = 30.0) -> None:
    """A line every ``every_s`` during the burst: the operator's RSS, peak RSS and CPU so far
    (where a large size breaks shows here, before the watcher's result comes)."""
    cpu0 = cpu_s(pid)
    while not done.wait(every_s):
        try:
            log(
                f"control plane: +{time.time() - since:.0f} s: operator RSS {rss_mib(pid):.0f} MiB "
                f"(peak {peak_rss_mib(pid):.0f}), CPU {cpu_s(pid) - cpu0:.1f} s, load {load_average()}"
            )
        except OSError:  # the operator exited; one_scale reports why
            return


def one_scale(
    n: int,
    timeout_s: float,
    profile: Path | None = None,
    running_window_s: float = 0.0,
    burst_only: bool = False,
) -> dict[str, Any]:
    import logging

    from kubernetes import client, config
    from moto.server import ThreadedMotoServer

    from tests.cluster.chart_operator import (
        create_s3_secret,
        install_chart,
        s3_values,
        start_operator,
    )
    from tests.cluster.controlplane import ControlPlane

    work = Path(tempfile.mkdtemp(prefix="rr-cp-"))
    audit_log = work / "audit.log"
    (work / "audit-policy.yaml").write_text(AUDIT_POLICY)
    audit_args = [
        f"--audit-policy-file={work / 'audit-policy.yaml'}",
        f"--audit-log-path={audit_log}",
        "--audit-log-format=json",
    ]
    plane = ControlPlane(envtest_assets(), controller_manager=False, apiserver_args=audit_args)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
    op = watcher = spy = None
    try:
        plane.start()
        plane.kubectl("apply", "-f", str(ROOT / "crds"))
        plane.wait_crds_established(["trainingjobs.rayrelay.dev", "modeldeployments.rayrelay.dev"])
        plane.install_kuberay_crds()
        moto.start()
        store_log = StoreLog(moto)
        host, port = moto.get_host_and_port()
        endpoint, bucket = f"http://{host}:{port}", f"rr-bench-{uuid.uuid4().hex[:8]}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        system_ns, ns = "rayrelay-system", "bench"
        for name in (system_ns, ns):
            plane.kubectl("create", "namespace", name)
        create_s3_secret(plane, system_ns)
        release = install_chart(plane, system_ns, s3_values(endpoint, f"s3://{bucket}/runs"))
        op = start_operator(release)
        op.wait_ready()
        assert op.proc is not None
        pid = op.proc.pid
        user = f"system:serviceaccount:{system_ns}:{release.service_account}"

        out = work / "watch.json"
        watcher = start_watcher(plane, ns, n, out, timeout_s)
        time.sleep(2.0)  # the operator's first passes over nothing are done
        rss_idle = rss_mib(pid)
        # CPU seconds per process: a figure that holds on a shared machine better than latencies do.
        pids = {"operator": pid, **{k: v.pid for k, v in plane._procs.items()}}
        cpu_before = {k: cpu_s(v) for k, v in pids.items()}
        if profile is not None:  # where the operator's time goes (py-spy, sampling its threads)
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(pid),
                    "--format",
                    "speedscope",
                    "--nonblocking",
                    "--threads",
                    "--gil",  # samples that hold the GIL: CPU, not threads waiting on sockets
                ]
                + ["--rate", "50", "-o", str(profile / f"operator-{n}.speedscope.json")]
            )
        load_before = load_average()

        cfg = client.Configuration()
        config.load_kube_config(str(plane.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = CREATE_THREADS
        api = client.CustomObjectsApi(client.ApiClient(cfg))

        log(f"control plane: creating {n} TrainingJobs ({CREATE_THREADS} threads)")
        burst_start = time.time()
        progress_done = threading.Event()
        progress = threading.Thread(target=log_progress, args=(pid, burst_start, progress_done), daemon=True)
        progress.start()
        created = create_trainingjobs(api, ns, n)
        burst_s = time.time() - burst_start
        log(f"control plane: {n} created in {burst_s:.1f} s")
        try:
            watcher.wait(timeout_s)
        except subprocess.TimeoutExpired:
            watcher.terminate()
            watcher.wait(30)
        progress_done.set()
        if not out.exists():
            raise RuntimeError("the watcher wrote no result")
        seen = json.loads(out.read_text())
        rayjob_at, reconciled_at = seen["rayjob_at"], seen["reconciled_at"]
        all_reconciled = max(reconciled_at.values()) if len(reconciled_at) >= n else None
        if all_reconciled is None:
            log(
                f"control plane: only {len(reconciled_at)}/{n} reconciled, {len(rayjob_at)} RayJobs seen "
                f"within {timeout_s:.0f} s; the operator's log ends:\n{op.log[-4000:]}"
            )
        end = all_reconciled or time.time()
        cpu_used = {k: cpu_s(v) - cpu_before[k] for k, v in pids.items()}
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(60)
        # One timer interval (+2 s) more: what the operator does once nothing changes.
        time.sleep(TIMER_INTERVAL_S + 2)
        steady_end = time.time()
        peak = peak_rss_mib(pid)
        rss_end = rss_mib(pid)
        load_after = load_average()
        running = (
            running_phase(api, ns, n, audit_log, user, store_log, running_window_s)
            if running_window_s > 0
            else None
        )
        op.stop()  # KubeRay's phase runs alone
        kuberay = kuberay_phase(plane, api, ns, timeout_s) if plane.has_kuberay and not burst_only else None
        ceiling = None
        if not burst_only:
            log(f"control plane: the operator started on {n} TrainingJobs that exist already")
            ceiling = ceiling_phase(plane, api, release, audit_log, user, ns, n, work, timeout_s)
        burst_reqs = audit_requests(audit_log, user, burst_start, end)
        steady_reqs = audit_requests(audit_log, user, end, steady_end)
        store_burst, store_steady = store_log.between(burst_start, end), store_log.between(end, steady_end)
        all_submits = submits(burst_reqs) + submits(steady_reqs)
        sub_after = sum(submits(steady_reqs).values())
        by_kind = Counter(request_kind(ev) for ev in burst_reqs)
        latencies = [rayjob_at[k] - created[k] for k in created if k in rayjob_at]
        return {
            "resources": n,
            "created_burst_s": burst_s,
            "rayjobs_seen": len(latencies),
            "create_to_rayjob_p50_s": percentile(latencies, 50),
            "create_to_rayjob_p99_s": percentile(latencies, 99),
            "create_to_rayjob_max_s": max(latencies) if latencies else None,
            "all_reconciled_s": (all_reconciled - burst_start) if all_reconciled else None,
            "all_reconciled_after_last_create_s": (all_reconciled - burst_start - burst_s)
            if all_reconciled
            else None,
            "reconciled": len(reconciled_at),
            "api_requests_per_tj": len(burst_reqs) / n,
            "api_requests_by_kind": dict(by_kind.most_common()),
            "steady_api_requests_per_tj_per_timer_interval": len(steady_reqs)
            / n
            * TIMER_INTERVAL_S
            / (steady_end - end),
            "steady_api_requests_by_kind": dict(
                Counter(request_kind(ev) for ev in steady_reqs).most_common()
            ),
            "submit_calls": sum(all_submits.values()),
            "submit_calls_per_tj": sum(all_submits.values()) / n,
            "submit_calls_by_code": {str(k): v for k, v in sorted(all_submits.items())},
            "submit_calls_after_all_reconciled": sub_after,
            "rayjobs_per_tj_max": max(seen["rayjobs_per_tj"].values(), default=0),
            "store_requests_per_tj": sum(store_burst.values()) / n,
            "store_requests_by_method": dict(store_burst.most_common()),
            "steady_store_requests_per_tj_per_minute": sum(store_steady.values())
            / n
            * 60
            / (steady_end - end),
            "cpu_ms_per_tj_until_reconciled": {k: 1000 * v / n for k, v in cpu_used.items()},
            "operator_rss_idle_mib": rss_idle,
            "operator_peak_rss_mib": peak,
            "operator_rss_end_mib": rss_end,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "p99_goal_s": GOALS.get(n),
            "p99_goal_met": (percentile(latencies, 99) <= GOALS[n]) if n in GOALS and latencies else None,
            "rss_goal_met": peak <= RSS_GOAL_MIB,
            "running_steady": running,
            "kuberay": kuberay,
            # > 1: the operator took longer than KubeRay / than the API server's floor.
            "all_reconciled_vs_kuberay": ratio(all_reconciled - burst_start, kuberay["all_rayclusters_s"])
            if all_reconciled and kuberay
            else None,
            "all_reconciled_vs_floor": ratio(all_reconciled - burst_start, kuberay["floor_create_s"])
            if all_reconciled and kuberay
            else None,
            "ceiling": ceiling,
            # The operator's own ceiling over the floor (goal <= 1.5): from its process start.
            "ceiling_vs_floor": ratio(ceiling["all_reconciled_s"], kuberay["floor_create_s"])
            if kuberay and ceiling
            else None,
        }
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if watcher is not None and watcher.poll() is None:
            watcher.terminate()
            watcher.wait(30)
        if op is not None:
            op.stop()
            if op.proc is not None and op.proc.returncode not in (0, None, -15):
                log(f"operator exited {op.proc.returncode}: {op.log[-3000:]}")
        moto.stop()
        plane.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 TrainingJobs (a smoke run)")
    parser.add_argument("--sizes", type=int, nargs="+", help="TrainingJob counts (default 500 2000)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per size")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the operator during each burst, into this folder"
    )
    parser.add_argument(
        "--running-window",
        type=float,
        default=65.0,
        help="seconds of the running steady state (every RayJob set RUNNING); 0 skips it",
    )
    parser.add_argument(
        "--burst-only",
        action="store_true",
        help="skip KubeRay's side-by-side and the ceiling phases (a first look at a new size)",
    )
    parser.add_argument(
        "--memory-profile",
        type=Path,
        help="run the operator with RAYRELAY_MEMORY_PROFILE (tracemalloc; slower): its snapshot goes here "
        "(read it with python -m rayrelay_operator.diagnostics DIR/operator.tracemalloc)",
    )
    parser.add_argument(
        "--results-dir", type=Path, help="write control_plane.json here (default bench/results)"
    )
    parser.add_argument("--watch", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watch:
        kubeconfig, ns, n, out, ready, timeout_s = args.watch
        watch_main(kubeconfig, ns, int(n), Path(out), Path(ready), float(timeout_s))
        return
    sizes = args.sizes or ([50] if args.quick else [500, 2000])
    if args.memory_profile:
        from tests.cluster import chart_operator

        args.memory_profile.mkdir(parents=True, exist_ok=True)
        # Every operator this run starts traces its allocations (one file: the last snapshot).
        chart_operator.IMAGE_ENV["RAYRELAY_MEMORY_PROFILE"] = str(
            args.memory_profile.resolve() / "operator.tracemalloc"
        )
    from bench.kernel import cpu_flags

    results = []
    for n in sizes:
        log(f"control plane: {n} TrainingJobs")
        res = one_scale(n, args.timeout, args.profile, args.running_window, args.burst_only)
        cpu = res["cpu_ms_per_tj_until_reconciled"]
        log(
            f"control plane: {n}: create->RayJob p50 {res['create_to_rayjob_p50_s']:.2f}s p99 "
            f"{res['create_to_rayjob_p99_s']:.2f}s, all reconciled {res['all_reconciled_s']}, "
            f"API requests/TJ {res['api_requests_per_tj']:.1f}, submits/TJ {res['submit_calls_per_tj']:.2f}, "
            f"peak RSS {res['operator_peak_rss_mib']:.0f} MiB, load {res['load_average_after']}"
        )
        log(
            f"control plane: {n}: CPU ms/TJ operator {cpu['operator']:.1f} kube-apiserver "
            f"{cpu['kube-apiserver']:.1f} etcd {cpu['etcd']:.1f}; store requests/TJ {res['store_requests_per_tj']:.2f} "
            f"{res['store_requests_by_method']}; steady: API {res['steady_api_requests_by_kind']} per "
            f"{TIMER_INTERVAL_S + 2:.0f} s, store {res['steady_store_requests_per_tj_per_minute']:.2f}/TJ/min"
        )
        r = res["running_steady"]
        if r:
            log(
                f"control plane: {n}: running steady state ({r['training']}/{n} Training, {r['window_s']:.0f} s): "
                f"API {r['api_requests_per_tj_per_minute']:.2f}/TJ/min {r['api_requests_by_kind']}, "
                f"writes {r['api_writes']}, store {r['store_requests_per_tj_per_minute']:.2f}/TJ/min"
            )
        c = res["ceiling"]
        if c:
            log(
                f"control plane: {n}: ceiling: started on {n} existing TrainingJobs, ready {c['operator_ready_s']:.1f}s, "
                f"all reconciled {c['all_reconciled_s']} s from start ({c['all_reconciled_after_ready_s']} after ready), "
                f"{c['cpu_ms_per_tj_after_ready']:.1f} CPU ms/TJ, {c['api_requests_per_tj']:.1f} API requests/TJ, "
                f"submits/TJ {c['submit_calls_per_tj']:.2f}; ceiling/floor {res['ceiling_vs_floor']}"
            )
        if res["kuberay"]:
            k = res["kuberay"]
            log(
                f"control plane: {n}: KubeRay alone: create->RayCluster p99 {k['create_to_raycluster_p99_s']}, "
                f"all {k['all_rayclusters_s']}, floor (creates alone) {k['floor_create_s']:.1f}s; operator/KubeRay "
                f"{res['all_reconciled_vs_kuberay']}, operator/floor {res['all_reconciled_vs_floor']}"
            )
        results.append(res)
    argv = " ".join(sys.argv[1:])
    _write_result(
        "control_plane",
        {
            "settings": {
                "sizes": sizes,
                "api_server": "kube-apiserver v1.35.4 + etcd (envtest binaries, tests/cluster/controlplane.py), "
                "loopback, audit log on; KubeRay's CRDs installed, its controller not running during the "
                "operator's burst, then run alone for the side-by-side phase (kuberay-operator, reconcile "
                "concurrency 1, watching its own namespace)",
                "operator": "`rayrelay operator --all-namespaces --standalone` as the chart runs it (helm install "
                "of charts/rayrelay, its env, its ServiceAccount's token), kuberay backend, default timers "
                f"({TIMER_INTERVAL_S:.0f} s)",
                "store": "moto ThreadedMotoServer (s3://) on loopback, in the driver process",
                "create": f"Python kubernetes client, {CREATE_THREADS} threads, one POST per TrainingJob",
                "latency_clock": "RayJob ADDED arrival at a watcher process (time.time()) minus the create's 201",
                "requests_counted_by": "kube-apiserver audit log (level Metadata), user = the operator's "
                "ServiceAccount",
                "instruction_set": cpu_flags(),
                "cores": os.cpu_count(),
                "command": f"python -m bench.control_plane {argv}".strip(),
                "quick": args.quick,
            },
            "results": results,
        },
        args.results_dir,
    )


if __name__ == "__main__":
    main()
