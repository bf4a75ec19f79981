"""The performance page's training section: plain PyTorch against Ray Train."""

from __future__ import annotations

from typing import Any

from bench.sections.cells import num, ratio, table


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
                num(v["samples_per_s"]),
                num(v["loop_samples_per_s"]),
                num(v["wall_s"]),
                ratio(v.get("end_to_end_overhead_x")) if name != "plain" else "1.00×",
                ratio(v.get("loop_overhead_x")) if name != "plain" else "1.00×",
            ]
        )
    out += table(
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
