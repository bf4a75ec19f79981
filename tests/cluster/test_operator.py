"""The shipped ``rayrelay operator``, run as the installed chart runs it, on a real API server.

Each test ``helm install``s the repository's chart, reads the operator
container's args and env back from the release (``helm get manifest``) and
runs ``rayrelay operator <args>`` as a subprocess with that env and a token of
the chart's ServiceAccount as its only credential (``chart_operator``). So a
test here fails when the operator cannot log in with a plain KUBECONFIG
(issue 10), when ``--standalone`` pauses every watch-stream (issue 19), or
when the chart's RBAC lacks something the operator does.

The TrainingJob is ``examples/trainingjob.yaml`` asking for GPUs, its store an
``s3://`` bucket on moto's real S3 server (the chart's ``artifacts.*`` values,
credentials from a Secret). KubeRay's CRDs validate and prune what the
operator creates (it creates with ``fieldValidation=Strict``, and the test
compares what the builder produced with what the server stored); KubeRay's
real controller expands the RayJob into a RayCluster and Pods (Pending: there
is no kubelet). Later phases are played through the RayJob's status
subresource with KubeRay stopped, as the envtest README says.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

from rayrelay_core.runs import ProgressDoc, RunLayout, run_id_for
from rayrelay_core.store import S3Settings, S3Store
from tests.cluster.chart_operator import (
    FAST_TIMERS,
    ChartRelease,
    Operators,
    assert_kept,
    create_s3_secret,
    install_chart,
    rayjobs_of,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane, free_port

GPU = "nvidia.com/gpu"


# ------------------------------------------------------------------ helpers


def rayjob_of(plane: ControlPlane, namespace: str, tj_name: str) -> dict[str, Any] | None:
    items = rayjobs_of(plane, namespace, tj_name)
    assert len(items) <= 1, f"more than one RayJob for {tj_name}: {[i['metadata']['name'] for i in items]}"
    return items[0] if items else None


def status_of(plane: ControlPlane, kind: str, namespace: str, name: str) -> dict[str, Any]:
    obj = plane.get(kind, name, "-n", namespace)
    return dict((obj or {}).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == type_), {})


def wait_phase(
    plane: ControlPlane, kind: str, ns: str, name: str, phase: str, timeout: float = 90
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(plane, kind, ns, name)
        return status if status.get("phase") == phase else None

    try:
        return wait_for(f"{kind} {name} phase {phase}", reached, timeout)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nlast status: {json.dumps(status_of(plane, kind, ns, name), indent=1)}"
        ) from None


def patch_status(plane: ControlPlane, kind: str, ns: str, name: str, status: dict[str, Any]) -> None:
    """Write a status through the status subresource, as KubeRay's controller does."""
    plane.kubectl(
        "patch",
        kind,
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def built_rayjob(tj: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """What the operator's builder makes of the stored TrainingJob with the chart's settings."""
    from rayrelay_operator.backends.kuberay import KubeRayBackend
    from rayrelay_operator.reconcile.status import parse_typed
    from rayrelay_operator.reconcile.training import training_work
    from rayrelay_operator.settings import Settings

    settings = Settings.from_env(env)
    model, problem = parse_typed(tj, "TrainingJob")
    assert problem is None, problem
    model.metadata.namespace = tj["metadata"]["namespace"]
    work = training_work(model, settings, tj["metadata"]["generation"], tj["status"].get("attempt") or 1)
    return dict(KubeRayBackend(None, settings)._rayjob_body(work))


def built_rayservice(
    md: dict[str, Any], tj_status: dict[str, Any], run_id: str, env: dict[str, str]
) -> dict[str, Any]:
    """What the operator's builder makes of the stored ModelDeployment and the TrainingJob's model."""
    from rayrelay_operator.backends.kuberay import KubeRayBackend
    from rayrelay_operator.reconcile.deployment import DesiredModel, serving_work
    from rayrelay_operator.reconcile.status import parse_typed
    from rayrelay_operator.settings import Settings

    settings = Settings.from_env(env)
    model, problem = parse_typed(md, "ModelDeployment")
    assert problem is None, problem
    model.metadata.namespace = md["metadata"]["namespace"]
    variant = sample_manifest(run_id).servable_variant(str(model.spec.model.effective_variant))
    artifacts = tj_status["artifacts"]
    desired = DesiredModel(artifacts["manifestUri"], artifacts["digest"], variant)
    return dict(KubeRayBackend(None, settings)._rayservice_body(serving_work(model, desired, settings)))


def assert_builder_output_kept(built: dict[str, Any], stored: dict[str, Any]) -> None:
    meta = {k: built["metadata"][k] for k in ("name", "namespace", "labels", "ownerReferences")}
    meta["annotations"] = built["metadata"].get("annotations") or {}
    assert_kept(meta, stored["metadata"], ".metadata")
    assert_kept(built["spec"], stored["spec"], ".spec")


def sample_manifest(run_id: str) -> Any:
    """The unit tests' complete manifest, as the workloads write it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from reconcile_fakes import sample_manifest

    return sample_manifest(run_id=run_id)


def gpu_of(container: dict[str, Any]) -> tuple[str | None, str | None]:
    res = container.get("resources") or {}
    return (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)


def start_chart_operator(
    plane: ControlPlane,
    operators: Operators,
    release_ns: str,
    values: dict[str, Any],
    *,
    in_pod: bool = False,
) -> tuple[ChartRelease, Any]:
    create_s3_secret(plane, release_ns)
    release = install_chart(plane, release_ns, {**FAST_TIMERS, **values})
    op = operators.start(release, in_pod=in_pod)
    op.wait_ready()
    return release, op


# ------------------------------------------------------------------ tests


def test_chart_operator_all_namespaces_trainingjob_to_rayjob_to_deployment(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    plane = crds_installed
    store_uri = f"{s3_bucket}/runs"
    release, op = start_chart_operator(plane, operators, release_namespace, s3_values(s3_server, store_uri))
    # The chart's defaults: cluster-wide, one replica, standalone (no peering object exists).
    assert release.args[:3] == ["operator", "--all-namespaces", "--standalone"], release.args
    create_s3_secret(plane, namespace)  # the workload pods read the store with it
    if plane.has_kuberay:
        plane.start_kuberay()

    # A TrainingJob asking for 3 workers with one GPU each -> a RayJob owned by it.
    name = "gpu-tickets"
    plane.apply(trainingjob(name, gpus=1, workers=3), "-n", namespace)
    rj = wait_for(f"the RayJob of {name}", lambda: rayjob_of(plane, namespace, name), 90)
    tj = plane.get("trainingjob", name, "-n", namespace)
    (owner,) = rj["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "TrainingJob",
        name,
        tj["metadata"]["uid"],
        True,
    )
    (workers,) = rj["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 3
    assert gpu_of(workers["template"]["spec"]["containers"][0]) == ("1", "1")
    # Nothing the builder wrote was pruned or changed by KubeRay's schema.
    tj = wait_for(
        "the TrainingJob's status",
        lambda: (t := plane.get("trainingjob", name, "-n", namespace)).get("status", {}).get("rayJob") and t,
        60,
    )
    assert_builder_output_kept(built_rayjob(tj, release.env(op.pod_name)), rj)
    # KubeRay 1.5.0's CRDs have no authOptions (issue 26): the RayJob is made without Ray's token
    # authentication, the operator says so once in its log, and the TrainingJob's condition why.
    assert "authOptions" not in rj["spec"]["rayClusterSpec"]
    auth = wait_for(
        "the RayAuthenticated condition",
        lambda: condition(status_of(plane, "trainingjob", namespace, name), "RayAuthenticated") or None,
        60,
    )
    assert (auth["status"], auth["reason"]) == ("False", "NotSupportedByKubeRay"), auth
    assert "KubeRay < 1.5.1" in auth["message"], auth
    assert op.log.count("has no spec.rayClusterSpec.authOptions") == 1, op.log[-3000:]

    if plane.has_kuberay:
        # KubeRay's controller accepts it and expands it into a RayCluster and GPU Pods.
        def expanded() -> str | None:
            status = (plane.get("rayjob", rj["metadata"]["name"], "-n", namespace) or {}).get("status") or {}
            assert status.get("jobDeploymentStatus") != "ValidationFailed", status
            return status.get("rayClusterName")

        cluster = wait_for("KubeRay to create the RayCluster", expanded, 90)

        def pods() -> list[dict[str, Any]] | None:
            items = plane.get("pods", "-n", namespace, "-l", f"ray.io/cluster={cluster}")["items"]
            return items if len(items) == 4 else None

        found = wait_for("the head and 3 worker Pods", pods, 90)
        worker_pods = [p for p in found if p["metadata"]["labels"].get("ray.io/node-type") == "worker"]
        assert len(worker_pods) == 3
        for pod in worker_pods:
            assert gpu_of(pod["spec"]["containers"][0]) == ("1", "1"), pod["spec"]["containers"][0][
                "resources"
            ]
        plane.stop_kuberay()

    # KubeRay's status, played: running, progress in the store, then success with a manifest.
    rj_name = rj["metadata"]["name"]
    run_id = run_id_for_tj(tj)
    layout = RunLayout.for_job(store_uri, namespace, name, run_id)
    store = S3Store(S3Settings(endpoint_url=s3_server))
    patch_status(
        plane, "rayjob", namespace, rj_name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    )
    store.write_bytes(
        layout.progress,
        ProgressDoc(stage="Training", step=40, total_steps=100, epoch=1.0, loss=0.3).to_json().encode(),
    )
    status = wait_phase(plane, "trainingjob", namespace, name, "Training")
    wait_for(
        "progress 40%",
        lambda: status_of(plane, "trainingjob", namespace, name).get("progress", {}).get("percent") == 40.0,
        60,
    )
    store.write_bytes(layout.manifest, sample_manifest(run_id).to_json().encode())
    patch_status(
        plane, "rayjob", namespace, rj_name, {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
    )
    status = wait_phase(plane, "trainingjob", namespace, name, "Succeeded")
    assert status["artifacts"]["manifestUri"] == layout.manifest
    assert condition(status, "Succeeded").get("status") == "True", status["conditions"]
    # kubectl shows it: the printer columns and the events the operator posted.
    table = plane.kubectl("get", "tj", name, "-n", namespace).stdout
    assert "Succeeded" in table, table
    described = plane.kubectl("describe", "tj", name, "-n", namespace).stdout
    events = described.split("Events:", 1)[1]
    assert "Normal" in events and "<none>" not in events, described

    # A ModelDeployment of it -> a RayService owned by it, kept as built.
    md_name = "tickets"
    md = {
        "apiVersion": "rayrelay.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": md_name},
        "spec": {
            "model": {"trainingJobRef": {"name": name}},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }
    plane.apply(md, "-n", namespace)
    rs = wait_for("the RayService", lambda: plane.get("rayservice", md_name, "-n", namespace), 90)
    md_stored = plane.get("modeldeployment", md_name, "-n", namespace)
    assert rs["metadata"]["ownerReferences"][0]["uid"] == md_stored["metadata"]["uid"]
    assert_builder_output_kept(built_rayservice(md_stored, status, run_id, release.env(op.pod_name)), rs)
    if plane.has_kuberay:
        plane.start_kuberay()  # accepts the RayService, and lets the deleted children go (its finalizer)

        def rs_cluster() -> str | None:
            status = (plane.get("rayservice", md_name, "-n", namespace) or {}).get("status") or {}
            return (status.get("pendingServiceStatus") or {}).get("rayClusterName") or (
                status.get("activeServiceStatus") or {}
            ).get("rayClusterName")

        wait_for("KubeRay to start the RayService's cluster", rs_cluster, 90)

    # Deleting them: the finalizer removes the children, then the resources go.
    plane.kubectl("delete", "modeldeployment", md_name, "-n", namespace, "--wait=false")
    plane.kubectl("delete", "trainingjob", name, "-n", namespace, "--wait=false")

    def all_gone() -> bool:
        return all(
            plane.get(kind, obj, "-n", namespace) is None
            for kind, obj in (
                ("rayservice", md_name),
                ("rayjob", rj_name),
                ("modeldeployment", md_name),
                ("trainingjob", name),
            )
        )

    wait_for("the resources and their children to be deleted", all_gone, 120)
    op.alive()


def run_id_for_tj(tj: dict[str, Any]) -> str:
    from rayrelay_core.api import TrainingJobSpec

    return str(run_id_for(TrainingJobSpec.model_validate(tj["spec"])))


def test_chart_operator_watch_namespaces(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    """``watchNamespaces``: --namespace flags and a Role per namespace; other namespaces untouched."""
    plane = crds_installed
    other = f"t-{uuid.uuid4().hex[:8]}"
    plane.kubectl("create", "namespace", other)
    try:
        values = {**s3_values(s3_server, f"{s3_bucket}/runs"), "watchNamespaces": [namespace]}
        release, _op = start_chart_operator(plane, operators, release_namespace, values)
        assert release.args[:3] == ["operator", f"--namespace={namespace}", "--standalone"], release.args
        plane.apply(trainingjob("watched", gpus=1, workers=2), "-n", namespace)
        plane.apply(trainingjob("unwatched", gpus=0, workers=1), "-n", other)
        rj = wait_for(
            "the RayJob of the watched namespace", lambda: rayjob_of(plane, namespace, "watched"), 90
        )
        assert rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
        wait_phase(plane, "trainingjob", namespace, "watched", "Pending")
        # The other namespace is not ours: no status, no finalizer, no RayJob.
        unwatched = plane.get("trainingjob", "unwatched", "-n", other)
        assert not unwatched.get("status") and not unwatched["metadata"].get("finalizers"), unwatched
        assert rayjob_of(plane, other, "unwatched") is None
    finally:
        plane.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_chart_operator_logs_in_with_the_pods_service_account(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    s3_server: str,
    s3_bucket: str,
    operators: Operators,
) -> None:
    """In a pod there is no KUBECONFIG: the ServiceAccount's mounted token and CA, and the
    KUBERNETES_SERVICE_* address, are all it has -- and TLS is verified against that CA."""
    plane = crds_installed
    _release, op = start_chart_operator(
        plane, operators, release_namespace, s3_values(s3_server, f"{s3_bucket}/runs"), in_pod=True
    )
    plane.apply(trainingjob("in-pod", gpus=0, workers=1), "-n", namespace)
    wait_for("the RayJob of in-pod", lambda: rayjobs_of(plane, namespace, "in-pod"), 90)
    assert "KUBECONFIG" not in op.environment()
    assert "InsecureRequestWarning" not in op.log  # the CA was used, not skipped


def test_store_unavailable_is_reported_then_the_job_is_submitted(
    crds_installed: ControlPlane,
    kuberay_crds: ControlPlane,
    namespace: str,
    release_namespace: str,
    operators: Operators,
) -> None:
    """Issue 19 item 5: an artifact store that does not answer shows in the status and the
    events (reason StoreUnavailable, with the URI); once it answers, the job is submitted."""
    from moto.server import ThreadedMotoServer

    plane = crds_installed
    port = free_port()
    endpoint, bucket = f"http://127.0.0.1:{port}", "rr-late-store"
    retry_fast = {"name": "RAYRELAY_RETRY_BASE_DELAY_SECONDS", "value": "2"}
    values = {
        **s3_values(endpoint, f"s3://{bucket}/runs"),
        "extraEnv": [*FAST_TIMERS["extraEnv"], retry_fast],
    }
    start_chart_operator(plane, operators, release_namespace, values)
    name = "late-store"
    plane.apply(trainingjob(name, gpus=0, workers=1), "-n", namespace)
    # What a user runs to see it (kubectl wait on the condition's reason).
    reason = '{.status.conditions[?(@.type=="Reconciled")].reason}'
    plane.kubectl(
        "wait", f"--for=jsonpath={reason}=StoreUnavailable", f"tj/{name}", "-n", namespace, "--timeout=120s"
    )
    reconciled = condition(status_of(plane, "trainingjob", namespace, name), "Reconciled")
    assert reconciled["status"] == "False" and f"s3://{bucket}/runs" in reconciled["message"], reconciled
    assert rayjobs_of(plane, namespace, name) == []
    described = plane.kubectl("describe", "tj", name, "-n", namespace).stdout
    assert "StoreUnavailable" in described.split("Events:", 1)[1], described

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        wait_for("the RayJob once the store answers", lambda: rayjobs_of(plane, namespace, name), 120)

        def recovered() -> bool:
            cond = condition(status_of(plane, "trainingjob", namespace, name), "Reconciled")
            return cond.get("reason") != "StoreUnavailable"

        wait_for("the StoreUnavailable condition to clear", recovered, 60)
    finally:
        server.stop()
