"""Text generation without Ray or Serve (issue 16): data, LM steps, export parity, decoding, protocol.

A tiny GPT-2 (2 layers, width 32, random weights) with a byte-level BPE
tokenizer trained on the shipped text is built once per module; the tests run
the real training step, the real ONNX export with past key values and the real
decoding engine on it. The one stand-in is ``CountingDecoder`` (docstring
says what it stands for).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rayrelay_core.api import ExportSpec, GenerationLimits
from rayrelay_workloads.data import DataError
from rayrelay_workloads.serve.protocol import ProtocolError
from rayrelay_workloads.textgen import protocol as gp
from rayrelay_workloads.textgen.data import Fields, LmExample, parse_lm_examples

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "examples" / "data" / "textgen-train.jsonl"
VALIDATION = REPO / "examples" / "data" / "textgen-validation.jsonl"
LIMITS = GenerationLimits(max_prompt_tokens=32, max_new_tokens=8, max_stop_sequences=2)


# ------------------------------------------------------------------ data


def test_shipped_text_is_small_and_valid() -> None:
    for path in (TRAIN, VALIDATION):
        assert path.stat().st_size < 100_000
        rows = parse_lm_examples(path.read_bytes(), "jsonl", str(path), Fields())
        assert rows and all(r.completion.strip() and r.prompt == "" for r in rows)


def test_rows_text_and_prompt_completion() -> None:
    data = b'{"text": "hello there"}\n\n{"q": "Why?", "a": " Because."}\n'
    rows = parse_lm_examples(data, "jsonl", "f.jsonl", Fields(prompt="q", completion="a"))
    assert rows == [LmExample("", "hello there", 1), LmExample("Why?", " Because.", 3)]


@pytest.mark.parametrize(
    ("line", "gist"),
    [
        ('{"txt": "x"}', "row 1: missing field 'text' (or 'prompt' and 'completion'); fields present: txt"),
        ('{"text": 3}', "row 1: field 'text' must be a string"),
        ('{"text": "  "}', "row 1: field 'text' is blank"),
        ('{"prompt": "a"}', "row 1: a prompt/completion row needs both 'prompt' and 'completion'"),
        ("[1, 2]", "row 1: expected an object"),
        ("{bad", "row 1: not valid JSON"),
    ],
)
def test_bad_rows_name_file_and_row(line: str, gist: str) -> None:
    with pytest.raises(DataError) as err:
        parse_lm_examples(line.encode(), "jsonl", "s3://b/train.jsonl", Fields())
    assert str(err.value).startswith("s3://b/train.jsonl: ") and gist in str(err.value)


def test_empty_file_is_refused() -> None:
    with pytest.raises(DataError, match="holds no rows"):
        parse_lm_examples(b"\n", "jsonl", "v.jsonl", Fields())


# ------------------------------------------------------------------ a tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayrelay_workloads.textgen.tiny import build_tiny_gpt2

    folder = build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"), TRAIN, width=32, positions=128, vocab_size=320)
    model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(str(folder)), folder


def test_encode_masks_prompt_and_padding(tiny: tuple[Any, Any, Path]) -> None:
    from rayrelay_workloads.textgen.lm import IGNORE, encode_examples

    _, tokenizer, _ = tiny
    batch = encode_examples(tokenizer, [LmExample("Why?", " Because", 1), LmExample("", "ok", 2)], 64)
    prompt_len = len(tokenizer("Why?", add_special_tokens=False)["input_ids"])
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, :prompt_len] == IGNORE).all() and (labels[0, prompt_len:] != IGNORE).all()
    assert int(labels[0, -1]) == tokenizer.eos_token_id
    assert (labels[1][mask[1] == 0] == IGNORE).all()


def test_training_steps_lower_validation_perplexity(tiny: tuple[Any, Any, Path]) -> None:
    import copy

    import torch

    from rayrelay_workloads.textgen.lm import encode_examples, evaluate_lm, lm_train_step
    from rayrelay_workloads.train_state import build_optimization

    base, tokenizer, _ = tiny
    model = copy.deepcopy(base).train()
    rows = parse_lm_examples(TRAIN.read_bytes(), "jsonl", "t", Fields())[:64]
    hp = {"learning_rate": 3e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    opt = build_optimization(model, hp, 12, "cpu", "fp32")
    before = evaluate_lm(model, tokenizer, rows[:16], 48)
    torch.manual_seed(0)
    for step in range(12):
        chunk = rows[(step * 16) % 64 : (step * 16) % 64 + 16]
        loss = lm_train_step(model, opt, encode_examples(tokenizer, chunk, 48))
        assert np.isfinite(loss)
    after = evaluate_lm(model, tokenizer, rows[:16], 48)
    assert after.perplexity < before.perplexity
    assert after.perplexity == pytest.approx(float(np.exp(after.loss)))


def test_export_with_kv_cache_matches_pytorch(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    """The real export: fp32 and int8 decoders, logits and greedy parity, perplexities."""
    import shutil

    from rayrelay_workloads.textgen.export import export_lm

    _, _, folder = tiny
    shutil.copytree(folder, tmp_path / "ckpt" / "model")
    val = parse_lm_examples(VALIDATION.read_bytes(), "jsonl", "v", Fields())[:8]
    result = export_lm(
        tmp_path / "ckpt", str(folder), tmp_path / "out", ExportSpec(), 48, val, bench_repeats=1
    )
    assert (tmp_path / "out" / "onnx" / "model.onnx").is_file()
    assert (tmp_path / "out" / "onnx" / "model.int8.onnx").is_file()
    assert result.kv_cache == "inplace", "a GPT-2 model gets the in-place decoder"
    assert result.max_diff_fp32 < 1e-4 and result.greedy_match["fp32"] == 1.0
    assert result.max_diff_int8 is not None and 0.0 <= result.greedy_match["int8"] <= 1.0
    assert result.perplexity["fp32"] == pytest.approx(result.perplexity["pytorch"], rel=1e-4)
    assert result.metrics["fp32_ms_per_token"] > 0


def test_export_refuses_a_decoder_beyond_tolerance(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    import shutil

    from rayrelay_workloads.export_checks import ParityError
    from rayrelay_workloads.textgen.export import export_lm

    _, _, folder = tiny
    shutil.copytree(folder, tmp_path / "ckpt" / "model")
    val = parse_lm_examples(VALIDATION.read_bytes(), "jsonl", "v", Fields())[:2]
    spec = ExportSpec(parity_tolerance=1e-12, quantize="none")
    with pytest.raises(ParityError, match="parityTolerance"):
        export_lm(tmp_path / "ckpt", str(folder), tmp_path / "out", spec, 48, val, bench_repeats=1)


# ------------------------------------------------------------------ decoding


class CountingDecoder:
    """Stands in for the ONNX decoder: fixed logits (token = step number), counting its calls."""

    def __init__(self, vocab: int = 50) -> None:
        self.vocab = vocab
        self.steps = 0

    def _logits(self, rows: int, token: int) -> np.ndarray:
        logits = np.zeros((rows, self.vocab), dtype=np.float32)
        logits[:, token] = 1.0
        return logits

    def prefill(self, batch: Any) -> np.ndarray:
        return self._logits(len(batch), 10)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.steps += 1
        return self._logits(len(tokens), 10 + self.steps)


def test_decode_is_lazy_and_stops_at_max_or_eos() -> None:
    from rayrelay_workloads.textgen.decoding import Sampling, decode, generate_ids

    model = CountingDecoder()
    stream = decode(model, [[1, 2]], Sampling(max_new_tokens=5), eos_id=None)
    assert int(next(stream)[0]) == 10 and model.steps == 0, "the first token comes before any later step"
    assert [int(t[0]) for t in stream] == [11, 12, 13, 14] and model.steps == 4
    assert generate_ids(CountingDecoder(), [[1]], Sampling(max_new_tokens=9), eos_id=12) == [[10, 11, 12]]


def test_sampling_is_seeded_and_top_p_keeps_the_head() -> None:
    from rayrelay_workloads.textgen.decoding import Sampling, choose

    logits = np.array([[5.0, 4.0, -10.0, -10.0]])
    draw = [
        int(choose(logits, Sampling(temperature=1.0, top_p=0.5), np.random.default_rng(s))[0])
        for s in range(20)
    ]
    assert set(draw) == {0}
    mixed = {int(choose(logits, Sampling(temperature=2.0), np.random.default_rng(s))[0]) for s in range(50)}
    assert {0, 1} <= mixed
    again = [int(choose(logits, Sampling(temperature=2.0), np.random.default_rng(7))[0]) for _ in range(3)]
    assert len(set(again)) == 1


def test_stop_matcher_holds_back_a_possible_stop() -> None:
    from rayrelay_workloads.textgen.serving import StopMatcher

    stops = StopMatcher(["END"])
    assert stops.feed("abc E") == ("abc ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("Dxyz") == ("", True)
    other = StopMatcher(["END"])
    assert other.feed("E") == ("", False) and other.feed("x") == ("Ex", False)


def test_engine_streams_pieces_and_enforces_limits(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    from rayrelay_workloads.textgen.decoding import OnnxDecoder, Sampling, TorchDecoder, generate_ids
    from rayrelay_workloads.textgen.export import export_decoder, session
    from rayrelay_workloads.textgen.serving import TextGenEngine

    model, tokenizer, _ = tiny
    export_decoder(model, tmp_path / "d.onnx", 17)
    engine = TextGenEngine(session(tmp_path / "d.onnx", 1), tokenizer, None, 128, LIMITS, 200)
    req = gp.GenerationRequest("Where is my order", 6)
    ids = engine.prompt_ids(req)
    pieces = list(engine.pieces(req, ids))
    assert len(pieces) == 6 and pieces[-1].finish_reason == "length"
    expected = generate_ids(TorchDecoder(model, 0), [ids], Sampling(max_new_tokens=6), None)[0]
    assert [p.token for p in pieces] == expected
    text = tokenizer.decode(expected, skip_special_tokens=True)
    assert "".join(p.text for p in pieces) == text
    # the same decoder run batched (left padding) gives each row its own tokens
    other = tokenizer("Thanks", add_special_tokens=False)["input_ids"]
    batched = generate_ids(OnnxDecoder(session(tmp_path / "d.onnx", 1), 0), [ids, other], Sampling(6), None)
    assert batched[0] == expected
    with pytest.raises(ProtocolError, match="limit of 32"):
        engine.prompt_ids(gp.GenerationRequest("word " * 60, 4))
    with pytest.raises(ProtocolError, match="context of 10 tokens"):
        TextGenEngine(engine.decoder.session, tokenizer, None, 10, LIMITS, 200).prompt_ids(
            gp.GenerationRequest("Where is my order today then", 8)
        )


# ------------------------------------------------------------------ protocol


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_oip_generate_parses_parameters() -> None:
    req = gp.parse_oip_generate(
        body({"text_input": "hi", "parameters": {"max_new_tokens": 4, "temperature": 0.5, "stop": "\n"}}),
        LIMITS,
        100,
    )
    assert (req.prompt, req.max_tokens, req.temperature, req.stop) == ("hi", 4, 0.5, ["\n"])
    assert gp.parse_oip_generate(body({"text_input": "hi"}), LIMITS, 100).max_tokens == 8


@pytest.mark.parametrize(
    ("doc", "status", "gist"),
    [
        ({"text_input": "hi", "parameters": {"max_tokens": 9}}, 400, "limit of 8 new tokens"),
        ({"text_input": "hi", "parameters": {"max_tokens": 0}}, 400, "at least 1"),
        ({"text_input": "hi", "parameters": {"max_tokens": "3"}}, 400, "must be an integer"),
        ({"text_input": "hi", "parameters": {"temperature": -1}}, 400, "parameters.temperature"),
        ({"text_input": "hi", "parameters": {"top_p": 1.5}}, 400, "parameters.top_p"),
        ({"text_input": "hi", "parameters": {"stop": ["a", "b", "c"]}}, 400, "at most 2"),
        ({"text_input": "hi", "parameters": {"stop": [""]}}, 400, "non-empty string"),
        ({"text_input": "hi", "parameters": {"beam": 2}}, 400, "unknown parameter"),
        ({"text_input": "x" * 101}, 413, "limit of 100"),
        ({"text_input": 5}, 400, "must be a string"),
        ({}, 400, "text_input is required"),
    ],
)
def test_oip_generate_refusals(doc: Any, status: int, gist: str) -> None:
    with pytest.raises(ProtocolError) as err:
        gp.parse_oip_generate(body(doc), LIMITS, 100)
    assert err.value.status == status and gist in err.value.message


def test_completions_defaults_and_refusals() -> None:
    req = gp.parse_completions(
        body({"model": "m", "prompt": ["hi"], "stream": True, "stop": "."}), LIMITS, 100
    )
    assert (req.model, req.prompt, req.max_tokens, req.temperature, req.stream, req.stop) == (
        "m",
        "hi",
        8,
        1.0,
        True,
        ["."],
    )
    for doc, gist in [
        ({"prompt": "hi"}, "model is required"),
        ({"model": "m", "prompt": "hi", "n": 3}, "only 1"),
        ({"model": "m", "prompt": ["a", "b"]}, "one prompt"),
        ({"model": "m", "prompt": "hi", "max_tokens": 100}, "limit of 8"),
        ({"model": "m", "prompt": "hi", "stream": "yes"}, "stream must be"),
        ({"model": "m", "prompt": "hi", "logprobs": 2}, "not supported"),
        ({"model": "m", "prompt": "hi", "tools": []}, "unknown field"),
    ]:
        with pytest.raises(ProtocolError, match="") as err:
            gp.parse_completions(body(doc), LIMITS, 100)
        assert err.value.status == 400 and gist in err.value.message, (doc, err.value.message)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        gp.parse_completions(b"{", LIMITS, 100)


def test_sse_framing() -> None:
    assert gp.sse("[DONE]") == b"data: [DONE]\n\n"
    assert gp.sse({"a": 1}) == b'data: {"a":1}\n\n'


# ------------------------------------------------------------------ quality gate


def test_perplexity_gate_and_int8_decision() -> None:
    from rayrelay_core.api import QualityGate
    from rayrelay_workloads.quality import QualityGateError
    from rayrelay_workloads.textgen.pipeline import check_max_perplexity, int8_perplexity_decision

    gate = QualityGate(max_val_perplexity=50, max_int8_perplexity_increase=0.05)
    check_max_perplexity(gate, 49.9)
    with pytest.raises(
        QualityGateError, match=r"perplexity 60.000 is above qualityGate.maxValPerplexity 50 by 10.000"
    ):
        check_max_perplexity(gate, 60.0)
    with pytest.raises(QualityGateError, match="above"):
        check_max_perplexity(gate, float("inf"))
    check_max_perplexity(QualityGate(), 1e9)  # no bound, no gate
    assert int8_perplexity_decision(gate, 20.0, 20.9).recommended_variant == "int8"
    rejected = int8_perplexity_decision(gate, 20.0, 21.2)
    assert not rejected.accepted and rejected.recommended_variant == "fp32"
    assert "6.0% above fp32" in (rejected.reason or "")
    assert int8_perplexity_decision(gate, 20.0, None).recommended_variant == "fp32"
    assert int8_perplexity_decision(QualityGate(), 20.0, 90.0).accepted


# ------------------------------------------------------------------ the hooks in shared code


def test_a_text_generation_manifest_gets_its_replica_and_route(tmp_path: Path) -> None:
    """The operator reads the manifest's task into the Serve args; the config routes the whole
    /v2/models/{name}/ prefix to the replica; a classification set keeps its infer route."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from reconcile_fakes import Clock, FakeBackend, make_ctx, sample_manifest, write_manifest

    from rayrelay_core.serveconfig import application_configs
    from rayrelay_operator.reconcile import run_pass

    routes = {}
    for task in ("text-generation", "sequence-classification"):
        manifest = sample_manifest(f"run-{task}")
        manifest.task = task
        uri = str(tmp_path / task / "manifest.json")
        write_manifest(uri, manifest)
        backend = FakeBackend()
        ctx, _ = make_ctx(backend, Clock(), str(tmp_path))
        md = {
            "apiVersion": "rayrelay.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "writer", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"model": {"manifestUri": uri}, "generation": {"maxNewTokens": 32}},
        }
        run_pass("ModelDeployment", md, ctx)
        args = backend.deployed[0].app_args
        assert args.get("task") == (task if task == "text-generation" else None)
        model_app = application_configs(args)[1]
        routes[task] = model_app["route_prefix"]
        assert model_app["args"]["spec"]["generation"]["maxNewTokens"] == 32
    assert routes == {
        "text-generation": "/v2/models/writer",
        "sequence-classification": "/v2/models/writer/infer",
    }


def test_a_checkpoint_of_a_tied_lm_resumes(tiny: tuple[Any, Any, Path], tmp_path: Path) -> None:
    """GPT-2 ties lm_head.weight to the input embedding and save_pretrained stores it once;
    the checkpoint gets the tied copy written in, so train_state.load_state (resume) accepts it."""
    import copy

    from rayrelay_workloads.textgen.worker import complete_tied_weights
    from rayrelay_workloads.train_state import (
        Position,
        TrainingError,
        build_optimization,
        load_state,
        save_state,
    )

    model, _, _ = tiny
    hp = {"learning_rate": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "max_grad_norm": 1.0}
    save_state(tmp_path, model, build_optimization(model, hp, 10, "cpu", "fp32"), Position(4, 0, 4), {})
    other = copy.deepcopy(model)
    with pytest.raises(TrainingError, match="lm_head.weight"):
        load_state(tmp_path, other, build_optimization(other, hp, 10, "cpu", "fp32"))
    complete_tied_weights(tmp_path, model)
    assert load_state(tmp_path, other, build_optimization(other, hp, 10, "cpu", "fp32")) == Position(4, 0, 4)
