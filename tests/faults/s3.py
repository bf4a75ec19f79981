"""moto's S3 server on one fixed port, stopped and started at will: a real S3 outage.

Stopped, its port refuses connections, as a crashed or restarting S3 endpoint
does; started again on the same port, it serves what it held (moto keeps its
state in the test process). Used by the worker-blip unit tests and the S3
outage fault cases; :class:`OutageDuringPublish` times an outage to a publication.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RestartableS3:
    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: Any = None
        self.bucket = ""  # set by a test that creates one

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def up(self) -> bool:
        return self.server is not None


class OutageDuringPublish:
    """Stops ``s3`` right after the first file of a publication reached it, starts it ``outage_s`` later.

    Installed over ``S3Store.upload`` / ``write_bytes`` (the product's own calls run
    unchanged; the wrapper only times the injection and records the order of what
    reached the store: every ``(time, "upload" | "write", uri)`` that succeeded).
    """

    def __init__(self, s3: RestartableS3, outage_s: float) -> None:
        self.s3 = s3
        self.outage_s = outage_s
        self.stopped_at: float | None = None
        self.restarted_at: float | None = None
        self.done: list[tuple[float, str, str]] = []
        self._timer: threading.Timer | None = None

    def install(self, monkeypatch: Any) -> OutageDuringPublish:
        from rayrelay_core.store import S3Store

        real_upload, real_write = S3Store.upload, S3Store.write_bytes

        def upload(store: Any, path: Any, uri: str) -> None:
            real_upload(store, path, uri)
            self.done.append((time.monotonic(), "upload", uri))
            if "/published/" in uri and self.stopped_at is None:
                self.s3.stop()
                self.stopped_at = time.monotonic()
                self._timer = threading.Timer(self.outage_s, self._restart)
                self._timer.start()

        def write_bytes(store: Any, uri: str, data: bytes) -> None:
            real_write(store, uri, data)
            self.done.append((time.monotonic(), "write", uri))

        monkeypatch.setattr(S3Store, "upload", upload)
        monkeypatch.setattr(S3Store, "write_bytes", write_bytes)
        return self

    def _restart(self) -> None:
        self.s3.start()
        self.restarted_at = time.monotonic()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
