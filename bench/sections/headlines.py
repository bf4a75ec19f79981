"""The performance page's headline bullets, one per benchmark that ran."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, ratio


def headlines(docs: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    k = docs.get("kernel")
    if k:
        for row in k["grid"]:
            if row["contender"] == "ort-int8" and row["batch"] == 8 and row["seq"] == 128:
                lines.append(
                    f"- **Kernel**: onnxruntime int8 is **{ratio(row['speedup_vs_pytorch'])}** PyTorch eager fp32 "
                    f"at batch 8 × sequence 128 (p50 {num(row['p50_ms'])} ms), "
                    f"accuracy {k['accuracy']['ort-int8']:.4f} vs {k['accuracy']['pytorch']:.4f}."
                )
    e = docs.get("endpoint")
    if e:
        parts = [
            f"{ratio(r['throughput_ratio'])} at concurrency {r['concurrency']}"
            for r in e["table"]
            if r["concurrency"] in (8, 32)
        ]
        lines.append(
            f"- **Endpoint**: rayrelay (int8, batching) vs the naive Flask server, throughput {', '.join(parts)}."
        )
        if e["settings"].get("peers"):
            vs = ", ".join(
                f"{ratio(r.get('peer_throughput_ratio'))} at c{r['concurrency']} (best: {r.get('best_peer')})"
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
            f"{ratio(s['ray-1w']['end_to_end_overhead_x'])} (1 worker), {ratio(s['ray-2w']['end_to_end_overhead_x'])} "
            f"(2 workers); step loop only: {ratio(s['ray-1w']['loop_overhead_x'])} and "
            f"{ratio(s['ray-2w']['loop_overhead_x'])}."
        )
    c = docs.get("control_plane")
    if c:
        big = max(c["results"], key=lambda r: r["resources"])
        lines.append(
            f"- **Control plane** (real kube-apiserver): {big['resources']} TrainingJobs at once: create → RayJob "
            f"p99 **{num(big['create_to_rayjob_p99_s'], 2)} s** (p50 {num(big['create_to_rayjob_p50_s'], 2)} s), "
            f"all reconciled in {num(big['all_reconciled_s'])} s, {num(big['submit_calls_per_tj'], 2)} submits and "
            f"{num(big['api_requests_per_tj'], 1)} API requests per TrainingJob, operator peak RSS "
            f"{num(big['operator_peak_rss_mib'], 0)} MiB."
        )
    cs = docs.get("cold_start")
    if cs:
        lines.append(
            f"- **Cold start**: ModelDeployment created → Ready in {num(cs['e2e_model_cold_s'])} s "
            f"({num(cs['e2e_first_on_cluster_s'])} s when it also starts Serve); the replica's own work is "
            f"{num(cs['replica_breakdown_median_s'].get('constructor_total'), 2)} s of it."
        )
    a = docs.get("autoscaling")
    if a:
        st, w = a["step_load"], a["cold_start_warm_median"]
        lines.append(
            f"- **Autoscaling**: under a step load of {st['concurrency']} clients, 1 → "
            f"{st['max_running_replicas']} replicas (2nd running after {num(st['scale_up_to_2_s'])} s), target "
            f"back to 1 {num(st['scale_down_target_to_1_s'])} s after the load; from zero, the first request "
            f"answered in **{num(w.get('total_s'), 2)} s** with a warm node cache (goal ≤ 3 s)"
            + (
                f", {num(a['cold_start_warm_median_preloaded'].get('total_s'), 2)} s when Ray's idle workers "
                "preload the serving code"
                if a.get("cold_start_warm_median_preloaded")
                else ""
            )
            + (
                f" ({num(a['serve_defaults_baseline']['cold_start_warm_median'].get('total_s'), 2)} s with "
                "Serve's own metric intervals, same run)"
                if a.get("serve_defaults_baseline")
                else ""
            )
            + f", {st['errors'] + a['cold_start_errors']} errors."
        )
    return lines
