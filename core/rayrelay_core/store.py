"""Artifact store: one small interface over local folders and S3-compatible stores.

Everything rayrelay publishes or reads (checkpoints are the exception: Ray Train
writes them through pyarrow) goes through ``Store``: the training pipeline
uploads files and the manifest, the operator reads progress documents and
manifests to compute status, serving downloads an artifact set.

URIs: ``s3://bucket/key``, ``file:///abs/path`` or a plain path. S3 goes through
boto3 with an optional endpoint (MinIO, moto, any S3-compatible store) and
adaptive retries with backoff on throttling and 5xx. Credentials come from the
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a mounted Secret
exposes them the same way), never from a spec.

The store a resource names may be hostile (docs/security.md, finding 3), so
``read_bytes(uri, max_bytes=N)`` never holds more than N + 1 bytes of an object
(``TooLarge`` beyond that, whatever Content-Length said), and a ``StoreError``'s
message is bounded and carries the S3 error *code* only: never the text of a
response body.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

CHUNK = 1 << 20


class StoreError(RuntimeError):
    """A store operation failed; the message names the URI and the cause."""


class NotFound(StoreError):
    """The object does not exist."""


class TooLarge(StoreError):
    """The object is larger than the reader's cap; it was not read (past the cap)."""


# A StoreError's message ends up in a resource's status: keep it short.
MAX_ERROR_CHARS = 300
_ERROR_CODE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` on one line, control characters dropped, cut to ``limit`` characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _too_large(uri: str, max_bytes: int) -> TooLarge:
    return TooLarge(bounded(f"{uri}: larger than {max_bytes} bytes; refusing to read it"))


def read_capped(stream: Any, uri: str, max_bytes: int | None) -> bytes:
    """Everything ``stream`` holds, or TooLarge once it passes ``max_bytes`` (None: no cap)."""
    if max_bytes is None:
        return bytes(stream.read())
    data = bytes(stream.read(max_bytes + 1))
    if len(data) > max_bytes:
        raise _too_large(uri, max_bytes)
    return data


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (works for s3://, file:// and paths)."""
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out = f"{out}/{part}"
    return out


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    """The filesystem path of a file:// URI or a plain path."""
    if uri.startswith("file://"):
        return Path(urlparse(uri).path if uri.startswith("file:///") else uri[len("file://") :])
    return Path(uri)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StoreError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class Store(Protocol):
    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes: ...
    def write_bytes(self, uri: str, data: bytes) -> None: ...
    def upload(self, path: str | os.PathLike[str], uri: str) -> None: ...
    def download(self, uri: str, path: str | os.PathLike[str]) -> None: ...
    def exists(self, uri: str) -> bool: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...


class LocalStore:
    """A folder on this machine (the embedded default of `rayrelay run`)."""

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        path = local_path(uri)
        try:
            with path.open("rb") as fh:  # a FIFO or /dev/zero too: the read itself is capped
                return read_capped(fh, uri, max_bytes)
        except FileNotFoundError as exc:
            raise NotFound(f"{uri}: no such file") from exc
        except OSError as exc:
            raise StoreError(bounded(f"{uri}: {exc.strerror or exc}")) from exc

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a manifest or progress file.
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def upload(self, path: str | os.PathLike[str], uri: str) -> None:
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != dest.resolve():
            shutil.copyfile(path, dest)

    def download(self, uri: str, path: str | os.PathLike[str]) -> None:
        src = local_path(uri)
        if not src.exists():
            raise NotFound(f"{uri}: no such file")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, path)

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def list(self, prefix: str) -> Iterator[str]:
        root = local_path(prefix)
        if not root.exists():
            return
        base = prefix.rstrip("/")
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield f"{base}/{path.relative_to(root).as_posix()}"

    def delete_prefix(self, prefix: str) -> int:
        root = local_path(prefix)
        if not root.exists():
            return 0
        count = sum(1 for p in root.rglob("*") if p.is_file())
        shutil.rmtree(root)
        return count


@dataclass
class S3Settings:
    """How an S3Store connects. The defaults suit workloads (long uploads, patient retries);
    a control plane that must not stall on a black-hole endpoint passes short timeouts
    and few attempts (docs/security.md, finding 3)."""

    endpoint_url: str | None = None
    region: str | None = None
    # Server-side encryption asked of S3 on every write (``sse_args``); reads need nothing.
    sse: dict[str, str] | None = None
    max_attempts: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


class S3Store:
    """An S3-compatible bucket through boto3, retried with backoff."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.settings = settings or S3Settings()
        config = Config(
            retries={"max_attempts": self.settings.max_attempts, "mode": "adaptive"},
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
        )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.region or os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=config,
        )

    def _call(self, uri: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(bounded(f"{uri}: no such object")) from exc
            if code == "NoSuchBucket":
                raise NotFound(bounded(f"{uri}: bucket does not exist")) from exc
            # The code and the HTTP status only: the error's Message (and anything else
            # botocore parsed out of the response body) is the endpoint's text, not ours.
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            shown = code if _ERROR_CODE.match(code) else "an error"
            raise StoreError(bounded(f"{uri}: the S3 store answered {shown} (HTTP {status})")) from exc
        except BotoCoreError as exc:
            raise StoreError(bounded(f"{uri}: cannot reach the S3 store: {type(exc).__name__}")) from exc

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        bucket, key = split_s3(uri)
        resp = self._call(uri, self._client.get_object, Bucket=bucket, Key=key)
        body = resp["Body"]
        try:
            length = resp.get("ContentLength")
            if max_bytes is not None and isinstance(length, int) and length > max_bytes:
                raise _too_large(uri, max_bytes)  # refused before a byte of the body is read
            return self._call(uri, lambda: read_capped(body, uri, max_bytes))
        finally:
            body.close()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        extra = dict(self.settings.sse or {})
        self._call(uri, self._client.put_object, Bucket=bucket, Key=key, Body=data, **extra)

    def upload(self, path: str | os.PathLike[str], uri: str) -> None:
        bucket, key = split_s3(uri)
        extra = {"ExtraArgs": dict(self.settings.sse)} if self.settings.sse else {}
        self._call(uri, self._client.upload_file, Filename=str(path), Bucket=bucket, Key=key, **extra)

    def download(self, uri: str, path: str | os.PathLike[str]) -> None:
        bucket, key = split_s3(uri)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._call(uri, self._client.download_file, Bucket=bucket, Key=key, Filename=str(path))

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        try:
            self._call(uri, self._client.head_object, Bucket=bucket, Key=key)
        except NotFound:
            return False
        except StoreError as exc:
            if "404" in str(exc) or "Not Found" in str(exc):
                return False
            raise
        return True

    def list(self, prefix: str) -> Iterator[str]:
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = self._call(prefix, lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)))
        for page in pages:
            for item in page.get("Contents", []):
                yield f"s3://{bucket}/{item['Key']}"

    def delete_prefix(self, prefix: str) -> int:
        bucket, _ = split_s3(prefix)
        keys = [split_s3(uri)[1] for uri in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(prefix, self._client.delete_objects, Bucket=bucket, Delete={"Objects": batch})
        return len(keys)


SSE_S3 = "SSE-S3"
SSE_KMS = "SSE-KMS"


def sse_args(kind: str | None, kms_key_id: str | None = None) -> dict[str, str] | None:
    """boto3's put/upload arguments for ``spec.artifacts.serverSideEncryption`` (None: none asked).

    SSE-S3 is ``ServerSideEncryption: AES256``; SSE-KMS is ``aws:kms`` with the key id
    when given (else the bucket's default KMS key). S3 encrypts and decrypts itself:
    readers need no argument.
    """
    if not kind:
        return None
    if kind == SSE_S3:
        return {"ServerSideEncryption": "AES256"}
    if kind == SSE_KMS:
        args = {"ServerSideEncryption": "aws:kms"}
        if kms_key_id:
            args["SSEKMSKeyId"] = kms_key_id
        return args
    raise StoreError(f"unknown server-side encryption {kind!r} (expected {SSE_S3} or {SSE_KMS})")


def open_store(uri: str, endpoint_url: str | None = None, sse: dict[str, str] | None = None) -> Store:
    """The store for a URI; the S3 endpoint defaults to RAYRELAY_S3_ENDPOINT_URL.

    ``sse`` (``sse_args``) is applied to every S3 write; a local folder ignores it.
    """
    if is_s3(uri):
        endpoint = endpoint_url or os.environ.get("RAYRELAY_S3_ENDPOINT_URL") or None
        return S3Store(S3Settings(endpoint_url=endpoint, sse=sse))
    return LocalStore()


def normalize_uri(uri: str, base_dir: str | os.PathLike[str] | None = None) -> str:
    """Make a plain path absolute (against base_dir or the CWD); URIs pass through."""
    if is_s3(uri) or uri.startswith("file://"):
        return uri
    path = Path(uri)
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return str(path.resolve())
