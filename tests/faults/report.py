"""Render ``tests/faults/results/*.json`` into ``docs/reliability.md``.

``python -m tests.faults.report`` (``make faults`` runs it after the suite).
The page lists every case of the fault suite -- the fault, what rayrelay
promises, how the test injects it, and the test -- and shows the figures only
from the JSON file that case's test wrote (``tests/faults/results.py``). A
case without a file is shown as *not yet measured*: nothing on the page is
typed in by hand, so the page and the results cannot disagree.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.results import REPO, RESULTS

DOC = REPO / "docs" / "reliability.md"


@dataclass(frozen=True)
class Case:
    key: str  # the results file's name (results/<key>.json)
    fault: str
    promise: str
    injection: str
    test: str  # where it lives; "" while no test exists
    fast: bool  # runs in `make test` (else only `make faults`)


CASES = [
    Case(
        "shutdown_run",
        "`rayrelay run` gets SIGTERM mid-training",
        "stops as on Ctrl-C: exit 143 (130 for SIGINT) within the 30 s grace period; the Ray head it "
        "started and every process under it (job driver, Train workers) are gone",
        "SIGTERM to the `rayrelay run` subprocess; its Ray processes found through /proc",
        "tests/faults/test_clean_shutdown.py",
        True,
    ),
    Case(
        "shutdown_operator",
        "`rayrelay operator` gets SIGTERM while reconciling",
        "exits 0 by itself within the pod's terminationGracePeriodSeconds (kopf's exit wait is capped "
        "at 20 s), no traceback",
        "SIGTERM to the operator subprocess run as the chart runs it, on a real kube-apiserver",
        "tests/cluster/test_operator_shutdown.py",
        True,
    ),
    Case(
        "store_blips_worker",
        "the store fails progress / step-record writes inside a worker",
        "never fails or stalls a training step (per-step writes back off 2 s doubling to 30 s), stages "
        "and the last step record are retried with backoff, and the loop's own error is never masked",
        "moto's S3 server stopped and restarted on its port; a closed port",
        "tests/unit/test_worker_store_blips.py",
        True,
    ),
    Case(
        "retry_backoff",
        "an attempt fails (retryable)",
        "the next attempt is not submitted in the same pass: it waits an exponential backoff, "
        "stated in status.nextAttemptTime and the Running condition",
        "a Ray job that exits 1 (FAILED) on the real ray backend",
        "tests/faults/test_retry_backoff.py",
        True,
    ),
    Case(
        "operator_killed",
        "operator SIGKILLed mid-reconcile, at random points",
        "0 duplicate Ray jobs, 0 lost TrainingJobs after restarts (measured with the kuberay backend's "
        "RayJobs; the ray backend relies on the same deterministic submission ids)",
        "SIGKILL of the operator subprocess at random delays, then a restart",
        "tests/cluster/test_operator_killed.py",
        False,
    ),
    Case(
        "s3_outage",
        "S3 down during training",
        "the run completes when S3 returns, within its first attempt and worker group when the outage is "
        "shorter than RAYRELAY_STORE_WAIT_SECONDS (300 s); every file of the manifest reads back with its "
        "sha256 (publish and a replica's start: the next two rows)",
        "moto's S3 server stopped for a while, then started again on the same port",
        "tests/faults/test_s3_outage.py",
        False,
    ),
    Case(
        "s3_outage_publish",
        "S3 down during publish",
        "each upload and the manifest are retried with backoff and jitter (1 s doubling to 15 s, +-20 %) "
        "for up to RAYRELAY_STORE_WAIT_SECONDS; the run completes in its first attempt when S3 returns; "
        "the manifest is written last and every file it lists reads back with its sha256; past the budget "
        "the attempt fails (StorageError) and no manifest names the half-uploaded files",
        "moto's S3 server stopped right after the publication's first file reached it, then started "
        "again on the same port",
        "tests/faults/test_s3_outage_publish.py",
        True,
    ),
    Case(
        "s3_outage_replica",
        "S3 down while a serving replica starts",
        "the replica waits for the store (manifest read and downloads retried with backoff and jitter "
        "for up to RAYRELAY_STORE_WAIT_SECONDS) and comes up when S3 returns; meanwhile the "
        "ModelDeployment says Deploying, Ready False WaitingForArtifactStore (never Ready nor Failed); "
        "then Ready with the digest",
        "moto's S3 server stopped right after the pass that deployed a model no node cache held, then "
        "started again on the same port",
        "tests/faults/test_s3_outage_replica.py",
        False,
    ),
    Case(
        "worker_killed",
        "a Ray Train worker SIGKILLed mid-epoch",
        "the run finishes from the latest checkpoint rank 0 uploaded; steps redone <= the checkpoint interval",
        "SIGKILL of a RayTrainWorker process by pid",
        "tests/faults/test_worker_killed.py",
        False,
    ),
    Case(
        "driver_lost",
        "the job's driver SIGKILLed mid-training (ray backend)",
        "the status says the attempt failed and why; the next attempt waits its backoff and resumes from "
        "the checkpoint; never two Ray jobs of the TrainingJob running at once; the job succeeds",
        "SIGKILL of the driver's pid (from Ray's job details)",
        "tests/faults/test_driver_killed.py",
        False,
    ),
    Case(
        "head_lost",
        "the Ray head stopped under a running TrainingJob",
        "the status says RayUnavailable (the Reconciled condition, naming the dashboard) within 10 s; "
        "the phase and attempt stay, nothing is resubmitted while Ray does not answer (the head coming "
        "back: the next row)",
        "SIGTERM of a Ray head of the test's own (LocalRay, as `rayrelay run` starts it) while the "
        "TrainingJob's Ray job runs",
        "tests/faults/test_head_lost.py",
        False,
    ),
    Case(
        "head_back",
        "the Ray head stopped mid-training comes back on its address",
        "the next pass that reaches Ray submits the attempt's job again (Running: Resubmitted), which "
        "resumes from the newest whole checkpoint in the store; never two Ray jobs of the TrainingJob "
        "running at once; the job succeeds",
        "SIGTERM of a Ray head of the test's own once a checkpoint is in the store (moto S3), then a new "
        "head on the same ports (LocalRay.restart), with none of the old one's jobs",
        "tests/faults/test_head_lost.py",
        False,
    ),
    Case(
        "replica_killed",
        "a serving replica SIGKILLed under load",
        "error rate during recovery <= 1 % (503 + Retry-After, not 500); time to full capacity",
        "SIGKILL of a ServeReplica process (pid from Serve's REST API) during a closed-loop load on "
        "the one-hop v2 route and the gateway's v1 route",
        "tests/faults/test_replica_killed.py",
        True,
    ),
    Case(
        "bad_model",
        "a new artifact fails its digest check or its warm-up",
        "the old model keeps serving, the status says why (Progressing: ModelRefused, naming the run and "
        "the replica's reason), 0 failed requests",
        "a run whose model file's bytes changed after its manifest (digest check), or with a label more "
        "than the model's outputs (warm-up), named by the TrainingJob while a closed-loop load runs",
        "tests/faults/test_bad_model.py",
        True,
    ),
    Case(
        "rollout",
        "a ModelDeployment's model changes under load",
        "the new model is warmed beside the old one; 0 errors through the switch",
        "a newer run named by the TrainingJob while a closed-loop load runs",
        "tests/faults/test_bad_model.py",
        False,
    ),
    Case(
        "rollout_2_replicas",
        "a ModelDeployment's model changes under load while 2 replicas serve",
        "the new model's replicas start beside the old ones (room for one more: 3); 0 errors through the "
        "switch; Ready with the new model",
        "a newer run named by the TrainingJob while a closed loop of 4 clients runs",
        "tests/faults/test_rollout_replicas.py",
        False,
    ),
]


# What a run showed beyond its numbers (prose only: every figure comes from the JSON files).
FINDINGS = {
    "worker_killed": "Ray Train V2's controller takes in a worker's report only when it next polls the "
    "workers (every 2 s), so a worker killed just after an upload used to restart from the checkpoint "
    "before (6 steps redone with interval 5, measured at dd0c31e). A new worker group now also looks in "
    "storage for a newer whole checkpoint (train_state.resume_folder; every file its meta.json lists, "
    "with its size) and resumes from that.",
    "driver_lost": "The driver was killed after rank 0 reported a later checkpoint than the one "
    "registered, and the next attempt resumed from the registered one. Measured before the next "
    "attempt also looked in storage for a newer whole checkpoint (train_state.resume_folder, see the "
    "worker case); not re-measured since. A driver killed before any checkpoint reached storage makes "
    "the next attempt start from step 0.",
    "head_back": "The head went before Ray Train's controller had registered the checkpoint (it takes "
    "reports in on its 2 s poll), so Ray Train restored none; the resubmitted worker group took the "
    "whole upload from storage (train_state.resume_folder), without which it would have started at "
    "step 0. No pass after the head's return was refused; head_down_seconds holds the test's 10 s of "
    "passes and the new head's start-up.",
    "rollout_2_replicas": "Once the new model ran, the operator deployed the spec's own autoscaling "
    "again and Serve stopped the surge replica; meanwhile the application was DEPLOYING. Measured at "
    "1cb5f84, one such pass put the ModelDeployment's status back to phase Deploying (Ready False, "
    "reason Deploying) while both new replicas served. Since f748fab a deployment that was Ready with "
    "the wanted digest and has a running replica stays Ready then (Ready True Serving, Progressing "
    "True Updating; reconcile/deployment.py, serves_desired): in the run above one pass saw the "
    "application DEPLOYING with the surge replica STOPPING and said so, and no pass was not Ready.",
    "s3_outage": "Every storage call of Ray Train goes through holdfs.py (train.storage_for, since "
    "21cd8bc): a worker's storage check and checkpoint upload and the controller's checkpoint snapshot "
    "are retried while S3 does not answer, for up to RAYRELAY_STORE_WAIT_SECONDS (300), and a file "
    "cut by the outage is uploaded again whole; storage_calls_held_by_ray_process counts the waits "
    "in the Ray processes' logs. Before it, rank 0 only checked the store before an upload "
    "(train_worker.wait_for_store), and three re-runs at 47e354d/1cb5f84 (same test, 20 s outage "
    "after a checkpoint) did not hold the promise. Twice the first attempt failed with Ray Train's "
    "'Training failed due to controller error' (the second attempt completed): after each reported "
    "checkpoint the controller writes its checkpoint-manager snapshot to storage "
    "(checkpoint_manager._write_state_to_storage), and that write failing is a ControllerError, "
    "which Train V2's failure policy never retries (only worker-group start-up errors are), whatever "
    "max_failures says. Once the outage began while rank 0's upload was under way, after "
    "wait_for_store had passed, and the upload's own storage check (HeadObject of "
    ".validate_storage_marker) failed at once, so FailureConfig restarted the group. "
    "With holdfs the case ran three times: once with 21cd8bc's change in the tree before it was "
    "committed (71.8 s), at 5250676 (69.3 s) and at 36fdd2f (the figures above, 85.2 s); each "
    "completed in one attempt and one worker group, the 5 manifest files read back with their "
    "sha256; through the outage the controller held 4 storage calls each time, the workers 8 and 10.",
    "s3_outage_publish": "Before the hold (tried at 0792b59 with publish itself and a 15 s outage), the "
    "first upload that met the outage failed after boto3's own attempts, so the attempt failed with "
    "StorageError and the operator's next attempt had to publish again; no manifest was written.",
    "s3_outage_replica": "Before the wait (tried at 0792b59 with a 30 s outage), each start of the "
    "replica failed on the manifest read and Serve started it again; the status showed Serve's 'A "
    "replica failed to start ... Retrying 1 more time(s)' with the store's error, and the third start, "
    "after S3 returned, came up. Serve gives up on a first replica after 3 failed starts in a row "
    "(DEPLOY_FAILED, no further starts), so a longer outage would have left the ModelDeployment Failed "
    "(the reading of Ray 2.58's deployment_state.py, not measured).",
}


def has_test(case: Case) -> bool:
    return bool(case.test) and (REPO / case.test).exists()


def load(results: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text())
        out[str(doc.get("case") or path.stem)] = doc
    return out


def figures_text(doc: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted(doc["figures"].items()))


def render(results: Path = RESULTS, doc: Path = DOC) -> Path:
    found = load(results)
    lines = [
        "# Reliability",
        "",
        "<!-- Generated by `python -m tests.faults.report` (make faults) from tests/faults/results/*.json;"
        " do not edit by hand. -->",
        "",
        "Each fault below is injected for real: a process killed by its pid, a server stopped, a port that "
        "refuses connections. The figures come from the last `make faults` run that measured the case "
        "(the JSON file under `tests/faults/results/`); a case without one says *not yet measured*. "
        "Cases marked *fast* also run in `make test` (as checks, without recording).",
        "",
        "| fault | promised | injected by | test | figures measured |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        test = f"`{case.test}`" + (" (fast)" if case.fast else "") if has_test(case) else "no test yet"
        measured = figures_text(found[case.key]) if case.key in found else "*not yet measured*"
        lines.append(f"| {case.fault} | {case.promise} | {case.injection} | {test} | {measured} |")
    lines += ["", "## Conditions of each measurement", ""]
    measured_any = False
    for case in CASES:
        if case.key not in found:
            continue
        measured_any = True
        d = found[case.key]
        m = d.get("machine", {})
        lines.append(
            f"- **{case.key}**: `{d['command']}`, finished {d['finished']}, git {d['git']}, "
            f"{m.get('cpus')} CPUs, load average {m.get('loadavg')} at the end."
            + (f" {d['notes']}" if d.get("notes") else "")
            + (f" *Finding:* {FINDINGS[case.key]}" if case.key in FINDINGS else "")
        )
    if not measured_any:
        lines.append("No case has been measured yet: run `make faults`.")
    missing = [c for c in CASES if c.key not in found]
    if missing:
        lines += ["", "## Not yet measured", ""]
        for case in missing:
            why = f"`{case.test}` has not recorded a result" if has_test(case) else "no test yet"
            lines.append(f"- {case.fault} ({why}).")
    doc.write_text("\n".join(lines) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    print(f"wrote {render(args.results, args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
