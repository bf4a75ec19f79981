"""Ray Train's storage filesystem holds through an S3 outage (holdfs.py), against moto's real S3 server.

The server is stopped (its port refuses connections) and started again on the
same port; the filesystem is the one ``train.storage_for`` gives Ray Train,
pickled as Ray ships it to the controller and the workers. What must hold: a
write and a checkpoint-style ``copy_files`` begun while S3 is down complete once
it is back, whole; an outage longer than ``RAYRELAY_STORE_WAIT_SECONDS`` fails
with an OSError (what Ray Train expects); a missing file fails at once.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.s3 import RestartableS3

pytestmark = [pytest.mark.slow]


@pytest.fixture
def s3() -> Iterator[RestartableS3]:
    import boto3

    server = RestartableS3()
    server.start()
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="hold")
    try:
        yield server
    finally:
        server.stop()


def ray_fs(s3: RestartableS3) -> tuple[str, Any]:
    from rayrelay_workloads.train import storage_for

    path, fs = storage_for("s3://hold/runs/r1/checkpoints", s3.endpoint)
    return path, pickle.loads(pickle.dumps(fs))  # as Ray ships it to the controller / a worker


def back_after(s3: RestartableS3, seconds: float) -> threading.Timer:
    s3.stop()
    timer = threading.Timer(seconds, s3.start)
    timer.start()
    return timer


def test_classifies_pyarrow_errors() -> None:
    from rayrelay_workloads.holdfs import is_outage_error

    refused = OSError(
        "When reading information for key 'a' in bucket 'b': AWS Error NETWORK_CONNECTION during "
        "HeadObject operation: curlCode: 7, Couldn't connect to server"
    )
    assert is_outage_error(refused)
    assert is_outage_error(OSError("AWS Error SLOW_DOWN during PutObject operation: HTTP response code: 503"))
    assert not is_outage_error(FileNotFoundError("Path does not exist 'b/a'"))
    assert not is_outage_error(OSError("AWS Error ACCESS_DENIED during PutObject operation: HTTP 403"))
    assert not is_outage_error(ValueError("Couldn't connect"))


def test_a_write_and_a_checkpoint_upload_wait_out_an_outage(
    s3: RestartableS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.fs as pafs

    monkeypatch.setenv("RAYRELAY_STORE_WAIT_SECONDS", "60")
    path, fs = ray_fs(s3)
    assert fs == ray_fs(s3)[1]  # Ray Train compares a checkpoint's filesystem with the run's

    t0 = time.monotonic()
    back_after(s3, 4.0)
    with fs.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:  # the controller's write
        out.write(b'{"checkpoints": []}')
    assert time.monotonic() - t0 >= 3.5
    with fs.open_input_stream(f"{path}/checkpoint_manager_snapshot.json") as f:
        assert f.read() == b'{"checkpoints": []}'

    local = tmp_path / "step-0000004"
    (local / "model").mkdir(parents=True)
    (local / "model" / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (local / "state.json").write_text('{"step": 4}')
    back_after(s3, 4.0)
    pafs.copy_files(  # as Ray Train's upload does it (storage._pyarrow_fs_copy_files)
        str(local), f"{path}/step-0000004", source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs, chunk_size=64 * 1024 * 1024,
    )  # fmt: skip
    with fs.open_input_stream(f"{path}/step-0000004/model/weights.bin") as f:
        assert f.read() == bytes(range(256)) * 4096
    with fs.open_input_stream(f"{path}/step-0000004/state.json") as f:
        assert f.read() == b'{"step": 4}'


def test_an_outage_past_the_budget_fails_and_a_missing_file_fails_at_once(
    s3: RestartableS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYRELAY_STORE_WAIT_SECONDS", "3")
    path, fs = ray_fs(s3)
    t0 = time.monotonic()
    with pytest.raises(FileNotFoundError):
        fs.open_input_stream(f"{path}/nope.json")
    assert time.monotonic() - t0 < 3

    s3.stop()
    t0 = time.monotonic()
    with pytest.raises(OSError, match="NETWORK_CONNECTION|connect"):
        fs.get_file_info(f"{path}/.validate_storage_marker")
    assert time.monotonic() - t0 < 30
