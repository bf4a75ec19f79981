"""Text-generation data: JSONL rows of ``{"text": ...}`` or prompt/completion pairs.

The text-generation pipeline (``textgen.pipeline``) reads both sets once on the
driver, to fail fast with the file and row named (``data.DataError``, reason
``InvalidData``) and to record lineage (sha256 of each file); every Ray Train
worker (``textgen.worker``) reads them again and keeps its own shard.

A row is either a text (``data.textField``, default ``text``), trained on in
full, or a prompt/completion pair (``data.promptField`` / ``data.completionField``,
default ``prompt`` / ``completion``), where only the completion's tokens count in
the loss. ``data.labelField`` is not read for this task. The same file readers as
classification data (``rayrelay_workloads.data``): jsonl, csv and parquet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from rayrelay_core.api import DataFormat, DataSpec
from rayrelay_workloads.data import DataError, _records, read_uri_bytes

DEFAULT_PROMPT_FIELD = "prompt"
DEFAULT_COMPLETION_FIELD = "completion"


@dataclass(frozen=True)
class LmExample:
    prompt: str  # "" for a plain text row
    completion: str  # the text trained on (the whole row for a text row)
    row: int


@dataclass
class LmDataFile:
    uri: str
    sha256: str
    examples: list[LmExample] = field(default_factory=list)


@dataclass
class LoadedLmData:
    train: LmDataFile
    validation: LmDataFile


@dataclass(frozen=True)
class Fields:
    text: str = "text"
    prompt: str = DEFAULT_PROMPT_FIELD
    completion: str = DEFAULT_COMPLETION_FIELD

    @classmethod
    def of(cls, spec: DataSpec | dict[str, Any]) -> Fields:
        wire = spec if isinstance(spec, dict) else spec.wire()
        return cls(
            text=wire.get("textField") or "text",
            prompt=wire.get("promptField") or DEFAULT_PROMPT_FIELD,
            completion=wire.get("completionField") or DEFAULT_COMPLETION_FIELD,
        )


def _string(record: dict[str, Any], name: str, uri: str, row: int, allow_blank: bool = False) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{uri}: row {row}: field {name!r} must be a string, got {type(value).__name__}")
    if not allow_blank and not value.strip():
        raise DataError(f"{uri}: row {row}: field {name!r} is blank")
    return value


def lm_example(record: Any, uri: str, row: int, fields: Fields) -> LmExample:
    """One row as an example; the error names the file, the row and the field."""
    if not isinstance(record, dict):
        raise DataError(f"{uri}: row {row}: expected an object with fields, got {type(record).__name__}")
    has = {name for name, value in record.items() if value is not None}
    if fields.text in has:
        return LmExample("", _string(record, fields.text, uri, row), row)
    if fields.prompt in has or fields.completion in has:
        for name in (fields.prompt, fields.completion):
            if name not in has:
                raise DataError(
                    f"{uri}: row {row}: a prompt/completion row needs both {fields.prompt!r} and "
                    f"{fields.completion!r}; {name!r} is missing"
                )
        prompt = _string(record, fields.prompt, uri, row, allow_blank=True)
        return LmExample(prompt, _string(record, fields.completion, uri, row), row)
    present = ", ".join(sorted(map(str, record))) or "none"
    raise DataError(
        f"{uri}: row {row}: missing field {fields.text!r} (or {fields.prompt!r} and "
        f"{fields.completion!r}); fields present: {present}"
    )


def parse_lm_examples(data: bytes, fmt: DataFormat | str, uri: str, fields: Fields) -> list[LmExample]:
    examples = [lm_example(rec, uri, row, fields) for row, rec in _records(data, fmt, uri)]
    if not examples:
        raise DataError(f"{uri}: the file holds no rows")
    return examples


def read_lm_examples(
    uri: str, fmt: DataFormat | str, fields: Fields, endpoint_url: str | None = None
) -> LmDataFile:
    data = read_uri_bytes(uri, endpoint_url)
    return LmDataFile(uri, hashlib.sha256(data).hexdigest(), parse_lm_examples(data, fmt, uri, fields))


def load_lm_data(spec: DataSpec, endpoint_url: str | None = None) -> LoadedLmData:
    """Read and validate both sets (driver side, before any worker starts)."""
    fields = Fields.of(spec)
    return LoadedLmData(
        read_lm_examples(spec.train, spec.format, fields, endpoint_url),
        read_lm_examples(spec.validation, spec.format, fields, endpoint_url),
    )
