"""``variant: auto``: a replica times the accepted variants on its own hardware and serves the fastest.

Two layers:

- the choice itself (``rayrelay_core.variants.choose``) with a fake timing source and a
  fake clock: the fastest wins, a gate-rejected variant is never loaded, a forced variant
  is never timed, the budget stops the timing, on a GPU only fp32 is a candidate;
- the replica's constructor (``ModelServer``, no Ray) on a small real artifact set: two
  real ONNX graphs standing in for the exported fp32/int8 models (one made slow on
  purpose, so which one is faster is known) and a real ``tokenizer.json``. It stands in
  for the trained BERT of ``tiny_run`` so that the timing path runs in about a second;
  ``tests/integration/test_serving.py`` checks the same reports through a real endpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rayrelay_core import variants
from rayrelay_core.runs import FileEntry, Lineage, Manifest, ManifestError, Parity, TokenizerInfo, VariantInfo
from rayrelay_core.store import sha256_bytes
from rayrelay_workloads.hardware import cpu_flags, instruction_set

LABELS = ["neg", "pos"]


def manifest(int8_accepted: bool = True, recommended: str = "int8") -> Manifest:
    return Manifest(
        run_id="run-test",
        created_at="2026-01-01T00:00:00Z",
        files=[],
        variants={
            "pytorch": VariantInfo(),
            "fp32": VariantInfo(file="onnx/model.onnx"),
            "int8": VariantInfo(
                file="onnx/model.int8.onnx",
                accepted=int8_accepted,
                reason=None if int8_accepted else "accuracy drop 0.2 > 0.01",
            ),
        },
        recommended_variant=recommended if int8_accepted else "fp32",
        parity=Parity(tolerance=0.01, passed=True),
        labels=LABELS,
        tokenizer=TokenizerInfo(max_seq_length=16),
        lineage=Lineage(spec_hash="0" * 64, base_model="m", package_version="0"),
    )


class FakeTiming:
    """A timing source: each variant's seconds per batch, and what was loaded and run."""

    def __init__(
        self, seconds: dict[str, float], fail_load: str | None = None, load_s: dict[str, float] | None = None
    ) -> None:
        self.seconds = seconds
        self.fail_load = fail_load
        self.load_s = load_s or {}  # seconds a load takes (another runtime's import and compile)
        self.loaded: list[str] = []
        self.runs: list[str] = []
        self.now = 0.0

    def load(self, variant: str) -> None:
        if variant == self.fail_load:
            raise RuntimeError("cannot create the session")
        self.now += self.load_s.get(variant, 0.0)
        self.loaded.append(variant)

    def run(self, variant: str) -> float:
        self.runs.append(variant)
        self.now += self.seconds[variant]
        return self.seconds[variant]

    def clock(self) -> float:
        return self.now


def choose(m: Manifest, requested: str, timing: FakeTiming, **kw: Any) -> variants.VariantChoice:
    args: dict[str, Any] = dict(isa="avx2", provider=variants.CPU_PROVIDER, batch=8, rounds=3, budget_s=10.0)
    args.update(kw)
    return variants.choose(m, requested, timing.load, timing.run, clock=timing.clock, **args)


# ----------------------------------------------------------------- the choice, fake timing


@pytest.mark.parametrize(("int8_s", "fp32_s", "expected"), [(0.01, 0.03, "int8"), (0.03, 0.01, "fp32")])
def test_the_fastest_accepted_variant_wins(int8_s: float, fp32_s: float, expected: str) -> None:
    timing = FakeTiming({"int8": int8_s, "fp32": fp32_s})
    choice = choose(manifest(), "auto", timing)
    assert choice.variant == expected
    assert choice.timings_s == {"int8": int8_s, "fp32": fp32_s}
    # In turns (load elsewhere on the node slows both alike), the recommended one first.
    assert timing.runs == ["int8", "fp32"] * 3 and timing.loaded == ["int8", "fp32"]
    assert choice.reason.startswith(f"auto: {expected} fastest on avx2 (CPUExecutionProvider): ")
    assert "per batch of 8" in choice.reason


def test_noise_does_not_flip_the_recommendation() -> None:
    """Within the margin (10 %) the recommended variant stays; the times are still reported."""
    choice = choose(manifest(), "auto", FakeTiming({"int8": 0.0100, "fp32": 0.0095}))
    assert choice.variant == "int8" and set(choice.timings_s) == {"int8", "fp32"}


def test_a_variant_rejected_by_the_quality_gate_is_never_loaded_nor_chosen() -> None:
    timing = FakeTiming({"int8": 0.001, "fp32": 0.05})  # int8 would be far faster
    choice = choose(manifest(int8_accepted=False), "auto", timing)
    assert choice.variant == "fp32"
    assert "int8" not in timing.loaded and "int8" not in timing.runs
    # A lone candidate is not timed either.
    assert timing.runs == [] and choice.timings_s == {} and "the only candidate" in choice.reason


