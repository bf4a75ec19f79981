"""A NetworkPolicy for every Ray cluster, on the default install (issue 26, section 1).

The repository's chart is ``helm install``ed with its defaults (cluster-wide, no
``watchNamespaces``: the install that used to render no policy at all) and the
shipped ``rayrelay operator`` runs as the chart runs it (``chart_operator``:
only the chart's ServiceAccount token, so only the chart's RBAC). A
TrainingJob and a ModelDeployment are ``kubectl apply``-ed in a namespace the
values never mention. What must hold on the real API server, with KubeRay's
real controller turning the RayJob / RayService into RayClusters and Pods
(Pending: no kubelet):

- with the default scope ("namespace"), one NetworkPolicy, ``rayrelay-training``,
  around the namespace's RayJob pods, there before the first RayJob, owned by
  nothing, none per RayJob; a NetworkPolicy per RayService, owned by its
  ModelDeployment; all accepted with ``fieldValidation=Strict`` and kept as built;
- each podSelector matches exactly the head and worker Pods KubeRay created for
  the RayJob / the RayService, none of the other's;
- deleting the resources removes the RayService's policy (garbage collector);
  the namespace's stays;
- with ``networkPolicy.scope=cluster`` (helm upgrade) a policy per RayJob, owned
  by its TrainingJob, selecting that cluster only, gone with the TrainingJob;
- with ``networkPolicy.enabled=false`` (helm upgrade) the operator creates none
  and the chart grants no RBAC on NetworkPolicies.

One module, one install, one namespace: the cluster layer's time is budgeted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from rayrelay_core.runs import RunLayout
from rayrelay_core.store import S3Settings, S3Store
from rayrelay_operator.builders.kuberay import (
    TRAINING_POLICY_NAME,
    PolicyPeers,
    build_network_policy,
    build_training_network_policy,
)
from rayrelay_operator.settings import Settings
from tests.cluster.chart_operator import (
    FAST_TIMERS,
    ChartRelease,
    Operators,
    assert_kept,
    create_s3_secret,
    helm,
    install_chart,
    rayjobs_of,
    s3_values,
    trainingjob,
    wait_for,
)
from tests.cluster.controlplane import ControlPlane

LABEL = "rayrelay.dev/ray-cluster"


def policy(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    return plane.get("networkpolicy", name, "-n", namespace)  # type: ignore[no-any-return]


def pod_names(plane: ControlPlane, namespace: str, selector: str) -> set[str]:
    return {p["metadata"]["name"] for p in plane.get("pods", "-n", namespace, "-l", selector)["items"]}


def selector_of(pol: dict[str, Any]) -> str:
    """The policy's podSelector as a kubectl label selector (equalities and Exists only)."""
    sel = pol["spec"]["podSelector"]
    assert set(sel) <= {"matchLabels", "matchExpressions"}, sel
    terms = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        assert expr["operator"] == "Exists" and not expr.get("values"), expr
        terms.append(expr["key"])
    return ",".join(terms)


def can_i(plane: ControlPlane, sa: str, verb: str, resource: str, namespace: str) -> bool:
    answer = plane.kubectl("auth", "can-i", verb, resource, f"--as={sa}", "-n", namespace, check=False)
    assert answer.stdout.strip() in ("yes", "no"), answer.stderr
    return answer.stdout.strip() == "yes"


