"""Benchmark: a text-generation replica's cold start, and where it goes (issue 25, section 3).

The decoder of ``bench.textgen`` (6 x 384, random weights; 2 x 128 with ``--quick``) is
published as a ``file://`` artifact set (int8), then:

1. **Constructor in a fresh process** (``replica``), repeated: the import of the module
   Serve's replica loads (``rayrelay_workloads.serve.app``, which brings Ray Serve, the
   gateway and both replica classes), then ``TextGenServer``'s constructor, timed by its own
   record (``info()["coldStart"]``: manifest and digest check, tokenizer, onnxruntime
   session, warm-up generation) plus whether the process imported transformers.
2. **First request after scale-to-zero** (``from_zero``), repeated: one ``TextGenServer``
   (``minReplicas: 0``, 1 CPU) on a local Ray Serve; once Serve released the replica, a
   ``generate`` request is sent and timed to its answer, split with the replica's record
   into Serve's part (request sent -> the constructor starts: the scaling decision, the
   actor's process, the imports), the constructor, and ready -> answered (Serve marks the
   replica running and routes the held request). The node cache is warm (the files were
   fetched when the first replica started).

``python -m bench --only textgen_cold_start`` (or ``python -m bench.textgen_cold_start
[--quick]``); the table goes to docs/performance.md, the before/after figures are in
docs/textgen.md ("Cold start").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    add_baseline_args,
    apply_env,
    bench_env,
    free_port,
    load_average,
    log,
    median,
    serve_defaults_baseline,
    use_serve_default_intervals,
    write_result,
)
from rayrelay_workloads.hardware import instruction_set

apply_env()

NAME = "coldgen"
PROMPT = "Where is my order"

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import rayrelay_workloads.serve.app  # what Serve's replica process imports for the deployment
from rayrelay_workloads.textgen.serving import TextGenServer
imports = time.perf_counter() - t0
args = json.loads(sys.argv[1])
t1 = time.perf_counter()
server = TextGenServer.func_or_class(args)
constructor = time.perf_counter() - t1
record = server.info().get("coldStart") or {}
print(json.dumps({"importsS": imports, "constructorS": constructor, "transformersImported":
    "transformers" in sys.modules, **record}))
"""


def spec(manifest_uri: str) -> dict[str, Any]:
    return {
        "model": {"manifestUri": manifest_uri},
        "resources": {"cpus": 1},
        "generation": {"maxNewTokens": 16, "maxPromptTokens": 64},
        "autoscaling": {
            "minReplicas": 0,
            "maxReplicas": 1,
            "upscaleDelaySeconds": 0,
            "downscaleDelaySeconds": 2,
            "scaleToZeroAfterSeconds": 2,
            "metricsWindowSeconds": 2,
        },
    }


def replica_runs(manifest_uri: str, work: Path, reps: int, quick: bool) -> list[dict[str, Any]]:
    """The constructor in a fresh process, ``reps`` times (the node cache warm after the first)."""
    args = {
        "name": NAME,
        "manifestUri": manifest_uri,
        "variant": "int8",
        "spec": spec(manifest_uri),
        "cacheDir": str(work / "cache"),
        "task": "text-generation",
    }
    runs = []
    for i in range(reps):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(args)],
            cwd=ROOT,
            env=bench_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        log(f"textgen_cold_start: replica {i}: {runs[-1]}")
    return runs


def replicas_of(name: str) -> int:
    from ray import serve

    app = serve.status().applications.get(name)
    if app is None:
        return 0
    return sum(sum(d.replica_states.values()) for d in app.deployments.values())