@pytest.mark.parametrize("forced", ["fp32", "int8"])
def test_a_forced_variant_is_served_as_asked_and_never_timed(forced: str) -> None:
    timing = FakeTiming({"int8": 0.5, "fp32": 0.001})
    choice = choose(manifest(), forced, timing)
    assert choice.variant == forced and choice.requested == forced
    assert timing.loaded == [] and timing.runs == [] and choice.timings_s == {}
    assert choice.reason.startswith(f"{forced} forced by the spec (not timed)")


def test_a_forced_variant_the_gate_rejected_is_refused_as_before() -> None:
    with pytest.raises(ManifestError, match="rejected by the quality gate"):
        choose(manifest(int8_accepted=False), "int8", FakeTiming({}))


def test_the_budget_bounds_the_timing() -> None:
    """Rounds stop once the budget has passed (after one whole round: every candidate timed)."""
    timing = FakeTiming({"int8": 2.0, "fp32": 5.0})
    choice = choose(manifest(), "auto", timing, budget_s=4.0)
    assert timing.runs == ["int8", "fp32"] and choice.variant == "int8"


def test_a_candidate_that_cannot_load_is_skipped_with_its_reason() -> None:
    choice = choose(manifest(), "auto", FakeTiming({"int8": 0.01, "fp32": 0.001}, fail_load="fp32"))
    assert choice.variant == "int8" and "cannot create the session" in choice.skipped["fp32"]


def test_on_a_gpu_auto_serves_fp32_untimed() -> None:
    """Dynamic int8 does not run on the CUDA provider: fp32 is the only candidate there."""
    timing = FakeTiming({"int8": 0.001, "fp32": 0.05})
    choice = choose(manifest(), "auto", timing, provider=variants.CUDA_PROVIDER)
    assert choice.variant == "fp32" and timing.loaded == [] and timing.runs == []
    assert "int8 does not run on the CUDA provider" in choice.reason
    assert variants.first_variant(manifest(), "auto", gpu=True) == "fp32"
    assert variants.first_variant(manifest(), "auto", gpu=False) == "int8"


def test_auto_asks_for_cuda_on_a_replica_with_a_gpu_and_forced_variants_keep_their_providers() -> None:
    from rayrelay_workloads.serve.model import variant_providers

    cuda, cpu = variants.CUDA_PROVIDER, variants.CPU_PROVIDER
    both = [cuda, cpu]
    assert variant_providers("auto", [cpu], 1, both)[0] == [cuda, cpu]
    assert variant_providers("auto", [cpu], 0, both)[0] == [cpu]  # no GPU given
    assert variant_providers("auto", [cpu], 1, [cpu])[0] == [cpu]  # a CPU-only onnxruntime
    assert variant_providers("int8", [cpu], 1, both)[0] == [cpu]  # forced: as today


def test_instruction_set_from_cpu_flags() -> None:
    def info(flags: str) -> str:
        return f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n"

    assert instruction_set(info("avx avx2 fma")) == "avx2"
    assert instruction_set(info("avx2 avx512f avx512_vnni")) == "avx512_vnni"
    assert instruction_set(info("avx2 avx512f avx512_vnni amx_tile amx_int8")) == "amx"
    assert cpu_flags(info("avx2 fma avx512f")) == ["avx2", "fma", "avx512f"]
    assert instruction_set("no flags line") not in ("avx2", "amx")


# ----------------------------------------------------------------- the replica, real sessions


