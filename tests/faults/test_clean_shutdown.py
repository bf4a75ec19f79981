"""Clean shutdown (issue 14, item 8): ``rayrelay run`` and ``rayrelay operator`` on SIGTERM.

``rayrelay run`` is started exactly as a user starts it (a subprocess, no
``--ray-address``: it starts its own Ray head) with a TrainingJob long enough
to be mid-training when the signal comes. SIGTERM must stop it as Ctrl-C does:
exit 143 (128 + SIGTERM; Ctrl-C gives 130) promptly, and take down the Ray head
it started with every process of that head's session (GCS, raylet, dashboard,
the job's driver, the Ray Train workers). The figure recorded is the time from
the signal to the exit, and to the last Ray process gone.

The operator's SIGTERM case needs the real control plane and lives with its
fixtures in ``tests/cluster/test_operator_shutdown.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.faults import procs
from tests.faults.results import record
from tests.run_files import training_job_yaml

BIN = Path(sys.executable).parent
# Kubernetes' default terminationGracePeriodSeconds (and the chart's): a pod that has not
# exited by then is SIGKILLed, so a clean stop must fit in it.
GRACE_S = 30.0


def long_training_file(folder: Path, model: str, train: str, validation: str) -> Path:
    """A TrainingJob that trains for many minutes: it is surely running when the signal comes."""
    path = folder / "long.yaml"
    path.write_text(
        training_job_yaml(
            "long-shutdown",
            model,
            train,
            validation,
            hyperparameters="{epochs: 100, batchSize: 8, learningRate: 0.003, maxSeqLength: 32}",
            workers=1,
        )
    )
    return path


def test_rayrelay_run_stops_on_sigterm_and_takes_its_ray_head_down(
    tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    path = long_training_file(tmp_path, tiny_model, *tiny_data)
    log_path = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYRELAY_")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "rayrelay"), "run", "-f", str(path), "--artifacts", str(tmp_path / "artifacts")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    head: procs.Proc | None = None
    started: list[procs.Proc] = []
    try:

        def output() -> str:
            return log_path.read_text(errors="replace")

        deadline = time.monotonic() + 420
        while "long-shutdown: Training" not in output():
            assert proc.poll() is None, f"rayrelay run exited {proc.returncode}:\n{output()[-3000:]}"
            assert time.monotonic() < deadline, f"not Training after 420 s:\n{output()[-3000:]}"
            time.sleep(1)
        (head,) = [p for p in procs.children(proc.pid) if p.name == "ray"]
        # Every Ray process the head started descends from it (the job's driver, which
        # Ray starts in a session of its own, and the Train workers included).
        started = procs.live(procs.descendants(head.pid)) + [head]
        print("at SIGTERM:", sorted((p.sid, p.name, p.cmdline[:80]) for p in started))
        assert len(started) > 3, [p.name for p in started]
        assert any("train_job" in p.cmdline for p in started), "the job's driver runs under the head"

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE_S * 2)
        exited_s = time.monotonic() - t0
        left = procs.wait_gone([p.pid for p in started], timeout=10)
        gone_s = time.monotonic() - t0
        out = output()
        assert code == 128 + signal.SIGTERM, f"exit {code}:\n{out[-3000:]}"
        assert "interrupted (SIGTERM); shutting down" in out and "Ray: stopping the local head" in out, out
        assert exited_s < GRACE_S, f"took {exited_s:.1f}s to exit (the grace period is {GRACE_S:.0f}s)"
        assert left == [], [procs.read(p) for p in left]
        assert procs.session_members(head.pid) == [], "a process of the head's session outlived it"
    finally:
        # Whatever failed, leave no Ray head behind (a SIGKILLed `rayrelay run` would orphan it).
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
        for p in started:
            procs.kill(p.pid)
        if head is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
    record(
        "shutdown_run",
        figures={
            "exit_code": code,
            "exit_seconds": round(exited_s, 2),
            "all_ray_processes_gone_seconds": round(gone_s, 2),
            "ray_processes_at_signal": len(started),
            "ray_processes_left": len(left),
        },
        command="pytest tests/faults/test_clean_shutdown.py",
    )
