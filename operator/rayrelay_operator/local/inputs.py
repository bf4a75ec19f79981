"""FILE in, resources out: read, validate (the same rules as `rayrelay validate`), prepare.

FILE may also hold plain Kubernetes ``v1`` Secrets (``data`` in base64 or
``stringData``), as ``kubectl apply -f`` would create them: `rayrelay run` keeps
them in memory and hands ``RAYRELAY_ENCRYPTION_KEY`` of the Secret a resource's
``spec.artifacts.encryption.keySecret`` names to its Ray job and Serve
application (:class:`LocalSecrets`). Without such a Secret in FILE, the key comes
from ``RAYRELAY_ENCRYPTION_KEY`` in `rayrelay run`'s environment. A Secret's
values are never printed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from rayrelay_core.runs import ENCRYPTION_KEY_ENV
from rayrelay_core.store import is_s3, normalize_uri
from rayrelay_core.validation import ManifestParseError, cross_checks, load_documents, validate_document
from rayrelay_operator.backends.base import BackendRejected
from rayrelay_operator.local.objects import NAMESPACE, TJ


@dataclass
class LocalSecrets:
    """The v1 Secrets of FILE (name -> key -> value), standing in for the API server's."""

    by_name: dict[str, dict[str, str]] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)

    def data(self, namespace: str, name: str) -> dict[str, str] | None:
        """Secret ``name``'s values (``ReconcileContext.secret_data``: spec.auth's API keys), or None."""
        secret = self.by_name.get(name)
        return dict(secret) if secret is not None else None

    def encryption_key(self, namespace: str, name: str) -> str:
        """``RAYRELAY_ENCRYPTION_KEY`` of Secret ``name`` (RayBackend's ``encryption_key``)."""
        secret = self.by_name.get(name)
        if secret is not None:
            value = secret.get(ENCRYPTION_KEY_ENV, "").strip()
            if not value:
                raise BackendRejected(f"Secret {name} in FILE has no key {ENCRYPTION_KEY_ENV}")
            return value
        value = self.environ.get(ENCRYPTION_KEY_ENV, "").strip()
        if not value:
            raise BackendRejected(
                f"spec.artifacts.encryption.keySecret: no Secret {name} in FILE and no "
                f"{ENCRYPTION_KEY_ENV} in the environment"
            )
        return value


def is_secret(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("apiVersion") == "v1" and doc.get("kind") == "Secret"


def secret_values(doc: dict[str, Any], index: int) -> tuple[str, dict[str, str] | None, str | None]:
    """(name, values, problem) of a v1 Secret document; the problem never quotes a value."""
    name = str((doc.get("metadata") or {}).get("name") or "")
    if not name:
        return name, None, f"document {index}: Secret: metadata.name: field required"
    values: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            values[str(key)] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, ValueError):
            return name, None, f"Secret/{name}: data.{key}: not base64 (use stringData for plain text)"
    values.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
    return name, values, None


def read_resources(
    path: str, console: Console, secrets: LocalSecrets | None = None
) -> list[dict[str, Any]] | None:
    """The documents of FILE, validated; None (after printing why) when invalid.

    v1 Secrets are taken out of the list into ``secrets`` (when given)."""
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
    problems: list[str] = []
    kept: list[tuple[int, Any]] = []  # with their place in FILE, for the messages
    for index, doc in enumerate(docs, start=1):
        if not is_secret(doc):
            kept.append((index, doc))
            continue
        name, values, problem = secret_values(doc, index)
        if problem:
            problems.append(problem)
        elif secrets is not None and values is not None:
            secrets.by_name[name] = values
    docs = [doc for _, doc in kept]
    if not docs and not problems:
        console.print(f"{path}: no resources found", markup=False)
        return None
    for index, doc in kept:
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
