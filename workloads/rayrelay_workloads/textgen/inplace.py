"""A GPT-2 decoder whose key/value cache is written in place, and the code that drives it.

The generic export (``textgen.export.export_decoder``) takes the past keys and values as
inputs and returns past + the new position as new outputs: every decode step reads and
writes every row's whole cache (a ``Concat`` per layer and per key/value). At 8 rows and
256 cached positions that copy was half of a step's time, and it grows with rows x length,
which is why 8 streams made only ~2.8x the tokens/s of one (docs/performance.md).

For GPT-2 models (``supports``) the export instead writes the graph here, built from the
model's weights with onnxruntime's ``GroupQueryAttention`` (com.microsoft) as the attention
of each layer:

- inputs: ``input_ids`` and ``position_ids`` (rows x new tokens), ``seqlens_k`` (int32, per
  row: its cached length after this call, minus one), ``total_sequence_length`` (int32
  scalar: the largest of those lengths), and one buffer per layer and key/value,
  ``past_key_values.{i}.key`` / ``.value``, shaped (rows, heads, buffer length, head size);
- outputs: ``logits`` and ``present.{i}.key`` / ``.value``. Bound to the same memory as the
  buffers (onnxruntime's IO binding), the attention writes only the new positions into
  them: nothing is copied, and each row keeps its own length, so rows of different lengths
  need no padding or mask. A prefill passes the prompts right-padded (``seqlens_k`` marks
  where each ends); padding's keys land past a row's length and are overwritten later.

:class:`KvSlots` holds those buffers, one slot per row, and runs the graph on a range of
slots. :class:`InplaceDecoder` is the ``StepModel`` of the export checks;
``textgen.batching.InplaceBatch`` is the replica's batch. Both are chosen from the graph's
inputs (:func:`is_inplace`), so a decoder published before this graph existed is still
served by the generic path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GELU_OPS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu": "Gelu"}
LENGTH_STEP = 64  # buffer lengths grow in steps of this many positions


def supports(config: Any) -> str | None:
    """None when this graph can stand for the model, else why not (the generic export is used)."""
    if getattr(config, "model_type", None) != "gpt2":
        return f"model type {getattr(config, 'model_type', None)!r} is not gpt2"
    if getattr(config, "activation_function", None) not in GELU_OPS:
        return f"activation {config.activation_function!r}"
    if not getattr(config, "scale_attn_weights", True) or getattr(
        config, "scale_attn_by_inverse_layer_idx", False
    ):
        return "attention scaling other than 1/sqrt(head size)"
    if getattr(config, "add_cross_attention", False):
        return "cross attention"
    return None


def is_inplace(session: Any) -> bool:
    """Whether an onnxruntime session runs this module's graph (it takes ``seqlens_k``)."""
    return any(i.name == "seqlens_k" for i in session.get_inputs())


def build_inplace_decoder(model: Any, path: Path) -> None:
    """Write the in-place decoder of a GPT-2 ``model`` (``GPT2LMHeadModel``) to ``path``."""
    import onnx
    from onnx import helper

    why = supports(model.config)
    if why is not None:
        raise ValueError(f"the in-place decoder does not support this model: {why}")
    g = _Graph(model)
    x = g.node("Add", [g.embedding("wte", "input_ids"), g.embedding("wpe", "position_ids")], "h_in")
    for i in range(g.layers):
        x = g.block(i, x)
    x = g.norm(x, "transformer.ln_f", "ln_f")
    head = g.weights.get("lm_head.weight", g.weights["transformer.wte.weight"])
    g.node("MatMul", [x, g.init("lm_head_t", head.T)], "logits")
    proto = helper.make_model(
        g.graph(),
        ir_version=10,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="rayrelay",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))


