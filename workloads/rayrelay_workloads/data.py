"""Labelled text data: read, validate, derive labels, shard per worker, fingerprint.

The pipeline (``pipeline.py``) loads both sets once on the driver to fail fast on
bad data (``InvalidData`` with the file and row named) and to record lineage
(sha256 of each file, in the manifest via ``publish.py``). Each Ray Train worker
(``train.py``) then reads the files itself and keeps only its own shard.

Light imports only (pyarrow for parquet is imported when needed), so the unit
tests and the CLI can use this module without torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import DataFormat, DataSpec
from rayrelay_core.store import NotFound, StoreError, is_s3, local_path, open_store


class DataError(ValueError):
    """The data is unusable; the message names the file (and row) at fault."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # always a string; integer labels are kept as their decimal form
    row: int  # 1-based data row (jsonl: line number; csv: row after the header)


@dataclass
class DataFile:
    uri: str
    sha256: str
    examples: list[Example] = field(default_factory=list)


@dataclass
class LoadedData:
    train: DataFile
    validation: DataFile
    labels: list[str]


def read_uri_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes of a data file from s3://, file:// or a plain path."""
    try:
        if is_s3(uri):
            return open_store(uri, endpoint_url).read_bytes(uri)
        return local_path(uri).read_bytes()
    except NotFound as exc:
        raise DataError(f"{uri}: data file not found") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{uri}: data file not found") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{uri}: is a directory, expected a data file") from exc
    except StoreError:
        raise
    except OSError as exc:
        raise DataError(f"{uri}: cannot read: {exc.strerror or exc}") from exc


def normalize_label(value: Any, uri: str, row: int, field_name: str) -> str:
    """A label as a string; ints (and integral floats) become their decimal form."""
    if isinstance(value, bool) or value is None:
        raise DataError(
            f"{uri}: row {row}: field {field_name!r} must be a string or an integer, got {value!r}"
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        raise DataError(f"{uri}: row {row}: field {field_name!r} must be a class, got the number {value!r}")
    if isinstance(value, str):
        label = value.strip()
        if not label:
            raise DataError(f"{uri}: row {row}: field {field_name!r} is empty")
        return label
    raise DataError(f"{uri}: row {row}: field {field_name!r} must be a string or an integer, got {value!r}")


def _example(record: Any, uri: str, row: int, text_field: str, label_field: str) -> Example:
    if not isinstance(record, dict):
        raise DataError(f"{uri}: row {row}: expected an object with fields, got {type(record).__name__}")
    for name in (text_field, label_field):
        if name not in record or record[name] is None or record[name] == "":
            present = ", ".join(sorted(map(str, record))) or "none"
            raise DataError(f"{uri}: row {row}: missing field {name!r} (fields present: {present})")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{uri}: row {row}: field {text_field!r} must be a string, got {text!r}")
    if not text.strip():
        raise DataError(f"{uri}: row {row}: field {text_field!r} is blank")
    return Example(text, normalize_label(record[label_field], uri, row, label_field), row)


def _records(data: bytes, fmt: DataFormat | str, uri: str) -> list[tuple[int, Any]]:
    """(row number, record) pairs of a file's bytes."""
    fmt = DataFormat(fmt)
    if fmt == DataFormat.PARQUET:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{uri}: not a readable parquet file: {exc}") from exc
        return list(enumerate(table.to_pylist(), start=1))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri}: not UTF-8 text (byte {exc.start})") from exc
    if fmt == DataFormat.CSV:
        reader = csv.DictReader(io.StringIO(text))
        try:
            # Row numbers count data rows (the header is not a row), as spreadsheets show them minus one.
            return [(i, dict(rec)) for i, rec in enumerate(reader, start=1)]
        except csv.Error as exc:
            raise DataError(f"{uri}: row {reader.line_num}: bad CSV: {exc}") from exc
    out: list[tuple[int, Any]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline) are not rows
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{uri}: row {line_no}: not valid JSON: {exc.msg}") from exc
    return out


def parse_examples(
    data: bytes, fmt: DataFormat | str, uri: str, text_field: str = "text", label_field: str = "label"
) -> list[Example]:
    """Validated examples of one file; an empty file is an error."""
    examples = [_example(rec, uri, row, text_field, label_field) for row, rec in _records(data, fmt, uri)]
    if not examples:
        raise DataError(f"{uri}: the file holds no rows")
    return examples


def read_examples(
    uri: str,
    fmt: DataFormat | str,
    text_field: str = "text",
    label_field: str = "label",
    endpoint_url: str | None = None,
) -> DataFile:
    data = read_uri_bytes(uri, endpoint_url)
    examples = parse_examples(data, fmt, uri, text_field, label_field)
    return DataFile(uri=uri, sha256=hashlib.sha256(data).hexdigest(), examples=examples)


def _is_int(label: str) -> bool:
    return label.lstrip("-").isdigit()


def derive_labels(
    labels: set[str] | list[str], num_labels: int | None, uri: str = "training data"
) -> list[str]:
    """The ordered label set: integer labels in numeric order, others sorted as strings.

    Integer labels are class ids: with ``num_labels`` given they become
    ``0..num_labels-1`` (a class may be absent from the data) and must lie in that range.
    """
    found = set(labels)
    if not found:
        raise DataError(f"{uri}: no labels found")
    if all(_is_int(x) for x in found):
        ids = sorted(int(x) for x in found)
        if num_labels is not None:
            bad = [i for i in ids if i < 0 or i >= num_labels]
            if bad:
                raise DataError(
                    f"{uri}: label ids {bad} are outside 0..{num_labels - 1} (model.numLabels is {num_labels})"
                )
            return [str(i) for i in range(num_labels)]
        return [str(i) for i in ids]
    ordered = sorted(found)
    if num_labels is not None and len(ordered) > num_labels:
        raise DataError(
            f"{uri}: {len(ordered)} distinct labels ({', '.join(ordered[:10])}) but model.numLabels is {num_labels}"
        )
    if len(ordered) < 2:
        raise DataError(f"{uri}: only one distinct label ({ordered[0]!r}); classification needs at least 2")
    return ordered


def check_labels(data: DataFile, labels: list[str]) -> None:
    """Every example's label must be in the label set (derived from the training data)."""
    known = set(labels)
    for ex in data.examples:
        if ex.label not in known:
            raise DataError(
                f"{data.uri}: row {ex.row}: label {ex.label!r} is not in the training set's labels "
                f"({', '.join(labels[:20])})"
            )


def load_data(spec: DataSpec, num_labels: int | None, endpoint_url: str | None = None) -> LoadedData:
    """Read and validate both sets (driver side, before any worker starts)."""
    train = read_examples(spec.train, spec.format, spec.text_field, spec.label_field, endpoint_url)
    validation = read_examples(spec.validation, spec.format, spec.text_field, spec.label_field, endpoint_url)
    labels = derive_labels({ex.label for ex in train.examples}, num_labels, spec.train)
    check_labels(validation, labels)
    return LoadedData(train, validation, labels)


def shard(items: list[Any], rank: int, world_size: int) -> list[Any]:
    """This rank's share; every rank gets the same count (wrapping around), as DDP needs."""
    if world_size <= 1:
        return list(items)
    per_rank = -(-len(items) // world_size)  # ceil
    padded = list(items) + list(items[: per_rank * world_size - len(items)])
    return padded[rank::world_size]