def manifest_in_store(s3_server: str, store_uri: str, namespace: str) -> str:
    """A published run's manifest (the unit tests' sample) under the namespace's prefix."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from reconcile_fakes import sample_manifest

    uri = RunLayout.for_job(store_uri, namespace, "published", "run-np").manifest
    S3Store(S3Settings(endpoint_url=s3_server)).write_bytes(uri, sample_manifest("run-np").to_json().encode())
    return uri


def cluster_of_rayjob(plane: ControlPlane, namespace: str, name: str) -> str | None:
    return ((plane.get("rayjob", name, "-n", namespace) or {}).get("status") or {}).get("rayClusterName")


def cluster_of_rayservice(plane: ControlPlane, namespace: str, name: str) -> str | None:
    status = (plane.get("rayservice", name, "-n", namespace) or {}).get("status") or {}
    return (status.get("pendingServiceStatus") or {}).get("rayClusterName") or (
        status.get("activeServiceStatus") or {}
    ).get("rayClusterName")


def test_default_install_puts_a_network_policy_around_every_ray_cluster(
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
    create_s3_secret(plane, release_namespace)
    create_s3_secret(plane, namespace)
    release = install_chart(plane, release_namespace, {**FAST_TIMERS, **s3_values(s3_server, store_uri)})
    # The defaults: cluster-wide, nothing about namespaces or policies in the values.
    assert "--all-namespaces" in release.args and not [
        m for m in release.manifests if m["kind"] == "NetworkPolicy"
    ]
    op = operators.start(release)
    op.wait_ready()
    env = release.env(op.pod_name)
    settings = Settings.from_env(env)
    peers = PolicyPeers(
        kuberay_namespace=settings.network_policy_kuberay_namespace,
        kuberay_name=settings.network_policy_kuberay_name,
        operator_namespace=settings.network_policy_operator_namespace,
        operator_labels=settings.operator_pod_labels(),
    )
    # The operator's peer is the chart's own pods: this namespace, the Deployment's selector.
    assert peers.operator_namespace == release_namespace
    assert peers.operator_labels == release.deployment["spec"]["selector"]["matchLabels"]
    sa = f"system:serviceaccount:{release_namespace}:{release.service_account}"
    for verb in ("create", "get", "patch", "delete"):
        assert can_i(plane, sa, verb, "networkpolicies.networking.k8s.io", namespace), verb
    for verb in ("list", "watch", "update"):
        assert not can_i(plane, sa, verb, "networkpolicies.networking.k8s.io", namespace), verb

    kuberay = plane.has_kuberay
    if kuberay:
        plane.start_kuberay()
    try:
        tj_name, md_name = "np-train", "np-serve"
        plane.apply(trainingjob(tj_name, gpus=0, workers=1), "-n", namespace)
        md = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": md_name},
            "spec": {
                "model": {"manifestUri": manifest_in_store(s3_server, store_uri, namespace)},
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
            },
        }
        plane.apply(md, "-n", namespace)
        rj = wait_for(f"the RayJob of {tj_name}", lambda: rayjobs_of(plane, namespace, tj_name), 90)[0]
        rj_name = rj["metadata"]["name"]
        rs = wait_for("the RayService", lambda: plane.get("rayservice", md_name, "-n", namespace), 90)

        # Scope "namespace" (the default): one policy around every RayJob's pods of the namespace,
        # there before the first RayJob, owned by nothing (it outlives every TrainingJob); none per RayJob.
        training_pol = policy(plane, namespace, TRAINING_POLICY_NAME)
        assert training_pol is not None, "no NetworkPolicy for the namespace's training clusters"
        assert not training_pol["metadata"].get("ownerReferences"), training_pol["metadata"]
        built_training = build_training_network_policy(namespace, peers)
        assert_kept(built_training["spec"], training_pol["spec"], ".spec")
        assert training_pol["spec"] == built_training["spec"]
        assert policy(plane, namespace, rj_name) is None
        ports = sorted(p["port"] for rule in training_pol["spec"]["ingress"] for p in rule.get("ports", []))
        assert ports == [6379, 8265, 10001], training_pol["spec"]

        children = {
            # child name -> (owner kind, owner name, Serve port open)
            md_name: ("ModelDeployment", md_name, True),
        }
        policies: dict[str, dict[str, Any]] = {rj_name: training_pol}
        for child, (kind, owner, serve) in children.items():
            # Created before the child: it is there once the child is.
            pol = policy(plane, namespace, child)
            assert pol is not None, f"no NetworkPolicy for {child}"
            policies[child] = pol
            stored_owner = plane.get(kind.lower(), owner, "-n", namespace)
            (ref,) = pol["metadata"]["ownerReferences"]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                kind,
                owner,
                stored_owner["metadata"]["uid"],
                True,
            )
            # Kept as built: nothing pruned or changed by the server (sent with fieldValidation=Strict),
            # and nothing added either -- what the backend compares after a 409 (else it would patch
            # the policy on every pass).
            built = build_network_policy(child, namespace, {}, {}, peers, serve=serve)
            assert_kept(built["spec"], pol["spec"], ".spec")
            assert pol["spec"] == built["spec"]
            assert pol["spec"]["podSelector"] == {"matchLabels": {LABEL: child}}
            ports = sorted(p["port"] for rule in pol["spec"]["ingress"] for p in rule.get("ports", []))
            assert ports == ([6379, 8000, 8265, 10001] if serve else [6379, 8265, 10001]), pol["spec"]
        # Every pod template the operator wrote carries the label its policy selects on.
        for obj, cluster_spec in ((rj, rj["spec"]["rayClusterSpec"]), (rs, rs["spec"]["rayClusterConfig"])):
            templates = [cluster_spec["headGroupSpec"]["template"]]
            templates += [g["template"] for g in cluster_spec["workerGroupSpecs"]]
            templates += (
                [obj["spec"]["submitterPodTemplate"]] if "submitterPodTemplate" in obj["spec"] else []
            )
            for t in templates:
                assert t["metadata"]["labels"][LABEL] == obj["metadata"]["name"]

        if kuberay:
            # KubeRay's real Pods: each policy selects exactly its own cluster's head and workers.
            rj_cluster = wait_for(
                "KubeRay's RayCluster of the RayJob", lambda: cluster_of_rayjob(plane, namespace, rj_name), 90
            )
            rs_cluster = wait_for(
                "KubeRay's RayCluster of the RayService",
                lambda: cluster_of_rayservice(plane, namespace, md_name),
                90,
            )

            def pods_of(cluster: str) -> set[str] | None:
                names = pod_names(plane, namespace, f"ray.io/cluster={cluster}")
                return names if len(names) >= 2 else None  # head + one worker

            expected = {rj_name: wait_for("the RayJob's Pods", lambda: pods_of(rj_cluster), 90)}
            expected[md_name] = wait_for("the RayService's Pods", lambda: pods_of(rs_cluster), 90)
            for child, pol in policies.items():
                selected = pod_names(plane, namespace, selector_of(pol))
                assert selected == expected[child], (child, selected, expected[child])
            assert not expected[rj_name] & expected[md_name]
            types = {
                p["metadata"]["labels"].get("ray.io/node-type")
                for p in plane.get("pods", "-n", namespace, "-l", selector_of(policies[rj_name]))["items"]
            }
            assert types == {"head", "worker"}, types

        assert "created NetworkPolicy" in op.log and "updated NetworkPolicy" not in op.log

        # Deleting the resources: the garbage collector removes the RayService's policy once the
        # ModelDeployment is gone; the namespace's training policy stays.
        plane.kubectl("delete", "modeldeployment", md_name, "-n", namespace, "--wait=false")
        plane.kubectl("delete", "trainingjob", tj_name, "-n", namespace, "--wait=false")
        if plane.has_controller_manager:
            wait_for("the RayService's policy to go", lambda: policy(plane, namespace, md_name) is None, 120)
        assert policy(plane, namespace, TRAINING_POLICY_NAME) is not None

        # Scope "cluster" (helm upgrade): a policy per RayJob, owned by its TrainingJob, selecting
        # that Ray cluster's pods only; gone with the TrainingJob.
        op.stop()
        chart = str(Path(__file__).resolve().parents[2] / "charts" / "rayrelay")
        helm(
            plane,
            "upgrade",
            release.name,
            chart,
            "-n",
            release_namespace,
            "--reuse-values",
            "--set",
            "networkPolicy.scope=cluster",
        )
        text = helm(plane, "get", "manifest", release.name, "-n", release_namespace).stdout
        per = ChartRelease(plane, release.name, release_namespace, [d for d in yaml.safe_load_all(text) if d])
        assert per.env("p")["RAYRELAY_NETWORK_POLICY_SCOPE"] == "cluster"
        op = operators.start(per)
        op.wait_ready()
        plane.apply(trainingjob("np-cluster", gpus=0, workers=1), "-n", namespace)
        (rj_c,) = wait_for("the RayJob of np-cluster", lambda: rayjobs_of(plane, namespace, "np-cluster"), 90)
        child = rj_c["metadata"]["name"]
        own = policy(plane, namespace, child)
        assert own is not None, f"no NetworkPolicy for {child}"
        stored_owner = plane.get("trainingjob", "np-cluster", "-n", namespace)
        (ref,) = own["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"]) == ("TrainingJob", stored_owner["metadata"]["uid"])
        assert own["spec"] == build_network_policy(child, namespace, {}, {}, peers, serve=False)["spec"]
        assert own["spec"]["podSelector"] == {"matchLabels": {LABEL: child}}
        plane.kubectl("delete", "trainingjob", "np-cluster", "-n", namespace, "--wait=false")
        if plane.has_controller_manager:
            wait_for(
                "the RayJob's policy to go with its TrainingJob",
                lambda: policy(plane, namespace, child) is None,
                120,
            )

        # Switched off (helm upgrade): no RBAC on NetworkPolicies, and the operator creates none.
        op.stop()
        helm(
            plane,
            "upgrade",
            release.name,
            str(Path(__file__).resolve().parents[2] / "charts" / "rayrelay"),
            "-n",
            release_namespace,
            "--reuse-values",
            "--set",
            "networkPolicy.enabled=false",
        )
        text = helm(plane, "get", "manifest", release.name, "-n", release_namespace).stdout
        off = ChartRelease(plane, release.name, release_namespace, [d for d in yaml.safe_load_all(text) if d])
        assert off.env("p")["RAYRELAY_NETWORK_POLICY"] == "false"
        for verb in ("create", "get", "patch", "delete"):
            assert not can_i(plane, sa, verb, "networkpolicies.networking.k8s.io", namespace), verb
        operators.start(off).wait_ready()
        plane.apply(trainingjob("np-off", gpus=0, workers=1), "-n", namespace)
        (rj_off,) = wait_for("the RayJob of np-off", lambda: rayjobs_of(plane, namespace, "np-off"), 90)
        # The policy would have been created before the RayJob: there is none.
        assert policy(plane, namespace, rj_off["metadata"]["name"]) is None
        assert rj_off["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"][LABEL]
    finally:
        if kuberay:
            plane.stop_kuberay()
