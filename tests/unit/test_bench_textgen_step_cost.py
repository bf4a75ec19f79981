"""``bench.textgen_batching.step_cost_lines``: the decode step's cost by rows and cached
positions on the performance page (the figures here are made up; the bench measures them
on the published int8 decoder)."""

from __future__ import annotations

from bench.textgen_batching import report_section, step_cost_lines


def rows() -> list[dict[str, float]]:
    out = []
    for b, t, ms in ((1, 16, 1.0), (1, 256, 1.5), (8, 16, 1.6), (8, 256, 10.0)):
        out.append(
            {"rows": b, "cached": t, "step_ms": ms, "kv_mb": 0.1 * b * t, "tokens_per_s": b / ms * 1000}
        )
    return out


def test_an_older_result_reads_as_the_generic_graph() -> None:
    text = "\n".join(step_cost_lines(rows()))
    assert (
        "| cached positions | generic, 1 row(s): ms, cache MB, tokens/s | generic, 8 row(s): ms, cache MB, "
        "tokens/s |" in text
    )
    assert "| 16 | 1.00, 1.6, 1000 | 1.60, 12.8, 5000 |" in text
    assert "| 256 | 1.50, 25.6, 667 | 10.00, 204.8, 800 |" in text
    assert "generic: 8 rows make 5.00x the tokens/s of 1 at 16 cached positions and 1.20x at 256" in text


def test_both_graphs_side_by_side() -> None:
    inplace = [dict(r, graph="in-place", step_ms=r["step_ms"] / 2) for r in rows()]
    for r in inplace:
        r["tokens_per_s"] = r["rows"] / r["step_ms"] * 1000
    generic = [dict(r, graph="generic") for r in rows()]
    text = "\n".join(step_cost_lines(inplace + generic))
    assert "| in-place, 1 row(s): ms, cache MB, tokens/s | in-place, 8 row(s)" in text
    assert "| generic, 1 row(s): ms, cache MB, tokens/s | generic, 8 row(s)" in text
    assert "| 256 | 0.75, 25.6, 1333 | 5.00, 204.8, 1600 | 1.50, 25.6, 667 | 10.00, 204.8, 800 |" in text
    assert "in-place: 8 rows make 5.00x" in text and "; generic: 8 rows make 5.00x" in text


def test_older_results_have_no_step_cost_section() -> None:
    assert step_cost_lines([]) == []
    doc = {
        "summary": {
            "tokens_per_s_ratio_8_vs_1": 3.0,
            "gap_p50_ratio_8_vs_1": 0.0,
            "ttft_ms_p99_at_8": 60.0,
            "vs_pytorch_at_8": 2.5,
        },
        "pytorch": [{"concurrency": 1, "tokens_per_s": 100.0}],
        "levels": [
            {
                "concurrency": 1,
                "tokens_per_s": 300.0,
                "gap_ms_p50": 1.0,
                "ttft_ms_p50": 10.0,
                "ttft_ms_p99": 12.0,
            }
        ],
        "replica_cpus": 1,
        "model": {"layers": 6, "width": 384},
        "new_tokens": 64,
        "rounds": 4,
        "instruction_set": "amx",
        "load_average_before": [0.1],
        "load_average_at_end": [0.2],
        "replica_stats": {"peakBatch": 8, "peakCachedTokens": 816},
    }
    text = "\n".join(report_section(doc))
    assert "Goals (issue 25)" in text and "One decode step alone" not in text
    assert "through Serve's Python proxy (the proxy column" in text and "instead of HAProxy" not in text
    doc["step_cost"] = rows()
    assert "One decode step alone" in "\n".join(report_section(doc))


def test_no_ratio_line_without_both_corners() -> None:
    """A sweep that lacks one row count at the shortest cache prints its table, no ratio."""
    partial = [r for r in rows() if (r["rows"], r["cached"]) != (1, 16)]
    text = "\n".join(step_cost_lines(partial))
    assert "| 16 | - | 1.60, 12.8, 5000 |" in text and "rows make" not in text


def test_the_python_proxy_levels_beside_the_default_ingress() -> None:
    from bench.textgen_batching import python_proxy_lines

    assert python_proxy_lines({}) == []
    doc = {
        "levels_python_proxy": [
            {"concurrency": 1, "tokens_per_s": 650.4},
            {"concurrency": 8, "tokens_per_s": 2400.0},
        ],
        "summary_python_proxy": {
            "tokens_per_s_ratio_8_vs_1": 3.69,
            "tpot_p50_ratio_8_vs_1": 1.8,
            "ttft_ms_p99_at_8": 70.2,
        },
    }
    text = "\n".join(python_proxy_lines(doc))
    assert "tokens/s by streams 1: 650, 8: 2400; 8 streams vs 1 3.69x, time per token at 8 vs 1 1.80x" in text
    assert "TTFT p99 at 8 70 ms" in text