class _Graph:
    """The nodes and weights of the in-place graph as they are added (``build_inplace_decoder``)."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        self.cfg = cfg
        self.layers, self.heads, self.width = int(cfg.n_layer), int(cfg.n_head), int(cfg.n_embd)
        self.head_size = self.width // self.heads
        self.weights = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
        self.inits: list[Any] = []
        self.nodes: list[Any] = []

    def init(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def weight(self, name: str) -> str:
        return self.init(name, self.weights[name])

    def node(self, op: str, inputs: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], name=out, domain=domain, **attrs))
        return out

    def embedding(self, table: str, ids: str) -> str:
        return self.node(
            "Gather", [self.init(table, self.weights[f"transformer.{table}.weight"]), ids], f"{table}_out"
        )

    def linear(self, x: str, prefix: str, out: str) -> str:
        # GPT-2's Conv1D keeps its weight as (in, out): x @ W + b.
        mm = self.node("MatMul", [x, self.weight(f"{prefix}.weight")], f"{out}_mm")
        return self.node("Add", [mm, self.weight(f"{prefix}.bias")], out)

    def norm(self, x: str, prefix: str, out: str) -> str:
        scale, bias = self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")
        eps = float(self.cfg.layer_norm_epsilon)
        return self.node("LayerNormalization", [x, scale, bias], out, axis=-1, epsilon=eps)

    def block(self, i: int, x: str) -> str:
        """Layer ``i``: attention over the cache buffers, then the MLP, each with its residual."""
        from onnx import helper

        p = f"transformer.h.{i}"
        qkv = self.linear(self.norm(x, f"{p}.ln_1", f"l{i}_ln1"), f"{p}.attn.c_attn", f"l{i}_qkv")
        split = self.init(f"l{i}_split", np.array([self.width] * 3, dtype=np.int64))
        self.nodes.append(helper.make_node("Split", [qkv, split], [f"l{i}_q", f"l{i}_k", f"l{i}_v"], axis=-1))
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        self.nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [f"l{i}_q", f"l{i}_k", f"l{i}_v", *past, "seqlens_k", "total_sequence_length"],
                [f"l{i}_att", f"present.{i}.key", f"present.{i}.value"],
                name=f"l{i}_gqa",
                domain="com.microsoft",
                num_heads=self.heads,
                kv_num_heads=self.heads,
                scale=1.0 / math.sqrt(self.head_size),
            )
        )
        x = self.node("Add", [x, self.linear(f"l{i}_att", f"{p}.attn.c_proj", f"l{i}_o")], f"l{i}_res1")
        m = self.linear(self.norm(x, f"{p}.ln_2", f"l{i}_ln2"), f"{p}.mlp.c_fc", f"l{i}_fc")
        m = self.node(GELU_OPS[self.cfg.activation_function], [m], f"l{i}_gelu", domain="com.microsoft")
        return self.node("Add", [x, self.linear(m, f"{p}.mlp.c_proj", f"l{i}_mlp")], f"l{i}_res2")

    def graph(self) -> Any:
        """The graph with its inputs and outputs (see the module docstring)."""
        from onnx import TensorProto, helper

        f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
        buf: list[str | int | None] = ["batch", self.heads, "buffer", self.head_size]
        caches = [(i, kv) for i in range(self.layers) for kv in ("key", "value")]
        inputs = [
            helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
            helper.make_tensor_value_info("position_ids", i64, ["batch", "sequence"]),
            helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
            helper.make_tensor_value_info("total_sequence_length", i32, []),
        ] + [helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", f32, buf) for i, kv in caches]
        vocab = int(self.cfg.vocab_size)
        outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "sequence", vocab])]
        outputs += [helper.make_tensor_value_info(f"present.{i}.{kv}", f32, buf) for i, kv in caches]
        # Shape inference stops at com.microsoft ops; their outputs' types let the int8
        # quantiser (which needs every MatMul input's type) go on past them.
        hidden = [f"l{i}_{op}" for i in range(self.layers) for op in ("att", "gelu")]
        known = [helper.make_tensor_value_info(n, f32, None) for n in hidden]
        return helper.make_graph(
            self.nodes, "rayrelay_inplace_decoder", inputs, outputs, self.inits, value_info=known
        )


class KvSlots:
    """The decoder's key/value buffers, one slot (row) each, and the graph run over a slot range.

    Buffers grow (copying what they hold) when more slots or a longer length is needed, and are
    dropped by :meth:`clear`; the graph writes into them in place."""

    def __init__(self, session: Any) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.session = session
        past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
        self.past_names = sorted(
            (i.name for i in past), key=lambda n: (int(n.split(".")[1]), n.split(".")[2] != "key")
        )
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        shape = past[0].shape
        self.heads, self.head_size = int(shape[1]), int(shape[3])
        self.buffers: list[np.ndarray] = []
        self.capacity = self.length = 0

    def ensure(self, rows: int, length: int) -> None:
        """Room for ``rows`` slots of ``length`` positions; what the slots hold is kept."""
        if rows <= self.capacity and length <= self.length:
            return
        new_rows = max(rows, self.capacity)  # exactly what is asked: never past the batch's cap
        new_len = max(self.length, -(-length // LENGTH_STEP) * LENGTH_STEP)
        fresh = []
        for i in range(len(self.past_names)):
            buf = np.zeros((new_rows, self.heads, new_len, self.head_size), dtype=np.float32)
            if self.buffers:
                buf[: self.capacity, :, : self.length] = self.buffers[i]
            fresh.append(buf)
        self.buffers, self.capacity, self.length = fresh, new_rows, new_len

    def clear(self) -> None:
        self.buffers, self.capacity, self.length = [], 0, 0

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src``'s first ``length`` positions into slot ``dst``."""
        for buf in self.buffers:
            buf[dst, :, :length] = buf[src, :, :length]

    def run(self, start: int, ids: np.ndarray, pos: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Run the graph on slots ``start .. start + len(ids)``: ``lengths`` is each row's cached
        length after the call. The logits of every position given (rows x new tokens x vocab)."""
        rows = len(ids)
        io = self.session.io_binding()
        io.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        io.bind_cpu_input("position_ids", np.ascontiguousarray(pos, dtype=np.int64))
        io.bind_cpu_input("seqlens_k", (np.asarray(lengths) - 1).astype(np.int32))
        io.bind_cpu_input("total_sequence_length", np.array(int(np.max(lengths)), dtype=np.int32))
        io.bind_output("logits", "cpu")  # first: get_outputs() answers in the order bound
        for past, present, buf in zip(self.past_names, self.present_names, self.buffers, strict=True):
            value = self._ort.OrtValue.ortvalue_from_numpy(buf[start : start + rows])
            io.bind_ortvalue_input(past, value)
            io.bind_ortvalue_output(present, value)
        self.session.run_with_iobinding(io)
        logits: np.ndarray = io.get_outputs()[0].numpy()
        return logits


def right_pad(batch: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, position_ids, lengths) of ``batch`` padded on the right to the longest row."""
    lengths = np.array([len(row) for row in batch], dtype=np.int64)
    width = int(lengths.max())
    ids = np.full((len(batch), width), pad, dtype=np.int64)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = row
    pos = np.broadcast_to(np.arange(width, dtype=np.int64), ids.shape)
    return ids, pos, lengths


class InplaceDecoder:
    """The in-place graph as a ``StepModel`` (prefill, then one token per row per step)."""

    def __init__(self, session: Any, pad_id: int) -> None:
        self.session = session
        self.pad_id = pad_id
        self.slots = KvSlots(session)
        self.past_names = self.slots.past_names
        self.heads, self.head_size = self.slots.heads, self.slots.head_size
        self.lengths = np.zeros(0, dtype=np.int64)

    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, pos, self.lengths = right_pad(batch, self.pad_id)
        self.slots.clear()
        self.slots.ensure(len(batch), ids.shape[1] + 1)
        logits = self.slots.run(0, ids, pos, self.lengths)
        return logits[np.arange(len(batch)), self.lengths - 1]

    def step(self, tokens: np.ndarray) -> np.ndarray:
        pos = self.lengths.reshape(-1, 1)
        self.lengths = self.lengths + 1
        self.slots.ensure(len(tokens), int(self.lengths.max()))
        return self.slots.run(0, tokens.reshape(-1, 1), pos, self.lengths)[:, -1]

    def full_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of one row (a prefill; the cache is left as it is)."""
        slots = KvSlots(self.session)
        slots.ensure(1, len(ids))
        arr = np.array([list(ids)], dtype=np.int64)
        return slots.run(0, arr, np.arange(len(ids), dtype=np.int64)[None], np.array([len(ids)]))[0]
