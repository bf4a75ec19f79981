"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks, write results and the page.

Each benchmark runs as its own process (``python -m bench.<name>``), one after
the other, so that none inherits another's threads, Ray instance or memory; a
failing one is recorded and the others still run. The shared fine-tuned model
is built (or found in ``bench/.cache``) first.

A full run writes ``bench/results/<name>.json`` and regenerates
``docs/performance.md``. ``--quick`` is a smoke run (fewer repetitions, shorter
loads, smaller scales) that writes to ``bench/.cache/quick-results/`` and
``bench/.cache/quick-performance.md`` instead, so it never overwrites the
committed figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from bench.common import CACHE, ROOT, apply_env, bench_env, git_revision, log

BENCHMARKS = (
    "kernel",
    "training",
    "control_plane",
    "cold_start",
    "endpoint",
    "request_path",
    "autoscaling",
    "textgen",
    "textgen_batching",
    "textgen_cold_start",
    "embeddings",
    "distillation",
    "pruning",
    "variant_choice",
    "edge",
)
NEEDS_MODEL = {
    "kernel",
    "endpoint",
    "request_path",
    "cold_start",
    "autoscaling",
    "distillation",
    "pruning",
    "variant_choice",
    "edge",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: a couple of minutes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=" | ".join(BENCHMARKS))
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)
    apply_env()
    if args.quick:
        results, doc = CACHE / "quick-results", CACHE / "quick-performance.md"
        os.environ["BENCH_RESULTS_DIR"] = str(results)
    else:
        results, doc = ROOT / "bench" / "results", ROOT / "docs" / "performance.md"
    selected = [b for b in BENCHMARKS if not args.only or b in args.only]
    command = "python -m bench" + (
        " " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    )
    started = time.time()
    status: dict[str, dict[str, object]] = {}

    if NEEDS_MODEL & set(selected):
        from bench.model import ensure_run

        t0 = time.time()
        log(f"model: {ensure_run()} ({time.time() - t0:.0f}s)")

    env = bench_env()
    for name in selected:
        log(f"=== {name}")
        t0 = time.time()
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if args.quick else [])
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout)
            state = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            state = f"timed out after {args.timeout:.0f}s"
        status[name] = {"status": state, "seconds": round(time.time() - t0, 1)}
        log(f"=== {name}: {state} in {time.time() - t0:.0f}s")

    # A partial run (--only) keeps the other benchmarks' previous entries in the run record.
    run_file = results / "run.json"
    before = json.loads(run_file.read_text()) if run_file.is_file() and args.only else {}
    previous = before.get("benchmarks", {})
    # The page says which commands produced it: a full run, then any --only re-runs.
    commands = before.get("commands", [before["command"]] if before.get("command") else [])
    results.mkdir(parents=True, exist_ok=True)
    run_file.write_text(
        json.dumps(
            {
                "command": f".venv/bin/{command}",
                "commands": [*commands, f".venv/bin/{command}"],
                "quick": args.quick,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "git_revision": git_revision(),
                "total_s": round(time.time() - started, 1),
                "benchmarks": {**previous, **status},
                # A partial run keeps the page's note on earlier runs.
                **({"note": before["note"]} if before.get("note") else {}),
            },
            indent=2,
        )
        + "\n"
    )
    from bench.report import render

    log(f"wrote {render(results, doc)}")
    return 0 if all(s["status"] == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
