"""Issue 15, part 4 end to end: `rayrelay run` of an encrypted TrainingJob and its ModelDeployment.

The shipped command runs as a subprocess (as in ``test_local_run.py``) on the
shared Ray head, with moto's real S3 server as the store. FILE holds a v1 Secret
with the key (as `kubectl apply -f` would take it), a TrainingJob with
``spec.artifacts.encryption.keySecret`` and a ModelDeployment naming the same
Secret. Checked: the run trains, publishes, serves and answers its smoke
request; every object in S3 except the manifest is ciphertext (the ``.ort``
variants of ``export.targets`` too); the key appears
in no output, no Ray job entrypoint and no job log. A second FILE deploys the
published manifest with a wrong key and without a key: both fail, each with its
reason, and neither output contains a key.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import boto3
import pytest

from rayrelay_core.store import split_s3
from tests.run_files import model_deployment_yaml, training_job_yaml
from tests.run_files import rayrelay_run as run_file

KEY = "3f" * 8 + "c2" * 8 + "a7" * 8 + "19" * 8
WRONG = "e4" * 32
PLAINTEXT_MARKERS = (b"input_ids", b"attention_mask", b"logits", b"MatMul", b"[CLS]", b"BertForSequence")


def secret(name: str, key: str) -> str:
    return f"""\
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  labels: {{rayrelay.dev/credentials: "true"}}
stringData:
  RAYRELAY_ENCRYPTION_KEY: "{key}"
"""


def training_file(folder: Path, name: str, model: str, train: str, validation: str) -> Path:
    path = folder / "encrypted.yaml"
    encryption = "  artifacts:\n    encryption: {keySecret: model-key}\n"
    path.write_text(
        secret("model-key", KEY)
        + "---\n"
        + training_job_yaml(
            name, model, train, validation, extra="  export: {targets: [onnx, ort]}\n" + encryption
        )
        + "---\n"
        + model_deployment_yaml(name, extra=encryption)
    )
    return path


def refusals_file(folder: Path, name: str, manifest_uri: str) -> Path:
    path = folder / "refused.yaml"
    path.write_text(
        secret("other-key", WRONG)
        + f"""\
---
apiVersion: rayrelay.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}-wrong
spec:
  model: {{manifestUri: "{manifest_uri}"}}
  autoscaling: {{minReplicas: 1, maxReplicas: 1}}
  resources: {{cpus: 0.5}}
  artifacts:
    encryption: {{keySecret: other-key}}
---
apiVersion: rayrelay.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: {name}-nokey
spec:
  model: {{manifestUri: "{manifest_uri}"}}
  autoscaling: {{minReplicas: 1, maxReplicas: 1}}
  resources: {{cpus: 0.5}}
"""
    )
    return path


def rayrelay_run(path: Path, artifacts: str, cluster) -> subprocess.CompletedProcess[str]:
    return run_file(
        path, artifacts, cluster, drop_env=("RAYRELAY_ENCRYPTION_KEY",)
    )  # the key comes from FILE only


@pytest.mark.slow
def test_rayrelay_run_encrypts_serves_and_refuses_wrong_or_missing_keys(
    ray_cluster, s3_server: str, s3_bucket: str, tiny_model: str, tiny_data: tuple[str, str], tmp_path: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    name = f"enc-{uuid.uuid4().hex[:6]}"
    artifacts = f"{s3_bucket}/artifacts"
    first = rayrelay_run(training_file(tmp_path, name, tiny_model, *tiny_data), artifacts, ray_cluster)
    out = first.stdout + first.stderr
    assert first.returncode == 0, out[-4000:]
    assert "smoke request (v2 infer)" in out and "->" in out
    assert KEY not in out

    bucket, prefix = split_s3(artifacts)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    published = [k for k in keys if "/published/" in k]
    manifests = [k for k in keys if k.endswith("/manifest.json")]
    assert len(manifests) == 1 and any(k.endswith("onnx/model.onnx") for k in published)
    assert any(k.endswith("ort/model.int8.ort") for k in published)  # export.targets: ort, encrypted too
    for key in published:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert data.startswith(b"RRENC\x01") and not any(m in data for m in PLAINTEXT_MARKERS), key
    manifest_text = s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read().decode()
    assert "AES-256-GCM/envelope-v1" in manifest_text and KEY not in manifest_text
    assert '"fp32-ort"' in manifest_text and '"int8-ort"' in manifest_text

    client = JobSubmissionClient(ray_cluster.dashboard_url)
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("rayrelay.dev/name") == name]
    assert len(jobs) == 1
    assert KEY not in jobs[0].entrypoint and KEY not in client.get_job_logs(jobs[0].submission_id)

    manifest_uri = f"s3://{bucket}/{manifests[0]}"
    second = rayrelay_run(refusals_file(tmp_path, name, manifest_uri), artifacts, ray_cluster)
    out = second.stdout + second.stderr
    assert second.returncode == 1, out[-4000:]
    assert f"ModelDeployment/{name}-nokey: deployment failed: {manifest_uri} is encrypted" in out
    wrong = [line for line in out.splitlines() if f"ModelDeployment/{name}-wrong: deployment failed" in line]
    print(out[-3000:])  # what a user sees (pytest -rA shows it)
    assert wrong and "does not unwrap" in wrong[0], out[-4000:]
    assert KEY not in out and WRONG not in out
