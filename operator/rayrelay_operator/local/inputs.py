"""FILE in, resources out: read, validate (the same rules as `rayrelay validate`), prepare."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from rayrelay_core.store import is_s3, normalize_uri
from rayrelay_core.validation import ManifestParseError, cross_checks, load_documents, validate_document
from rayrelay_operator.local.objects import NAMESPACE, TJ


def read_resources(path: str, console: Console) -> list[dict[str, Any]] | None:
    """The documents of FILE, validated; None (after printing why) when invalid."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        console.print(f"{path}: cannot read: {exc.strerror or exc}", markup=False)
        return None
    try:
        docs = load_documents(text)
    except ManifestParseError as exc:
        console.print(f"{path}: {exc}", markup=False)
        return None
    if not docs:
        console.print(f"{path}: no resources found", markup=False)
        return None
    problems: list[str] = []
    for index, doc in enumerate(docs, start=1):
        problems += [str(issue) for issue in validate_document(doc, index=index)]
    if not problems:
        problems = [str(issue) for issue in cross_checks(docs, self_contained=True)]
    for line in problems:
        console.print(line, markup=False, soft_wrap=True)
    return None if problems else docs


def as_uri(value: str, base: Path) -> str:
    """An s3:// or file:// URI as is; a path made absolute, as a file:// URI."""
    if is_s3(value) or value.startswith("file://"):
        return value
    return "file://" + normalize_uri(value, base)


def local_source(source: str, base: Path) -> str:
    """model.source: a relative path that exists becomes absolute; hub ids stay as they are."""
    if "://" in source or Path(source).is_absolute():
        return source
    candidate = base / source
    if source.startswith(".") or candidate.exists():
        return str(candidate.resolve())
    return source


def _prepare_training(spec: dict[str, Any], artifacts: str | None, base: Path) -> None:
    data = spec["data"]
    data["train"] = as_uri(data["train"], base)
    data["validation"] = as_uri(data["validation"], base)
    spec["model"]["source"] = local_source(spec["model"]["source"], base)
    arts = spec.setdefault("artifacts", {})
    if artifacts:
        arts["uri"] = artifacts
    elif arts.get("uri"):
        arts["uri"] = as_uri(arts["uri"], base)


def prepare(docs: list[dict[str, Any]], artifacts: str | None, base: Path) -> list[dict[str, Any]]:
    """Resources as the local loop runs them: paths absolute, backend ray, metadata filled."""
    out = []
    for doc in docs:
        obj = json.loads(json.dumps(doc))  # a private copy
        meta = obj["metadata"]
        meta["namespace"] = NAMESPACE
        meta["generation"] = 1
        meta["uid"] = str(uuid.uuid4())
        obj.pop("status", None)
        spec = obj["spec"]
        spec["backend"] = "ray"
        if obj["kind"] == TJ:
            _prepare_training(spec, artifacts, base)
        elif spec["model"].get("manifestUri"):
            spec["model"]["manifestUri"] = as_uri(spec["model"]["manifestUri"], base)
        out.append(obj)
    return out
