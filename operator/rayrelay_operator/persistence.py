"""Where kopf keeps what it has handled: the resources' own ``observedGeneration``, and memory.

kopf remembers two things per object. The *diff-base* (the last handled spec) tells a
change from a no-op; the *progress* of each handler (retries, the time of the next
one) carries a handler across temporary errors. Its defaults keep both in annotations,
so every TrainingJob cost a metadata PATCH on top of its status write, and every
object carried a copy of its own spec that kopf parsed on every event
(``bench/control_plane.py``: 2 of the 6.4 API requests per TrainingJob were
``patch trainingjobs``).

Both facts are already in the status this operator writes, by the Kubernetes
convention: a pass that handled generation *g* writes ``status.observedGeneration:
g`` (a temporary error leaves it as it was, ``reconcile.status.problem_status``;
every other outcome sets it). So:

- ``GenerationDiffBaseStorage``: an object whose ``status.observedGeneration`` has
  reached ``metadata.generation`` is handled (no change); otherwise kopf sees it as
  new and runs the reconcile handler (create, update and resume run the same pass,
  ``handlers``). It writes nothing; a restarted operator reads the same answer from
  the same status, so nothing is handled twice and nothing is forgotten. A change
  outside the spec (labels, annotations) does not bump the generation and runs
  nothing, as kopf's ``field="spec"`` filter did.
- ``MemoryProgressStorage``: handler progress in this process only. A pass's retry
  schedule is computed from the ``Reconciled`` condition's transition time
  (``reconcile.errors``), not from kopf's counters, so a restart that forgets them
  retries at once and then on the same schedule. ``touch`` (kopf's way to wake a
  handler after a delay) still writes an annotation: only a temporary error pays it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf

from rayrelay_core.api import GROUP

# Handler records kept at most (objects in a temporary error at once); the oldest go first.
MAX_RECORDS = 100_000


def handled_generation(body: Any) -> bool:
    """Whether the status records a pass over the object's current generation (pure)."""
    generation = (body.get("metadata") or {}).get("generation") or 1
    observed = (body.get("status") or {}).get("observedGeneration") or 0
    return int(observed) >= int(generation)


class GenerationDiffBaseStorage(kopf.DiffBaseStorage):
    """The diff-base is the current essence once ``observedGeneration`` reached the generation."""

    def __init__(self) -> None:
        super().__init__()
        # kopf calls fetch() then build() on the same body, one event at a time (its event
        # loop): fetch's essence is handed to build instead of being computed twice.
        self._fetched: tuple[int, Any] | None = None

    def build(self, *, body: Any, extra_fields: Iterable[Any] | None = None) -> Any:
        if not _ours(body):
            return None  # a watched child (a RayJob): no handler of ours diffs it
        fields = list(extra_fields or [])
        fetched, self._fetched = self._fetched, None
        if fetched is not None and fetched[0] == id(body) and all(_in_spec(f) for f in fields):
            return fetched[1]
        return super().build(body=_slim(body, fields), extra_fields=fields)

    def fetch(self, *, body: Any) -> Any:
        self._fetched = None
        if not _ours(body) or not handled_generation(body):
            return None  # kopf: a creation, i.e. run the reconcile handler
        essence = super().build(body=_slim(body, []), extra_fields=[])
        self._fetched = (id(body), essence)
        return essence

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        """Nothing to write: the reconcile pass's status patch carries ``observedGeneration``."""


def _ours(body: Any) -> bool:
    """Whether ``body`` is one of rayrelay's own resources (not a watched child).

    kopf asks the diff-base storage about every watched object, RayJobs included, though
    only ``on.event`` handlers watch those and no cause of theirs uses a diff: building one
    would deep-copy each RayJob's whole spec (its pod templates) on every event for nothing.
    """
    return str(body.get("apiVersion") or "").startswith(f"{GROUP}/")


def _in_spec(field: Any) -> bool:
    path = field.split(".") if isinstance(field, str) else list(field)
    return bool(path) and path[0] == "spec"


