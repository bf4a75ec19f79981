"""What a tenant may ask of the operator: images, credentials, stores, endpoints, backends.

A tenant may create TrainingJobs and ModelDeployments in their namespace and
nothing more (docs/security.md, issue 12). The operator therefore refuses,
before it reads, writes or creates anything, a resource that names:

- an image outside ``Settings.allowed_images`` (``ImageNotAllowed``, finding 1);
- a credentials Secret, an encryption key Secret
  (``spec.artifacts.encryption.keySecret``), or an endpoint's API keys Secret
  (``spec.auth.apiKeysSecret``), that is not in the resource's
  namespace with the label ``rayrelay.dev/credentials: "true"``
  (``CredentialsNotAllowed``, finding 1);
- an S3 endpoint outside ``Settings.allowed_s3_endpoints`` (``EndpointNotAllowed``,
  finding 3): the operator would contact it with its own credentials;
- a local path or ``file://`` URI, or another namespace's folder of the
  operator's store (``StorageNotAllowed``, finding 4);
- the ray backend outside ``Settings.ray_backend_namespaces``
  (``BackendNotAllowed``, finding 2).

The checks are pure apart from ``secret_labels(namespace, name)``, which the
driver passes in (the kopf handlers read the Secret's metadata only). The
local runner (``rayrelay run``) applies no policy: its user owns the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rayrelay_core.api import GROUP, Backend, ModelDeployment, TrainingJob
from rayrelay_core.store import is_s3
from rayrelay_operator.settings import Settings

LABEL_CREDENTIALS = f"{GROUP}/credentials"
# Longest value of a tenant's quoted in a refusal (a condition message must stay short).
QUOTE_MAX = 120

IMAGE_NOT_ALLOWED = "ImageNotAllowed"
CREDENTIALS_NOT_ALLOWED = "CredentialsNotAllowed"
ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
STORAGE_NOT_ALLOWED = "StorageNotAllowed"
BACKEND_NOT_ALLOWED = "BackendNotAllowed"
REASONS = frozenset(
    {
        IMAGE_NOT_ALLOWED,
        CREDENTIALS_NOT_ALLOWED,
        ENDPOINT_NOT_ALLOWED,
        STORAGE_NOT_ALLOWED,
        BACKEND_NOT_ALLOWED,
    }
)

SecretLabels = Callable[[str, str], Mapping[str, str] | None]


@dataclass(frozen=True)
class Refusal:
    """Why the operator will not run a resource (a permanent condition's reason and message)."""

    reason: str
    message: str


def _quote(value: str) -> str:
    return repr(value if len(value) <= QUOTE_MAX else value[:QUOTE_MAX] + "...")


def split_list(raw: str | None) -> list[str]:
    """A comma-separated setting as a list (blanks dropped)."""
    return [item.strip() for item in (raw or "").split(",") if item.strip()]


def image_allowed(image: str, settings: Settings) -> bool:
    """Exact match, or a prefix entry (ending in ``/`` or ``:``, or ``*``-terminated)."""
    allowed = split_list(settings.allowed_images) or [settings.workload_image]
    for entry in allowed:
        if entry.endswith("*"):
            if image.startswith(entry[:-1]):
                return True
        elif entry.endswith(("/", ":", "@")):
            if image.startswith(entry):
                return True
        elif image == entry:
            return True
    return False


def _endpoint_key(url: str) -> str:
    return url.strip().rstrip("/").lower()


def endpoint_allowed(url: str, settings: Settings) -> bool:
    """The operator's own endpoint, or one listed in ``allowed_s3_endpoints`` (exact)."""
    allowed = {_endpoint_key(u) for u in split_list(settings.allowed_s3_endpoints)}
    if settings.s3_endpoint_url:
        allowed.add(_endpoint_key(settings.s3_endpoint_url))
    return _endpoint_key(url) in allowed


def is_local(uri: str) -> bool:
    """A ``file://`` URI or a plain path (what the operator's host would read)."""
    if uri.startswith("file:") or uri.startswith(("/", "./", "../", "~", ".")):
        return True
    return "://" not in uri and "/" in uri and uri.split("/", 1)[0] in ("", ".", "..")


def _store_prefix(settings: Settings) -> str | None:
    base = settings.artifacts_uri
    return base.rstrip("/") if base and is_s3(base) else None


def in_image(uri: str) -> bool:
    """A relative path without ``..`` or ``~``: a file shipped in the (allowed) workload image.

    Only the workloads read data and model sources, inside the Ray pods; such a path names
    what the admin put in the image (``examples/data/...``), never the operator's files.
    """
    if "://" in uri or uri.startswith(("/", "~", "\\")) or uri.startswith("file:"):
        return False
    parts = uri.replace("\\", "/").split("/")
    return ".." not in parts and "" not in parts[:-1]


def storage_refusal(
    field: str, uri: str, namespace: str, settings: Settings, image_paths: bool = False
) -> Refusal | None:
    """A URI a resource reads or writes: not local, and in the operator's store only its namespace's.

    ``image_paths``: a relative path inside the workload image is allowed (data and model
    sources, which only the Ray pods read); never for what the operator reads itself.
    """
    if not uri:
        return None
    if image_paths and in_image(uri):
        return None
    if is_local(uri) or "://" not in uri:
        return Refusal(
            STORAGE_NOT_ALLOWED,
            f"{field}: local paths and file:// are not allowed in the operator (got {_quote(uri)}); "
            "use s3:// (or, for data and models, a relative path inside the workload image)",
        )
    store = _store_prefix(settings)
    if store and is_s3(uri) and (uri.rstrip("/") + "/").startswith(store + "/"):
        mine = f"{store}/{namespace}/"
        if not (uri.rstrip("/") + "/").startswith(mine):
            return Refusal(
                STORAGE_NOT_ALLOWED,
                f"{field}: {_quote(uri)} is inside the operator's store but outside this namespace's "
                f"folder {mine}",
            )
    return None


def _artifacts_refusals(artifacts: Any, namespace: str, settings: Settings) -> Iterable[Refusal | None]:
    uri = artifacts.uri
    if uri:
        store = _store_prefix(settings)
        if store and uri.rstrip("/") == store:
            pass  # the operator's store itself: runs go to its folder for this namespace
        elif store and uri.startswith(store + "/"):
            # Runs go to {uri}/{namespace}/...: a sub-folder of the store would land in another
            # namespace's folder.
            yield Refusal(
                STORAGE_NOT_ALLOWED,
                f"spec.artifacts.uri: {_quote(uri)} is inside the operator's store {store}; "
                "omit it or name the store itself",
            )
        else:
            yield storage_refusal("spec.artifacts.uri", uri, namespace, settings)
    endpoint = artifacts.endpoint_url
    if endpoint and not endpoint_allowed(endpoint, settings):
        yield Refusal(
            ENDPOINT_NOT_ALLOWED,
            f"spec.artifacts.endpointUrl: {_quote(endpoint)} is not an S3 endpoint this operator may "
            "contact (RAYRELAY_ALLOWED_S3_ENDPOINTS)",
        )


def _opt_in_refusal(
    field_path: str, secret: str | None, namespace: str, secret_labels: SecretLabels | None
) -> Refusal | None:
    """Only a Secret of the resource's namespace that opts in (the kubelet would hand any other)."""
    if not secret:
        return None
    labels = secret_labels(namespace, secret) if secret_labels is not None else None
    if labels is None or str(labels.get(LABEL_CREDENTIALS, "")).lower() != "true":
        return Refusal(
            CREDENTIALS_NOT_ALLOWED,
            f"{field_path}: Secret {_quote(secret)} in namespace {namespace} "
            f'is missing or does not opt in (label {LABEL_CREDENTIALS}: "true")',
        )
    return None


def _secret_refusal(
    artifacts: Any, namespace: str, settings: Settings, secret_labels: SecretLabels | None
) -> Refusal | None:
    """The credentials Secret of the Ray pods (the spec's, or the operator's default)."""
    secret = artifacts.credentials_secret or settings.artifacts_secret
    return _opt_in_refusal("spec.artifacts.credentialsSecret", secret, namespace, secret_labels)


def _key_secret_refusal(artifacts: Any, namespace: str, secret_labels: SecretLabels | None) -> Refusal | None:
    """The encryption key's Secret: the same opt-in as a credentials Secret (its data reaches pods)."""
    secret = artifacts.encryption.key_secret if artifacts.encryption is not None else None
    return _opt_in_refusal("spec.artifacts.encryption.keySecret", secret, namespace, secret_labels)


def _api_keys_secret_refusal(auth: Any, namespace: str, secret_labels: SecretLabels | None) -> Refusal | None:
    """The endpoint's API keys Secret: the same opt-in (the operator reads its data for the tenant)."""
    secret = auth.api_keys_secret if auth is not None else None
    return _opt_in_refusal("spec.auth.apiKeysSecret", secret, namespace, secret_labels)


def _image_refusal(image: str | None, settings: Settings) -> Refusal | None:
    if image and not image_allowed(image, settings):
        return Refusal(
            IMAGE_NOT_ALLOWED,
            f"spec.image: {_quote(image)} is not in this operator's allowed images (RAYRELAY_ALLOWED_IMAGES)",
        )
    return None


def _backend_refusal(backend: str, namespace: str, settings: Settings) -> Refusal | None:
    if backend == Backend.RAY.value and namespace not in split_list(settings.ray_backend_namespaces):
        return Refusal(
            BACKEND_NOT_ALLOWED,
            f"the ray backend is not enabled for namespace {namespace} (RAYRELAY_RAY_BACKEND_NAMESPACES)",
        )
    return None


def _first(refusals: Iterable[Refusal | None]) -> Refusal | None:
    """One refusal saying everything that is wrong: the first one's reason, every message."""
    found = [r for r in refusals if r is not None]
    if not found:
        return None
    return Refusal(found[0].reason, "; ".join(r.message for r in found))


def check_trainingjob(
    tj: TrainingJob, backend: str, settings: Settings, secret_labels: SecretLabels | None
) -> Refusal | None:
    """What a TrainingJob asks that a tenant may not (the first reason, every message), or None."""
    ns = tj.metadata.namespace or "default"
    spec = tj.spec
    source = spec.model.source

    def checks() -> Iterable[Refusal | None]:
        yield _backend_refusal(backend, ns, settings)
        yield _image_refusal(spec.image, settings)
        yield from _artifacts_refusals(spec.artifacts, ns, settings)
        yield storage_refusal("spec.data.train", spec.data.train, ns, settings, image_paths=True)
        yield storage_refusal("spec.data.validation", spec.data.validation, ns, settings, image_paths=True)
        if is_local(source) or is_s3(source):
            yield storage_refusal("spec.model.source", source, ns, settings, image_paths=True)
        # Last: the only checks that read anything (the Secrets' labels).
        yield _secret_refusal(spec.artifacts, ns, settings, secret_labels)
        yield _key_secret_refusal(spec.artifacts, ns, secret_labels)

    return _first(checks())


def check_modeldeployment(
    md: ModelDeployment, backend: str, settings: Settings, secret_labels: SecretLabels | None
) -> Refusal | None:
    """What a ModelDeployment asks that a tenant may not (the first reason, every message), or None."""
    ns = md.metadata.namespace or "default"
    spec = md.spec

    def checks() -> Iterable[Refusal | None]:
        yield _backend_refusal(backend, ns, settings)
        yield _image_refusal(spec.image, settings)
        if spec.model.manifest_uri:
            yield storage_refusal("spec.model.manifestUri", spec.model.manifest_uri, ns, settings)
        yield from _artifacts_refusals(spec.artifacts, ns, settings)
        yield _secret_refusal(spec.artifacts, ns, settings, secret_labels)
        yield _key_secret_refusal(spec.artifacts, ns, secret_labels)
        yield _api_keys_secret_refusal(spec.auth, ns, secret_labels)

    return _first(checks())
