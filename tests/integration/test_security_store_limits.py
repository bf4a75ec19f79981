"""Issue 12, finding 3 (store side): bounded reads and bounded, body-free error text.

Every document core reads from a run folder goes through ``rayrelay_core.store``
with a cap: ``runs.DOC_MAX_BYTES`` (1 MiB) for progress.json / failure.json,
``runs.MANIFEST_MAX_BYTES`` (8 MiB) for manifest.json. Against moto's real S3
server, a local folder, and a hostile "S3" endpoint (a small HTTP server that
streams without end, or answers errors with text of its choosing).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest

from rayrelay_core.runs import (
    DOC_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    ManifestError,
    ProgressDoc,
    read_doc,
    read_manifest,
)
from rayrelay_core.store import (
    MAX_ERROR_CHARS,
    LocalStore,
    S3Settings,
    S3Store,
    StoreError,
    TooLarge,
    split_s3,
)

PROGRESS = b'{"stage": "Training", "step": 3}'


def put(s3_server: str, uri: str, body: bytes) -> None:
    bucket, key = split_s3(uri)
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=bucket, Key=key, Body=body)


def padded(size: int) -> bytes:
    """A valid progress document of ``size`` bytes (padding in a string field)."""
    head = b'{"stage": "Training", "message": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_documents_under_the_cap_are_read(s3_server: str, s3_bucket: str) -> None:
    store = S3Store(S3Settings(endpoint_url=s3_server))
    put(s3_server, f"{s3_bucket}/r/progress.json", PROGRESS)
    put(s3_server, f"{s3_bucket}/r/big-but-fine.json", padded(DOC_MAX_BYTES))
    assert read_doc(store, f"{s3_bucket}/r/progress.json", ProgressDoc).step == 3
    assert read_doc(store, f"{s3_bucket}/r/big-but-fine.json", ProgressDoc).stage == "Training"


def test_an_oversized_progress_document_is_refused_on_s3(s3_server: str, s3_bucket: str) -> None:
    store = S3Store(S3Settings(endpoint_url=s3_server))
    put(s3_server, f"{s3_bucket}/r/progress.json", padded(DOC_MAX_BYTES + 1))
    with pytest.raises(TooLarge, match=f"larger than {DOC_MAX_BYTES} bytes"):
        read_doc(store, f"{s3_bucket}/r/progress.json", ProgressDoc)


def test_an_oversized_manifest_is_a_manifest_error(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    body = b'{"runId": "' + b"x" * MANIFEST_MAX_BYTES + b'"}'
    put(s3_server, f"{s3_bucket}/r/manifest.json", body)
    with pytest.raises(ManifestError, match=f"larger than {MANIFEST_MAX_BYTES} bytes"):
        read_manifest(S3Store(S3Settings(endpoint_url=s3_server)), f"{s3_bucket}/r/manifest.json")
    (tmp_path / "manifest.json").write_bytes(body)
    with pytest.raises(ManifestError, match="larger than"):
        read_manifest(LocalStore(), str(tmp_path / "manifest.json"))


def test_an_oversized_local_document_is_refused(tmp_path: Path) -> None:
    (tmp_path / "progress.json").write_bytes(padded(DOC_MAX_BYTES + 1))
    with pytest.raises(TooLarge):
        read_doc(LocalStore(), f"file://{tmp_path}/progress.json", ProgressDoc)


# ------------------------------------------------------------------ a hostile endpoint

SECRET = "BODY-TEXT-FROM-THE-ENDPOINT"
ENDLESS_CHUNKS = 64  # of 1 MiB: what the endpoint offers; a capped reader takes about one


class Hostile(BaseHTTPRequestHandler):
    sent = 0

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.endswith("/endless.json"):  # chunked, no Content-Length: only the read can stop it
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b" " * (1 << 20)
            try:
                self.wfile.write(b"1\r\n{\r\n")
                for _ in range(ENDLESS_CHUNKS):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    type(self).sent += len(chunk)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if self.path.endswith("/html.json"):  # a 200 from something that is not S3
            body = f"<html><body>{SECRET} internal dashboard</body></html>".encode()
            self.send_response(200)
        else:  # an S3-shaped error whose text the endpoint chose
            body = (
                f"<Error><Code>AccessDenied</Code><Message>{SECRET} {'y' * 5000}</Message></Error>"
            ).encode()
            self.send_response(403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile() -> Iterator[str]:
    Hostile.sent = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_endless_document_is_cut_at_the_cap(hostile: str) -> None:
    store = S3Store(S3Settings(endpoint_url=hostile, max_attempts=1))
    with pytest.raises(TooLarge):
        read_doc(store, "s3://bucket/run/endless.json", ProgressDoc)
    # The reader stopped: the endpoint got nowhere near sending all it offered.
    assert Hostile.sent < ENDLESS_CHUNKS * (1 << 20) // 2


def test_error_text_is_bounded_and_never_the_endpoints(hostile: str) -> None:
    store = S3Store(S3Settings(endpoint_url=hostile, max_attempts=1))
    with pytest.raises(StoreError) as err:
        read_doc(store, "s3://bucket/run/progress.json", ProgressDoc)
    message = str(err.value)
    assert SECRET not in message and len(message) <= MAX_ERROR_CHARS
    assert "AccessDenied" in message and "403" in message

    with pytest.raises(ManifestError) as bad:
        read_manifest(store, "s3://bucket/run/html.json")
    assert SECRET not in str(bad.value) and len(str(bad.value)) <= MAX_ERROR_CHARS
    assert "not a valid rayrelay manifest" in str(bad.value)


def test_timeouts_and_attempts_are_settings() -> None:
    """The operator side builds its store with short timeouts and few attempts (issue 12, finding 3)."""
    store = S3Store(
        S3Settings(endpoint_url="http://127.0.0.1:9", max_attempts=2, connect_timeout=1.5, read_timeout=4)
    )
    config = store._client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.5, 4)
    assert config.retries["total_max_attempts"] == 3  # botocore's max_attempts counts retries
