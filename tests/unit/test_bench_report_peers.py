"""The performance page's peer and request-path tables (``bench.report``), from result files.

``bench.endpoint`` and ``bench.request_path`` write JSON that ``bench.report`` turns
into docs/performance.md; these build small result documents of that shape (the
figures are made up, the shape is the benchmarks') and check that the page shows
every contender's figures, the ratio to the best peer, the setting each peer won
with and the request path's steps, and leaves the peer table out of a run without
peers.
"""

from __future__ import annotations

from typing import Any

from bench.sections.endpoint import endpoint_section
from bench.sections.request_path import request_path_section


def _level(rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"throughput_rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0, "loadgen_cpu_s": 0.1}


def endpoint_result(peers: bool) -> dict[str, Any]:
    table = []
    for c, (rr, ks, ml) in {1: (300.0, 400.0, 200.0), 8: (900.0, 600.0, 500.0)}.items():
        row: dict[str, Any] = {
            "concurrency": c,
            "rayrelay": _level(rr, 3.0, 6.0),
            "naive": _level(50.0, 20.0, 40.0),
            "throughput_ratio": rr / 50.0,
            "p99_ratio": 6.0 / 40.0,
            "p50_delta_ms": -17.0,
        }
        if peers:
            row |= {
                "kserve": _level(ks, 2.5, 5.0),
                "mlserver": _level(ml, 4.0, 8.0),
                "best_peer": "kserve",
                "peer_throughput_ratio": rr / ks,
                "peer_p50_delta_ms": 0.5,
                "peer_p99_ratio": 1.2,
            }
        table.append(row)
    answers = {"texts": 24, "labels_differ": 0, "max_abs_probability_diff": 0.0}
    settings: dict[str, Any] = {
        "rayrelay": {
            "variant": "int8",
            "replicas": 2,
            "cpus_per_replica": 1,
            "max_batch_size": 32,
            "batch_wait_timeout_ms": 5,
            "intra_op_threads": "default rule",
            "protocol": "OIP",
        },
        "naive": {"server": "Flask", "runtime": "PyTorch", "threads": 2},
        "requests_per_level": 400,
        "time_bound_s": 15.0,
        "repetitions": 3,
        "instruction_set": ["avx2", "avx512_vnni"],
        "answer_tolerance": 1e-4,
    }
    if peers:
        settings["peers"] = {
            "kserve": {
                "server": "KServe ModelServer",
                "pins": ["kserve==0.21.0"],
                "setting": "workers 2",
                "workers": 2,
                "threads_per_worker": 1,
                "answers": answers,
            },
            "mlserver": {
                "server": "MLServer",
                "pins": ["mlserver==1.7.1"],
                "setting": "parallel_workers 2",
                "workers": 2,
                "threads_per_worker": 1,
                "answers": answers,
            },
        }
    sweep = [
        {
            "peer": "kserve",
            "setting": "workers 2",
            "geomean_rps": 490.0,
            "answers": answers,
            "levels": {c: _level(400.0, 2.5, 5.0) for c in ("1", "8", "32")},
        }
    ]
    return {
        "settings": settings,
        "table": table,
        "peer_sweep": sweep if peers else [],
        "load_average_at_end": [1.0],
    }


def test_the_peer_table_shows_every_contender_and_the_ratio_to_the_best_peer() -> None:
    page = "\n".join(endpoint_section(endpoint_result(peers=True)))
    assert "### Against KServe's ModelServer and MLServer" in page
    assert "| 1 | 300 (3.0 / 6.0) | 400 (2.5 / 5.0) | 200 (4.0 / 8.0) | kserve | **0.75×** |" in page
    assert "| 8 | 900 (3.0 / 6.0) | 600 (2.5 / 5.0) | 500 (4.0 / 8.0) | kserve | **1.50×** |" in page
    assert "setting **workers 2**" in page and "setting **parallel_workers 2**" in page
    assert "| kserve | workers 2 | 400 (2.5 / 5.0) |" in page  # the sweep table
    assert "avx512_vnni" in page


def test_a_run_without_peers_has_no_peer_table() -> None:
    page = "\n".join(endpoint_section(endpoint_result(peers=False)))
    assert "Against KServe" not in page
    assert "| 1 | 300.0 | 50.0 |" in page  # the naive table is still there


def test_the_request_path_table() -> None:
    steps = {
        name: {"p50_ms": ms, "mean_ms": ms, "p90_ms": ms}
        for name, ms in (("tokenize", 0.05), ("onnxruntime", 1.5))
    }
    result = {
        "settings": {
            "requests_per_step": 500,
            "instruction_set": ["avx2"],
            "replica": {"variant": "int8", "threads": [1, 1]},
        },
        "steps": steps,
        "model_ms": 1.55,
        "handler_ms": 1.9,
        "end_to_end_c1_p50_ms": {"rayrelay": 4.2, "kserve": 2.4, "naive": 20.0},
        "outside_ms": {"rayrelay": 2.3, "kserve": 0.85, "naive": 18.45},
        "live_c1": {
            "requests": 1000,
            "errors": 0,
            "p50_ms": 4.1,
            "p99_ms": 9.0,
            "cpu_ms_per_request": {"HAProxy": 0.2, "model replicas": 4.0, "other": 3.0},
            "route_cpu_ms_per_request": 4.2,
        },
        "load_average_at_end": [1.0],
        "levers": [
            {
                "lever": "user code on Serve's loop",
                "ray_env": ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0"],
                "p50_ms": 3.9,
                "p99_ms": 8.0,
                "cpu_ms_per_request": {"model replicas": 3.5},
                "route_cpu_ms_per_request": 3.9,
                "load_average_at_end": [2.0],
            }
        ],
    }
    page = "\n".join(request_path_section(result))
    assert "| onnxruntime | 1.500 | 1.500 |" in page
    assert "| rayrelay | 4.20 | 2.30 |" in page and "| kserve | 2.40 | 0.85 |" in page
    assert "naive" not in page.split("unexplained ms")[1].split("Live")[0]  # the baseline row is left out
    assert "| model replicas | 4.00 |" in page and "**4.20**" in page
    assert (
        "| user code on Serve's loop | `RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0` | 3.90 | 8.0 | 3.50 | 3.90 | 2.0 |"
        in page
    )


def test_the_page_names_each_machine_with_the_benchmarks_that_ran_on_it() -> None:
    from bench.report import machines_line

    xeon = {"nproc": 2, "cpu": "Intel(R) Xeon(R) Processor", "memory_gib": 23.5, "os": "Linux"}
    epyc = {**xeon, "cpu": "AMD EPYC"}
    docs: dict[str, Any] = {
        "kernel": {"machine": epyc},
        "control_plane": {"machine": xeon},
        "embeddings": {"machine": xeon},
        "run": {"commands": []},
        "textgen": [{"machine": epyc}],  # a result file that is a list has no machine of its own
    }
    line = machines_line(docs, xeon)
    assert line.startswith("Machines ")
    assert "2 CPUs (Intel(R) Xeon(R) Processor), 23.5 GiB memory: control_plane, embeddings; " in line
    assert line.endswith("2 CPUs (AMD EPYC), 23.5 GiB memory: kernel; no GPU.")
    one = machines_line({"kernel": {"machine": epyc}}, epyc)
    assert one == "Machine: 2 CPUs (AMD EPYC), 23.5 GiB memory, no GPU, Linux."
