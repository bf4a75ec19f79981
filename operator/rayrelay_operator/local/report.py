"""What `rayrelay run` prints at the end: failures, a summary per TrainingJob, endpoints, a smoke request."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from rayrelay_core.api import DeploymentPhase, TrainingPhase
from rayrelay_core.runs import Manifest, ManifestError, read_manifest
from rayrelay_core.store import StoreError, open_store
from rayrelay_operator.local.loop import LocalRun, RunError
from rayrelay_operator.local.objects import MD, TJ, Tracked, condition_message, referenced_training_failed
from rayrelay_operator.settings import Settings

SMOKE_TIMEOUT_S = 60.0
SMOKE_TEXT = "I was charged twice for my subscription this month"


def failures(run: LocalRun) -> list[str]:
    out = []
    for t in run.tracked:
        status = t.status
        if t.error:
            out.append(f"{t.label}: {t.error}")
        elif t.kind == TJ and status.get("phase") == TrainingPhase.FAILED:
            out.append(f"{t.label}: training failed: {_failure_text(status)}")
        elif t.kind == MD and status.get("phase") == DeploymentPhase.FAILED:
            out.append(f"{t.label}: deployment failed: {condition_message(status, 'Ready')}")
        elif why := referenced_training_failed(t, run.objects):
            out.append(f"{t.label}: not {'deployed' if t.kind == MD else 'trained'}: {why}")
    return out


def summary(run: LocalRun, console: Console) -> None:
    for t in run.tracked:
        if t.kind == TJ and t.status.get("phase") == TrainingPhase.SUCCEEDED:
            training_summary(t, console, run.settings)


def endpoints(run: LocalRun) -> list[tuple[Tracked, str]]:
    return [
        (t, str(t.status["url"]))
        for t in run.tracked
        if t.kind == MD and t.status.get("phase") == DeploymentPhase.READY and t.status.get("url")
    ]


def _failure_text(status: dict[str, Any]) -> str:
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return f"{cond.get('reason')}: {cond.get('message')}"
    return "no reason recorded"


def training_summary(t: Tracked, console: Console, settings: Settings) -> None:
    uri = (t.status.get("artifacts") or {}).get("manifestUri")
    if not uri:
        return
    endpoint = (t.obj["spec"].get("artifacts") or {}).get("endpointUrl") or settings.s3_endpoint_url
    try:
        manifest, _ = read_manifest(open_store(uri, endpoint), uri)
    except (ManifestError, StoreError) as exc:
        console.print(f"{t.label}: cannot read the manifest: {exc}", markup=False)
        return
    console.print(_variants_table(t, manifest))
    parity = manifest.parity
    if parity.max_abs_logit_diff_fp32 is not None:
        # The tolerance applies to fp32 only; int8 is judged by its accuracy (qualityGate).
        line = (
            f"parity vs PyTorch, max |logit diff|: fp32 {parity.max_abs_logit_diff_fp32:.2e}"
            f" (tolerance {parity.tolerance:g}, {'passed' if parity.passed else 'FAILED'})"
        )
        if parity.max_abs_logit_diff_int8 is not None:
            judge = "perplexity" if manifest.task == "text-generation" else "accuracy"
            line += f"; int8 {parity.max_abs_logit_diff_int8:.2e} (judged by {judge})"
        console.print(line, markup=False)
    if manifest.generation:  # text-generation (issue 16): greedy parity and perplexities
        gen = manifest.generation
        console.print(
            f"greedy decoding identical to PyTorch (share of prompts): {gen.get('greedyMatch')}; "
            f"validation perplexity: {gen.get('valPerplexity')}",
            markup=False,
        )
    if manifest.embedding:  # sentence-embedding (issue 27): cosine parity and retrieval figures
        emb = manifest.embedding
        console.print(
            f"{emb.get('dimension')}-dimensional embeddings; smallest cosine to PyTorch: {emb.get('cosineMin')}; "
            f"validation pairs recall@1: {emb.get('recallAt1')}, MRR: {emb.get('mrr')}",
            markup=False,
        )
    console.print(f"manifest: {uri}", markup=False, soft_wrap=True)


def _variants_table(t: Tracked, manifest: Manifest) -> Table:
    table = Table(title=f"{t.label} (run {manifest.run_id})", title_justify="left")
    for column in ("variant", "accuracy", "size", "served by auto", "note"):
        table.add_column(column)
    for name, info in manifest.variants.items():
        size = info.size
        if size is None and info.file:
            try:
                size = manifest.file(info.file).size
            except KeyError:
                size = None
        table.add_row(
            name,
            f"{info.accuracy:.4f}" if info.accuracy is not None else "-",
            f"{size / 1e6:.1f} MB" if size else "-",
            "yes" if name == manifest.recommended_variant else "",
            ("rejected: " + (info.reason or "")) if not info.accepted else "",
        )
    return table


def v2_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


def curl_examples(url: str, name: str, auth: bool = False) -> list[str]:
    v2 = json.dumps(v2_body([SMOKE_TEXT]))
    v1 = json.dumps({"instances": [SMOKE_TEXT]})
    # spec.auth: the key comes from the user's shell, never from this output.
    key = ' -H "Authorization: Bearer $API_KEY"' if auth else ""
    return [
        f"curl -s -X POST {url}/v2/models/{name}/infer -H 'Content-Type: application/json'{key} -d '{v2}'",
        f"curl -s -X POST {url}/v1/models/{name}:predict -H 'Content-Type: application/json'{key} -d '{v1}'",
    ]


def api_key(run: LocalRun, t: Tracked) -> tuple[str | None, str | None]:
    """(Secret name, one of its keys) of a deployment's ``spec.auth`` (for the smoke request), or Nones."""
    secret = ((t.obj.get("spec") or {}).get("auth") or {}).get("apiKeysSecret")
    if not secret or run.ctx.secret_data is None:
        return None, None
    data = run.ctx.secret_data(str((t.obj.get("metadata") or {}).get("namespace") or ""), secret) or {}
    return secret, next((str(v).strip() for _, v in sorted(data.items()) if str(v).strip()), None)