def classifier(path: Path, hidden: int, layers: int) -> None:
    """A real ONNX classifier: embedding -> mean over tokens -> ``layers`` square MatMuls -> logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(32, hidden)).astype(np.float32), "emb")]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["h0"]),
        helper.make_node("ReduceMean", ["h0"], ["x0"], axes=[1], keepdims=0),
    ]
    for i in range(layers):
        scale = np.float32(1 / np.sqrt(hidden))
        inits.append(
            numpy_helper.from_array(rng.normal(size=(hidden, hidden)).astype(np.float32) * scale, f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]))
    inits.append(numpy_helper.from_array(rng.normal(size=(hidden, 2)).astype(np.float32), "out"))
    nodes.append(helper.make_node("MatMul", [f"x{layers}", "out"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def small_set(root: Path, slow: str) -> str:
    """An artifact set with fp32 and int8 graphs (``slow`` one much heavier) and a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = "my order arrived two days late and the box was damaged can you send a replacement please"
    vocab = {"[PAD]": 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(dict.fromkeys(words.split()))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    (root / "hf").mkdir(parents=True)
    tok.save(str(root / "hf/tokenizer.json"))
    (root / "hf/tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    for variant, file in (("fp32", "onnx/model.onnx"), ("int8", "onnx/model.int8.onnx")):
        heavy = variant == slow
        classifier(root / file, hidden=384 if heavy else 16, layers=24 if heavy else 1)
    m = manifest()
    m.files = [
        FileEntry(path=str(p.relative_to(root)), sha256=sha256_bytes(p.read_bytes()), size=p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    (root / "manifest.json").write_text(m.to_json())
    return str(root / "manifest.json")


def encrypt_set(root: Path, key_hex: str) -> None:
    """``small_set``'s files encrypted in place, as an encrypting publish leaves them."""
    from rayrelay_core.runs import EncryptionInfo
    from rayrelay_workloads import envelope

    m = Manifest.model_validate_json((root / "manifest.json").read_bytes())
    data_key = envelope.new_data_key()
    for entry in m.files:
        plain = (root / entry.path).read_bytes()
        blob = envelope.encrypt_bytes(data_key, plain, entry.path)
        (root / entry.path).write_bytes(blob)
        entry.sha256, entry.size = sha256_bytes(blob), len(blob)
        entry.plaintext_sha256, entry.plaintext_size = sha256_bytes(plain), len(plain)
    wrapped = envelope.wrap_data_key(bytes.fromhex(key_hex), data_key, m.run_id)
    m.encryption = EncryptionInfo(scheme=envelope.SCHEME, wrapped_data_key=wrapped)
    (root / "manifest.json").write_text(m.to_json())


def replica(uri: str, cache: Path, variant: str | None, **spec: Any) -> Any:
    from rayrelay_workloads.serve.model import ModelServer

    args = {
        "name": "m",
        "spec": {"model": {"manifestUri": uri}, **spec},
        "manifestUri": uri,
        "cacheDir": str(cache),
    }
    if variant is not None:
        args["variant"] = variant
    return ModelServer.func_or_class(args)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("slow", "expected"), [("fp32", "int8"), ("int8", "fp32")])
def test_replica_times_the_variants_and_serves_the_fastest(tmp_path: Path, slow: str, expected: str) -> None:
    """Auto (the default when nothing is asked) on real sessions; only the chosen session is kept."""
    uri = small_set(tmp_path / "set", slow=slow)
    server = replica(uri, tmp_path / "cache", None)
    choice = server.info()["variantChoice"]
    assert server.artifacts.variant == expected == choice["variant"] == server.info()["variant"]
    assert choice["requested"] == "auto" and choice["instructionSet"] == instruction_set()
    assert set(choice["timingsMs"]) == {"int8", "fp32"}
    assert choice["timingsMs"][expected] < choice["timingsMs"][slow]
    assert server.session.get_providers()[0] == "CPUExecutionProvider"
    # The served session is the chosen variant's graph: its inputs answer as that graph does.
    wanted = "model.int8.onnx" if expected == "int8" else "model.onnx"
    assert server.artifacts.model_path.name == wanted
    assert server._run(["my order"]).shape == (1, 2)
    # Both variants' model files are in the node cache (the other one fetched with its digest check).
    cached = {p.name for p in (tmp_path / "cache").rglob("*.onnx")}
    assert cached == {"model.onnx", "model.int8.onnx"}
    assert server.cold_start["variantChoiceS"] > 0
    text = server.metrics_text()
    assert f'variant="{expected}"' in text and f'isa="{instruction_set()}"' in text
    assert 'rayrelay_variant_batch_seconds{model="m"' in text
    assert choice["timed"] == "here" and 'timed="here"' in text
    # A later replica on this node (same cache, same settings) loads the choice and times nothing.
    later = replica(uri, tmp_path / "cache", None)
    again = later.info()["variantChoice"]
    assert later.artifacts.variant == expected and again["timed"] == "node"
    assert again["timingsMs"] == choice["timingsMs"] and "earlier replica on this node" in again["reason"]
    # ... but one with other settings (a different timing batch) times again.
    other = replica(uri, tmp_path / "cache", None, batching={"maxBatchSize": 2})
    assert other.info()["variantChoice"]["timed"] == "here"


def test_replica_with_a_forced_variant_loads_only_that_one(tmp_path: Path) -> None:
    uri = small_set(tmp_path / "set", slow="int8")  # int8 slow, and still served: forced
    server = replica(uri, tmp_path / "cache", "int8")
    choice = server.info()["variantChoice"]
    assert server.artifacts.variant == "int8" and choice["timingsMs"] == {}
    assert {p.name for p in (tmp_path / "cache").rglob("*.onnx")} == {"model.int8.onnx"}
    assert "rayrelay_variant_batch_seconds{" not in server.metrics_text()


def test_replica_with_a_gpu_serves_fp32_on_cuda(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            "this onnxruntime has no CUDAExecutionProvider (CPU-only build, or no GPU): "
            f"available {ort.get_available_providers()}"
        )
    uri = small_set(tmp_path / "set", slow="fp32")  # int8 faster on a CPU: not a candidate on CUDA
    server = replica(uri, tmp_path / "cache", None, resources={"gpus": 1})
    choice = server.info()["variantChoice"]
    assert server.artifacts.variant == "fp32" and choice["provider"] == "CUDAExecutionProvider"
    assert server.session.get_providers()[0] == "CUDAExecutionProvider" and choice["timingsMs"] == {}
    assert {p.name for p in (tmp_path / "cache").rglob("*.onnx")} == {"model.onnx"}


# ----------------------------------------------------------------- the report: /metrics -> status.model


def test_operator_reads_the_choice_from_metrics_into_status() -> None:
    """What a replica exports (``ReplicaMetrics.set_variant``), the operator's parser reads back,
    and ``status.model`` shows it; a later report of the same choice by another replica leaves it."""
    from rayrelay_operator.backends.ray import served_variant
    from rayrelay_operator.reconcile.deployment import DesiredModel, served_model
    from rayrelay_operator.work import ServingObservation, ServingState
    from rayrelay_workloads.serve.metrics import ReplicaMetrics, merge_expositions

    choice = variants.VariantChoice(
        "auto", "int8", "avx2", variants.CPU_PROVIDER, 8, {"int8": 0.01, "fp32": 0.03}
    )
    metrics = ReplicaMetrics("m", "r1")
    metrics.set_variant(choice)
    other = ReplicaMetrics("other", "r9")
    other.set_variant(variants.VariantChoice("fp32", "fp32", "avx2", variants.CPU_PROVIDER))
    text = merge_expositions([other.text(), metrics.text()])  # as the gateway serves it
    assert served_variant(text, "m") == choice
    assert served_variant(text, "absent") is None and served_variant("<html>", "m") is None

    desired = DesiredModel("s3://b/run/manifest.json", "sha256:" + "a" * 64, "int8")
    first = served_model(desired, ServingObservation(ServingState.RUNNING, variant=choice), None)
    assert first.variant == "int8" and first.instruction_set == "avx2"
    assert first.variant_timings_ms == {"int8": 10.0, "fp32": 30.0}
    assert (
        first.variant_reason
        == "auto: int8 fastest on avx2 (CPUExecutionProvider): int8 10.0 ms, fp32 30.0 ms per batch of 8"
    )
    again = variants.VariantChoice(
        "auto", "int8", "avx2", variants.CPU_PROVIDER, 8, {"int8": 0.02, "fp32": 0.05}
    )
    assert served_model(desired, ServingObservation(ServingState.RUNNING, variant=again), first) == first
    assert served_model(desired, ServingObservation(ServingState.RUNNING), first) == first  # scrape failed
    # Another replica that chose otherwise, or nothing reported yet: what it says / the manifest's.
    fp32 = variants.VariantChoice(
        "auto", "fp32", "avx2", variants.CPU_PROVIDER, 8, {"int8": 0.05, "fp32": 0.03}
    )
    assert (
        served_model(desired, ServingObservation(ServingState.RUNNING, variant=fp32), first).variant == "fp32"
    )
    # The same variant, now forced (the spec changed, same artifact set): the reason follows.
    forced = variants.VariantChoice("fp32", "fp32", "avx2", variants.CPU_PROVIDER)
    auto_fp32 = served_model(desired, ServingObservation(ServingState.RUNNING, variant=fp32), first)
    now = served_model(desired, ServingObservation(ServingState.RUNNING, variant=forced), auto_fp32)
    assert now.variant == "fp32" and (now.variant_reason or "").startswith("fp32 forced by the spec")
    bare = served_model(desired, ServingObservation(ServingState.RUNNING), None)
    assert bare.variant == "int8" and bare.variant_reason is None


def test_replica_times_the_variants_of_an_encrypted_set_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other variant of an encrypted set is decrypted into memory too, never written plain."""
    key_hex = "11" * 16 + "22" * 16
    uri = small_set(tmp_path / "set", slow="int8")
    plain = (tmp_path / "set/onnx/model.onnx").read_bytes()
    encrypt_set(tmp_path / "set", key_hex)
    monkeypatch.setenv("RAYRELAY_ENCRYPTION_KEY", key_hex)
    server = replica(uri, tmp_path / "cache", None)
    assert server.artifacts.variant == "fp32" and server.artifacts.model_bytes == plain
    assert server.info()["variantChoice"]["timed"] == "here"
    cached = {p.name: p.read_bytes() for p in (tmp_path / "cache").rglob("*.onnx")}
    assert set(cached) == {"model.onnx", "model.int8.onnx"} and cached["model.onnx"] != plain


# ----------------------------------------------------------------- bf16 (OpenVINO), fake timing


def manifest_bf16(bf16_accepted: bool = True, int8_accepted: bool = True) -> Manifest:
    """``manifest()`` with the bf16 variant (fp32's file, served by OpenVINO in bf16)."""
    m = manifest(int8_accepted=int8_accepted)
    m.variants["bf16"] = VariantInfo(
        file="onnx/model.onnx",
        runtime="openvino",
        accepted=bf16_accepted,
        reason=None if bf16_accepted else "bf16 accuracy 0.900 is 0.090 below fp32 0.990, more than ...",
    )
    return m


# Seconds per batch as measured on an AMX host (issue 31: MiniLM 8 x 128, 2 threads).
AMX = {"bf16": 0.0302, "int8": 0.0645, "fp32": 0.1255}


def test_auto_picks_bf16_when_it_is_the_fastest() -> None:
    timing = FakeTiming(AMX)
    choice = choose(manifest_bf16(), "auto", timing, isa="amx")
    assert choice.variant == "bf16" and choice.runtime == "openvino" and choice.precision == "bf16"
    assert choice.timings_s == AMX and timing.loaded == ["int8", "bf16", "fp32"]
    assert timing.runs == ["int8", "bf16", "fp32"] * 3  # in turns, the recommended one first
    assert choice.reason == (
        "auto: bf16 fastest on amx (OpenVINO, bf16): bf16 30.2 ms, int8 64.5 ms, fp32 125.5 ms per batch of 8"
    )


@pytest.mark.parametrize(
    "seconds",
    [AMX, {"bf16": 0.001, "int8": 0.5, "fp32": 0.9}, {"bf16": 0.001, "int8": 0.002, "fp32": 0.0011}],
)
def test_auto_never_picks_a_bf16_the_gate_refused(seconds: dict[str, float]) -> None:
    """Whatever the timings, a refused bf16 is never loaded, timed nor chosen."""
    timing = FakeTiming(seconds)
    choice = choose(manifest_bf16(bf16_accepted=False), "auto", timing, isa="amx")
    assert choice.variant != "bf16" and "bf16" not in timing.loaded + timing.runs
    assert "bf16" not in choice.timings_s and choice.runtime == "onnxruntime"
    # Forced, it is refused with the gate's reason, as a refused int8 is.
    with pytest.raises(ManifestError, match="rejected by the quality gate"):
        choose(manifest_bf16(bf16_accepted=False), "bf16", FakeTiming(seconds))


def test_a_host_without_bf16_never_times_it_and_says_why() -> None:
    why = "this CPU has no bf16 instructions (OpenVINO would emulate bf16, about 20x slower than fp32)"
    timing = FakeTiming({"bf16": 0.001, "int8": 0.03, "fp32": 0.05})
    choice = choose(manifest_bf16(), "auto", timing, isa="avx512_vnni", unavailable={"bf16": why})
    assert choice.variant == "int8" and "bf16" not in timing.loaded + timing.runs
    assert choice.unavailable == {"bf16": why} and choice.reason.endswith(f"; bf16 not timed: {why}")
    # Only fp32 left (int8 refused): served untimed, the reason still says why bf16 was not timed.
    lone = choose(manifest_bf16(int8_accepted=False), "auto", FakeTiming({}), unavailable={"bf16": why})
    assert lone.variant == "fp32" and "the only candidate" in lone.reason and "bf16 not timed" in lone.reason


def test_a_forced_bf16_is_served_by_openvino_untimed() -> None:
    timing = FakeTiming(AMX)
    choice = choose(manifest_bf16(), "bf16", timing, isa="amx")
    assert (choice.variant, choice.runtime, choice.precision) == ("bf16", "openvino", "bf16")
    assert (
        timing.loaded == []
        and choice.reason == "bf16 forced by the spec (not timed); running on amx (OpenVINO, bf16)"
    )


def test_the_node_memo_of_a_bf16_choice_holds_only_where_bf16_is_available() -> None:
    first = choose(manifest_bf16(), "auto", FakeTiming(AMX), isa="amx")
    later = variants.from_memo(first.memo(), manifest_bf16(), "amx", variants.CPU_PROVIDER)
    assert later is not None and later.variant == "bf16" and later.timed == variants.TIMED_ON_NODE
    gone = {"bf16": "OpenVINO is not installed in this image"}
    assert variants.from_memo(first.memo(), manifest_bf16(), "amx", variants.CPU_PROVIDER, gone) is None
    assert variants.from_memo(first.memo(), manifest_bf16(False), "amx", variants.CPU_PROVIDER) is None


def test_the_runtime_and_precision_reach_status_model_through_metrics() -> None:
    """``/metrics`` carries runtime, precision and why a candidate was not timed; the operator's
    parser reads them back and ``status.model`` shows them."""
    from rayrelay_operator.backends.ray import served_variant
    from rayrelay_operator.reconcile.deployment import DesiredModel, served_model
    from rayrelay_operator.work import ServingObservation, ServingState
    from rayrelay_workloads.serve.metrics import ReplicaMetrics

    bf16 = choose(manifest_bf16(), "auto", FakeTiming(AMX), isa="amx")
    metrics = ReplicaMetrics("m", "r1")
    metrics.set_variant(bf16)
    text = metrics.text()
    assert 'runtime="openvino"' in text and 'precision="bf16"' in text
    assert served_variant(text, "m") == bf16
    desired = DesiredModel("s3://b/run/manifest.json", "sha256:" + "a" * 64, "int8")
    status = served_model(desired, ServingObservation(ServingState.RUNNING, variant=bf16), None)
    assert (status.variant, status.runtime, status.precision) == ("bf16", "openvino", "bf16")
    assert status.variant_reason == bf16.reason and status.variant_timings_ms["bf16"] == 30.2
    # A host without bf16: the reason in the status says why bf16 was not timed.
    why = "this CPU has no bf16 instructions (OpenVINO would emulate bf16, about 20x slower than fp32)"
    int8 = choose(manifest_bf16(), "auto", FakeTiming(AMX), unavailable={"bf16": why})
    again = ReplicaMetrics("m", "r2")
    again.set_variant(int8)
    parsed = served_variant(again.text(), "m")
    assert parsed == int8 and parsed is not None and parsed.reason.endswith(f"bf16 not timed: {why}")
    status = served_model(desired, ServingObservation(ServingState.RUNNING, variant=parsed), None)
    assert (status.runtime, status.precision) == ("onnxruntime", "int8")


# ----------------------------------------------------------------- bf16, the replica on real runtimes


def with_bf16(uri: str) -> str:
    """``small_set``'s manifest with the bf16 variant (fp32's file, OpenVINO), as publish lists it."""
    path = Path(uri)
    m = Manifest.model_validate_json(path.read_bytes())
    m.variants["bf16"] = VariantInfo(file="onnx/model.onnx", runtime="openvino", accuracy=1.0)
    path.write_text(m.to_json())
    return uri


def test_replica_serves_a_forced_bf16_through_openvino(tmp_path: Path) -> None:
    """The real OpenVINO runtime: what ran is reported (emulated on a CPU without bf16 instructions)."""
    from rayrelay_workloads.openvino_runtime import OpenVinoSession, capability

    uri = with_bf16(small_set(tmp_path / "set", slow="int8"))
    server = replica(uri, tmp_path / "cache", "bf16")
    info = server.info()
    ran = "bf16" if capability().hardware_bf16 else "bf16-emulated"
    assert info["variant"] == "bf16" and info["providers"] == ["OpenVINO:CPU"]
    assert isinstance(server.session, OpenVinoSession) and server.artifacts.model_path.name == "model.onnx"
    assert (info["variantChoice"]["runtime"], info["variantChoice"]["precision"]) == ("openvino", ran)
    assert info["variantChoice"]["reason"].startswith("bf16 forced by the spec (not timed)")
    assert 'runtime="openvino"' in server.metrics_text() and f'precision="{ran}"' in server.metrics_text()
    fp32 = replica(uri, tmp_path / "cache", "fp32")
    texts = ["my order arrived two days late", "send a replacement please"]
    a, b = server._run(texts), fp32._run(texts)
    assert a.shape == b.shape == (2, 2) and np.abs(a - b).max() < 0.05  # bf16 rounding, not another model


def test_replica_auto_times_bf16_only_where_the_cpu_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without bf16 instructions auto leaves bf16 out and says why; allowed to time an emulated
    bf16 (RAYRELAY_BF16_EMULATED=1, what an AMX host does for real) it times all three."""
    from rayrelay_workloads.openvino_runtime import ALLOW_EMULATED_ENV, capability

    uri = with_bf16(small_set(tmp_path / "set", slow="fp32"))
    monkeypatch.delenv(ALLOW_EMULATED_ENV, raising=False)
    choice = replica(uri, tmp_path / "cache", None).info()["variantChoice"]
    if capability().hardware_bf16:
        assert set(choice["timingsMs"]) == {"int8", "fp32", "bf16"} and choice["notTimed"] == {}
    else:
        assert set(choice["timingsMs"]) == {"int8", "fp32"} and "bf16 not timed: this CPU" in choice["reason"]
        assert choice["variant"] == "int8" and choice["timed"] == "here"
    monkeypatch.setenv(ALLOW_EMULATED_ENV, "1")
    timed = replica(uri, tmp_path / "cache2", None)
    choice = timed.info()["variantChoice"]
    assert set(choice["timingsMs"]) == {"int8", "fp32", "bf16"} and choice["notTimed"] == {}
    assert choice["variant"] == "int8"  # the light graph; bf16 runs fp32's heavy one
    later = replica(uri, tmp_path / "cache2", None).info()["variantChoice"]
    assert later["timed"] == "node" and later["timingsMs"] == choice["timingsMs"]


def test_a_replica_rules_bf16_out_from_the_cpu_flags_without_importing_openvino(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing OpenVINO costs a replica's start ~0.4 s: CPU flags without amx_bf16/avx512_bf16
    settle it; with them, OpenVINO's own capability decides (stubbed here: this host has neither)."""
    from rayrelay_workloads import openvino_runtime as ovr

    def must_not_probe() -> ovr.Capability:
        raise AssertionError("OpenVINO probed although the CPU flags rule bf16 out")

    monkeypatch.delenv(ovr.ALLOW_EMULATED_ENV, raising=False)
    monkeypatch.setattr(ovr, "capability", must_not_probe)
    vnni = "flags\t\t: avx2 avx512f avx512_vnni\n"
    assert ovr.serving_unavailable(vnni) == ovr.NO_BF16
    amx = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    monkeypatch.setattr(ovr, "capability", lambda: ovr.Capability(True, "2026.4.1", hardware_bf16=True))
    assert ovr.serving_unavailable(amx) is None
    monkeypatch.setattr(ovr, "capability", lambda: ovr.Capability(False, error="No module named 'openvino'"))
    assert "OpenVINO is not installed" in (ovr.serving_unavailable(amx) or "")


# ----------------------------------------------------------------- fp32-openvino, fake timing

OV = ("fp32-openvino",)  # what a replica with RAYRELAY_OPENVINO_FP32=1 offers (variants.DERIVED)
# Seconds per batch at 8 x 128, 2 threads, on an AVX-512 VNNI host without AMX under heavy
# other load (issue 31): OpenVINO fp32 ahead of onnxruntime int8 there.
VNNI = {"int8": 0.429, "fp32": 0.700, "fp32-openvino": 0.359}


def test_auto_picks_fp32_openvino_when_it_is_the_fastest() -> None:
    timing = FakeTiming(VNNI)
    choice = choose(manifest(), "auto", timing, isa="avx512_vnni", extra=OV)
    assert (choice.variant, choice.runtime, choice.precision) == ("fp32-openvino", "openvino", "fp32")
    assert (
        timing.loaded == ["int8", "fp32", "fp32-openvino"]
        and timing.runs == ["int8", "fp32", "fp32-openvino"] * 3
    )
    assert choice.timings_s == VNNI and choice.unavailable == {}
    assert choice.reason == (
        "auto: fp32-openvino fastest on avx512_vnni (OpenVINO, fp32): "
        "fp32-openvino 359.0 ms, int8 429.0 ms, fp32 700.0 ms per batch of 8"
    )
    # Within the margin (10 %) the recommended int8 stays, as against any other candidate.
    close = FakeTiming({"int8": 0.429, "fp32": 0.7, "fp32-openvino": 0.40})
    assert choose(manifest(), "auto", close, extra=OV).variant == "int8"
    # The node memo keeps it while the replica still offers it.
    later = variants.from_memo(choice.memo(), manifest(), "avx512_vnni", variants.CPU_PROVIDER, extra=OV)
    assert later is not None and later.variant == "fp32-openvino" and later.runtime == "openvino"
    assert variants.from_memo(choice.memo(), manifest(), "avx512_vnni", variants.CPU_PROVIDER) is None
    gone = {"fp32-openvino": "OpenVINO is not installed in this image"}
    assert (
        variants.from_memo(choice.memo(), manifest(), "avx512_vnni", variants.CPU_PROVIDER, gone, OV) is None
    )


def test_fp32_openvino_is_a_candidate_only_where_offered_and_fp32_passed_its_gate() -> None:
    # Not offered (an image without OpenVINO, the default of the pure API): never loaded.
    timing = FakeTiming(VNNI)
    assert choose(manifest(), "auto", timing).variant == "int8" and "fp32-openvino" not in timing.loaded
    # Offered but unavailable: never loaded, and the reason says why.
    why = "OpenVINO is not installed in this image"
    timing = FakeTiming(VNNI)
    choice = choose(manifest(), "auto", timing, extra=OV, unavailable={"fp32-openvino": why})
    assert choice.variant == "int8" and "fp32-openvino" not in timing.loaded + timing.runs
    assert choice.reason.endswith(f"; fp32-openvino not timed: {why}")
    # Its numerics are fp32's: where fp32 did not pass the gate, it is no candidate either.
    m = manifest()
    m.variants["fp32"].accepted = False
    timing = FakeTiming(VNNI)
    assert choose(m, "auto", timing, extra=OV).variant == "int8" and timing.loaded == []
    # A GPU runs fp32 on the CUDA provider, untimed; nor is it ever a forced variant.
    timing = FakeTiming(VNNI)
    assert choose(manifest(), "auto", timing, provider=variants.CUDA_PROVIDER, extra=OV).variant == "fp32"
    with pytest.raises(ManifestError, match="not in this artifact set"):
        choose(manifest(), "fp32-openvino", FakeTiming(VNNI), extra=OV)
    # A manifest cannot list it: only a replica offers it.
    m = manifest()
    m.variants["fp32-openvino"] = VariantInfo(file="onnx/model.onnx")
    assert "fp32-openvino" not in variants.auto_candidates(m, gpu=False)
    assert variants.file_variant("fp32-openvino") == "fp32" and variants.file_variant("int8") == "int8"


def test_a_candidate_not_loaded_when_the_budget_is_spent_is_skipped_with_its_reason() -> None:
    """Loading OpenVINO (import ~0.4 s, compile) is the dearest step: it is not started once the
    budget has passed; the choice is then not remembered on the node (a skipped candidate)."""
    timing = FakeTiming(VNNI, load_s={"fp32": 3.0})
    choice = choose(manifest(), "auto", timing, extra=OV, budget_s=2.0)
    assert timing.loaded == ["int8", "fp32"] and choice.variant == "int8"
    assert choice.skipped == {"fp32-openvino": "not loaded: the timing budget (2 s) was spent"}


def test_fp32_openvino_reaches_status_model_through_metrics() -> None:
    from rayrelay_operator.backends.ray import served_variant
    from rayrelay_operator.reconcile.deployment import DesiredModel, served_model
    from rayrelay_operator.work import ServingObservation, ServingState
    from rayrelay_workloads.serve.metrics import ReplicaMetrics

    choice = choose(manifest(), "auto", FakeTiming(VNNI), isa="avx512_vnni", extra=OV)
    metrics = ReplicaMetrics("m", "r1")
    metrics.set_variant(choice)
    text = metrics.text()
    assert 'variant="fp32-openvino"' in text and 'runtime="openvino"' in text and 'precision="fp32"' in text
    assert served_variant(text, "m") == choice
    desired = DesiredModel("s3://b/run/manifest.json", "sha256:" + "a" * 64, "int8")
    status = served_model(desired, ServingObservation(ServingState.RUNNING, variant=choice), None)
    assert (status.variant, status.runtime, status.precision) == ("fp32-openvino", "openvino", "fp32")
    assert status.variant_timings_ms["fp32-openvino"] == 359.0 and status.variant_reason == choice.reason


# ----------------------------------------------------------------- fp32-openvino, the replica on real runtimes


def slow_onnxruntime(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Every onnxruntime session a replica creates runs ``seconds`` slower: stands in for a host
    where onnxruntime is slower than OpenVINO on the same fp32 graph (this one at 8 x 128)."""
    import onnxruntime as ort

    class Slower(ort.InferenceSession):  # type: ignore[misc]
        def run(self, *args: Any, **kwargs: Any) -> Any:
            import time

            time.sleep(seconds)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Slower)


def test_replica_serves_fp32_openvino_where_it_is_fastest_with_fp32s_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rayrelay_workloads.openvino_runtime import OPENVINO_FP32_ENV, OpenVinoSession

    monkeypatch.setenv(OPENVINO_FP32_ENV, "1")
    uri = small_set(tmp_path / "set", slow="int8")
    slow_onnxruntime(monkeypatch, 0.05)
    server = replica(uri, tmp_path / "cache", None)
    info = server.info()
    choice = info["variantChoice"]
    assert set(choice["timingsMs"]) == {"int8", "fp32", "fp32-openvino"} and choice["notTimed"] == {}
    assert info["variant"] == choice["variant"] == "fp32-openvino" and choice["timed"] == "here"
    assert (choice["runtime"], choice["precision"]) == ("openvino", "fp32")
    assert choice["reason"].startswith(
        f"auto: fp32-openvino fastest on {instruction_set()} (OpenVINO, fp32): "
    )
    assert isinstance(server.session, OpenVinoSession) and info["providers"] == ["OpenVINO:CPU"]
    # fp32's file, fetched into the node cache with fp32's digest check.
    assert server.artifacts.model_path.name == "model.onnx"
    assert {p.name for p in (tmp_path / "cache").rglob("*.onnx")} == {"model.onnx", "model.int8.onnx"}
    text = server.metrics_text()
    assert 'variant="fp32-openvino"' in text and 'runtime="openvino"' in text and 'precision="fp32"' in text
    # Its answers are onnxruntime fp32's (same graph, same precision), within fp32 rounding.
    fp32 = replica(uri, tmp_path / "cache", "fp32")
    texts = ["my order arrived two days late", "send a replacement please", "the box was damaged"]
    a, b = server._run(texts), fp32._run(texts)
    assert a.shape == b.shape == (3, 2) and np.abs(a - b).max() < 1e-5
    # A later replica on the node serves it from the memo: OpenVINO straight away, nothing timed.
    later = replica(uri, tmp_path / "cache", None)
    assert later.info()["variantChoice"]["timed"] == "node" and isinstance(later.session, OpenVinoSession)
    assert later.artifacts.variant == "fp32-openvino" and np.abs(later._run(texts) - b).max() < 1e-5


def test_fp32_openvino_reads_fp32s_file_under_fp32s_digest_check(tmp_path: Path) -> None:
    """``prepare_variant`` fetches and verifies fp32's file for it; a changed file is refused."""
    from rayrelay_workloads.serve.artifacts import ArtifactError, prepare, prepare_variant

    uri = small_set(tmp_path / "set", slow="int8")
    prepared = prepare(uri, "int8", cache_dir=str(tmp_path / "cache"))
    ov = prepare_variant(prepared, "fp32-openvino")
    assert ov.variant == "fp32-openvino" and ov.model_path == prepare_variant(prepared, "fp32").model_path
    tampered = tmp_path / "set/onnx/model.onnx"
    tampered.write_bytes(tampered.read_bytes() + b"\0")
    for cached in (tmp_path / "cache").rglob("model.onnx"):
        cached.unlink()
    with pytest.raises(ArtifactError):
        prepare_variant(prepared, "fp32-openvino")


def test_replica_offers_fp32_openvino_only_when_asked_and_says_why_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off by default (OpenVINO's import and compile are not paid); asked for in an image
    without OpenVINO (``find_spec`` stubbed to find nothing), it is not timed and the reason says so."""
    import importlib.util

    from rayrelay_workloads.openvino_runtime import OPENVINO_FP32_ENV

    uri = small_set(tmp_path / "set", slow="int8")
    slow_onnxruntime(monkeypatch, 0.05)  # OpenVINO would win
    monkeypatch.delenv(OPENVINO_FP32_ENV, raising=False)
    choice = replica(uri, tmp_path / "cache", None).info()["variantChoice"]
    assert set(choice["timingsMs"]) == {"int8", "fp32"} and choice["runtime"] == "onnxruntime"
    assert choice["notTimed"] == {} and "fp32-openvino" not in choice["reason"]
    monkeypatch.setenv(OPENVINO_FP32_ENV, "1")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real_find_spec(name, *a)
    )
    choice = replica(uri, tmp_path / "cache", None).info()["variantChoice"]
    assert set(choice["timingsMs"]) == {"int8", "fp32"} and choice["timed"] == "here"  # another memo key
    why = "OpenVINO is not installed in this image"
    assert choice["notTimed"] == {"fp32-openvino": why}
    assert choice["reason"].endswith(f"fp32-openvino not timed: {why}")
