"""API keys of a model endpoint (``ModelDeployment.spec.auth``): the Secret's shape and the check.

Pure, no ray or kubernetes imports: the operator turns a Secret into digests
here (:func:`digests_from_secret`), and the serving code (the gateway and each
model replica) checks a request's ``Authorization`` header against them
(:class:`KeyCheck`). See docs/security.md, "Endpoint API keys".

The Secret (``spec.auth.apiKeysSecret``, in the ModelDeployment's namespace,
labelled ``rayrelay.dev/credentials: "true"``) holds one key per data entry: the
entry's name names the key (``ci``, ``alice-2026-12``), its value is the key a
client sends as ``Authorization: Bearer <key>``. Rotation is adding the new
entry, moving clients over, then removing the old one; both work meanwhile.

Only sha256 digests of the keys leave the operator: they go to the replicas in
Serve's ``user_config`` (``serveconfig``), so Serve's REST API, KubeRay's
``serveConfigV2`` and the replicas' memory never hold a key. A digest is enough
to check a key and useless to present one: keys are long random strings
(``MIN_KEY_CHARS``), so a digest cannot be turned back into its key.

The check compares the presented token's digest with *every* configured digest
using ``hmac.compare_digest`` and no early exit, so how long it takes says
nothing about which digest (if any) matched or where it sits in the list.
Neither keys nor presented tokens are logged, and a refusal says nothing about
which keys exist (``UNAUTHORIZED_MESSAGE``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping

# A key shorter than this is refused (status: ApiKeysSecretInvalid): endpoint keys must be
# long random strings (e.g. `openssl rand -hex 32`), or their digests could be guessed offline.
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 4096
MAX_KEYS = 64
# RFC 6750's b64token plus what random generators use: no whitespace, no control characters.
_KEY = re.compile(r"^[A-Za-z0-9\-._~+/=:!@#$%^&*]+$")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")

# The user_config key Serve hands to ``reconfigure`` (serveconfig.model_deployment_options).
USER_CONFIG_KEY = "apiKeyDigests"

UNAUTHORIZED_MESSAGE = "a valid API key is required (send it as 'Authorization: Bearer <key>')"
WWW_AUTHENTICATE = 'Bearer realm="rayrelay"'

# Status reasons of a ModelDeployment whose keys cannot be used (never quoting a key).
SECRET_NOT_FOUND = "ApiKeysSecretNotFound"
SECRET_EMPTY = "ApiKeysSecretEmpty"
SECRET_INVALID = "ApiKeysSecretInvalid"


class ApiKeysProblem(ValueError):
    """Why a Secret's keys cannot be used: ``reason`` (CamelCase) and a message naming no key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def digest(key: str | bytes) -> str:
    """sha256 of a key, as 64 lowercase hex digits."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


def digests_from_secret(secret: str, data: Mapping[str, str] | None) -> list[str]:
    """The sorted, distinct digests of a Secret's keys (``data``: entry name -> decoded value).

    Raises :class:`ApiKeysProblem` for a missing (``data`` None) or empty Secret, or an entry
    that is not a usable key (the message names the entry, never its value). Surrounding
    whitespace of a value is dropped (``kubectl create secret --from-file`` keeps a newline).
    """
    if data is None:
        raise ApiKeysProblem(SECRET_NOT_FOUND, f"spec.auth.apiKeysSecret: Secret {secret} does not exist")
    out: set[str] = set()
    for name in sorted(data):
        key = str(data[name]).strip()
        if not key:
            continue  # an entry emptied on purpose: no key
        if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or not _KEY.match(key):
            raise ApiKeysProblem(
                SECRET_INVALID,
                f"spec.auth.apiKeysSecret: Secret {secret}: entry {name!r} is not a usable key "
                f"({MIN_KEY_CHARS} to {MAX_KEY_CHARS} characters, no spaces or control characters)",
            )
        out.add(digest(key))
    if not out:
        raise ApiKeysProblem(
            SECRET_EMPTY,
            f"spec.auth.apiKeysSecret: Secret {secret} holds no key (one data entry per key)",
        )
    if len(out) > MAX_KEYS:
        raise ApiKeysProblem(
            SECRET_INVALID, f"spec.auth.apiKeysSecret: Secret {secret} holds more than {MAX_KEYS} keys"
        )
    return sorted(out)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class KeyCheck:
    """The digests a replica (or the gateway, for a model) accepts; empty refuses everything."""

    def __init__(self, digests: Iterable[str]) -> None:
        wanted = [str(d) for d in digests]
        bad = [d for d in wanted if not _HEX_DIGEST.match(d)]
        if bad:
            raise ValueError(f"{len(bad)} API key digest(s) are not sha256 hex digests")
        self._digests = [bytes.fromhex(d) for d in wanted]

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """Does the header carry one of the keys? Every digest is compared (no early exit)."""
        token = bearer_token(authorization)
        presented = hashlib.sha256((token or "").encode("utf-8")).digest()
        matched = False
        for wanted in self._digests:
            matched |= hmac.compare_digest(presented, wanted)
        return matched and token is not None


def key_check(auth_on: bool, user_config: Mapping[str, object] | None) -> KeyCheck | None:
    """A replica's check from its spec and ``user_config``: None (no auth) when ``spec.auth`` is unset.

    With ``spec.auth`` set and no digests delivered (yet), an empty check: everything is
    refused rather than served without a key (fail closed).
    """
    if not auth_on:
        return None
    digests = (user_config or {}).get(USER_CONFIG_KEY) or []
    if not isinstance(digests, list | tuple):
        raise ValueError(f"user_config.{USER_CONFIG_KEY} must be a list of sha256 hex digests")
    return KeyCheck(str(d) for d in digests)
