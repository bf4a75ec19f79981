"""Unit tests of the replica's artifact verification (rayrelay_workloads.serve.artifacts), no Ray.

A small stand-in artifact set (a manifest, a "model" file and a tokenizer file)
is enough: ``prepare`` checks digests and fetches files, it does not load them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rayrelay_core.runs import (
    FileEntry,
    Lineage,
    Manifest,
    Parity,
    TokenizerInfo,
    VariantInfo,
)
from rayrelay_core.store import sha256_bytes
from rayrelay_workloads.serve.artifacts import ArtifactError, check_digest, prepare

FILES = {"onnx/model.onnx": b"not really onnx", "hf/tokenizer_config.json": b"{}"}


def artifact_set(root: Path) -> tuple[str, str]:
    """(manifest path, its sha256) of a stand-in artifact set under ``root``."""
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = Manifest(
        run_id="run-test",
        created_at="2026-01-01T00:00:00Z",
        files=[FileEntry(path=p, sha256=sha256_bytes(d), size=len(d)) for p, d in FILES.items()],
        variants={"fp32": VariantInfo(file="onnx/model.onnx")},
        recommended_variant="fp32",
        parity=Parity(tolerance=0.01, passed=True),
        labels=["a", "b"],
        tokenizer=TokenizerInfo(max_seq_length=32),
        lineage=Lineage(spec_hash="0" * 64, base_model="m", package_version="0"),
    )
    data = manifest.to_json().encode()
    (root / "manifest.json").write_bytes(data)
    return str(root / "manifest.json"), sha256_bytes(data)


def test_manifest_with_the_given_digest_is_served(tmp_path: Path) -> None:
    uri, digest = artifact_set(tmp_path / "set")
    for given in (f"sha256:{digest}", digest, None):
        prepared = prepare(uri, cache_dir=str(tmp_path / "cache"), expected_digest=given)
        assert prepared.digest == digest and prepared.model_path.read_bytes() == FILES["onnx/model.onnx"]


def test_manifest_changed_after_resolution_is_refused(tmp_path: Path) -> None:
    uri, resolved = artifact_set(tmp_path / "set")
    # Republished in place after the operator resolved (and reported) the old digest: every
    # file still matches the new manifest, so only the digest comparison can catch it.
    manifest = Manifest.model_validate_json(Path(uri).read_bytes())
    manifest.labels = ["x", "y"]
    Path(uri).write_text(manifest.to_json())
    with pytest.raises(ArtifactError) as err:
        prepare(uri, cache_dir=str(tmp_path / "cache"), expected_digest=f"sha256:{resolved}")
    message = str(err.value)
    assert "manifest digest mismatch" in message and f"expected sha256:{resolved}" in message
    assert sha256_bytes(Path(uri).read_bytes()) in message
    assert not (tmp_path / "cache").exists(), "nothing may be fetched before the digest matched"


def test_check_digest() -> None:
    check_digest("ab" * 32, None, "m")
    check_digest("ab" * 32, "sha256:" + "AB" * 32, "m")
    with pytest.raises(ArtifactError, match="m: manifest digest mismatch"):
        check_digest("ab" * 32, "cd" * 32, "m")


def test_model_server_refuses_a_manifest_with_another_digest(tmp_path: Path) -> None:
    """The replica passes the digest it was given on to the verification (no Ray needed)."""
    from rayrelay_workloads.serve.model import ModelServer

    uri, _ = artifact_set(tmp_path / "set")
    args = {
        "name": "m",
        "spec": {"model": {"manifestUri": uri}},
        "manifestUri": uri,
        "cacheDir": str(tmp_path / "cache"),
        "digest": "sha256:" + "0" * 64,
    }
    with pytest.raises(ArtifactError, match="manifest digest mismatch"):
        ModelServer.func_or_class(args)  # type: ignore[attr-defined]
