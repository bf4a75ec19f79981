"""Unit tests of the envelope encryption of model files (rayrelay_workloads.envelope).

Real AES-256-GCM from ``cryptography``; no stand-ins. Every refusal is checked for
its reason and for never quoting key material.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from rayrelay_workloads import envelope

KEK_HEX = "11" * 16 + "22" * 16
OTHER_HEX = "33" * 32


def test_keys_are_64_hex_digits_or_base64_of_32_bytes() -> None:
    raw = bytes.fromhex(KEK_HEX)
    assert envelope.parse_key(KEK_HEX) == raw
    assert envelope.parse_key(f"  {KEK_HEX.upper()}\n") == raw
    assert envelope.parse_key(base64.b64encode(raw).decode()) == raw
    for bad in ("", "abc", "11" * 31, base64.b64encode(b"x" * 16).decode(), "zz" * 32):
        with pytest.raises(envelope.InvalidKey) as err:
            envelope.parse_key(bad)
        assert "256-bit" in str(err.value)
        assert not bad or bad not in str(err.value), "a refused key is never quoted"


def test_missing_key_names_the_variable_and_the_field() -> None:
    with pytest.raises(envelope.MissingKey, match="RAYRELAY_ENCRYPTION_KEY is not set.*keySecret"):
        envelope.key_from_env({})
    assert envelope.key_from_env({"RAYRELAY_ENCRYPTION_KEY": KEK_HEX}) == bytes.fromhex(KEK_HEX)


def test_data_key_unwraps_only_with_its_key_and_run() -> None:
    kek, data_key = bytes.fromhex(KEK_HEX), envelope.new_data_key()
    wrapped = envelope.wrap_data_key(kek, data_key, "run-1")
    assert data_key.hex() not in wrapped and base64.b64encode(data_key).decode() not in wrapped
    assert envelope.unwrap_data_key(kek, wrapped, "run-1") == data_key
    with pytest.raises(envelope.WrongKey) as err:
        envelope.unwrap_data_key(bytes.fromhex(OTHER_HEX), wrapped, "run-1")
    assert OTHER_HEX not in str(err.value) and KEK_HEX not in str(err.value)
    with pytest.raises(envelope.WrongKey):
        envelope.unwrap_data_key(kek, wrapped, "run-2")  # a wrapped key copied into another run
    with pytest.raises(envelope.EnvelopeError, match="not base64"):
        envelope.unwrap_data_key(kek, "***", "run-1")


def test_a_file_round_trips_and_its_ciphertext_reveals_nothing(tmp_path: Path) -> None:
    data_key = envelope.new_data_key()
    plain = b"\x08\x07\x12\x07pytorch:\x8a\x01MatMul input_ids logits" * 50
    src, dst = tmp_path / "model.onnx", tmp_path / "sealed" / "model.onnx"
    src.write_bytes(plain)
    envelope.encrypt_file(data_key, src, dst, "published/a/onnx/model.onnx")
    sealed = dst.read_bytes()
    assert sealed.startswith(envelope.MAGIC)
    assert len(sealed) == len(plain) + len(envelope.MAGIC) + envelope.NONCE_BYTES + envelope.TAG_BYTES
    for marker in (b"pytorch", b"MatMul", b"input_ids", b"logits"):
        assert marker not in sealed
    assert envelope.decrypt_blob(data_key, sealed, "published/a/onnx/model.onnx") == plain
    # Two encryptions of the same file differ (a fresh nonce each time).
    assert envelope.encrypt_bytes(data_key, plain, "p") != envelope.encrypt_bytes(data_key, plain, "p")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # the tag
        lambda b: b[:30] + bytes([b[30] ^ 0x80]) + b[31:],  # the ciphertext
        lambda b: b[:-100],  # truncated
        lambda b: b[:6] + bytes(12) + b[18:],  # the nonce
        lambda b: b"XXXXXX" + b[6:],  # the magic
    ],
    ids=["tag", "ciphertext", "truncated", "nonce", "magic"],
)
def test_a_tampered_file_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    data_key = envelope.new_data_key()
    sealed = envelope.encrypt_bytes(data_key, b"weights " * 100, "onnx/model.onnx")
    with pytest.raises(envelope.TamperedFile, match="onnx/model.onnx"):
        envelope.decrypt_blob(data_key, tamper(sealed), "onnx/model.onnx")


def test_a_file_moved_to_another_path_or_key_is_refused() -> None:
    data_key = envelope.new_data_key()
    sealed = envelope.encrypt_bytes(data_key, b"int8 weights", "onnx/model.int8.onnx")
    with pytest.raises(envelope.TamperedFile, match="altered, truncated or moved"):
        envelope.decrypt_blob(data_key, sealed, "onnx/model.onnx")
    with pytest.raises(envelope.TamperedFile):
        envelope.decrypt_blob(envelope.new_data_key(), sealed, "onnx/model.int8.onnx")
