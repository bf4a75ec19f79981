"""``rayrelay validate`` and ``rayrelay crds``: exit codes and printed lines."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rayrelay_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]
RAYRELAY = Path(sys.executable).parent / "rayrelay"

INVALID = """\
apiVersion: rayrelay.dev/v1alpha1
kind: TrainingJob
metadata:
  name: broken
spec:
  model:
    source: bert-base-uncased
  data:
    train: s3://bucket/train.jsonl
    validation: s3://bucket/validation.jsonl
  resources:
    numWorkers: 0
    precision: bf16
---
apiVersion: rayrelay.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: fine
spec:
  model:
    manifestUri: s3://bucket/run/manifest.json
"""


def test_quickstart_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(ROOT / "examples" / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert out == "2 resources valid (TrainingJob/quickstart, ModelDeployment/quickstart)\n"


def test_every_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        assert main(["validate", "-f", str(path)]) == 0, capsys.readouterr().out


def test_invalid_file_prints_one_line_per_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID)
    assert main(["validate", "-f", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "TrainingJob/broken: spec.resources.numWorkers: must be at least 1 (got 0)"
    ]
    assert "1 of 2 resource(s) invalid" in captured.err


def test_cross_field_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(INVALID.replace("numWorkers: 0", "numWorkers: 2"))
    assert main(["validate", "-f", str(path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "TrainingJob/broken: spec.resources.precision: bf16 and fp16 precision need GPUs (set gpusPerWorker > 0)"
    ]


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "examples" / "modeldeployment.yaml").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["validate", "-f", "-"]) == 0
    assert capsys.readouterr().out == "1 resource valid (ModelDeployment/support-tickets)\n"


def test_stdin_invalid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n"))
    assert main(["validate", "-f", "-"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "Pod/p: kind: unknown kind 'Pod'; expected one of: ModelDeployment, TrainingJob",
        "Pod/p: apiVersion: must be rayrelay.dev/v1alpha1 (got 'v1')",
    ]


def test_malformed_yaml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: TrainingJob\nmetadata:\n  name: x\n  labels: [a, b\n")
    assert main(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: malformed YAML: line ")
    assert "Traceback" not in out


def test_missing_file_and_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert main(["validate", "-f", str(empty)]) == 1
    assert "no resources found" in capsys.readouterr().out


def test_subprocess_validate_quickstart_without_heavy_imports() -> None:
    result = subprocess.run(
        [str(RAYRELAY), "validate", "-f", "examples/quickstart.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 resources valid (TrainingJob/quickstart, ModelDeployment/quickstart)"
    probe = (
        "import sys; from rayrelay_operator.cli import main; main(['validate', '-f', 'examples/quickstart.yaml']);"
        "heavy = [m for m in ('torch', 'ray', 'kopf', 'kubernetes', 'transformers') if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_crds_check_passes_on_the_repository(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["crds", "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def copy_generated(tmp_path: Path) -> tuple[Path, Path]:
    crds = tmp_path / "crds"
    shutil.copytree(ROOT / "crds", crds)
    docs = tmp_path / "docs" / "resources.md"
    docs.parent.mkdir()
    shutil.copy(ROOT / "docs" / "resources.md", docs)
    return crds, docs


def test_crds_check_fails_on_drift_and_write_repairs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crds, docs = copy_generated(tmp_path)
    args = ["--dir", str(crds), "--docs", str(docs)]
    assert main(["crds", "--check", *args]) == 0
    capsys.readouterr()

    stale = crds / "modeldeployments.rayrelay.dev.yaml"
    stale.write_text(stale.read_text().replace("maxReplicas", "maxReplica"))
    docs.write_text(docs.read_text() + "\nhand edit\n")
    assert main(["crds", "--check", *args]) == 1
    out = capsys.readouterr().out
    assert f"{stale}: differs" in out
    assert f"{docs}: differs" in out
    assert "trainingjobs" not in out

    (crds / "trainingjobs.rayrelay.dev.yaml").unlink()
    assert main(["crds", "--check", *args]) == 1
    assert "trainingjobs.rayrelay.dev.yaml: differs" in capsys.readouterr().out

    assert main(["crds", *args]) == 0
    assert main(["crds", "--check", *args]) == 0


def test_crds_are_what_the_spec_promises() -> None:
    import yaml

    tj = yaml.safe_load((ROOT / "crds" / "trainingjobs.rayrelay.dev.yaml").read_text())
    md = yaml.safe_load((ROOT / "crds" / "modeldeployments.rayrelay.dev.yaml").read_text())
    for crd, short, kind in ((tj, "tj", "TrainingJob"), (md, "md", "ModelDeployment")):
        spec = crd["spec"]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert spec["group"] == "rayrelay.dev" and spec["scope"] == "Namespaced"
        assert spec["names"]["kind"] == kind
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == ["rayrelay"]
        [version] = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Phase"] == ".status.phase" and columns["Age"] == ".metadata.creationTimestamp"
    tj_columns = {c["name"]: c["jsonPath"] for c in tj["spec"]["versions"][0]["additionalPrinterColumns"]}
    md_columns = {c["name"]: c["jsonPath"] for c in md["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert tj_columns["Progress"] == ".status.progress.percent"
    assert md_columns["URL"] == ".status.url"


def test_schemas_are_structural() -> None:
    """Every node has a type, objects have properties or additionalProperties, no
    union keywords, no additionalProperties beside properties, and every spec
    field is described."""
    import yaml

    def walk(node: dict, path: str, is_field: bool = True) -> None:
        assert "type" in node, path
        for banned in ("anyOf", "oneOf", "allOf", "not", "$ref", "nullable", "title", "const"):
            assert banned not in node, f"{path}: {banned}"
        if node["type"] == "object":
            assert ("properties" in node) != ("additionalProperties" in node), path
        if is_field and (path.startswith(".spec") or path.startswith(".status")):
            assert node.get("description"), f"{path} lacks a description"
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}[]", is_field=False)

    for name in ("trainingjobs", "modeldeployments"):
        crd = yaml.safe_load((ROOT / "crds" / f"{name}.rayrelay.dev.yaml").read_text())
        walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "")


def test_run_and_operator_are_wired_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    calls: list[tuple[str, object]] = []
    local = types.ModuleType("rayrelay_operator.local")
    local.run_command = lambda args: calls.append(("run", args)) or 0  # type: ignore[attr-defined]
    runner = types.ModuleType("rayrelay_operator.runner")
    runner.operator_command = lambda args: calls.append(("operator", args)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rayrelay_operator.local", local)
    monkeypatch.setitem(sys.modules, "rayrelay_operator.runner", runner)

    assert main(["run", "-f", "x.yaml", "--artifacts", "file:///tmp/a", "--once"]) == 0
    assert main(["operator", "--namespace", "a", "--namespace", "b", "--standalone", "--verbose"]) == 0
    (_, run_args), (_, op_args) = calls
    assert run_args.file == "x.yaml" and run_args.artifacts == "file:///tmp/a" and run_args.once
    assert run_args.ray_address is None
    assert op_args.namespace == ["a", "b"] and op_args.standalone and op_args.verbose
    assert not op_args.all_namespaces and op_args.liveness is None and op_args.peering is None


def test_crds_are_valid_customresourcedefinitions() -> None:
    import yaml

    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for name in ("trainingjobs", "modeldeployments"):
        crd = yaml.safe_load((ROOT / "crds" / f"{name}.rayrelay.dev.yaml").read_text())
        kubernetes_validate.validate(crd, "1.35.0", strict=True)


DANGLING = """\
apiVersion: rayrelay.dev/v1alpha1
kind: TrainingJob
metadata:
  name: sst2
