"""The performance page's control-plane section: the operator on a real kube-apiserver."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, table


def _kuberay_rows(results: list[dict[str, Any]]) -> list[str]:
    """KubeRay's own controller on the same API server, and the floor, beside the operator."""
    rows = [
        [
            str(r["resources"]),
            num(r["all_reconciled_s"], 1),
            num(k["all_rayclusters_s"], 1),
            num(k["create_to_raycluster_p99_s"], 2),
            num(k["floor_create_s"], 1),
            num(k["cpu_ms_per_rayjob"], 1),
            f"{num(r['all_reconciled_vs_kuberay'], 2)}x / {num(r['all_reconciled_vs_floor'], 2)}x",
        ]
        for r in results
        if (k := r.get("kuberay"))
    ]
    if not rows:
        return ["(No KubeRay side-by-side run in these results.)", ""]
    return [
        "Side by side on the same API server: KubeRay's own controller (`kuberay-operator`, one reconcile "
        "worker, run alone after the operator's burst) turning the same RayJobs, created as prebuilt bodies "
        "by a minimal client, into RayClusters; the *floor* is how long those creates alone took.",
        "",
        *table(
            [
                "RayJobs",
                "rayrelay all reconciled s",
                "KubeRay all RayClusters s",
                "KubeRay create→RayCluster p99 s",
                "floor s",
                "KubeRay CPU ms/RayJob",
                "rayrelay / KubeRay, rayrelay / floor",
            ],
            rows,
        ),
    ]


def _ceiling_rows(results: list[dict[str, Any]]) -> list[str]:
    """The operator started on TrainingJobs that exist already, against the floor; the store's own log."""
    rows = [
        [
            str(r["resources"]),
            num(c["operator_ready_s"], 1),
            num(c["all_reconciled_s"], 1),
            num(r.get("ceiling_vs_floor"), 2) + "x (goal ≤ 1.5x)",
            num(c["cpu_ms_per_tj_after_ready"], 1),
            num(c["api_requests_per_tj"], 1),
            f"{num(c['submit_calls_per_tj'], 2)} (max {c['rayjobs_per_tj_max']} RayJob/TJ)",
            f"{num(r.get('store_requests_per_tj'), 2)} / {num(r.get('steady_store_requests_per_tj_per_minute'), 2)}",
        ]
        for r in results
        if (c := r.get("ceiling"))
    ]
    if not rows:
        return []
    return [
        "The operator's own *ceiling*: the burst's TrainingJobs removed, N new ones created while no operator "
        "runs, then the operator started on them; the time from its process start until all are reconciled, "
        "over the floor above. Store requests come from the store's own request log (moto's server), per "
        "TrainingJob in the burst and per TrainingJob per minute in the steady state.",
        "",
        *table(
            [
                "TrainingJobs",
                "operator ready s",
                "all reconciled s (from start)",
                "ceiling / floor",
                "CPU ms/TJ after ready",
                "API requests/TJ",
                "submits/TJ",
                "store requests/TJ burst / steady per min",
            ],
            rows,
        ),
    ]


def control_plane_section(c: dict[str, Any]) -> list[str]:
    s = c["settings"]
    isa = ", ".join(s.get("instruction_set") or []) or "unknown"
    out = [
        "## 4. Control plane",
        "",
        f"API server: {s['api_server']}. Operator: {s['operator']}. Store: {s['store']}. "
        f"Creates: {s['create']}. Latency: {s['latency_clock']}; *reconciled* = the operator wrote a status "
        "recording the RayJob (`status.rayJob`, `observedGeneration`). Requests are counted from the "
        f"{s['requests_counted_by']}: until all were reconciled, and over one timer interval after that "
        "(*steady*); *submits* = the operator's RayJob creates (201 + 409) over both. Goals: p99 ≤ 1 s at 500, "
        f"≤ 2 s at 2,000, peak RSS ≤ 250 MiB. {s.get('cores')} cores shared with other work (load average "
        f"in the table), CPU instruction set: **{isa}**. Command: `{s.get('command')}`.",
        "",
    ]
    rows = []
    for r in c["results"]:
        goal = r.get("p99_goal_met")
        rows.append(
            [
                str(r["resources"]),
                num(r["created_burst_s"], 1),
                num(r["create_to_rayjob_p50_s"], 2),
                num(r["create_to_rayjob_p99_s"], 2)
                + ("" if goal is None else (" (met)" if goal else " (missed)")),
                num(r["all_reconciled_s"], 1),
                num(r["api_requests_per_tj"], 1),
                num(r["steady_api_requests_per_tj_per_timer_interval"], 2),
                f"{num(r['submit_calls_per_tj'], 2)} ({r['submit_calls']})",
                " / ".join(
                    num((r.get("cpu_ms_per_tj_until_reconciled") or {}).get(k), 1)
                    for k in ("operator", "kube-apiserver", "etcd")
                ),
                f"{num(r['operator_rss_idle_mib'], 0)} / {num(r['operator_peak_rss_mib'], 0)}",
                ", ".join(f"{x:.1f}" for x in r.get("load_average_after", [])),
            ]
        )
    out += table(
        [
            "TrainingJobs",
            "create burst s",
            "create→RayJob p50 s",
            "p99 s",
            "all reconciled s (from first create)",
            "API requests/TJ",
            "steady requests/TJ per 10 s",
            "submits/TJ (calls)",
            "CPU ms/TJ operator / apiserver / etcd",
            "operator RSS idle / peak MiB",
            "load average after",
        ],
        rows,
    )
    out += _kuberay_rows(c["results"])
    out += _ceiling_rows(c["results"])
    big = max(c["results"], key=lambda r: r["resources"])
    kinds = ", ".join(f"{k} {v / big['resources']:.2f}" for k, v in big["api_requests_by_kind"].items())
    out += [f"Requests per TrainingJob at {big['resources']}, by verb and resource: {kinds}.", ""]
    for r in c["results"]:
        op_ms = (r.get("cpu_ms_per_tj_until_reconciled") or {}).get("operator")
        if op_ms is None or r.get("p99_goal_s") is None:
            continue
        n = r["resources"]
        out += [
            f"At {n:,}: the operator's own CPU is {op_ms:.0f} ms per TrainingJob, so {n * op_ms / 1000:.0f} s "
            f"for the burst on the one core its interpreter can use: a floor under *all reconciled* even on an "
            f"idle machine. A p99 of {r['p99_goal_s']:.0f} s would need ≤ {1000 * r['p99_goal_s'] / n:.1f} ms "
            f"per TrainingJob; peak RSS {r['operator_peak_rss_mib']:.0f} MiB is "
            f"{'within' if r.get('rss_goal_met') else 'over'} the 250 MiB goal.",
            "",
        ]
    if c.get("notes"):
        out += [*c["notes"], ""]
    return out
