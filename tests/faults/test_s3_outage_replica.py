"""S3 down while a serving replica starts (issue 14, case 4, third part).

A ModelDeployment (reconciled by the product's own pass on the real ``ray``
backend, as in the other serving cases) serves an artifact set that lives in an
S3 bucket of a dedicated moto server: the training fixture's run, copied under
a run id of its own (so its digest is in no node cache and the replica must
download it). Right after the pass that deploys it, the server is stopped for
``OUTAGE_S`` seconds and started again on the same port; the replica's start
(manifest read, downloads) falls into the outage. Passes keep running meanwhile
and every status they write is kept.

What must hold: the ModelDeployment reaches Ready with that digest once S3 is
back (the replica waits out the outage: ``rayrelay_workloads.storewait``), it
never says Ready nor Failed during the outage, and its status says that the
replicas wait for the artifact store. Figures: the outage, the time to Ready
after S3 returned, what the status said meanwhile.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rayrelay_core.store import sha256_file
from tests.faults.results import record
from tests.faults.s3 import RestartableS3
from tests.faults.serving import Deployment, copy_run

pytestmark = [pytest.mark.faults_long, pytest.mark.slow]
OUTAGE_S = 60.0  # longer than Serve's 3 tries to start a first replica (about 12 s each here)
BUCKET = "serving"


def upload_tree(endpoint: str, folder: Path, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def said(status: dict[str, Any]) -> str:
    conds = {c["type"]: c for c in status.get("conditions") or []}
    ready = conds.get("Ready") or {}
    return f"{status.get('phase')} / Ready {ready.get('reason')}: {ready.get('message')}"


def test_a_replica_starting_during_an_s3_outage_comes_up_when_s3_returns(
    ray_cluster: Any, tiny_run: Any, tmp_path: Path
) -> None:
    from rayrelay_operator.handlers import operator_store_opener
    from rayrelay_operator.reconcile.context import cached_store_for
    from rayrelay_operator.settings import Settings

    s3 = RestartableS3()
    s3.start()
    d: Deployment | None = None
    try:
        import boto3

        boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=BUCKET)
        run_id = f"run-{uuid.uuid4().hex[:12]}"  # a digest no node cache holds
        local = copy_run(tiny_run.manifest_uri, tmp_path / "run", run_id)
        prefix = f"runs/{run_id}"
        upload_tree(s3.endpoint, local.parent, prefix)
        digest = f"sha256:{sha256_file(local)}"
        manifest_uri = f"s3://{BUCKET}/{prefix}/manifest.json"

        d = Deployment(ray_cluster, "rr-s3-start", local)
        d.ctx.store_for = cached_store_for(operator_store_opener(Settings()))
        d.tj["status"]["artifacts"] = {"manifestUri": manifest_uri, "digest": digest}
        d.obj["spec"]["artifacts"] = {"endpointUrl": s3.endpoint}

        first = d.step()
        assert first.get("phase") == "Deploying", json.dumps(first)[:2000]
        s3.stop()
        stopped = time.monotonic()
        during: list[str] = []
        while time.monotonic() - stopped < OUTAGE_S:
            status = d.step()
            d._trace(status)
            line = said(status)
            if line not in during:
                during.append(line)
            assert status.get("phase") not in ("Ready", "Failed"), line
            time.sleep(1.0)
        s3.start()
        back = time.monotonic()
        after: list[str] = []

        def ready(status: dict[str, Any]) -> bool:
            line = said(status)
            if line not in after:
                after.append(line)
            return status.get("phase") == "Ready" and (status.get("model") or {}).get("digest") == digest

        d.until(f"Ready serving {digest[:20]}", ready, timeout=300)
        to_ready = time.monotonic() - back
        replicas = d.replicas()
        print(f"status during the outage: {during}\nafter: {after}\nreplicas: {replicas}")
        assert any("WaitingForArtifactStore" in line for line in during), during
        record(
            "s3_outage_replica",
            figures={
                "outage_seconds": OUTAGE_S,
                "outage_during": "a replica's start (manifest read and downloads)",
                "seconds_to_ready_after_s3_returned": round(to_ready, 1),
                "status_during_outage": during,
                "reached_ready": True,
            },
            command="RAYRELAY_FAULTS_LONG=1 pytest tests/faults/test_s3_outage_replica.py",
            notes="moto S3 server stopped right after the pass that deployed the ModelDeployment "
            "(trainingJobRef to an S3 artifact set no node cache held), restarted on the same port; "
            "1 replica on the ray backend, passes every 1 s during the outage.",
        )
    finally:
        if d is not None:
            d.remove()
        s3.stop()
