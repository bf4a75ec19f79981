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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

_INSTALLED = "__rayrelay_slim__"


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
    """Put ``slimmed`` in kopf's watch path (idempotent: once per process)."""
    from kopf._cogs.clients import watching

    if not hasattr(watching.infinite_watch, _INSTALLED):
        watching.infinite_watch = slimmed(watching.infinite_watch)


def installed() -> bool:
    from kopf._cogs.clients import watching

    return hasattr(watching.infinite_watch, _INSTALLED)
