"""kopf's watch streams without ``metadata.managedFields`` (``rayrelay_operator.streams``).

kopf's reactor reads every listed and watched object through
``kopf._cogs.clients.watching.infinite_watch`` (called as a module attribute by
``queueing.watcher``). Here the API server's side is stood in for by replacing
``continuous_watch`` (what ``infinite_watch`` reads from) with a generator of two events
shaped as the API server sends them; everything between it and kopf's consumer is kopf's.

The watch lines' decoder (``streams.WatchJson``, orjson) is checked where kopf's stream
looks it up (``kopf._cogs.clients.api.json``) and against the standard library's answers.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import kopf
import pytest
from kopf._cogs.clients import api, watching
from kopf._cogs.structs import references

from rayrelay_operator import handlers, streams
from rayrelay_operator.settings import Settings

TJ = {
    "apiVersion": "rayrelay.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {
        "name": "sst2",
        "namespace": "ml",
        "uid": "u1",
        "resourceVersion": "7",
        "labels": {"team": "a"},
        "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}],
    },
    "spec": {"model": {"source": "bert"}},
    "status": {"observedGeneration": 1},
}


def consume(monkeypatch: pytest.MonkeyPatch, sent: list[Any]) -> list[Any]:
    """What kopf's queueing gets from ``watching.infinite_watch`` for the events ``sent``."""

    async def continuous_watch(**_: Any) -> Any:
        for event in sent:
            yield event

    monkeypatch.setattr(watching, "continuous_watch", continuous_watch)
    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0
    resource = references.Resource("rayrelay.dev", "v1alpha1", "trainingjobs", namespaced=True)

    async def run() -> list[Any]:
        stream = watching.infinite_watch(settings=settings, resource=resource, namespace=None, _iterations=1)
        return [event async for event in stream]

    return asyncio.run(run())


def test_build_registry_puts_the_slimming_in_kopfs_watch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)  # restored afterwards
    handlers.build_registry(Settings())
    assert streams.installed()
    handlers.build_registry(Settings())  # idempotent: wrapped once
    inner = getattr(watching.infinite_watch, streams._INSTALLED)  # kopf's own, wrapped once
    assert not hasattr(inner, streams._INSTALLED)
    sent = [{"type": None, "object": copy.deepcopy(TJ)}, watching.Bookmark.LISTED]
    sent.append({"type": "MODIFIED", "object": copy.deepcopy(TJ)})
    got = consume(monkeypatch, sent)
    assert got[1] is watching.Bookmark.LISTED  # kopf's own markers pass unchanged
    for event in (got[0], got[2]):
        meta = event["object"]["metadata"]
        assert "managedFields" not in meta
        # Everything else kopf and the handlers read is left as the API server sent it.
        assert meta == {k: v for k, v in TJ["metadata"].items() if k != "managedFields"}
        assert event["object"]["spec"] == TJ["spec"] and event["object"]["status"] == TJ["status"]


def test_without_it_kopf_keeps_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in is faithful: kopf itself passes managedFields on (what the wrapper removes)."""
    original = getattr(watching.infinite_watch, streams._INSTALLED, watching.infinite_watch)
    monkeypatch.setattr(watching, "infinite_watch", original)
    got = consume(monkeypatch, [{"type": "ADDED", "object": copy.deepcopy(TJ)}])
    assert got[0]["object"]["metadata"]["managedFields"] == TJ["metadata"]["managedFields"]


def test_slim_event_leaves_other_shapes_alone() -> None:
    assert streams.slim_event(watching.Bookmark.LISTED) is watching.Bookmark.LISTED
    error = {"type": "ERROR", "object": {"code": 410}}
    assert streams.slim_event(copy.deepcopy(error)) == error


def test_build_registry_puts_orjson_in_kopfs_watch_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "json", json)  # kopf's own, restored afterwards
    assert not streams.installed()
    handlers.build_registry(Settings())
    assert isinstance(api.json, streams.WatchJson) and streams.installed()
    # kopf's stream decodes each line as ``json.loads(line.decode("utf-8"))``, by that name.
    line = json.dumps({"type": "ADDED", "object": TJ}).encode()
    assert api.json.loads(line.decode("utf-8")) == json.loads(line)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"type": "MODIFIED", "object": TJ}),
        '{"a": 1.5e300, "b": -0.0, "c": 9007199254740993, "d": "\\u00e9\\ud83d\\ude00", "e": [true, null]}',
        '{"x": NaN, "y": Infinity}',  # not JSON; the standard library takes it, so kopf still does
        '{"dup": 1, "dup": 2}',
    ],
)
def test_watch_json_decodes_as_the_standard_library(text: str) -> None:
    got, want = streams.WatchJson().loads(text), json.loads(text)
    assert repr(got) == repr(want)  # repr: NaN != NaN, and -0.0 == 0.0 would hide a sign


def test_watch_json_refuses_what_the_standard_library_refuses() -> None:
    with pytest.raises(json.JSONDecodeError):
        streams.WatchJson().loads('{"type": "ADDED", "object": {')
    assert streams.WatchJson().dumps({"a": 1}) == json.dumps({"a": 1})  # the rest is the stdlib's
