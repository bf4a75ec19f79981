"""S3 down while a run publishes (issue 14, case 4, second part).

The failing store is real: moto's S3 server, stopped right after the first file
of the publication reached it (``s3.OutageDuringPublish`` times the injection
and records what reached the store, in order) and started again on the same
port ``OUTAGE_S`` later.

- fast (``make test``): ``publish`` itself, the Publishing stage's code, with
  export-like files, through the product's ``S3Store`` (8 boto3 attempts a try).
  It must wait the outage out (retries with backoff and jitter), write the
  manifest last, and every file the manifest lists must read back with its
  sha256. A budget shorter than the outage (``RAYRELAY_STORE_WAIT_SECONDS``)
  must fail the publication with a StoreError and no manifest at all.
- long (``make faults``): a whole run (``run_pipeline`` on the shared Ray head,
  2 Ray Train workers, tiny BERT) whose publication meets the outage: it must
  complete within its first attempt, its manifest verified file by file.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.runs import RunLayout, read_manifest
from rayrelay_core.store import StoreError, join, open_store
from tests.faults.results import record
from tests.faults.s3 import OutageDuringPublish, RestartableS3

pytestmark = pytest.mark.slow
OUTAGE_FAST_S = 12.0
OUTAGE_S = 30.0


@pytest.fixture
def s3() -> Any:
    """A restartable moto server with a bucket of the test's own (moto's state is per process)."""
    import boto3

    server = RestartableS3()
    server.start()
    server.bucket = f"pub-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=server.bucket)
    try:
        yield server
    finally:
        server.stop()


def verified_files(store: Any, run_uri: str) -> int:
    """Every file of the run's manifest reads back with the manifest's sha256; how many."""
    manifest, _digest = read_manifest(store, RunLayout(run_uri).manifest)
    for entry in manifest.files:
        data = store.read_bytes(join(run_uri, entry.path))
        assert hashlib.sha256(data).hexdigest() == entry.sha256, entry.path
    return len(manifest.files)


def manifest_written_last(injected: OutageDuringPublish, manifest_uri: str) -> None:
    kinds = [(kind, uri) for _t, kind, uri in injected.done if "/published/" in uri or uri == manifest_uri]
    assert kinds and kinds[-1] == ("write", manifest_uri), kinds
    assert sum(1 for kind, uri in kinds if uri == manifest_uri) == 1, kinds


def test_publish_waits_out_an_s3_outage_and_writes_the_manifest_last(
    s3: RestartableS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayrelay_workloads.publish import publish
    from rayrelay_workloads.storewait import StoreWait
    from tests.integration.test_security_publish import DATA, FP32_ONLY, export_result, job

    doc = job(f"s3://{s3.bucket}/runs", 1).model_copy(update={"endpoint_url": s3.endpoint})
    injected = OutageDuringPublish(s3, OUTAGE_FAST_S).install(monkeypatch)
    waited = StoreWait()
    t0 = time.monotonic()
    try:
        manifest, uri = publish(
            doc, export_result(tmp_path / "out", b"model" * 20000), DATA, FP32_ONLY, token="t", wait=waited
        )
    finally:
        injected.cancel()
    done = time.monotonic()
    monkeypatch.undo()
    assert injected.stopped_at is not None and injected.restarted_at is not None
    assert done > injected.restarted_at, "publish returned before S3 was back"
    assert waited.retries >= 1 and "cannot reach the S3 store" in waited.last_error
    manifest_written_last(injected, uri)
    files = verified_files(open_store(uri, s3.endpoint), doc.run_uri)
    assert files == len(manifest.files) == 4
    print(
        f"fault figures (fast publish): outage {OUTAGE_FAST_S}s, {waited.retries} retries, "
        f"waited {waited.waited_s:.1f}s, published {done - injected.restarted_at:.1f}s after S3 returned, "
        f"{done - t0:.1f}s in all"
    )


def test_publish_past_its_budget_fails_and_names_nothing(
    s3: RestartableS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayrelay_workloads.publish import publish
    from tests.integration.test_security_publish import DATA, FP32_ONLY, export_result, job

    monkeypatch.setenv("RAYRELAY_STORE_WAIT_SECONDS", "3")
    doc = job(f"s3://{s3.bucket}/runs", 1).model_copy(update={"endpoint_url": s3.endpoint})
    injected = OutageDuringPublish(s3, 120.0).install(monkeypatch)
    t0 = time.monotonic()
    try:
        with pytest.raises(StoreError, match="cannot reach the S3 store"):
            publish(doc, export_result(tmp_path / "out", b"model"), DATA, FP32_ONLY, token="t")
    finally:
        injected.cancel()
        monkeypatch.undo()
    # The budget counts from the first try; a try is up to 8 boto3 attempts (about 9 s here).
    assert time.monotonic() - t0 < 30
    s3.start()
    store = open_store(doc.run_uri, s3.endpoint)
    assert not store.exists(RunLayout(doc.run_uri).manifest), "a manifest names a half-uploaded publication"


@pytest.mark.faults_long
@pytest.mark.slow
def test_a_run_whose_publication_meets_an_s3_outage_completes_in_its_first_attempt(
    ray_session: Any,
    tiny_model: str,
    tiny_data: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    s3: RestartableS3,
) -> None:
    from rayrelay_workloads.pipeline import PipelineError, run_pipeline
    from tests.pipeline_fixtures import tiny_job, tiny_spec

    spec = tiny_spec(tiny_model, *tiny_data, export={"quantize": "none"})
    job = tiny_job(spec, f"s3://{s3.bucket}/runs", name="s3-publish", endpoint_url=s3.endpoint)
    injected = OutageDuringPublish(s3, OUTAGE_S).install(monkeypatch)
    said: list[str] = []
    t0 = time.monotonic()
    try:
        run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), bench_repeats=1, log=said.append)
    except PipelineError as exc:
        pytest.fail(f"the attempt failed: {exc.reason}: {exc.message}")
    finally:
        injected.cancel()
    done = time.monotonic()
    monkeypatch.undo()
    assert injected.stopped_at is not None and injected.restarted_at is not None, "no outage happened"
    manifest_uri = RunLayout(job.run_uri).manifest
    manifest_written_last(injected, manifest_uri)
    files = verified_files(open_store(manifest_uri, s3.endpoint), job.run_uri)
    waits = [line for line in said if line.startswith("publish: waited")]
    assert waits, said
    retries = int(waits[0].split("(")[1].split()[0])
    record(
        "s3_outage_publish",
        figures={
            "outage_seconds": OUTAGE_S,
            "outage_during": "Publishing (after the first file of the publication)",
            "run_completed": True,
            "attempts": 1,
            "publish_retries": retries,
            "seconds_run_done_after_s3_returned": round(done - injected.restarted_at, 1),
            "manifest_files_verified": files,
            "run_wall_seconds": round(done - t0, 1),
        },
        command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_s3_outage_publish.py",
        notes="moto S3 server stopped right after the first file of the publication was uploaded, "
        "restarted on the same port; the manifest is the last object written. 2 Ray Train workers, "
        "tiny BERT. The fast tests (publish itself, 12 s outage; a 3 s budget that must fail with no "
        "manifest) run in make test.",
    )
