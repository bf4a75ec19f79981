"""The operator's four Secret readers (operator/rayrelay_operator/handlers.py) on a real API server.

The operator builds them in ``build_context`` from its own API client; here each gets a
client whose only credential is a ServiceAccount token, so what the API server grants
(and refuses) is what the operator meets in a cluster: ``get`` on Secrets in one
namespace, nothing else.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import config

from rayrelay_operator.backends.base import BackendRejected, MissingPermission
from rayrelay_operator.handlers import (
    secret_credentials_getter,
    secret_data_getter,
    secret_encryption_key_getter,
    secret_labels_getter,
)
from rayrelay_operator.policy import LABEL_CREDENTIALS
from tests.cluster.controlplane import ControlPlane

pytestmark = pytest.mark.cluster


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def _secret(
    namespace: str, name: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "data": {k: _b64(v) for k, v in data.items()},
    }


@pytest.fixture
def reader(control_plane: ControlPlane, namespace: str) -> Iterator[Any]:
    """An API client as ServiceAccount ``reader``, granted ``get`` on Secrets in ``namespace`` only."""
    control_plane.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "reader", "namespace": namespace},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "secret-get", "namespace": namespace},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "secret-get", "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-get"},
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        ]
    )
    kubeconfig = control_plane.service_account_kubeconfig(namespace, "reader")
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


def test_api_keys_are_read_decoded_and_absence_is_none(
    control_plane: ControlPlane, namespace: str, reader: Any
) -> None:
    keys = {"team-a": "rk-Ä-0123456789abcdef", "team-b": "rk-fedcba9876543210"}
    control_plane.apply(_secret(namespace, "endpoint-keys", keys, {LABEL_CREDENTIALS: "true"}))
    read = secret_data_getter(reader)
    assert read(namespace, "endpoint-keys") == keys
    assert read(namespace, "no-such-secret") is None


def test_a_secret_outside_the_grant_is_missing_permission_not_absent(
    control_plane: ControlPlane, namespace: str, reader: Any
) -> None:
    other = f"{namespace}-other"
    control_plane.kubectl("create", "namespace", other)
    try:
        control_plane.apply(_secret(other, "endpoint-keys", {"k": "v"}))
        with pytest.raises(MissingPermission, match=f"{other}/endpoint-keys"):
            secret_data_getter(reader)(other, "endpoint-keys")
        with pytest.raises(MissingPermission, match=f"{other}/endpoint-keys"):
            secret_encryption_key_getter(reader)(other, "endpoint-keys")
    finally:
        control_plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_credentials_and_encryption_key_need_the_opt_in_label(
    control_plane: ControlPlane, namespace: str, reader: Any
) -> None:
    data = {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret/with+symbols=",
        "RAYRELAY_ENCRYPTION_KEY": "  a-key-with-spaces-around  ",
        "UNRELATED": "never returned",
    }
    control_plane.apply(_secret(namespace, "opted-in", data, {LABEL_CREDENTIALS: "true"}))
    control_plane.apply(_secret(namespace, "not-opted-in", data))

    creds = secret_credentials_getter(reader)(namespace, "opted-in")
    assert creds == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret/with+symbols="}
    assert secret_encryption_key_getter(reader)(namespace, "opted-in") == "a-key-with-spaces-around"

    with pytest.raises(BackendRejected, match="does not opt in"):
        secret_credentials_getter(reader)(namespace, "not-opted-in")
    with pytest.raises(BackendRejected, match="does not opt in"):
        secret_encryption_key_getter(reader)(namespace, "not-opted-in")


def test_labels_are_read_as_metadata_only(control_plane: ControlPlane, namespace: str, reader: Any) -> None:
    # Created, not applied: ``kubectl apply`` would copy the data into its last-applied annotation.
    body = _secret(
        namespace,
        "labelled",
        {"token": "a-distinctive-token-value"},
        {LABEL_CREDENTIALS: "true", "team": "a"},
    )
    control_plane.kubectl("create", "-f", "-", input=json.dumps(body))
    labels = secret_labels_getter(reader)
    assert labels(namespace, "labelled") == {LABEL_CREDENTIALS: "true", "team": "a"}
    assert labels(namespace, "missing") is None
    # The metadata-only form the reader asks for carries no data: the same request by hand.
    raw = reader.call_api(
        "/api/v1/namespaces/{namespace}/secrets/{name}",
        "GET",
        path_params={"namespace": namespace, "name": "labelled"},
        header_params={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
    )
    doc = json.loads(raw.data)
    assert doc["kind"] == "PartialObjectMetadata"
    assert "data" not in doc
    assert _b64("a-distinctive-token-value").encode() not in raw.data
