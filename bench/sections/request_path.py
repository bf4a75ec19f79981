"""The performance page's request-path section: where a lone request's time goes."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, table


def request_path_section(r: dict[str, Any]) -> list[str]:
    """Where a lone request's time goes (issue #30, section 2)."""
    s = r["settings"]
    out = [
        "### Where a lone request's time goes (one-hop route)",
        "",
        "`python -m bench.request_path`: the replica's own steps timed one by one in one process, on the "
        f"product's `ModelServer` class ({s['replica']['variant']}, {s['replica']['threads'][0]} intra-op "
        f"thread, the first validation text, {s['requests_per_step']} calls each, p50), then a live run at "
        "concurrency 1 through HAProxy to the endpoint benchmark's deployment (2 replicas × 1 CPU), with "
        "the CPU each process group spent per request (`/proc`, user + system). "
        f"CPU instruction set: **{', '.join(s.get('instruction_set') or []) or 'unknown'}**; load average "
        f"at the end {', '.join(f'{x:.1f}' for x in r.get('load_average_at_end', []))}.",
        "",
    ]
    out += table(
        ["step", "p50 ms", "mean ms"],
        [[name, num(v["p50_ms"], 3), num(v["mean_ms"], 3)] for name, v in r["steps"].items()],
    )
    e2e = r.get("end_to_end_c1_p50_ms") or {}
    if e2e:
        out += [
            f"The model's own steps (tokenize + onnxruntime + softmax) take {num(r['model_ms'], 2)} ms and "
            f"the whole handler {num(r['handler_ms'], 2)} ms. End-to-end p50 at concurrency 1 in the endpoint "
            "benchmark, and what the timed steps leave unexplained (rayrelay: the route outside the handler; "
            "a peer, running the same model code: its whole framework):",
            "",
        ]
        out += table(
            ["contender", "p50 ms at c1", "unexplained ms"],
            [
                [n, num(v, 2), num((r.get("outside_ms") or {}).get(n), 2)]
                for n, v in e2e.items()
                if n != "naive"
            ],
        )
    live = r.get("live_c1")
    if live:
        out += [
            f"Live at concurrency 1 ({live['requests']} requests, p50 {num(live['p50_ms'], 2)} ms, p99 "
            f"{num(live['p99_ms'], 2)} ms, {live['errors']} errors): CPU ms per request by process group "
            "(`other` is whatever else ran on the machine, left out of the route's sum):",
            "",
        ]
        out += table(
            ["process group", "CPU ms per request"],
            [[g, num(v, 2)] for g, v in live["cpu_ms_per_request"].items()]
            + [["**route total (without other)**", f"**{num(live['route_cpu_ms_per_request'], 2)}**"]],
        )
    levers = r.get("levers") or []
    if levers:
        out += [
            "Levers on the request path (`python -m bench.request_path --no-steps --lever LABEL --ray-env "
            "KEY=VALUE`), each a live run at concurrency 1 of its own, in the order tried; CPU ms per request "
            "of the model replicas is the figure that holds on a loaded machine, latency much less:",
            "",
        ]
        out += table(
            [
                "lever",
                "Ray env",
                "p50 ms",
                "p99 ms",
                "model replicas CPU ms/req",
                "route CPU ms/req",
                "load avg",
            ],
            [
                [
                    lv["lever"],
                    " ".join(f"`{x}`" for x in lv.get("ray_env") or []) or "(none)",
                    num(lv["p50_ms"], 2),
                    num(lv["p99_ms"], 1),
                    num(lv["cpu_ms_per_request"].get("model replicas"), 2),
                    num(lv["route_cpu_ms_per_request"], 2),
                    num((lv.get("load_average_at_end") or [None])[0], 1),
                ]
                for lv in levers
            ],
        )
    return out
