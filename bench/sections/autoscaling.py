"""Section 6 of the performance page: the replica count under a step load and from zero."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

from bench.sections.cells import num, table

AUTOSCALING_STEPS = [
    ("serve_start_s", "Serve: decision, replica actor process, imports (request sent → constructor starts)"),
    ("manifest_s", "manifest read + store client"),
    ("download_s", "artifact download (S3)"),
    ("verify_s", "digest check (sha256 of every file, cached ones too)"),
    ("tokenizer_s", "tokenizer load"),
    ("session_s", "onnxruntime session creation"),
    ("warmup_s", "warm-up inference"),
    (
        "ready_to_answer_s",
        "replica ready → answer (Serve marks it running, the proxy routes the held request)",
    ),
    ("total_s", "**first request after scale-to-zero, sent → answered**"),
]


def autoscaling_section(a: dict[str, Any], doc: Path | None = None) -> list[str]:
    st, spec = a["step_load"], a["spec_autoscaling"]
    png = None
    if doc is not None:
        from bench.autoscaling import plot_png

        tl = a["timeline"]
        png = plot_png(
            tl["samples"],
            doc.parent / "autoscaling.png",
            (tl["load_start_s"], tl["load_stop_s"]),
            spec["maxReplicas"],
        )
    out = [
        "## 6. Autoscaling",
        "",
        f"{a['model']}; one replica = {a['resources']['cpusPerReplica']} Ray CPU (the head offers "
        f"{a['resources']['ray_num_cpus']} on this 2-core machine, so more replicas add no real compute here: "
        "what is measured is how the replica count follows the load). Spec: `autoscaling: "
        + json.dumps(spec, separators=(", ", ": "))
        + "`. Serve's REST API sampled every 0.5 s; load: closed-loop clients on the one-hop v2 route. "
        f"Load average at the end: {', '.join(str(x) for x in a.get('load_average_end', []))}.",
        "",
    ]
    if png is not None:
        out += [
            f"![replicas over time]({png.name})",
            "",
            "Grey band: the load is on; blue: RUNNING replicas; orange: the autoscaler's target; "
            f"vertical grid every 10 s, horizontal every replica (0 to {spec['maxReplicas']}).",
            "",
        ]
    out += (
        []
        if "max_running_replicas" not in st
        else table(  # not with --cold-only
            ["step load", "value"],
            [
                ["concurrent clients, load duration", f"{st['concurrency']}, {num(st['load_s'], 0)} s"],
                ["most RUNNING replicas", str(st["max_running_replicas"])],
                ["load start → 2nd replica RUNNING", f"{num(st['scale_up_to_2_s'])} s"],
                ["load start → most replicas RUNNING", f"{num(st['scale_up_to_max_s'])} s"],
                [
                    "load stop → target back to 1 (downscaleDelaySeconds "
                    f"{num(spec['downscaleDelaySeconds'], 0)} + window {num(spec['metricsWindowSeconds'], 0)})",
                    f"{num(st['scale_down_target_to_1_s'])} s",
                ],
                ["load stop → one replica left running", f"{num(st['scale_down_running_to_1_s'])} s"],
                ["requests, errors", f"{st['requests']}, {st['errors']}"],
                ["throughput under load", f"{num(st['throughput_rps'])} requests/s"],
            ],
        )
    )
    out += [
        "Scale to zero: Ray 2.58 honours `min_replicas: 0` for applications deployed through Serve's REST "
        "API (how the `ray` backend and `rayrelay run` deploy): the deployment went to zero replicas after "
        "`scaleToZeroAfterSeconds`, and each first request below was held by Serve's proxy and answered "
        "(ray#59076 did not reproduce on this path). The breakdown comes from the replica's own record "
        "(`ModelServer.info()['coldStart']`); the Serve row is everything before the replica's constructor.",
        "",
    ]
    colds = a["cold_starts"]
    pre = a.get("cold_starts_preloaded") or []
    head = (
        ["cold start from zero (seconds)"]
        + [f"#{i + 1} ({c['node_cache']} cache)" for i, c in enumerate(colds)]
        + ["warm median"]
        + [f"preloaded #{i + 1}" for i in range(len(pre))]
        + (["preloaded median"] if pre else [])
    )
    pre_median = a.get("cold_start_warm_median_preloaded") or {}

    def row(label: str, key: str) -> list[str]:
        cells = [label] + [num(c.get(key), 3) for c in colds] + [num(a["cold_start_warm_median"].get(key), 3)]
        if pre:
            cells += [num(c.get(key), 3) for c in pre] + [num(pre_median.get(key), 3)]
        return cells

    rows = [row(label, key) for key, label in AUTOSCALING_STEPS]
    # How long the previous replica took to go (the idle wait before each cold start): Serve's
    # scaleToZeroAfterSeconds, then the stopping replica's drain (serveconfig.SERVE_REQUEST_PATH_ENV).
    rows.append(
        row(
            "before it: previous cold start's answer → zero replicas listed (idle delay, then the drain; #1 follows the step load and found zero already)",
            "waited_for_zero_s",
        )
    )
    for label, cell in (
        ("bytes downloaded", lambda c: f"{c['downloaded_bytes']:,}"),
        ("HTTP status", lambda c: str(c["status"])),
    ):
        rows.append(
            [label] + [cell(c) for c in colds] + [""] + ([cell(c) for c in pre] + [""] if pre else [])
        )
    out += table(head, rows)
    if pre:
        gain = (a["cold_start_warm_median"].get("total_s") or 0) - (pre_median.get("total_s") or 0)
        out += [
            '"preloaded" (`python -m bench.autoscaling --preloaded`): the same warm cold starts on a second Ray '
            "head, measured in the same run, whose idle worker processes import "
            f"`{a['preload_modules']}` before they take work (Ray's `RAY_preload_python_modules`). "
            + (
                f"It saved {num(gain, 2)} s at the median."
                if gain > 0.2
                else f"It did not shorten the cold start here (median {num(-gain, 2)} s longer), so rayrelay does "
                "not set it: the seconds before the replica's constructor are not those imports, or the "
                "replica's actor does not get a preloaded worker (not resolved)."
            ),
            "",
        ]
    out += serve_steps_table(
        colds, a.get("cold_start_serve_steps_warm_median") or {}, a.get("serve_defaults_baseline") or {}
    )
    return out


SERVE_STEPS = {
    "sent->decision": "request sent → controller decides to start a replica (its log)",
    "decision->replica_started": "→ controller starts the replica actor",
    "replica_started->worker_spawned": "→ raylet starts a worker process for it",
    "worker_spawned->core_worker_up": "→ the worker's core worker is up (interpreter, `import ray`)",
    "core_worker_up->actor_task_started": "→ the actor's creation task starts",
    "actor_task_started->constructor_started": "→ replica constructor starts (`import ray.serve`, the "
    "deployment's module, Serve's replica set-up)",
    "constructor_started->constructor_done": "→ constructor done (the replica's own steps above)",
    "constructor_done->controller_saw_running": "→ controller logs the replica running (reconfigure, "
    "first health check, its loop)",
    "controller_saw_running->answered": "→ the held request answered",
}


def serve_steps_table(
    colds: list[dict[str, Any]], medians: dict[str, Any], baseline: dict[str, Any] | None = None
) -> list[str]:
    """Serve's part of each cold start, step by step, from the processes' own log stamps
    (``bench.autoscaling.serve_timeline``); nothing for results written before it existed.
    ``baseline``: the same cold starts with Serve's own metric intervals, run after these in
    the same ``make bench`` (``bench.common.serve_defaults_baseline``), as a last column."""
    if not any(c.get("serve_steps") for c in colds):
        return []
    b = baseline or {}
    base = b.get("cold_start_serve_steps_warm_median") or {}
    head = (
        ["Serve's part, step by step (seconds)"]
        + [f"#{i + 1}" for i in range(len(colds))]
        + ["warm median"]
        + (["baseline: Serve's own intervals, warm median"] if base else [])
    )
    rows = [
        [label]
        + [num((c.get("serve_steps") or {}).get(key), 3) for c in colds]
        + [num(medians.get(key), 3)]
        + ([num(base.get(key), 3)] if base else [])
        for key, label in SERVE_STEPS.items()
    ]
    if base:
        totals = [c.get("total_s") for c in colds]
        warm_total = median([t for t in totals[1:] if isinstance(t, int | float)] or [float("nan")])
        rows.append(
            ["**first request after scale-to-zero, sent → answered**"]
            + [num(t, 3) for t in totals]
            + [num(warm_total, 3), num(b["cold_start_warm_median"].get("total_s"), 3)]
        )
    rows.append(
        ["a new worker process started for the replica"]
        + [str(c.get("new_worker_process", "-")) for c in colds]
        + [""]
        + ([""] if base else [])
    )
    lines = table(head, rows)
    if base:
        totals_b = ", ".join(num(t, 2) for t in b["totals_s"])
        lines += [
            f"Baseline column: `{b['command']}` (the scale-from-zero settings below undone: Serve's "
            "record factor 0.2 and a push every quarter of the window), run right after this run's cold "
            f"starts on a head of its own; its cold starts (the first with an empty node cache): {totals_b} s; "
            f"load average at its end {b.get('load_average_end')}.",
            "",
        ]
    return lines + [
        "Serve's part comes from the stamps the processes log themselves (`python -m bench.autoscaling "
        "--cold-only`: the cold starts without the step load): the controller's decision and replica start "
        "(serve/controller_*.log), the raylet starting the replica's worker process (raylet.out), that "
        "worker's core worker and actor creation (python-core-worker-*.log), the replica's own record, the "
        "controller logging it running. Rule (`rayrelay_core.serveconfig`): a request that finds zero "
        "replicas reaches the controller at a handle's next push of its recorded queue, so rayrelay records "
        "every 1/100 of the metrics window (`RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR=0.01` on "
        "the head `rayrelay run` starts and on every RayService pod) and, for `minReplicas: 0`, pushes every "
        "0.25 s (`metrics_interval_s`; a quarter of the window otherwise).",
        "",
    ]
