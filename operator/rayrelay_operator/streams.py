"""What kopf's watch streams hand to the operator: each object without ``metadata.managedFields``.

The API server sends every object with its server-side-apply bookkeeping,
``metadata.managedFields``: one entry per writer, listing every field it set. Nothing in
this operator or in kopf reads it, yet it is more than half of what kopf keeps of an
object. A TrainingJob parsed from its watch event is ~25 KB of Python objects, 14 KB of
them managedFields (the creator's and the operator's status writes); a RayJob ~60 KB, 29
KB of them. kopf holds the latest body of every object that has a timer (each
TrainingJob), for the operator's whole life, and every body queued in a burst
(``bench/control_plane.py``: peak RSS per 1,000 TrainingJobs).

``install()`` wraps kopf's ``infinite_watch`` (the one source of every listed and watched
object its reactor processes) so that each object loses that field before kopf stores
or queues it. kopf has no public hook for it: the wrapper replaces the module attribute
that kopf's queueing calls, so **a kopf upgrade can break it**; kopf is pinned and
``test_watch_streams`` fails if the wrapper no longer sits in kopf's path.

``install()`` also has kopf's API client decode each watch line with ``orjson`` instead of
the standard library's ``json``. ``orjson`` keeps one string per distinct short key across
calls, where the standard library makes new key strings for every line: the thousands of
bodies kopf holds in a burst then share their keys. Measured back to back, two pairs
(``bench/control_plane.py --sizes N --burst-only --running-window 0``, docs/operator.md):
peak RSS 265/259 -> 254/254 MiB at 2,000 TrainingJobs and 216/217 -> 207/202 MiB at
1,000; the operator's CPU per TrainingJob did not change measurably (11.5/11.3 -> 11.3/12.0
ms at 2,000). The objects are the same (``dict``/``list``/``str``/``int``/``float``/
``bool``/``None``); a line ``orjson`` refuses (the standard library accepts a few things
JSON does not, such as ``NaN``) goes to the standard library, so what kopf sees never
changes. The decoder stands in as the ``json`` name of kopf's ``_cogs.clients.api``
module, which only its watch stream uses.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

_INSTALLED = "__rayrelay_slim__"


class WatchJson:
    """Stands in for the ``json`` module in kopf's API client: ``loads`` by ``orjson``.

    Everything else is the standard library's (``__getattr__``), so kopf's use of the module
    cannot break on an attribute this class lacks.
    """

    def loads(self, text: str | bytes, **kwargs: Any) -> Any:
        if not kwargs:
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                pass  # the standard library decides: it parses it, or raises its own error
        return json.loads(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(json, name)


def slim_event(raw_event: Any) -> Any:
    """Drop ``metadata.managedFields`` from a watch event's object, in place (kopf's dicts)."""
    if isinstance(raw_event, dict):
        obj = raw_event.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return raw_event


def slimmed(watch: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """``watch`` (kopf's ``infinite_watch``) with every event passed through ``slim_event``."""

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        async for raw_event in watch(**kwargs):
            yield slim_event(raw_event)

    setattr(infinite_watch, _INSTALLED, watch)
    return infinite_watch


def install() -> None:
    """Put ``slimmed`` in kopf's watch path and ``WatchJson`` in its API client (idempotent)."""
    from kopf._cogs.clients import api, watching

    if not hasattr(watching.infinite_watch, _INSTALLED):
        watching.infinite_watch = slimmed(watching.infinite_watch)
    if not isinstance(api.json, WatchJson):
        api.json = WatchJson()  # type: ignore[assignment]  # stands in for the module


def installed() -> bool:
    from kopf._cogs.clients import api, watching

    return hasattr(watching.infinite_watch, _INSTALLED) and isinstance(api.json, WatchJson)