def from_zero(manifest_uri: str, work: Path, reps: int, quick: bool) -> list[dict[str, Any]]:
    """First ``generate`` after Serve released the only replica, ``reps`` times."""
    import ray
    import requests
    from ray import serve

    from rayrelay_core.api import ModelDeploymentSpec
    from rayrelay_core.serveconfig import SERVE_AUTOSCALING_ENV
    from rayrelay_workloads.serve.app import ModelAppArgs, model_app

    port = free_port()
    # What rayrelay sets where it starts Ray (the head of `rayrelay run`, RayService pods):
    # Serve's handles record queued requests often enough for a fast scale from zero.
    for key, value in SERVE_AUTOSCALING_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    md_spec = ModelDeploymentSpec.model_validate(spec(manifest_uri))
    app_args = ModelAppArgs(
        name=NAME,
        manifest_uri=manifest_uri,
        variant="int8",
        spec=md_spec,
        task="text-generation",
        cache_dir=str(work / "cache"),
    )
    serve.run(model_app(app_args), name=NAME, route_prefix=f"/v2/models/{NAME}")
    handle = serve.get_app_handle(NAME)
    url = f"http://127.0.0.1:{port}/v2/models/{NAME}/generate"
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 4, "temperature": 0}}
    out = []
    try:
        for i in range(reps):
            deadline = time.monotonic() + 180
            while replicas_of(NAME):
                assert time.monotonic() < deadline, "Serve did not scale the deployment to zero"
                time.sleep(0.25)
            time.sleep(0.5)
            sent = time.time()
            t0 = time.perf_counter()
            resp = requests.post(url, json=body, timeout=120)
            total = time.perf_counter() - t0
            # A replica without the record (before issue 25) gives the total only.
            cs = handle.info.remote().result(timeout_s=60).get("coldStart") or {}
            row: dict[str, Any] = {"status": resp.status_code, "total_s": total}
            if cs:
                # (serve.run pickles the deployment class by value, so the module's import
                # stamp is the driver's: Serve's part ends where the constructor starts.)
                row.update(
                    serve_until_constructor_s=cs["initStartedAt"] - sent,
                    constructor_s=cs["initS"],
                    tokenizer_s=cs["tokenizerS"],
                    session_s=cs["sessionS"],
                    warmup_s=cs["warmupS"],
                    ready_to_answer_s=sent + total - (cs["initStartedAt"] + cs["initS"]),
                    tokenizer=cs.get("tokenizer"),
                )
            log(f"textgen_cold_start: from zero {i}: {row}")
            out.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()
    return out


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``textgen_cold_start`` section of docs/performance.md (``bench.report``)."""
    s = doc["summary"]
    base = doc.get("serve_defaults_baseline") or {}

    def sec(value: Any) -> str:
        return f"{value:.2f} s" if isinstance(value, int | float) and value == value else "-"

    def row(label: str, key: str, bold: bool = False) -> str:
        cells = [sec(s[key])] + ([sec(base["summary"].get(key))] if base else [])
        return f"| {label} | " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |"

    tokenizers = sorted({str(r.get("tokenizer")) for r in doc["from_zero"] if r.get("tokenizer")})
    imported = any(r.get("transformersImported") for r in doc["replica"])
    out = [
        "## Text generation: cold start (issue 25)",
        "",
        f"TextGenServer on the {doc['model']['layers']} x {doc['model']['width']} bench decoder (int8, "
        f"1 CPU, warm node cache). Instruction set **{doc['instruction_set']}**; load average before "
        f"{doc['load_average_before']}, after {doc['load_average_at_end']}. Command: "
        "`python -m bench --only textgen_cold_start`.",
        "",
        "| step | median | baseline: Serve's own intervals |" if base else "| step | median |",
        "|---|---|---|" if base else "|---|---|",
        row("imports of the replica's module (Ray Serve included), fresh process", "replica_imports_s"),
        row("constructor, fresh process", "replica_constructor_s"),
        row(
            f"tokenizer load ({', '.join(tokenizers) or '-'}; transformers imported: {imported})",
            "replica_tokenizer_s",
        ),
        row("first generate after scale-to-zero, sent -> answered", "from_zero_s", bold=True),
        row("of which Serve: sent -> constructor starts", "from_zero_serve_until_constructor_s"),
        row("of which the constructor", "from_zero_constructor_s"),
        row("of which ready -> answered", "from_zero_ready_to_answer_s"),
        "",
    ]
    if base:
        totals = ", ".join(sec(t) for t in base["totals_s"])
        out += [
            f"Baseline column: `{base['command']}`, run right after in a process of its own (Serve's "
            "record factor 0.2 and a push every quarter of the window, as before rayrelay's scale-from-zero "
            f"settings); its cold starts from zero: {totals}; load average at its end "
            f"{base.get('load_average_end')}.",
            "",
        ]
    return out + ["Goal (issue 25): first request after scale-to-zero <= 3 s.", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.textgen_cold_start", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true")
    add_baseline_args(parser, "the baseline run with Serve's own intervals (run after this one by default)")
    args = parser.parse_args(argv)
    if args.serve_default_intervals:
        use_serve_default_intervals()
    from bench.textgen import bench_decoder, publish_set

    reps = 2 if args.quick else 4
    work = Path(tempfile.mkdtemp(prefix="rr-bench-textgen-cold-"))
    layers, width, folder = bench_decoder(work, args.quick)
    manifest_uri = publish_set(folder, work)
    result: dict[str, Any] = {
        "instruction_set": instruction_set(),
        "serve_default_intervals": args.serve_default_intervals,
        "model": {"layers": layers, "width": width},
        "load_average_before": load_average(),
        "replica": replica_runs(manifest_uri, work, reps, args.quick),
        "from_zero": from_zero(manifest_uri, work, reps, args.quick),
    }
    warm = result["replica"][1:] or result["replica"]
    nan = float("nan")
    zero = result["from_zero"]
    result["summary"] = {
        "replica_imports_s": median(r["importsS"] for r in warm),
        "replica_constructor_s": median(r["constructorS"] for r in warm),
        "replica_tokenizer_s": median(r.get("tokenizerS", nan) for r in warm),
        "from_zero_s": median(r["total_s"] for r in zero),
        "from_zero_serve_until_constructor_s": median(r.get("serve_until_constructor_s", nan) for r in zero),
        "from_zero_constructor_s": median(r.get("constructor_s", nan) for r in zero),
        "from_zero_ready_to_answer_s": median(r.get("ready_to_answer_s", nan) for r in zero),
    }
    log(f"textgen_cold_start: {result['summary']}")
    if not (args.quick or args.serve_default_intervals or args.no_baseline):
        b = serve_defaults_baseline("bench.textgen_cold_start", [])
        result["serve_defaults_baseline"] = {
            "command": "python -m bench.textgen_cold_start --serve-default-intervals",
            "summary": b["summary"],
            "totals_s": [r.get("total_s") for r in b["from_zero"]],
            "load_average_end": b.get("load_average_at_end"),
        }
        log(f"textgen_cold_start: baseline (Serve's own intervals) {b['summary']}")
    log(
        f"textgen_cold_start: instruction set {result['instruction_set']}, load average before "
        f"{result['load_average_before']}, now {load_average()}"
    )
    log(f"textgen_cold_start: wrote {write_result('textgen_cold_start', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
