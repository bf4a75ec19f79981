"""What ``variant: auto`` costs a replica's start: the replica constructor with and without timing.

``rayrelay_workloads.serve.model.ModelServer.__init__`` (the whole replica start after
Serve has started the process: manifest, download, digest checks, tokenizer, session,
warm-up and, with auto, the timing of the variants) is run in a fresh process per
repetition on the benchmark model (``bench.model``: MiniLM, fp32 and int8 accepted),
read from its local run folder, in three situations:

- ``int8``: the variant forced, as before auto timed anything;
- ``auto-first``: auto, the first replica on the node (empty node cache: both model
  files are fetched and hashed, both sessions built, 3 + 3 timing batches);
- ``auto-first-openvino``: the same with ``RAYRELAY_OPENVINO_FP32=1``: fp32's graph is
  also compiled by OpenVINO and timed (``fp32-openvino``); the difference to
  ``auto-first`` is what that candidate adds to the first replica's start (OpenVINO's
  import and compile, its batches);
- ``auto-later``: auto, a later replica on the node (its cache holds the set and the
  first replica's choice: the chosen variant is loaded directly, nothing is timed).

``python -m bench.variant_choice [--reps N]`` prints one JSON line per repetition and
writes the medians to ``bench/results/variant_choice.json``; ``make bench`` runs it
(``python -m bench --only variant_choice``) and ``report_section`` renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import write_result

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from rayrelay_workloads.serve.model import ModelServer
imported = time.perf_counter() - t0
uri, variant, cache = sys.argv[1:4]
args = {"name": "m", "spec": {"model": {"manifestUri": uri}, "resources": {"cpus": 2}},
        "manifestUri": uri, "cacheDir": cache}
if variant != "auto":
    args["variant"] = variant
server = ModelServer.func_or_class(args)
info = server.info()
print(json.dumps({"initS": info["coldStart"]["initS"], "variantChoiceS": info["coldStart"]["variantChoiceS"],
                  "variant": info["variant"], "timed": info["variantChoice"]["timed"],
                  "reason": info["variantChoice"]["reason"], "importS": round(imported, 3)}))
"""


def one(manifest: str, variant: str, cache: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, manifest, variant, str(cache)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    from bench.common import load_average
    from bench.model import ensure_run
    from rayrelay_workloads.hardware import instruction_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args()
    if args.quick:
        args.reps = 1
    manifest = str(ensure_run() / "manifest.json")
    rows: dict[str, list[dict[str, object]]] = {
        "int8": [],
        "auto-first": [],
        "auto-first-openvino": [],
        "auto-later": [],
    }
    for _ in range(args.reps):
        for case in rows:
            cache = Path(tempfile.mkdtemp(prefix="rr-variant-"))
            try:
                if case == "auto-later":
                    one(manifest, "auto", cache)  # the first replica on the node
                # fp32-openvino offered only where asked; the others as by default (unset).
                offer = {"RAYRELAY_OPENVINO_FP32": "1" if case == "auto-first-openvino" else ""}
                row = one(manifest, "int8" if case == "int8" else "auto", cache, offer)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            rows[case].append(row)
            print(json.dumps({"case": case, **row}), flush=True)
    summary = {
        case: {
            "median_init_s": round(statistics.median(float(str(r["initS"])) for r in rs), 3),
            "median_variant_choice_s": round(
                statistics.median(float(str(r["variantChoiceS"])) for r in rs), 3
            ),
            "variants": sorted({str(r["variant"]) for r in rs}),
        }
        for case, rs in rows.items()
    }
    print(
        json.dumps(
            {"instruction_set": instruction_set(), "load_average": load_average(), **summary}, indent=1
        )
    )
    timings = sorted({str(r["reason"]) for r in rows["auto-first"]})
    write_result(
        "variant_choice",
        {
            "settings": {
                "repetitions": args.reps,
                "instruction_set": instruction_set(),
                "command": " ".join(["python", "-m", "bench.variant_choice", *sys.argv[1:]]),
            },
            "cases": summary,
            "auto_first_reasons": timings,
            "auto_first_openvino_reasons": sorted({str(r["reason"]) for r in rows["auto-first-openvino"]}),
        },
    )


def report_section(doc: dict[str, Any]) -> list[str]:
    """The ``variant_choice`` section of docs/performance.md (``bench.report``)."""
    s, cases = doc["settings"], doc["cases"]
    labels = {
        "int8": "int8 forced (nothing timed)",
        "auto-first": "auto, first replica on the node (times the variants)",
        "auto-first-openvino": "auto, first replica, fp32-openvino offered too (RAYRELAY_OPENVINO_FP32=1)",
        "auto-later": "auto, later replica (loads the node's recorded choice)",
    }
    lines = [
        "## 10. `variant: auto` at a replica's start",
        "",
        "The replica constructor (manifest, download, digest checks, tokenizer, session, warm-up and, "
        f"with auto, timing each accepted variant) in a fresh process, medians of {s['repetitions']} "
        f"repetitions, on {s.get('instruction_set') or '?'}. Command: `{s['command']}`.",
        "",
        "| case | replica start s | of which the choice s | variant served |",
        "|---|---|---|---|",
    ]
    for case, label in labels.items():
        c = cases.get(case)
        if c:
            lines.append(
                f"| {label} | {c['median_init_s']:.2f} | {c['median_variant_choice_s']:.2f} | "
                f"{', '.join(c['variants'])} |"
            )
    reasons = doc.get("auto_first_reasons") or []
    if reasons:
        lines += ["", "The first replica's reasons, one per repetition:", ""] + [f"- {r}" for r in reasons]
    reasons = doc.get("auto_first_openvino_reasons") or []
    if reasons:
        lines += ["", "With fp32-openvino offered:", ""] + [f"- {r}" for r in reasons]
    return lines + [""]


if __name__ == "__main__":
    main()
