"""The performance page's cold-start section: ModelDeployment created to Ready."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, table


def cold_start_section(cs: dict[str, Any]) -> list[str]:
    s = cs["settings"]
    parts = cs["replica_breakdown_median_s"]
    out = [
        "## 5. Cold start",
        "",
        f"Artifacts in {s['store']}; variant {s['variant']} ({num(s['int8_model_mib'])} MiB model), fetched: "
        f"{s['files_fetched']}; empty cache each time; {s['repetitions']} repetitions, medians. End to end: "
        "the product's reconciler + ray backend on a local Ray head, created → phase Ready.",
        "",
    ]
    out += table(
        ["end to end", "seconds"],
        [
            [
                "first ModelDeployment on a fresh cluster (also starts Serve + gateway)",
                num(cs["e2e_first_on_cluster_s"], 1),
            ],
            ["next ModelDeployments (model cold, Serve running)", num(cs["e2e_model_cold_s"], 1)],
            ["of which Ray/Serve orchestration (e2e − replica constructor)", num(cs["orchestration_s"], 1)],
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
    out += table(
        ["replica step (`ModelServer.__init__`)", "seconds"],
        [[label, num(parts.get(k), 3)] for k, label in order],
    )
    return out
