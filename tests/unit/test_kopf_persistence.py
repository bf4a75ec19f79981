"""kopf's diff-base from ``status.observedGeneration`` and its handler progress in memory.

Pure tests of ``rayrelay_operator.persistence`` against kopf's own cause detection
(``kopf._core.intents.causes.detect_changing_cause``, the function kopf's reactor calls with
these storages' answers): a new generation is a creation (the reconcile handler runs), a
handled one is nothing, a restarted operator reaches the same answers from the same
status, and neither storage writes anything into kopf's patch on the way.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf
from kopf._cogs.structs import bodies, diffs, patches
from kopf._core.intents import causes

from rayrelay_operator.persistence import (
    MAX_RECORDS,
    GenerationDiffBaseStorage,
    MemoryProgressStorage,
    handled_generation,
)

SPEC_FIELD = [("spec",)]  # the extra field kopf derives from on.update(field="spec")


def tj(generation: int, observed: int | None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "sst2",
            "namespace": "ml",
            "uid": "uid-1",
            "generation": generation,
            "labels": {"team": "a"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"model": {"source": "bert"}, **spec},
    }
    if observed is not None:
        body["status"] = {"observedGeneration": observed, "phase": "Pending"}
    return body


def reason_for(storage: GenerationDiffBaseStorage, raw: dict[str, Any]) -> causes.Reason:
    """What kopf's reactor decides for one event (processing._detect_causes, reduced)."""
    body = bodies.Body(raw)
    old = storage.fetch(body=body)
    new = storage.build(body=body, extra_fields=SPEC_FIELD)
    cause = causes.detect_changing_cause(
        finalizer="rayrelay.dev/finalizer",
        raw_event={"type": "MODIFIED", "object": raw},
        resource=None,
        indices=None,
        logger=None,
        patch=patches.Patch(),
        body=body,
        old=old,
        new=new,
        diff=diffs.diff(old, new),
        memo=None,
        initial=False,
    )
    return cause.reason


def test_handled_generation_reads_observed_generation() -> None:
    assert not handled_generation(tj(1, None))
    assert not handled_generation(tj(2, 1))
    assert handled_generation(tj(2, 2))
    assert handled_generation({"metadata": {}, "status": {"observedGeneration": 1}})


def test_a_new_object_is_a_creation_and_a_handled_one_is_nothing() -> None:
    storage = GenerationDiffBaseStorage()
    assert reason_for(storage, tj(1, None)) is causes.Reason.CREATE
    assert reason_for(storage, tj(1, 1)) is causes.Reason.NOOP
    # A spec change bumps the generation past the status: the reconcile handler runs again.
    assert reason_for(storage, tj(2, 1, suspend=True)) is causes.Reason.CREATE
    assert reason_for(storage, tj(2, 2, suspend=True)) is causes.Reason.NOOP


def test_a_restarted_operator_decides_the_same_from_the_status() -> None:
    for raw, expected in ((tj(3, 3), causes.Reason.NOOP), (tj(3, 2), causes.Reason.CREATE)):
        assert reason_for(GenerationDiffBaseStorage(), raw) is expected


def test_label_changes_do_not_run_the_handler() -> None:
    storage = GenerationDiffBaseStorage()
    raw = tj(1, 1)
    raw["metadata"]["labels"] = {"team": "b"}  # no generation bump for metadata
    assert reason_for(storage, raw) is causes.Reason.NOOP


def test_store_writes_nothing_and_build_leaves_metadata_and_status_out() -> None:
    storage = GenerationDiffBaseStorage()
    raw = tj(1, None)
    before = copy.deepcopy(raw)
    patch = patches.Patch()
    essence = storage.build(body=bodies.Body(raw), extra_fields=SPEC_FIELD)
    storage.store(body=bodies.Body(raw), patch=patch, essence=essence)
    assert not patch and raw == before
    assert essence == {"metadata": {"labels": {"team": "a"}}, "spec": {"model": {"source": "bert"}}}
    # The same as kopf's own essence (which copies the whole body first).
    assert essence == kopf.AnnotationsDiffBaseStorage(prefix="rayrelay.dev").build(
        body=bodies.Body(raw), extra_fields=SPEC_FIELD
    )


def test_progress_lives_in_memory_per_object_and_handler() -> None:
    storage = MemoryProgressStorage("rayrelay.dev")
    one, other = bodies.Body(tj(1, None)), bodies.Body({**tj(1, None), "metadata": {"uid": "uid-2"}})
    patch = patches.Patch()
    storage.store(key=kopf.HandlerId("h"), record={"retries": 2}, body=one, patch=patch)
    assert not patch  # nothing written to the object
    storage.store(key=kopf.HandlerId("h"), record={"retries": 2, "delayed": "x"}, body=one, patch=patch)
    # A scheduled retry: only a unique touch, so that the cycle's patch is a change on the server
    # and brings the event kopf waits for instead of sleeping (it skips its sleep when it patches).
    assert set(patch["metadata"]["annotations"]) >= {"rayrelay.dev/touch-dummy"}
    assert "status" not in patch
    patch = patches.Patch()
    assert storage.fetch(key=kopf.HandlerId("h"), body=one) == {"retries": 2, "delayed": "x"}
    assert storage.fetch(key=kopf.HandlerId("h"), body=other) is None
    assert storage.fetch(key=kopf.HandlerId("g"), body=one) is None
    storage.purge(key=kopf.HandlerId("h"), body=one, patch=patch)
    assert storage.fetch(key=kopf.HandlerId("h"), body=one) is None and not patch and len(storage) == 0