spec:
  model:
    source: bert-base-uncased
  data:
    train: s3://bucket/train.jsonl
    validation: s3://bucket/validation.jsonl
---
apiVersion: rayrelay.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: sentiment
spec:
  model:
    trainingJobRef:
      name: sst-2
"""
DANGLING_LINE = "ModelDeployment/sentiment: spec.model.trainingJobRef.name: TrainingJob 'sst-2' is not defined in this file"


@pytest.mark.skipif(not RAYRELAY.exists(), reason="the rayrelay console script is not installed")
def test_validate_and_run_refuse_a_dangling_reference_alike(tmp_path: Path) -> None:
    path = tmp_path / "dangling.yaml"
    path.write_text(DANGLING)
    validate = subprocess.run(
        [str(RAYRELAY), "validate", "-f", str(path)], capture_output=True, text=True, timeout=120
    )
    # `run` refuses while reading FILE, before it starts any Ray.
    run = subprocess.run(
        [str(RAYRELAY), "run", "-f", str(path), "--once"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert validate.returncode == 1 and run.returncode == 1, (validate.stdout, run.stdout, run.stderr)
    assert validate.stdout.splitlines() == [DANGLING_LINE]
    assert run.stdout.splitlines() == [DANGLING_LINE]
    assert "Ray" not in run.stdout + run.stderr


def test_a_deployment_file_alone_may_name_a_cluster_trainingjob(capsys: pytest.CaptureFixture[str]) -> None:
    # kubectl apply -f trainingjob.yaml, then -f modeldeployment.yaml: the job exists by then.
    assert main(["validate", "-f", str(ROOT / "examples" / "modeldeployment.yaml")]) == 0
