"""Envelope encryption of published model files: AES-256-GCM, a per-run data key, a key from a Secret.

``spec.artifacts.encryption.keySecret`` names a Secret holding a 256-bit *key
encryption key* (KEK) under ``RAYRELAY_ENCRYPTION_KEY`` (64 hex digits, or base64
of 32 bytes). The control plane hands it to the Ray processes that need it as that
environment variable (a ``secretKeyRef`` on KubeRay pods; a job's or a Serve
application's ``runtime_env`` on the ray backend), never in a spec, an
entrypoint, a status or a log.

- ``publish.py`` draws a fresh 256-bit *data key* per publication, encrypts every
  file with it (:func:`encrypt_file`) and records the data key wrapped by the KEK
  in the manifest (:class:`rayrelay_core.runs.EncryptionInfo`), with each file's
  ciphertext sha256 (what transfers are checked against) and plaintext sha256
  (what a decrypted file is checked against).
- ``serve/artifacts.py`` unwraps the data key with the replica's KEK
  (:func:`unwrap_data_key`: a wrong key fails the GCM tag, :class:`WrongKey`) and
  decrypts the files serving needs into memory (:func:`decrypt_blob`).

Format of an encrypted file: ``MAGIC`` (6 bytes), a 12-byte random nonce, then
the AES-GCM ciphertext with its 16-byte tag. The associated data binds each
ciphertext to its path in the artifact set (a file moved to another name does not
decrypt) and the wrapped key to the run. Everything comes from the
``cryptography`` package (``AESGCM``); nothing here is hand-written cryptography.
A file is encrypted in one piece: an ONNX protobuf is at most 2 GiB, the bound
of one AES-GCM call in ``cryptography``. No message here ever contains key
material.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import Path

from rayrelay_core.runs import ENCRYPTION_KEY_ENV as KEY_ENV

SCHEME = "AES-256-GCM/envelope-v1"
MAGIC = b"RRENC\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_PLAINTEXT = (1 << 31) - 1  # one AESGCM call in cryptography
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class EnvelopeError(RuntimeError):
    """Encrypted artifacts cannot be written or read; the message never carries key material."""


class MissingKey(EnvelopeError):
    """The process has no key (``RAYRELAY_ENCRYPTION_KEY`` is unset)."""


class InvalidKey(EnvelopeError):
    """The key is not 256 bits written as 64 hex digits or base64."""


class WrongKey(EnvelopeError):
    """The key does not unwrap this artifact set's data key."""


class TamperedFile(EnvelopeError):
    """A file failed its authentication tag: altered, truncated, or moved to another path."""


def parse_key(text: str) -> bytes:
    """The 32 bytes of a key written as 64 hex digits or as base64 of 32 bytes."""
    value = text.strip()
    if _HEX_KEY.match(value):
        return bytes.fromhex(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise InvalidKey(
            f"{KEY_ENV} is not a 256-bit key: expected 64 hex digits or base64 of 32 bytes "
            f"(e.g. `openssl rand -hex 32`); got {len(value)} characters"
        )
    return raw


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes:
    """The KEK this process was given, or :class:`MissingKey`."""
    text = (os.environ if environ is None else environ).get(KEY_ENV, "")
    if not text.strip():
        raise MissingKey(
            f"the artifact set is encrypted ({SCHEME}) but this process has no key: {KEY_ENV} is not set "
            "(spec.artifacts.encryption.keySecret names the Secret that provides it)"
        )
    return parse_key(text)


def new_data_key() -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM.generate_key(bit_length=256)


def _wrap_aad(run_id: str) -> bytes:
    return f"{SCHEME}|data-key|{run_id}".encode()


def _file_aad(path: str) -> bytes:
    return f"{SCHEME}|file|{path}".encode()


def wrap_data_key(kek: bytes, data_key: bytes, run_id: str) -> str:
    """base64(nonce || AES-GCM(kek, data_key)), bound to ``run_id``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(kek).encrypt(nonce, data_key, _wrap_aad(run_id))
    return base64.b64encode(nonce + sealed).decode()


def unwrap_data_key(kek: bytes, wrapped: str, run_id: str) -> bytes:
    """The data key, or :class:`WrongKey` when ``kek`` is not the key it was wrapped with."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        blob = base64.b64decode(wrapped, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("the manifest's wrapped data key is not base64") from None
    if len(blob) != NONCE_BYTES + KEY_BYTES + TAG_BYTES:
        raise EnvelopeError("the manifest's wrapped data key has the wrong length")
    try:
        return AESGCM(kek).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _wrap_aad(run_id))
    except InvalidTag:
        raise WrongKey(
            "the encryption key does not unwrap this artifact set's data key: the Secret named by "
            "spec.artifacts.encryption.keySecret holds a different key than the run was published with"
        ) from None


def encrypt_bytes(data_key: bytes, plaintext: bytes, path: str) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(plaintext) > MAX_PLAINTEXT:
        raise EnvelopeError(
            f"{path}: {len(plaintext)} bytes is more than one encrypted file may hold (2 GiB)"
        )
    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(data_key).encrypt(nonce, plaintext, _file_aad(path))


def encrypt_file(data_key: bytes, src: Path, dst: Path, path: str) -> None:
    """Write ``src`` encrypted to ``dst``; ``path`` is the file's path in the manifest."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(encrypt_bytes(data_key, src.read_bytes(), path))


def decrypt_blob(data_key: bytes, blob: bytes, path: str) -> bytes:
    """The plaintext of an encrypted file (``path``: its manifest path), in memory only."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    head = len(MAGIC) + NONCE_BYTES
    if not blob.startswith(MAGIC) or len(blob) < head + TAG_BYTES:
        raise TamperedFile(f"{path}: not a rayrelay encrypted file ({SCHEME})")
    try:
        return AESGCM(data_key).decrypt(blob[len(MAGIC) : head], blob[head:], _file_aad(path))
    except InvalidTag:
        raise TamperedFile(
            f"{path}: authentication failed: the file was altered, truncated or moved; refusing to load it"
        ) from None