def test_touch_still_writes_an_annotation_to_wake_a_retry() -> None:
    storage = MemoryProgressStorage("rayrelay.dev")
    patch = patches.Patch()
    storage.touch(body=bodies.Body(tj(1, None)), patch=patch, value="2026-01-01T00:00:00")
    annotations = patch["metadata"]["annotations"]
    assert annotations["rayrelay.dev/touch-dummy"] == "2026-01-01T00:00:00"


def test_kopfs_dummy_cleanup_keeps_a_scheduled_retrys_touch() -> None:
    """kopf clears its touch from every non-empty patch before applying it (``touch(None)``).

    With a body that still shows an earlier touch (an event queued before the last patch),
    that would replace the retry's unique value with a removal the server may already have
    applied: a no-op patch, no event, and a retry that never comes (a TrainingJob deletion
    hung so in test_operator_ray). The retry's value stays; with no retry in the patch, the
    cleanup works as before."""
    storage = MemoryProgressStorage("rayrelay.dev")
    body = bodies.Body(
        {**tj(1, None), "metadata": {"uid": "uid-1", "annotations": {"rayrelay.dev/touch-dummy": "old"}}}
    )
    patch = patches.Patch()
    storage.store(key=kopf.HandlerId("h"), record={"retries": 1, "delayed": "x"}, body=body, patch=patch)
    woken = patch["metadata"]["annotations"]["rayrelay.dev/touch-dummy"]
    assert woken not in (None, "old")
    storage.touch(body=body, patch=patch, value=None)  # what kopf's apply() does next
    assert patch["metadata"]["annotations"]["rayrelay.dev/touch-dummy"] == woken
    # Another non-empty patch while the retry waits: a unique value too, never a removal.
    waiting = patches.Patch({"status": {"phase": "Pending"}})
    storage.touch(body=body, patch=waiting, value=None)
    assert waiting["metadata"]["annotations"]["rayrelay.dev/touch-dummy"] not in (None, "old")
    # The same retry stored again (kopf re-stores its state each cycle) adds nothing:
    # kopf sleeps out the delay and touches itself.
    again = patches.Patch()
    storage.store(key=kopf.HandlerId("h"), record={"retries": 1, "delayed": "x"}, body=body, patch=again)
    assert not again
    # No retry waiting any more: kopf's cleanup of its dummy works as before.
    storage.purge(key=kopf.HandlerId("h"), body=body, patch=patches.Patch())
    plain = patches.Patch({"status": {"phase": "Pending"}})
    storage.touch(body=body, patch=plain, value=None)
    assert plain["metadata"]["annotations"]["rayrelay.dev/touch-dummy"] is None  # the dummy goes


def test_records_are_bounded() -> None:
    storage = MemoryProgressStorage("rayrelay.dev")
    patch = patches.Patch()
    for i in range(MAX_RECORDS + 5):
        body = bodies.Body({"metadata": {"uid": f"u{i}"}})
        storage.store(key=kopf.HandlerId("h"), record={"retries": 1}, body=body, patch=patch)
    assert len(storage) == MAX_RECORDS
    assert storage.fetch(key=kopf.HandlerId("h"), body=bodies.Body({"metadata": {"uid": "u0"}})) is None


def test_waiting_follows_each_record_through_retry_success_purge_and_eviction() -> None:
    """Whether an object waits for a retry is kept per uid (``_delayed``), not found by scanning
    every record on each of kopf's patches: it must follow the records exactly, whichever way
    a record stops waiting (stored again without a delay, purged, or evicted by the bound)."""
    storage = MemoryProgressStorage("rayrelay.dev")
    body = bodies.Body(
        {**tj(1, None), "metadata": {"uid": "uid-1", "annotations": {"rayrelay.dev/touch-dummy": "old"}}}
    )

    def cleanup_removes_dummy() -> bool:  # kopf's touch(None) on a non-empty patch
        patch = patches.Patch({"status": {"phase": "Pending"}})
        storage.touch(body=body, patch=patch, value=None)
        return bool(patch["metadata"]["annotations"]["rayrelay.dev/touch-dummy"] is None)

    h, g = kopf.HandlerId("h"), kopf.HandlerId("g")
    storage.store(key=h, record={"retries": 1, "delayed": "x"}, body=body, patch=patches.Patch())
    storage.store(key=g, record={"retries": 1, "delayed": "y"}, body=body, patch=patches.Patch())
    assert not cleanup_removes_dummy()
    storage.store(key=h, record={"retries": 1, "success": True}, body=body, patch=patches.Patch())
    assert not cleanup_removes_dummy()  # g still waits
    storage.purge(key=g, body=body, patch=patches.Patch())
    assert cleanup_removes_dummy()
    storage.store(key=g, record={"retries": 2, "delayed": "z"}, body=body, patch=patches.Patch())
    for i in range(MAX_RECORDS):  # pushes uid-1's records out of the bound
        other = bodies.Body({"metadata": {"uid": f"u{i}"}})
        storage.store(key=h, record={"retries": 1}, body=other, patch=patches.Patch())
    assert storage.fetch(key=g, body=body) is None
    assert cleanup_removes_dummy()
