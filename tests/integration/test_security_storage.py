"""Issue 12, finding 8: downloading a model from S3 never writes outside the target folder.

``rayrelay_workloads.modeling.resolve_source`` copies every object under an
``s3://`` prefix into a local folder. Against moto's real S3 server: a key with
``..`` or an empty segment (``prefix//etc/x``) makes the whole download refused,
with the key named, before any file is written.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from rayrelay_core.store import split_s3
from rayrelay_workloads.modeling import ModelSourceError, resolve_source


def put(s3_server: str, uri: str, body: bytes = b"{}") -> None:
    bucket, key = split_s3(uri)
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=bucket, Key=key, Body=body)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_plain_prefix_downloads(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    put(s3_server, f"{s3_bucket}/models/m/config.json")
    put(s3_server, f"{s3_bucket}/models/m/sub/vocab.txt", b"a")
    dest = tmp_path / "work" / "dl"
    assert resolve_source(f"{s3_bucket}/models/m", cache_dir=str(dest)) == str(dest)
    assert files_under(dest) == {"config.json", "sub/vocab.txt"}


@pytest.mark.parametrize(
    "bad_key",
    [
        "models/m/../../escaped.txt",  # up out of the download folder
        "models/m/sub/../../../escaped.txt",
        # "prefix//x": an absolute path once the prefix is cut (aimed at tmp_path, not at /)
        "models/m/{tmp}/escaped.txt",
        "models/m/./config.json",
    ],
)
def test_a_key_that_leaves_the_folder_refuses_the_download(
    s3_server: str, s3_bucket: str, tmp_path: Path, bad_key: str
) -> None:
    bad_key = bad_key.format(tmp=tmp_path)  # tmp_path is absolute: "models/m//tmp/..."
    put(s3_server, f"{s3_bucket}/models/m/config.json")
    put(s3_server, f"{s3_bucket}/{bad_key}", b"owned")
    dest = tmp_path / "work" / "dl"
    with pytest.raises(ModelSourceError) as err:
        resolve_source(f"{s3_bucket}/models/m", cache_dir=str(dest))
    assert bad_key in str(err.value) and "refusing the object" in str(err.value)
    # Nothing was written, inside the folder or out of it.
    assert files_under(tmp_path) == set()