def _slim(body: Any, fields: list[Any]) -> Any:  # a RawBody for kopf
    """The parts of ``body`` an essence is made of, before kopf deep-copies them.

    kopf's ``build`` deep-copies the whole body and then drops ``metadata`` (with its
    managedFields) and ``status``: here they are left out first, but for the labels and
    annotations kopf keeps, and the status where a handler's field asks for it.
    """
    slim = {k: v for k, v in body.items() if k not in ("metadata", "status")}
    meta = body.get("metadata") or {}
    slim["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    if "status" in body and not all(_in_spec(f) for f in fields):
        slim["status"] = body["status"]
    return slim


class MemoryProgressStorage(kopf.ProgressStorage):
    """kopf's per-handler progress in a bounded in-process map; ``touch`` via an annotation."""

    def __init__(self, touch_prefix: str) -> None:
        super().__init__()
        self._records: OrderedDict[tuple[str, str], Any] = OrderedDict()
        # uid -> the keys of its records that wait for a retry ("delayed"): ``_waiting`` is asked
        # on every non-empty patch, and a scan of every record made that O(records) per patch.
        self._delayed: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._touch = kopf.AnnotationsProgressStorage(prefix=touch_prefix)

    @staticmethod
    def _key(key: str, body: Any) -> tuple[str, str]:
        return (str((body.get("metadata") or {}).get("uid") or ""), str(key))

    def fetch(self, *, key: Any, body: Any) -> Any:
        with self._lock:
            record = self._records.get(self._key(key, body))
        return dict(record) if record is not None else None

    def store(self, *, key: Any, record: Any, body: Any, patch: Any) -> None:
        k = self._key(key, body)
        delayed = record.get("delayed")
        with self._lock:
            before = self._records.get(k)
            self._records[k] = dict(record)
            self._records.move_to_end(k)
            self._mark(k, bool(delayed))
            while len(self._records) > MAX_RECORDS:
                old, _ = self._records.popitem(last=False)
                self._mark(old, False)
        if delayed and (before is None or before.get("delayed") != delayed):
            # A retry is newly scheduled. kopf skips its sleep-and-touch whenever the cycle's
            # patch is not empty, counting on that patch to bring the next event; a patch that
            # changes nothing on the server (the same status again) brings none, and the retry
            # would never come (a deletion waiting for its Ray job hung so in CI). A unique
            # touch makes the patch a change. The same retry stored again in a later cycle
            # writes nothing: kopf sleeps out the delay and touches itself (``touch``).
            self._touch.touch(body=body, patch=patch, value=datetime.now(UTC).isoformat())

    def purge(self, *, key: Any, body: Any, patch: Any) -> None:
        k = self._key(key, body)
        with self._lock:
            self._records.pop(k, None)
            self._mark(k, False)

    def _mark(self, k: tuple[str, str], delayed: bool) -> None:
        """Keep ``_delayed`` in step with the record at ``k`` (the caller holds the lock)."""
        uid, key = k
        if delayed:
            self._delayed.setdefault(uid, set()).add(key)
            return
        keys = self._delayed.get(uid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._delayed[uid]

    def touch(self, *, body: Any, patch: Any, value: str | None) -> None:
        if value is None and (self._wakes(patch) or self._waiting(body)):
            # kopf clears its dummy from every non-empty patch before applying it, and then
            # skips its sleep because of that patch. While one of this object's handlers waits
            # for a retry, clearing could turn the patch into a removal the server has already
            # applied (a stale body, from an event queued before the last patch): a no-op, no
            # event, and the retry never comes (a deletion on "checking that they stay gone"
            # hung so in test_operator_ray). Such a patch carries a unique value instead.
            if not self._wakes(patch):
                self._touch.touch(body=body, patch=patch, value=datetime.now(UTC).isoformat())
            return
        self._touch.touch(body=body, patch=patch, value=value)

    def _wakes(self, patch: Any) -> bool:
        annotations = (patch.get("metadata") or {}).get("annotations") or {}
        return any(k.startswith(f"{self._touch.prefix}/") and v is not None for k, v in annotations.items())

    def _waiting(self, body: Any) -> bool:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        with self._lock:
            return uid in self._delayed

    def clear(self, *, essence: Any) -> Any:
        annotations = (essence.get("metadata") or {}).get("annotations") or {}
        if not any(key.startswith(f"{self._touch.prefix}/") for key in annotations):
            return essence  # nothing of ours to drop: no copy (kopf only diffs the result)
        return self._touch.clear(essence=essence)

    def __len__(self) -> int:
        return len(self._records)
