"""The ModelDeployment state machine (``rayrelay_operator.reconcile.deployment``), pass by pass.

A fake backend reports what Serve shows; TrainingJobs are plain dicts served
by ``get_trainingjob``; manifests live in a local-folder store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, with_status, write_manifest

from rayrelay_core.api import ModelDeploymentStatus
from rayrelay_core.conditions import find_condition
from rayrelay_operator.reconcile import Deploy, PassResult, permanent_failure, run_pass
from rayrelay_operator.work import ServingObservation, ServingState


def md_dict(**model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "uid": "u", "generation": 1},
        "spec": {"model": model or {"trainingJobRef": {"name": "sst2"}}},
    }


class Driver:
    def __init__(self, tmp_path: Path, **model: Any) -> None:
        self.backend = FakeBackend()
        self.tjs: dict[str, dict[str, Any]] = {}
        self.ctx, self.events = make_ctx(
            self.backend, Clock(), str(tmp_path), get_trainingjob=lambda ns, name: self.tjs.get(name)
        )
        self.root = tmp_path
        self.obj = md_dict(**model)
        self.writes = 0

    def run(self) -> PassResult:
        result = run_pass("ModelDeployment", self.obj, self.ctx)
        if result.patch:
            self.writes += 1
            self.obj = with_status(self.obj, result.status)
        return result

    def step(self) -> ModelDeploymentStatus:
        status = self.run().status
        assert isinstance(status, ModelDeploymentStatus)
        return status

    def publish(self, run: str, int8: bool = True) -> str:
        uri = str(self.root / run / "manifest.json")
        write_manifest(uri, sample_manifest(run, int8_accepted=int8))
        self.tjs["sst2"] = {
            "status": {"phase": "Succeeded", "artifacts": {"manifestUri": uri}},
        }
        return uri

    def serve(self, state: str, ready: int = 1) -> None:
        args = self.backend.deployed[-1].app_args if self.backend.deployed else None
        self.backend.serving = ServingObservation(
            state=ServingState(state),
            url="http://x:8000",
            replicas=1,
            ready_replicas=ready,
            serving_args=args,
            message="m",
        )


def cond(status: ModelDeploymentStatus, type_: str) -> tuple[str, str]:
    c = find_condition(status.conditions, type_)
    assert c is not None, f"no {type_} in {status.conditions}"
    return str(c.status), c.reason


def test_waits_for_its_trainingjob_then_deploys_and_becomes_ready(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    s = d.step()
    assert s.phase == "Pending" and cond(s, "ModelAvailable") == ("False", "TrainingJobNotFound")
    d.tjs["sst2"] = {"status": {"phase": "Training", "progress": {"percent": 40.0}}}
    s = d.step()
    c = find_condition(s.conditions, "ModelAvailable")
    assert c and c.reason == "WaitingForTrainingJob" and "sst2" in c.message and "Training, 40%" in c.message
    assert d.backend.calls == []
    uri = d.publish("run-1")
    s = d.step()
    assert s.phase == "Deploying" and d.backend.calls == [("deploy", "sentiment")]
    assert d.backend.deployed[0].app_args["manifestUri"] == uri
    d.serve("Deploying")
    assert d.step().phase == "Deploying"
    d.serve("Running")
    s = d.step()
    assert s.phase == "Ready" and s.url == "http://x:8000" and s.ready_replicas == 1
    assert (
        s.model is not None and s.model.variant == "int8" and s.model.digest and s.model.manifest_uri == uri
    )
    assert cond(s, "Ready") == ("True", "Serving")
    writes = d.writes
    d.step()
    assert d.writes == writes and d.backend.verbs().count("deploy") == 1  # steady state: nothing to do


def test_new_model_rolls_over_and_a_bad_one_leaves_the_old_serving(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    d.serve("Running")
    old = d.step().model
    assert old is not None
    d.publish("run-2", int8=False)  # the TrainingJob succeeded again with a new model
    s = d.step()
    assert d.backend.verbs().count("deploy") == 2
    assert d.backend.deployed[-1].surge_from == 1  # room for the new replica beside the old one
    assert s.phase == "Ready" and cond(s, "Progressing") == ("True", "RollingOut")
    assert s.model == old  # still the old one until the new one runs
    d.serve("Deploying")
    d.step()
    assert d.backend.verbs().count("deploy") == 2  # the rollout's config stays as deployed
    d.serve("DeployFailed", ready=0)  # Serve stopped the old replica first, the new ones fail
    s = d.step()
    # Refused: the previous model is deployed again and the status says which run failed and why.
    assert s.phase == "Degraded" and cond(s, "Progressing") == ("False", "ModelRefused")
    progressing = find_condition(s.conditions, "Progressing")
    assert (
        progressing
        and progressing.message.startswith("refused sha256:")
        and "run run-2" in progressing.message
    )
    assert "its replicas failed: m" in progressing.message and old.digest in progressing.message
    assert d.backend.deployed[-1].app_args["digest"] == old.digest and s.model == old
    assert cond(s, "Ready") == ("False", "RollingBack")
    assert any(e.type == "Warning" and e.reason == "ModelRefused" for e in d.events)
    d.serve("Deploying", ready=0)
    s = d.step()
    assert s.phase == "Degraded" and cond(s, "Ready") == ("False", "RollingBack") and s.model == old
    d.serve("Running")  # the old model's replica is back
    s = d.step()
    assert s.phase == "Degraded" and cond(s, "Ready") == ("True", "Serving") and s.model == old
    assert cond(s, "Progressing") == ("False", "ModelRefused")
    deploys = d.backend.verbs().count("deploy")
    d.step()
    assert d.backend.verbs().count("deploy") == deploys  # the refused model is not tried again
    d.obj["metadata"]["generation"] = 2  # the spec changed (more memory, say): the refused run is tried again
    d.step()
    assert d.backend.deployed[-1].app_args["manifestUri"].endswith("run-2/manifest.json")
    d.serve("Running")
    assert d.step().phase == "Ready"  # this time it ran
    d.publish("run-3")  # a newer model is tried
    s = d.step()
    assert d.backend.deployed[-1].app_args["manifestUri"].endswith("run-3/manifest.json")
    assert s.phase == "Ready" and cond(s, "Progressing") == ("True", "RollingOut")
    d.serve("Running")  # run-3 runs: its config is deployed again without the surge
    s = d.step()
    assert s.phase == "Ready" and s.model and s.model.manifest_uri.endswith("run-3/manifest.json")
    assert d.backend.deployed[-1].surge_from is None
    assert d.backend.deployed[-1].app_args == d.backend.deployed[-2].app_args


def test_a_model_rewritten_in_place_cannot_roll_back(tmp_path: Path) -> None:
    """manifestUri rewritten at the same URI: the old manifest is gone, so nothing to deploy again."""
    uri = str(tmp_path / "set" / "manifest.json")
    write_manifest(uri, sample_manifest("run-1"))
    d = Driver(tmp_path, manifestUri=uri)
    d.step()
    d.serve("Running")
    old = d.step().model
    write_manifest(uri, sample_manifest("run-2"))
    d.step()
    d.serve("DeployFailed", ready=0)
    s = d.step()
    assert s.phase == "Degraded" and cond(s, "Progressing") == ("False", "ModelRolloutFailed")
    assert d.backend.deployed[-1].app_args["digest"] != (old.digest if old else None)


def test_failure_with_nothing_serving_is_failed(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    d.serve("DeployFailed", ready=0)
    s = d.step()
    assert s.phase == "Failed" and cond(s, "Ready") == ("False", "ModelRolloutFailed") and s.model is None


def test_missing_manifest_is_permanent(tmp_path: Path) -> None:
    d = Driver(tmp_path, manifestUri=str(tmp_path / "nope" / "manifest.json"))
    s = d.step()
    assert s.phase == "Failed" and cond(s, "ModelAvailable") == ("False", "ModelNotFound")
    assert permanent_failure(s) is not None and d.backend.calls == []


def test_rejected_variant_is_permanent(tmp_path: Path) -> None:
    uri = str(tmp_path / "r" / "manifest.json")
    write_manifest(uri, sample_manifest("r", int8_accepted=False))
    d = Driver(tmp_path, manifestUri=uri, variant="int8")
    s = d.step()
    assert s.phase == "Failed" and "rejected by the quality gate" in (permanent_failure(s) or "")


def test_suspend_takes_the_endpoint_down(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    d.serve("Running")
    d.step()
    d.obj["spec"]["suspend"] = True
    s = d.step()
    assert d.backend.calls[-1] == ("undeploy", "sentiment")
    assert s.phase == "Pending" and s.url is None and cond(s, "Ready") == ("False", "Suspended")


def test_deploy_action_carries_the_digest(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    work = d.backend.deployed[0]
    assert work.app_args["digest"].startswith("sha256:") and work.child_name == "sentiment"
    assert Deploy(work).work.labels["rayrelay.dev/modeldeployment"] == "sentiment"


def _digest_of(uri: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(Path(uri).read_bytes()).hexdigest()


def test_only_the_manifest_the_trainingjob_recorded_is_served(tmp_path: Path) -> None:
    """Issue 12, finding 9: resolve_model pins the TrainingJob's recorded digest.

    manifest.json is replaced in place by a later publication; until the TrainingJob's
    status names the new one, nothing new is deployed and what serves keeps serving.
    """
    d = Driver(tmp_path)
    uri = d.publish("run-1")
    recorded = _digest_of(uri)
    d.tjs["sst2"]["status"]["artifacts"]["digest"] = recorded
    d.step()
    d.serve("Running")
    s = d.step()
    assert s.phase == "Ready" and s.model is not None and s.model.digest == recorded
    assert d.backend.deployed[0].app_args["digest"] == recorded

    # Another publication rewrites manifest.json; the TrainingJob still records run-1's.
    write_manifest(uri, sample_manifest("run-2", int8_accepted=False))
    s = d.step()
    assert cond(s, "Ready") == ("True", "Serving")  # run-1's manifest, from memory: no store read
    # An operator that never read run-1's manifest (one just restarted) reads the store and
    # finds the swap.
    from rayrelay_operator.reconcile import deployment

    deployment._pinned_manifests.clear()
    s = d.step()
    assert cond(s, "ModelAvailable") == ("False", "ModelDigestMismatch")
    assert s.phase == "Ready" and s.model is not None and s.model.digest == recorded
    assert d.backend.verbs().count("deploy") == 1, "a manifest the TrainingJob did not record was deployed"

    # The TrainingJob's status names the new manifest: it rolls out.
    d.tjs["sst2"]["status"]["artifacts"]["digest"] = _digest_of(uri)
    d.step()
    assert d.backend.verbs().count("deploy") == 2
    assert d.backend.deployed[-1].app_args["digest"] == _digest_of(uri)


def test_a_swapped_manifest_is_never_deployed_first(tmp_path: Path) -> None:
    d = Driver(tmp_path)
    uri = d.publish("run-1")
    d.tjs["sst2"]["status"]["artifacts"]["digest"] = "sha256:" + "0" * 64
    s = d.step()
    assert s.phase == "Pending" and cond(s, "ModelAvailable") == ("False", "ModelDigestMismatch")
    assert "sha256:0000" in find_condition(s.conditions, "ModelAvailable").message  # type: ignore[union-attr]
    assert d.backend.calls == [] and uri


class CountingStore:
    """The local-folder store the fakes use, counting reads (stands in for S3's GETs)."""

    def __init__(self) -> None:
        from rayrelay_core.store import LocalStore

        self.inner = LocalStore()
        self.reads = 0

    def read_bytes(self, uri: str, max_bytes: int | None = None) -> bytes:
        self.reads += 1
        return self.inner.read_bytes(uri, max_bytes=max_bytes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_ready_deployment_of_a_pinned_manifest_stops_reading_the_store(tmp_path: Path) -> None:
    """Issue 14, item 7: a finished deployment's timer reads its TrainingJob, not the store."""
    d = Driver(tmp_path)
    store = CountingStore()
    d.ctx.store_for = lambda uri, endpoint: store  # type: ignore[assignment]
    uri = d.publish("run-pin")
    d.tjs["sst2"]["status"]["artifacts"]["digest"] = _digest_of(uri)
    d.step()
    d.serve("Running")
    assert d.step().phase == "Ready"
    reads = store.reads
    assert reads >= 1
    for _ in range(5):
        assert d.step().phase == "Ready"
    assert store.reads == reads, "a Ready deployment of a pinned manifest read the store again"

    # A new run recorded by the TrainingJob is read once and rolled out.
    uri2 = d.publish("run-pin-2")
    d.tjs["sst2"]["status"]["artifacts"]["digest"] = _digest_of(uri2)
    d.step()
    assert store.reads == reads + 1
    assert d.backend.deployed[-1].app_args["manifestUri"] == uri2


def test_a_manifest_uri_without_a_trainingjob_is_read_every_pass(tmp_path: Path) -> None:
    uri = str(tmp_path / "run-u" / "manifest.json")
    write_manifest(uri, sample_manifest("run-u"))
    d = Driver(tmp_path, manifestUri=uri)
    store = CountingStore()
    d.ctx.store_for = lambda uri, endpoint: store  # type: ignore[assignment]
    d.step()
    d.serve("Running")
    d.step()
    reads = store.reads
    d.step()
    assert store.reads == reads + 1  # how a new publication at the same URI is noticed


def test_a_serving_deployment_stays_ready_while_the_surge_is_released(tmp_path: Path) -> None:
    """After a rollout the spec's own autoscaling is deployed again and Serve stops the surge
    replica: the application is DEPLOYING again, but the new model serves, so the status stays
    Ready (measured once as a pass of phase Deploying, Ready False: docs/reliability.md,
    rollout_2_replicas). A first deployment and one whose application vanished still say Deploying.
    """
    d = Driver(tmp_path)
    d.publish("run-1")
    d.step()
    d.serve("Deploying", ready=1)  # a first deployment, one replica up already: not Ready yet
    s = d.step()
    assert s.phase == "Deploying" and cond(s, "Ready") == ("False", "Deploying")
    d.serve("Running", ready=2)
    assert d.step().phase == "Ready"
    d.publish("run-2")
    s = d.step()
    assert d.backend.deployed[-1].surge_from == 2 and cond(s, "Progressing") == ("True", "RollingOut")
    d.serve("Deploying", ready=3)  # run-2's replica starts beside run-1's
    assert d.step().phase == "Ready"
    d.serve("Running", ready=3)  # run-2 runs: the spec's own autoscaling is deployed again
    s = d.step()
    assert s.phase == "Ready" and s.model and s.model.manifest_uri.endswith("run-2/manifest.json")
    assert d.backend.deployed[-1].surge_from is None and cond(s, "Progressing") == ("False", "RolledOut")
    events = len(d.events)
    for ready in (3, 2):  # Serve applies that config and stops the surge replica, over two passes
        d.serve("Deploying", ready=ready)
        s = d.step()
        assert s.phase == "Ready" and cond(s, "Ready") == ("True", "Serving"), s.conditions
        assert cond(s, "Progressing") == ("True", "Updating")
        assert s.model and s.model.manifest_uri.endswith("run-2/manifest.json")
        assert d.backend.deployed[-1].surge_from is None  # never the surge again
    d.serve("Running", ready=2)
    s = d.step()
    assert s.phase == "Ready" and cond(s, "Progressing") == ("False", "RolledOut")
    assert len(d.events) == events, "the phase changed while the new model served"

    # The application vanished (the Ray head restarted, say): deployed again from nothing,
    # so Deploying until it runs, even with a replica up.
    d.serve("Running", ready=2)
    d.backend.serving = ServingObservation(ServingState.ABSENT)
    assert d.step().phase == "Deploying"
    d.serve("Deploying", ready=1)
    s = d.step()
    assert s.phase == "Deploying" and cond(s, "Ready") == ("False", "Deploying")
