"""Text generation end to end through `rayrelay run` (issue 16).

A file built like ``examples/textgen.yaml`` (a tiny GPT-2 built here with random
weights and a byte-level BPE tokenizer trained on the shipped text; one Ray
Train worker, one short epoch) runs as a subprocess, exactly as users run it,
against the shared Ray head: it trains, exports the decoder with its KV cache,
deploys it and answers the smoke request. Then, over HTTP:

- ``generate_stream`` (server-sent events) and ``generate`` return the very
  tokens PyTorch's ``generate`` (greedy) writes with the published ``hf/`` model;
- OpenAI ``/v1/completions`` (plain and streamed) returns the same text;
- OpenAI ``/v1/chat/completions`` (plain and streamed, through the official
  client) writes what ``/v1/completions`` writes for the plain template's
  prompt (the tiny tokenizer has no chat template), ``models.list()`` names the
  model, an unknown model is ``NotFoundError`` and a bad body ``BadRequestError``
  (issue 25), and a deeply nested body is a 400 on every generation route;
- bad requests get 4xx with a message, never 5xx;
- the file carries a v1 Secret of API keys and ``spec.auth`` (issue 26): every
  model route answers 401 without a right key, the official ``openai`` client
  works with ``api_key`` and is refused (``AuthenticationError``) with a wrong
  one, and `rayrelay run`'s own smoke request sends a key from the Secret.

The deployment serves ``variant: fp32`` so that the token-for-token comparison
holds by construction (the int8 variant's own greedy agreement is recorded in
the manifest and checked there).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROMPT = "My order has not arrived and"
NEW_TOKENS = 12
SYSTEM = "Answer support tickets."
# The plain chat template (docs/textgen.md): what the messages of chat_body() become.
RENDERED = f"System: {SYSTEM}\nUser: {PROMPT}\nAssistant:"
API_KEY = f"rr-textgen-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rayrelay_workloads.textgen.tiny import build_tiny_gpt2

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    return str(build_tiny_gpt2(folder, REPO / "examples" / "data" / "textgen-train.jsonl", seed=1))


def manifest_file(folder: Path, name: str, model: str) -> Path:
    """examples/textgen.yaml with the test's model, names and a smaller run."""
    import yaml

    docs = list(yaml.safe_load_all((REPO / "examples" / "textgen.yaml").read_text()))
    tj, md = docs
    tj["metadata"]["name"] = md["metadata"]["name"] = name
    tj["spec"]["model"]["source"] = model
    for key in ("train", "validation"):
        tj["spec"]["data"][key] = str(REPO / tj["spec"]["data"][key])
    tj["spec"]["resources"]["numWorkers"] = 1
    tj["spec"]["hyperparameters"]["batchSize"] = 32
    md["spec"]["model"]["trainingJobRef"] = {"name": name, "variant": "fp32"}
    md["spec"]["resources"]["cpus"] = 0.5
    md["spec"]["auth"] = {"apiKeysSecret": f"{name}-keys"}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-keys", "labels": {"rayrelay.dev/credentials": "true"}},
        "stringData": {"ci": API_KEY},
    }
    path = folder / "textgen.yaml"
    path.write_text(yaml.safe_dump_all([secret, tj, md]))
    return path


def chat_body(name: str) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    return {"model": name, "messages": messages, "max_tokens": NEW_TOKENS, "temperature": 0}


