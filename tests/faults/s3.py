"""moto's S3 server on one fixed port, stopped and started at will: a real S3 outage.

Stopped, its port refuses connections, as a crashed or restarting S3 endpoint
does; started again on the same port, it serves what it held (moto keeps its
state in the test process). Used by the worker-blip unit tests and the S3
outage fault case.
"""

from __future__ import annotations

import socket
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
