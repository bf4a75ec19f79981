"""``GET /v1/models`` names the models of every task served on OpenAI's routes (issue 27).

The real gateway class (``serve.gateway.Gateway``, run without Serve as in
``test_gateway_resilience.py``) over in-process models: a real ``TextGenServer``
on the tiny decoder (``textgen_replica.py``), and fake handles that stand in for an
``EmbeddingServer`` replica, a classifier and a replica of a task no registry entry
carries (each answers ``info()`` with its task and ``key_digests()`` with its keys,
which is all the list asks a replica). The official ``openai`` client calls the
gateway through an in-memory transport (``MockTransport``) in place of Serve's proxy.
The same list on a live endpoint: ``tests/integration/test_embedding_run.py`` and
``test_textgen_run.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2
import openai
import pytest
from test_gateway_resilience import INFO, FakeHandle, _Method
from textgen_replica import ReplicaHandle, gateway_for, http_request, replica

from rayrelay_core.apikeys import digest
from rayrelay_workloads.tasks import REGISTRY, lists_openai_models

KEY = "e" * 8 + "-embedding-key-0123456789"


def task_handle(task: str | None, keys: list[str] | None = None) -> FakeHandle:
    """A replica of ``task`` as the gateway sees it: its info and its key digests (None: no auth)."""
    handle = FakeHandle()

    async def info() -> dict[str, Any]:
        return {**INFO, "labels": []} if task is None else {**INFO, "labels": [], "task": task}

    async def key_digests() -> list[str] | None:
        return keys

    handle.info = _Method(info)
    handle.key_digests = _Method(key_digests)
    return handle


def listed(gateway: Any, api_key: str = "unused") -> list[str]:
    """``client.models.list()`` of the official client against the gateway: the model ids."""

    async def proxy(request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        headers = {k: v for k, v in request.headers.items() if k.lower() == "authorization"}
        response = await gateway(http_request(request.url.path, body, request.method, headers))
        return httpx2.Response(response.status_code, content=bytes(response.body), headers=response.headers)

    async def scenario() -> list[str]:
        transport = httpx2.MockTransport(proxy)
        async with httpx2.AsyncClient(transport=transport) as http:
            client = openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key=api_key, http_client=http, max_retries=0
            )
            page = await client.models.list()
            assert all(m.object == "model" and m.owned_by == "rayrelay" for m in page.data)
            return [m.id for m in page.data]

    return asyncio.run(scenario())


def test_the_list_names_text_generation_and_embedding_models_not_classifiers() -> None:
    gateway = gateway_for(
        {
            "writer": ReplicaHandle(replica("writer")),
            "vectors": task_handle("sentence-embedding"),
            "keyed-vectors": task_handle("sentence-embedding", [digest(KEY)]),
            "sentiment": task_handle(None),  # a classifier's replica reports no task
            "summaries": task_handle("summarization"),  # no registry entry: not listed
        }
    )
    assert listed(gateway) == ["vectors", "writer"]
    assert listed(gateway, api_key=KEY) == ["keyed-vectors", "vectors", "writer"]


def test_a_keyed_embedding_model_alone_asks_for_its_key() -> None:
    gateway = gateway_for({"keyed-vectors": task_handle("sentence-embedding", [digest(KEY)])})
    with pytest.raises(openai.AuthenticationError):
        listed(gateway)
    assert listed(gateway, api_key=KEY) == ["keyed-vectors"]


def test_the_registry_says_which_tasks_are_listed() -> None:
    assert {name for name in REGISTRY if lists_openai_models(name)} == {
        "text-generation",
        "sentence-embedding",
    }
    assert not lists_openai_models(None) and not lists_openai_models("summarization")