def smoke_request(url: str, name: str, timeout: float = SMOKE_TIMEOUT_S, key: str | None = None) -> str:
    """One v2 infer request (with ``key`` as its bearer token); returns a one-line answer or raises RunError."""
    deadline = time.monotonic() + timeout
    last = ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    while True:
        try:
            resp = requests.post(
                f"{url}/v2/models/{name}/infer", json=v2_body([SMOKE_TEXT]), headers=headers, timeout=30
            )
            if resp.status_code == 200:
                return _answer(resp.json())
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
            if 400 <= resp.status_code < 500 and resp.status_code not in (404, 408, 429):
                break  # the request itself is refused: asking again will not help
        except (requests.RequestException, ValueError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    raise RunError(f"smoke request to {url}/v2/models/{name}/infer failed: {last}")


def _answer(doc: dict[str, Any]) -> str:
    outputs = {o.get("name"): o for o in doc.get("outputs") or []}
    labels = (outputs.get("labels") or {}).get("data") or []
    probs = (outputs.get("probabilities") or {}).get("data") or []
    if not labels:
        return json.dumps(doc)[:300]
    n = len(probs) // max(len(labels), 1) if probs else 0
    best = max(probs[:n]) if n else None
    return f"{labels[0]!r}" + (f" (p={best:.3f})" if best is not None else "")


def print_endpoints(run: LocalRun, console: Console, failed: list[str]) -> list[tuple[Tracked, str]]:
    """Each Ready endpoint with its URLs, curl examples and a smoke answer; failures go to ``failed``."""
    ready = endpoints(run)
    for t, url in ready:
        console.print(f"\n{t.label} is Ready: {url}", markup=False)
        console.print(
            f"  v2: {url}/v2/models/{t.name}/infer    v1: {url}/v1/models/{t.name}:predict", markup=False
        )
        secret, key = api_key(run, t)
        if secret:
            console.print(
                f"  API keys required (spec.auth): API_KEY=one of Secret {secret}'s keys", markup=False
            )
        for line in curl_examples(url, t.name, auth=secret is not None):
            console.print(f"  {line}", markup=False, soft_wrap=True)
        try:
            answer = smoke_request(url, t.name, key=key)
        except RunError as exc:
            failed.append(f"{t.label}: {exc}")
            continue
        console.print(f"  smoke request (v2 infer) {SMOKE_TEXT!r} -> {answer}", markup=False)
    return ready
