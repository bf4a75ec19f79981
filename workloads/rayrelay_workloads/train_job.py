"""Entrypoint of a TrainingJob run, launched by the operator's backends as a Ray job.

``python -m rayrelay_workloads.train_job --job-json '<JobDocument JSON>'`` (or
``--job-file PATH``) connects to the job's Ray cluster (``ray.init()`` picks up
RAY_ADDRESS or the cluster it runs in; ``--ray-address`` overrides) and runs
``pipeline.run_pipeline``. Exit code 0 on success; on failure one line
``rayrelay: <Reason>: <message>`` on stderr and exit code 1 (2 for a bad job
document). ``failure.json`` in the run folder carries the same reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from rayrelay_core.runs import JobDocument


def parse_job(args: argparse.Namespace) -> JobDocument:
    raw = Path(args.job_file).read_text() if args.job_file else args.job_json
    return JobDocument.model_validate_json(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayrelay_workloads.train_job", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--job-json", help="the JobDocument as JSON")
    source.add_argument("--job-file", help="a file holding the JobDocument JSON")
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or auto)"
    )
    args = parser.parse_args(argv)
    try:
        job = parse_job(args)
    except (OSError, ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()
        print(f"rayrelay: InvalidJob: {' '.join(first[:3])}", file=sys.stderr)
        return 2

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from rayrelay_workloads.pipeline import PipelineError, run_pipeline

    # Without --ray-address, Ray Train connects when training starts (RAY_ADDRESS or the job's
    # cluster), so bad data or an unreachable store fail fast without waiting on Ray.
    if args.ray_address and not ray.is_initialized():
        ray.init(address=args.ray_address, log_to_driver=True)
    try:
        manifest = run_pipeline(job)
    except PipelineError as exc:
        print(f"rayrelay: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    print(f"rayrelay: Succeeded: run {manifest.run_id}, recommended variant {manifest.recommended_variant}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
