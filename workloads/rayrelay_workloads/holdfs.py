"""Ray Train's storage filesystem, holding each S3 call through an outage (``storewait.hold``).

Ray Train touches the run's storage from the workers (the storage marker check
and the checkpoint upload of ``ray.train.report``) and from its controller (the
checkpoint manager's snapshot, written after every reported checkpoint, and the
deletion of checkpoints past ``keep``). Any of these failing while S3 is down
fails the worker group, or -- the controller's snapshot -- the whole attempt
with "Training failed due to controller error", whatever rank 0 checked before.
So ``train.storage_for`` gives Ray Train this filesystem: a ``pyarrow.fs.PyFileSystem``
over the project's ``S3FileSystem`` whose calls are retried by
:func:`storewait.hold` while S3 does not answer (not reachable, or 5xx / throttled),
for up to ``RAYRELAY_STORE_WAIT_SECONDS`` each. A file written is spooled locally
(in memory up to 64 MiB, then a temporary file) and uploaded whole on close, under
the same hold, so an upload cut by an outage is done again from its start. The
budget is the driver's (read when the filesystem is made, and pickled with it to
the controller and the workers). Not held: a read already streaming when S3 goes
(the open is held, the bytes are not).
"""

from __future__ import annotations

import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow.fs as pafs

from rayrelay_core.store import StoreError
from rayrelay_workloads.storewait import hold, wait_budget_s

T = TypeVar("T")

SPOOL_BYTES = 64 * 1024 * 1024
COPY_CHUNK = 8 * 1024 * 1024
# How pyarrow's S3 client says the store did not answer (or answered 5xx / throttled).
_OUTAGE = re.compile(
    r"NETWORK_CONNECTION|curlCode|Couldn't connect|Connection refused|timed out|"
    r"SLOW_DOWN|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|THROTTLING|REQUEST_TIMEOUT|"
    r"response code: (5\d\d|429|408)",
    re.IGNORECASE,
)
# Uploads from one process go one at a time: pyarrow's S3 writes from several threads
# at once can hang (Ray Train sets use_threads=False for an S3FileSystem for that reason).
_UPLOAD_LOCK = threading.Lock()


def is_outage_error(exc: BaseException) -> bool:
    """True for a pyarrow OSError that says S3 did not answer (not: no such key, access denied)."""
    if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError | PermissionError):
        return False
    return bool(_OUTAGE.search(str(exc)))


def held(op: Callable[[], T], what: str, budget_s: float | None = None) -> T:
    """``op()``, retried by :func:`storewait.hold` while it fails with an outage, for up to ``budget_s``."""

    def attempt() -> T:
        try:
            return op()
        except OSError as exc:
            if is_outage_error(exc):
                raise StoreError(f"cannot reach the S3 store: {exc}") from exc
            raise

    try:
        return hold(attempt, what, budget_s=budget_s)
    except StoreError as exc:  # the budget ran out: Ray Train sees the error it knows
        cause = exc.__cause__
        raise (cause if isinstance(cause, OSError) else OSError(str(exc))) from None


class _SpooledUpload:
    """A writable file for :meth:`HoldingS3Handler.open_output_stream`: uploaded whole on close."""

    def __init__(self, fs: pafs.FileSystem, path: str, metadata: Any, budget_s: float) -> None:
        self._fs, self._path, self._metadata, self._budget_s = fs, path, metadata, budget_s
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        self.closed = False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        return self._spool.write(bytes(data))

    def tell(self) -> int:
        return self._spool.tell()

    def flush(self) -> None:
        pass

    def _upload(self) -> None:
        self._spool.seek(0)
        with self._fs.open_output_stream(self._path, metadata=self._metadata) as out:
            while chunk := self._spool.read(COPY_CHUNK):
                out.write(chunk)

    def close(self) -> None:
        if self.closed:
            return
        try:
            with _UPLOAD_LOCK:
                held(self._upload, f"upload of {self._path}", self._budget_s)
        finally:
            self.closed = True
            self._spool.close()


class HoldingS3Handler(pafs.FileSystemHandler):
    """A ``pyarrow.fs.FileSystemHandler`` over ``fs`` holding each call through an S3 outage."""

    def __init__(self, fs: pafs.FileSystem, budget_s: float) -> None:
        self.fs, self.budget_s = fs, budget_s

    def __reduce__(self) -> tuple[Any, ...]:
        return (HoldingS3Handler, (self.fs, self.budget_s))

    def _held(self, op: Callable[[], T], what: str) -> T:
        return held(op, what, self.budget_s)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HoldingS3Handler) and self.fs.equals(other.fs)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.fs.type_name)

    def get_type_name(self) -> str:
        return f"rayrelay-holding-{self.fs.type_name}"

    def normalize_path(self, path: str) -> str:
        return self.fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._held(lambda: self.fs.get_file_info(paths), f"stat of {paths[:1]}")

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._held(lambda: self.fs.get_file_info(selector), f"listing of {selector.base_dir}")

    def create_dir(self, path: str, recursive: bool) -> None:
        self._held(lambda: self.fs.create_dir(path, recursive=recursive), f"create_dir {path}")

    def delete_dir(self, path: str) -> None:
        self._held(lambda: self.fs.delete_dir(path), f"delete_dir {path}")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._held(
            lambda: self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok),
            f"delete_dir_contents {path}",
        )

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the root of the run's store")

    def delete_file(self, path: str) -> None:
        self._held(lambda: self.fs.delete_file(path), f"delete_file {path}")

    def move(self, src: str, dest: str) -> None:
        self._held(lambda: self.fs.move(src, dest), f"move {src}")

    def copy_file(self, src: str, dest: str) -> None:
        self._held(lambda: self.fs.copy_file(src, dest), f"copy {src}")

    def open_input_stream(self, path: str) -> Any:
        return self._held(lambda: self.fs.open_input_stream(path), f"read of {path}")

    def open_input_file(self, path: str) -> Any:
        return self._held(lambda: self.fs.open_input_file(path), f"read of {path}")

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        import pyarrow

        return pyarrow.PythonFile(_SpooledUpload(self.fs, path, metadata, self.budget_s), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self._held(lambda: self.fs.open_append_stream(path, metadata=metadata), f"append to {path}")


def holding(fs: pafs.FileSystem, budget_s: float | None = None) -> pafs.FileSystem:
    """``fs`` behind a :class:`HoldingS3Handler` (what Ray Train's RunConfig gets).

    ``budget_s``: default :func:`storewait.wait_budget_s`, read now.
    """
    return pafs.PyFileSystem(HoldingS3Handler(fs, wait_budget_s() if budget_s is None else budget_s))