def sse_events(resp: requests.Response) -> list[Any]:
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def torch_greedy(hf_dir: Path, prompt: str, new_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


@pytest.mark.slow
def test_textgen_run_generate_stream_completions_and_refusals(
    ray_cluster: Any, tiny_gpt2: str, tmp_path: Path
) -> None:
    name = f"tg-{uuid.uuid4().hex[:6]}"
    path = manifest_file(tmp_path, name, tiny_gpt2)
    artifacts = tmp_path / "artifacts"
    env = dict(os.environ, RAYRELAY_SERVE_PORT=str(ray_cluster.serve_port))
    log_path = tmp_path / "run.log"
    # Without --once, `rayrelay run` keeps serving until it is stopped (with --once and an
    # external Ray cluster it removes its Serve applications when it exits).
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "rayrelay"), "run", "-f", str(path)]
            + ["--artifacts", str(artifacts), "--ray-address", ray_cluster.dashboard_url],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
    try:
        deadline = time.monotonic() + 900
        while "press Ctrl-C to stop" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "rayrelay run did not start serving"
            time.sleep(1)
        out = log_path.read_text()
        assert "smoke request (v2 infer)" in out, out[-4000:]
        check_serving(ray_cluster, name, artifacts)
        check_generation_metrics(ray_cluster, name, artifacts, tmp_path / "prometheus")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def check_serving(ray_cluster: Any, name: str, artifacts: Path) -> None:
    manifest_path = next(artifacts.rglob("manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["task"] == "text-generation"
    generation = manifest["generation"]
    assert generation["kvCache"] == "inplace" and "seqlens_k" in generation["inputs"]
    assert generation["greedyMatch"]["fp32"] == 1.0
    assert 0.0 <= generation["greedyMatch"]["int8"] <= 1.0
    assert manifest["parity"]["passed"] and manifest["parity"]["maxAbsLogitDiffFp32"] < 1e-3
    assert manifest["metrics"]["val_perplexity_fp32"] < 1000
    hf_dir = manifest_path.parent / next(
        f["path"] for f in manifest["files"] if f["path"].endswith("hf/config.json")
    )
    expected = torch_greedy(hf_dir.parent, PROMPT, NEW_TOKENS)
    assert expected, "PyTorch wrote no tokens"

    url = f"http://127.0.0.1:{ray_cluster.serve_port}"
    params = {"max_tokens": NEW_TOKENS, "temperature": 0}
    body = {"text_input": PROMPT, "parameters": params}
    completion = {"model": name, "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}
    check_keys(url, name, body, completion)
    # Every request below carries the key (spec.auth), as a client of this endpoint must.
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {API_KEY}"

    with http.post(f"{url}/v2/models/{name}/generate_stream", json=body, stream=True, timeout=60) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp)
    assert [e["token_id"] for e in events] == expected
    assert len(events) == len(expected) > 1, "one event per token"
    assert events[-1]["finish_reason"] in ("stop", "length")
    streamed_text = "".join(e["text_output"] for e in events)

    resp = http.post(f"{url}/v2/models/{name}/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["tokens"] == expected
    assert resp.json()["text_output"] == streamed_text

    resp = http.post(f"{url}/v1/completions", json=completion, timeout=60)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["object"] == "text_completion" and doc["choices"][0]["text"] == streamed_text
    assert doc["usage"]["completion_tokens"] == len(expected)
    with http.post(
        f"{url}/v1/completions", json={**completion, "stream": True}, stream=True, timeout=60
    ) as resp:
        assert resp.status_code == 200, resp.text
        chunks = sse_events(resp)
    assert chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == streamed_text

    # The official OpenAI client, with the key as its api_key (sent as Authorization: Bearer).
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    answer = client.completions.create(model=name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    assert answer.choices[0].text == streamed_text
    stream = client.completions.create(
        model=name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream) == streamed_text
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-0123456789abcdef", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model=name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    check_chat(client, name)

    bad = [
        (
            f"/v2/models/{name}/generate",
            {"text_input": PROMPT, "parameters": {"max_tokens": 65}},
            400,
            "limit of 64",
        ),
        (f"/v2/models/{name}/generate_stream", {"text_input": "word " * 400}, 400, "limit of 128"),
        (
            f"/v2/models/{name}/generate",
            {"text_input": PROMPT, "parameters": {"temperature": 5}},
            400,
            "temperature",
        ),
        (f"/v2/models/{name}/generate", {"prompt": PROMPT}, 400, "unknown field"),
        (f"/v2/models/{name}/generate", {"text_input": ""}, 400, "empty"),
        ("/v1/completions", {**completion, "max_tokens": 1000}, 400, "limit of 64"),
        ("/v1/completions", {**completion, "n": 2}, 400, "only 1"),
        ("/v1/completions", {**completion, "stream": True, "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {**completion, "model": "no-such-model"}, 404, "not found"),
        ("/v1/completions", {"prompt": PROMPT}, 400, "model is required"),
        ("/v1/chat/completions", {**chat_body(name), "max_tokens": 1000}, 400, "limit of 64"),
        (
            "/v1/chat/completions",
            {**chat_body(name), "stream": True, "messages": []},
            400,
            "messages is required",
        ),
        ("/v1/chat/completions", {**chat_body(name), "model": "no-such-model"}, 404, "not found"),
    ]
    for route, payload, status, gist in bad:
        resp = http.post(f"{url}{route}", json=payload, timeout=60)
        assert resp.status_code == status, (route, payload, resp.status_code, resp.text)
        assert gist in resp.json()["error"], (route, resp.text)
    resp = http.post(f"{url}/v2/models/{name}/generate", data=b"{not json", timeout=60)
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]
    check_deep_bodies(http, url, name)


def check_generation_metrics(ray_cluster: Any, name: str, artifacts: Path, workdir: Path) -> None:
    """A real Prometheus scrapes the endpoint's /metrics (as the chart's PodMonitor does a
    RayService head): one more generate request moves the model's generation counters by its
    own tokens, and every query of the dashboard's Generation row returns data (issue 28)."""
    sys.path.insert(0, str(REPO / "tests"))
    import monitoring_checks as mc

    if mc.prometheus_binaries()[0] is None:  # the rest of the test stands; say what was not run
        warnings.warn(mc.prometheus_binaries()[2], stacklevel=1)
        return
    rendered = mc.render(None, "--set", "metrics.dashboard.enabled=true")
    dash = mc.dashboard(rendered)
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    gen_y = next(r["gridPos"]["y"] for r in rows if r["title"] == "Generation")
    next_y = min((r["gridPos"]["y"] for r in rows if r["gridPos"]["y"] > gen_y), default=10**6)
    panels = [p["title"] for p in dash["panels"] if p["type"] != "row" and gen_y < p["gridPos"]["y"] < next_y]
    queries = [q for title, q in mc.dashboard_queries(dash) if title in panels]
    assert len(queries) >= 6, queries
    port = ray_cluster.serve_port
    target = {
        "job_name": "rayrelay-textgen",
        "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"namespace": "default"}}],
    }
    prom = mc.Prometheus(workdir, [target], [])
    try:
        tokens = f'rayrelay_generation_tokens_total{{model="{name}"}}'
        prompt = f'rayrelay_generation_prompt_tokens_total{{model="{name}"}}'

        def total(selector: str) -> float | None:
            got = prom.query(f"sum({selector})")
            return float(got[0]["value"][1]) if got else None

        def settled() -> tuple[float, float] | None:
            a, b = total(tokens), total(prompt)
            return None if a is None or b is None else (a, b)

        def wait_for(probe: Any, timeout: float, what: str) -> Any:
            deadline = time.monotonic() + timeout
            while not (got := probe()):
                assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
                time.sleep(0.25)
            return got

        wait_for(prom.targets_up, 60, "the endpoint target up")
        before = wait_for(settled, 60, "the generation series scraped")
        body = {"text_input": PROMPT, "parameters": {"max_tokens": NEW_TOKENS, "temperature": 0}}
        resp = requests.post(
            f"http://127.0.0.1:{port}/v2/models/{name}/generate",
            json=body,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        made = len(resp.json()["tokens"])
        from transformers import AutoTokenizer

        manifest = next(artifacts.rglob("manifest.json"))
        hf = next(p.parent for p in manifest.parent.rglob("tokenizer_config.json"))
        fed = len(AutoTokenizer.from_pretrained(str(hf))(PROMPT, add_special_tokens=False)["input_ids"])
        want = (before[0] + made, before[1] + fed)
        try:
            wait_for(lambda: settled() == want, 30, f"the counters to move by {made} and {fed} tokens")
        except AssertionError:
            raise AssertionError(f"Prometheus saw {settled()} after {before}, expected {want}") from None
        wait_for(lambda: all(prom.query(q) for q in queries), 60, "every Generation panel has data")
    finally:
        prom.stop()


def check_deep_bodies(http: requests.Session, url: str, name: str) -> None:
    """Nested 100,000 deep (200 kB): a 400, not issue 25's 500, on the gateway's and the replica's routes."""
    deep = b'{"model": "%s", "prompt": %s}' % (name.encode(), b"[" * 100_000 + b"]" * 100_000)
    for route in ("/v1/completions", "/v1/chat/completions", f"/v2/models/{name}/generate"):
        resp = http.post(f"{url}{route}", data=deep, headers={"Content-Type": "application/json"}, timeout=60)
        assert resp.status_code == 400, (route, resp.status_code, resp.text)
        assert resp.json()["error"] == "request body is nested too deeply"


def check_chat(client: Any, name: str) -> None:
    """/v1/chat/completions and /v1/models through the official OpenAI client (issue 25)."""
    import openai

    plain = client.completions.create(
        model=name, prompt=RENDERED, max_tokens=NEW_TOKENS, temperature=0, stop=["\nUser:"]
    )
    expected = plain.choices[0].text
    kwargs = chat_body(name)
    chat = client.chat.completions.create(**kwargs)
    assert chat.object == "chat.completion" and chat.model == name
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == expected
    assert chat.usage.completion_tokens >= 1 and chat.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage == chat.usage
    models = client.models.list().data
    assert name in [m.id for m in models] and all(m.object == "model" for m in models)
    # The client's exception carries the answer's "error" as its body (its text shows only OpenAI's
    # {"error": {"message"}} shape; these routes answer KServe's {"error": "..."}, as /v1/completions).
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(**{**kwargs, "model": "no-such-model"})
    assert missing.value.body == "model 'no-such-model' not found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(**{**kwargs, "messages": [{"role": "narrator", "content": "x"}]})
    assert "messages[0].role must be system, user or assistant" in str(bad.value.body)


def check_keys(url: str, name: str, body: dict[str, Any], completion: dict[str, Any]) -> None:
    """Without a right key, every model route of the text-generation model answers 401."""
    routes = [
        ("POST", f"/v2/models/{name}/generate", body),
        ("POST", f"/v2/models/{name}/generate_stream", body),
        (
            "POST",
            f"/v2/models/{name}/infer",
            {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [PROMPT]}]},
        ),
        ("GET", f"/v2/models/{name}", None),
        ("GET", f"/v2/models/{name}/ready", None),
        ("POST", "/v1/completions", completion),
        ("GET", f"/v1/models/{name}", None),
        ("POST", "/v1/chat/completions", chat_body(name)),
        ("GET", "/v1/models", None),  # a model route too: it lists only the models a key may see
    ]
    for method, route, payload in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789abcdef"}):
            resp = requests.request(method, f"{url}{route}", json=payload, headers=headers, timeout=60)
            assert resp.status_code == 401, (route, headers, resp.status_code, resp.text)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp = requests.request(
            method, f"{url}{route}", json=payload, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        )
        assert resp.status_code == 200, (route, resp.text)
    for route in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert requests.get(f"{url}{route}", timeout=30).status_code == 200, route


@pytest.mark.slow
def test_textgen_training_resumes_after_a_worker_fault(
    ray_session: Any, tiny_gpt2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker raises once before step 5 (the test hook); Ray Train restarts the group from
    the step-4 checkpoint, and the run finishes and publishes: no step ran twice, none skipped."""
    from rayrelay_core.api import TrainingJobSpec
    from rayrelay_core.runs import JobDocument, RunLayout, run_id_for
    from rayrelay_workloads.pipeline import run_pipeline

    train = tmp_path / "train.jsonl"
    lines = (REPO / "examples" / "data" / "textgen-train.jsonl").read_text().splitlines()[:128]
    train.write_text("\n".join(lines) + "\n")
    spec = TrainingJobSpec.model_validate(
        {
            "model": {"source": tiny_gpt2, "task": "text-generation"},
            "data": {"train": str(train), "validation": str(REPO / "examples/data/textgen-validation.jsonl")},
            "hyperparameters": {"epochs": 1, "batchSize": 16, "learningRate": 3e-3, "maxSeqLength": 48},
            "resources": {"numWorkers": 1, "cpusPerWorker": 1},
            "checkpointing": {"everyNSteps": 2},
            "failurePolicy": {"maxFailures": 1},
            "export": {"quantize": "none"},
            "qualityGate": {"maxValPerplexity": 10000},
        }
    )
    run_id = run_id_for(spec)
    base = RunLayout.for_job(f"file://{tmp_path}/store", "default", "tg-resume", run_id).base
    job = JobDocument(namespace="default", name="tg-resume", run_id=run_id, run_uri=base, spec=spec)
    monkeypatch.setenv("RAYRELAY_FAULT_AT_STEP", "5")
    manifest = run_pipeline(job, scratch_dir=str(tmp_path / "scratch"), bench_repeats=1)
    assert manifest.task == "text-generation" and manifest.recommended_variant == "fp32"
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "store").rglob("steps/*.json"))]
    steps = [s for r in records for s in r["steps"]]
    assert sorted(steps) == list(range(1, 9)), records
    assert any(r["resumedFrom"] == "restart:step-0000004" and r["startedAtStep"] == 4 for r in records), (
        records
    )
    progress = json.loads(next((tmp_path / "store").rglob("progress.json")).read_text())
    assert progress["stage"] == "Succeeded" and progress["valPerplexity"] > 1
