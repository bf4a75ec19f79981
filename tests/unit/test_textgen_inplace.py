"""The in-place GPT-2 decoder (``textgen.inplace``, issue 25): its graph, and the batch on it.

The graph is built from a tiny GPT-2's weights and run by onnxruntime; PyTorch's own model is
the reference (its eager forward with a ``DynamicCache``, and ``generate``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.unit.textgen_replica import tiny_decoder, tiny_model


def prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in (1, 9, 4, 17, 6)]


def test_the_graph_matches_pytorch_step_by_step_alone_and_batched() -> None:
    from rayrelay_workloads.textgen.decoding import Sampling, TorchDecoder, generate_ids, onnx_decoder
    from rayrelay_workloads.textgen.export import stepwise_logits, torch_greedy
    from rayrelay_workloads.textgen.inplace import InplaceDecoder

    model, _, _ = tiny_model()
    session, _ = tiny_decoder("inplace")
    decoder = onnx_decoder(session, 0)
    assert isinstance(decoder, InplaceDecoder)
    rows = prompts(int(model.config.vocab_size))
    reference = torch_greedy(model, rows, 10, None)
    worst = 0.0
    for prompt, tokens in zip(rows, reference, strict=True):
        want = stepwise_logits(TorchDecoder(model, 0), prompt, tokens[:-1])
        got = stepwise_logits(decoder, prompt, tokens[:-1])
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4
    greedy = Sampling(max_new_tokens=10)
    assert [generate_ids(decoder, [p], greedy, None)[0] for p in rows] == reference
    # Right-padded prefill of rows of 1 to 17 tokens, then steps with each row's own length.
    assert generate_ids(decoder, rows, greedy, None) == reference
    full = decoder.full_logits(rows[3])
    assert np.abs(full[-1] - stepwise_logits(TorchDecoder(model, 0), rows[3], [])[0]).max() < 1e-4


def test_the_graph_writes_the_cache_in_place_and_quantises(tmp_path: Path) -> None:
    import onnx

    from rayrelay_workloads.textgen.export import quantize_decoder, session
    from rayrelay_workloads.textgen.inplace import KvSlots

    fp32, _ = tiny_decoder("inplace")
    ops = {n.op_type for n in onnx.load(fp32._model_path).graph.node}
    assert "GroupQueryAttention" in ops and "Concat" not in ops
    quantize_decoder(Path(fp32._model_path), tmp_path / "int8.onnx")
    int8 = session(tmp_path / "int8.onnx", 1)
    assert any(n.op_type == "DynamicQuantizeLinear" for n in onnx.load(tmp_path / "int8.onnx").graph.node)
    slots = KvSlots(int8)
    slots.ensure(2, 8)
    before = [b.ctypes.data for b in slots.buffers]
    logits = slots.run(0, np.array([[5, 6, 7], [8, 0, 0]]), np.array([[0, 1, 2]] * 2), np.array([3, 1]))
    assert logits.shape[:2] == (2, 3) and np.isfinite(logits).all()
    # The keys went into the caller's buffers (no new arrays), each row up to its own length.
    assert [b.ctypes.data for b in slots.buffers] == before
    key = slots.buffers[0]
    assert np.abs(key[0, :, :3]).sum() > 0 and np.abs(key[1, :, :1]).sum() > 0
    slots.move(0, 1, 3)
    assert np.array_equal(key[1, :, :3], key[0, :, :3])


def test_the_batch_keeps_each_rows_tokens_as_rows_join_grow_and_leave() -> None:
    """Rows join a running batch (the buffers grow in rows and length, keeping what they hold)
    and leave at different steps (the rows after them move down a slot): every row writes the
    tokens it writes alone."""
    from rayrelay_workloads.textgen.batching import InplaceBatch, Row
    from rayrelay_workloads.textgen.decoding import Sampling, onnx_decoder

    model, _, _ = tiny_model()
    session, _ = tiny_decoder("inplace")
    decoder = onnx_decoder(session, 0)
    rows = prompts(int(model.config.vocab_size))
    wants = [3, 12, 5, 20, 8]

    def row(i: int, out: list[int]) -> Row:
        def turn(token: int) -> Any:
            out.append(token)
            return SimpleNamespace(finish_reason="length" if len(out) == wants[i] else None)

        return Row(rows[i], Sampling(max_new_tokens=wants[i]), turn, lambda piece: None)

    def alone(i: int) -> list[int]:
        out: list[int] = []
        batch = InplaceBatch(decoder)  # type: ignore[arg-type]
        batch.join([row(i, out)])
        while batch.rows:
            batch.step()
        assert batch.slots.buffers == [], "an empty batch frees its buffers"
        return out

    expected = [alone(i) for i in range(len(rows))]
    got: list[list[int]] = [[] for _ in rows]
    batch = InplaceBatch(decoder)  # type: ignore[arg-type]
    batch.join([row(0, got[0]), row(1, got[1])])
    batch.step()
    small = (batch.slots.capacity, batch.slots.length)
    batch.join([row(3, got[3]), row(2, got[2]), row(4, got[4])])  # longer: the buffers grow
    assert (batch.slots.capacity, batch.slots.length) > small
    while batch.rows:
        batch.step()
    assert got == expected


def test_only_gpt2_models_get_the_graph() -> None:
    from rayrelay_workloads.textgen.inplace import build_inplace_decoder, supports

    model, _, _ = tiny_model()
    assert supports(model.config) is None
    assert "llama" in str(supports(SimpleNamespace(model_type="llama")))
    relu = SimpleNamespace(model_type="gpt2", activation_function="relu")
    assert "activation" in str(supports(relu))
    with pytest.raises(ValueError, match="activation 'relu'"):
        build_inplace_decoder(SimpleNamespace(config=relu), Path("/nonexistent/x.onnx"))
