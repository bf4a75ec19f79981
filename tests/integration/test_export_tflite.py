"""Issue 29: ``export.targets: [onnx, tflite]`` writes LiteRT models, checked, and they run on their own.

The converter environment comes from the shipped step (``hack/litert_env.py``,
what ``make litert`` runs; cached in ``.venv/litert`` between runs), and so does
the edge environment (``--edge``: ai-edge-litert, tokenizers and numpy only).
``export_all`` runs once on a checkpoint of the suite's tiny BERT (no Ray: the
export step is what differs), then ``publish`` lists the variants. Checked:

- ``tflite/model.tflite`` and ``model.int8.tflite`` exist, the int8 file is
  smaller, and loaded again in the LiteRT interpreter (a separate process, in
  the converter environment) they agree with PyTorch run here on the same rows;
- their accuracy and logit difference are recorded like every other variant's,
  the manifest lists ``fp32-tflite`` / ``int8-tflite`` with file, sha256, size
  and accuracy, and the int8 gate judges ``int8-tflite`` on its own accuracy;
- ``rayrelay edge-check`` (the CLI, as a subprocess) and ``edge_check.py`` in
  the edge environment (where torch and onnxruntime do not import) print
  predictions, latency, and the accuracy the manifest recorded;
- without the environment, the export fails naming how to create it; without
  the target, the converter is never started.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rayrelay_core.api import ExportSpec
from rayrelay_workloads.data import parse_examples
from tests.pipeline_fixtures import LABELS

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 32
ROWS = 32


def shipped_env(*flags: str) -> Path:
    """The environment's Python, built (or found up to date) by the shipped step."""
    done = subprocess.run(
        [sys.executable, str(REPO / "hack" / "litert_env.py"), *flags],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def litert_python() -> Path:
    return shipped_env()


@pytest.fixture(scope="module")
def edge_python() -> Path:
    return shipped_env("--edge")


@pytest.fixture(scope="module")
def checkpoint(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification

    ckpt = tmp_path_factory.mktemp("ckpt-tflite")
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=len(LABELS), ignore_mismatched_sizes=True
    )
    model.save_pretrained(ckpt / "model")
    return ckpt


def validation(tiny_data: tuple[str, str]) -> list[Any]:
    return parse_examples(Path(tiny_data[1]).read_bytes(), "jsonl", tiny_data[1])[:ROWS]


@pytest.fixture(scope="module")
def exported(
    litert_python: Path,
    checkpoint: Path,
    tiny_model: str,
    tiny_data: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    from rayrelay_workloads.export import export_all

    spec = ExportSpec.model_validate({"targets": ["onnx", "tflite"], "parityTolerance": 0.01})
    out = tmp_path_factory.mktemp("tflite-export") / "out"
    return export_all(
        checkpoint, tiny_model, out, spec, MAX_LEN, validation(tiny_data), LABELS, threads=1, bench_repeats=2
    )


@pytest.fixture(scope="module")
def published(
    exported: Any, tiny_model: str, tiny_data: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from rayrelay_workloads.data import DataFile, LoadedData
    from rayrelay_workloads.publish import publish
    from rayrelay_workloads.quality import Int8Decision
    from tests.pipeline_fixtures import tiny_job, tiny_spec

    arts = tmp_path_factory.mktemp("tflite-arts")
    job = tiny_job(
        tiny_spec(tiny_model, *tiny_data, export={"targets": ["onnx", "tflite"]}), f"file://{arts}"
    )
    data = LoadedData(DataFile("t", "0" * 64), DataFile("v", "1" * 64), LABELS)
    decision = Int8Decision(accepted=True, reason=None, recommended_variant="int8")
    return publish(job, exported, data, decision, token="tflite")


@pytest.mark.slow
def test_tflite_files_agree_with_pytorch(
    exported: Any, litert_python: Path, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = exported.out_dir
    assert exported.extra_files == {
        "fp32-tflite": "tflite/model.tflite",
        "int8-tflite": "tflite/model.int8.tflite",
    }
    fp32, int8 = out / "tflite" / "model.tflite", out / "tflite" / "model.int8.tflite"
    assert int8.stat().st_size < fp32.stat().st_size * 0.6  # int8 weights
    assert sorted(p.name for p in (out / "tflite").iterdir()) == ["model.int8.tflite", "model.tflite"]

    # PyTorch here, the .tflite files in the LiteRT interpreter there: same rows, same padding.
    rows = validation(tiny_data)[:8]
    tok = AutoTokenizer.from_pretrained(out / "hf")
    enc = tok(
        [r.text for r in rows], padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="np"
    )
    feed = {k: enc[k] for k in exported.input_names}
    model = AutoModelForSequenceClassification.from_pretrained(out / "hf").eval()
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    np.savez(tmp_path / "feed.npz", **feed)
    script = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        "feed = dict(np.load(sys.argv[2]))\n"
        "run = Interpreter(model_path=sys.argv[1]).get_signature_runner()\n"
        "rows = [list(run(**{k: v[i:i+1].astype(np.int32) for k, v in feed.items()}).values())[0]\n"
        "        for i in range(len(feed['input_ids']))]\n"
        "np.save(sys.argv[3], np.concatenate(rows))\n"
    )
    for name, path in (("fp32-tflite", fp32), ("int8-tflite", int8)):
        target = tmp_path / f"{name}.npy"
        subprocess.run(
            [str(litert_python), "-c", script, str(path), str(tmp_path / "feed.npz"), str(target)], check=True
        )
        diff = float(np.abs(np.load(target) - expected).max())
        limit = 1e-4 if name == "fp32-tflite" else 0.05
        assert diff < limit, (name, diff)
        assert 0.0 <= exported.accuracy[name] <= 1.0
        assert exported.metrics[f"max_abs_logit_diff_{name}"] < limit
    m = exported.metrics
    assert m["tflite_fp32_ms"] > 0 and m["tflite_int8_ms"] > 0 and m["tflite_convert_s"] > 0
    assert m["tflite_stage_s"] >= m["tflite_convert_s"] and m["tflite_seq_len"] == MAX_LEN


@pytest.mark.slow
def test_manifest_lists_tflite_variants(published: Any) -> None:
    manifest, uri = published
    files = {f.path: f for f in manifest.files}
    run_dir = Path(uri[len("file://") :]).parent
    for name, fname in (("fp32-tflite", "model.tflite"), ("int8-tflite", "model.int8.tflite")):
        info = manifest.variants[name]
        assert info.file and info.file.endswith(f"tflite/{fname}") and info.accuracy is not None
        entry = files[info.file]
        assert info.size == entry.size == (run_dir / info.file).stat().st_size
        from rayrelay_core.store import sha256_file

        assert entry.sha256 == sha256_file(run_dir / info.file)
        assert info.accepted is True  # no maxInt8AccuracyDrop set
    body = json.loads(Path(uri[len("file://") :]).read_text())
    assert body["metrics"]["accuracy_int8-tflite"] == manifest.variants["int8-tflite"].accuracy


@pytest.mark.slow
def test_int8_tflite_judged_on_its_own_accuracy(
    exported: Any, tiny_model: str, tiny_data: tuple[str, str]
) -> None:
    """The gate rejects int8-tflite when it drops more than maxInt8AccuracyDrop below fp32-tflite,
    while ONNX int8 (its own decision) stays accepted."""
    import dataclasses

    from rayrelay_workloads.data import DataFile, LoadedData
    from rayrelay_workloads.publish import build_manifest
    from rayrelay_workloads.quality import Int8Decision
    from tests.pipeline_fixtures import tiny_job, tiny_spec

    accuracy = dict(exported.accuracy) | {"fp32-tflite": 0.9, "int8-tflite": 0.8}
    result = dataclasses.replace(exported, accuracy=accuracy)
    spec = tiny_spec(
        tiny_model,
        *tiny_data,
        export={"targets": ["onnx", "tflite"]},
        qualityGate={"maxInt8AccuracyDrop": 0.05},
    )
    data = LoadedData(DataFile("t", "0" * 64), DataFile("v", "1" * 64), LABELS)
    manifest = build_manifest(
        tiny_job(spec, "file:///unused"), result, data, Int8Decision(True, None, "int8"), files=[]
    )
    assert manifest.variants["int8"].accepted is True
    rejected = manifest.variants["int8-tflite"]
    assert rejected.accepted is False and rejected.reason and "0.100 below fp32 0.900" in rejected.reason
    assert manifest.variants["fp32-tflite"].accepted is True


@pytest.mark.slow
def test_edge_check_runs_with_litert_and_tokenizers_only(
    published: Any, edge_python: Path, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    manifest, uri = published
    # The edge environment really lacks the heavy runtimes.
    for absent in ("torch", "onnxruntime", "transformers", "rayrelay_workloads"):
        probe = subprocess.run([str(edge_python), "-c", f"import {absent}"], capture_output=True, check=False)
        assert probe.returncode != 0, f"{absent} imports in the edge environment"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(Path(tiny_data[1]).read_text().splitlines()[:ROWS]) + "\n")
    script = REPO / "workloads" / "rayrelay_workloads" / "edge_check.py"
    for variant in ("fp32-tflite", "int8-tflite"):
        done = subprocess.run(
            [
                str(edge_python),
                str(script),
                uri,
                "--variant",
                variant,
                "--jsonl",
                str(rows),
                "--repeats",
                "5",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        report = json.loads(done.stdout)
        assert report["rows"] == ROWS and report["seq_len"] == MAX_LEN and report["batch1_ms"] > 0
        assert {p["label"] for p in report["predictions"]} <= set(LABELS)
        # The same file, tokeniser and rows as the export measured: the same accuracy (one row of
        # slack for a near-tie between labels of this untrained model).
        assert abs(report["accuracy"] - manifest.variants[variant].accuracy) <= 1 / ROWS + 1e-9, variant

    # The shipped CLI starts it in the converter environment and prints a human summary.
    cli = Path(sys.executable).with_name("rayrelay")
    done = subprocess.run(
        [str(cli), "edge-check", uri, "--text", "my invoice is wrong", "--repeats", "3"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert (
        "int8-tflite" in done.stdout and "ms per text" in done.stdout and "my invoice is wrong" in done.stdout
    )


@pytest.mark.slow
def test_edge_check_refuses_a_tampered_model(published: Any, edge_python: Path, tmp_path: Path) -> None:
    import shutil

    manifest, uri = published
    run_dir = Path(uri[len("file://") :]).parent
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    model = copy / manifest.variants["fp32-tflite"].file
    body = bytearray(model.read_bytes())
    body[len(body) // 2] ^= 0xFF  # one flipped byte, size unchanged
    model.write_bytes(bytes(body))
    script = REPO / "workloads" / "rayrelay_workloads" / "edge_check.py"
    done = subprocess.run(
        [str(edge_python), str(script), str(copy / "manifest.json"), "--variant", "fp32-tflite"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "sha256/size differ" in done.stderr


@pytest.mark.slow
def test_missing_environment_names_how_to_create_it(
    checkpoint: Path,
    tiny_model: str,
    tiny_data: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rayrelay_workloads.export import export_all
    from rayrelay_workloads.litert import LiteRTUnavailable

    monkeypatch.setenv("RAYRELAY_LITERT_PYTHON", str(tmp_path / "nowhere" / "python"))
    spec = ExportSpec.model_validate(
        {"targets": ["onnx", "tflite"], "quantize": "none", "parityTolerance": 0.01}
    )
    with pytest.raises(LiteRTUnavailable, match="make litert"):
        export_all(
            checkpoint,
            tiny_model,
            tmp_path / "out",
            spec,
            MAX_LEN,
            validation(tiny_data),
            LABELS,
            threads=1,
            bench_repeats=1,
        )
    # Without the target the converter is never looked for: the same missing environment is fine.
    spec = ExportSpec.model_validate({"quantize": "none", "parityTolerance": 0.01})
    result = export_all(
        checkpoint,
        tiny_model,
        tmp_path / "out2",
        spec,
        MAX_LEN,
        validation(tiny_data),
        LABELS,
        threads=1,
        bench_repeats=1,
    )
    assert result.extra_files == {} and not (tmp_path / "out2" / "tflite").exists()
