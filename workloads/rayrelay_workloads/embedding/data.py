"""Sentence-embedding data: rows of ``anchor``, ``positive`` and an optional ``negative`` text.

Field names come from ``data.anchorField`` / ``positiveField`` / ``negativeField``
(defaults ``anchor``, ``positive``, ``negative``); the readers are classification's
(``rayrelay_workloads.data``: jsonl, csv, parquet), and errors name the file, row and
field (``DataError``, reason ``InvalidData``). The pipeline reads both sets once on the
driver (fail fast, lineage sha256); each Ray Train worker reads them again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import DataFormat, DataSpec
from rayrelay_workloads.data import DataError, _records, read_uri_bytes


@dataclass(frozen=True)
class Pair:
    anchor: str
    positive: str
    negative: str | None
    row: int


@dataclass
class PairFile:
    uri: str
    sha256: str
    examples: list[Pair] = field(default_factory=list)


@dataclass
class LoadedPairs:
    train: PairFile
    validation: PairFile


@dataclass(frozen=True)
class PairFields:
    anchor: str = "anchor"
    positive: str = "positive"
    negative: str = "negative"

    @classmethod
    def of(cls, spec: DataSpec | dict[str, Any]) -> PairFields:
        wire = spec if isinstance(spec, dict) else spec.wire()
        return cls(
            wire.get("anchorField") or "anchor",
            wire.get("positiveField") or "positive",
            wire.get("negativeField") or "negative",
        )


def _text(record: dict[str, Any], name: str, uri: str, row: int) -> str:
    value = record.get(name)
    if value is None or value == "":
        present = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(f"{uri}: row {row}: missing field {name!r} (fields present: {present})")
    if not isinstance(value, str):
        raise DataError(f"{uri}: row {row}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{uri}: row {row}: field {name!r} is blank")
    return value


def pair_of(record: Any, uri: str, row: int, fields: PairFields) -> Pair:
    if not isinstance(record, dict):
        raise DataError(f"{uri}: row {row}: expected an object with fields, got {type(record).__name__}")
    negative = record.get(fields.negative)
    return Pair(
        _text(record, fields.anchor, uri, row),
        _text(record, fields.positive, uri, row),
        _text(record, fields.negative, uri, row) if negative not in (None, "") else None,
        row,
    )


def parse_pairs(data: bytes, fmt: DataFormat | str, uri: str, fields: PairFields) -> list[Pair]:
    pairs = [pair_of(rec, uri, row, fields) for row, rec in _records(data, fmt, uri)]
    if not pairs:
        raise DataError(f"{uri}: the file holds no rows")
    return pairs


def read_pairs(
    uri: str, fmt: DataFormat | str, fields: PairFields, endpoint_url: str | None = None
) -> PairFile:
    data = read_uri_bytes(uri, endpoint_url)
    return PairFile(uri, hashlib.sha256(data).hexdigest(), parse_pairs(data, fmt, uri, fields))


def load_pairs(spec: DataSpec, endpoint_url: str | None = None) -> LoadedPairs:
    """Both sets, validated (driver side, before any worker starts)."""
    fields = PairFields.of(spec)
    validation = read_pairs(spec.validation, spec.format, fields, endpoint_url)
    if len(validation.examples) < 2:
        raise DataError(f"{spec.validation}: retrieval needs at least 2 validation pairs")
    return LoadedPairs(read_pairs(spec.train, spec.format, fields, endpoint_url), validation)
