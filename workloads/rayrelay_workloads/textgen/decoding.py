"""Token-by-token decoding with a KV cache, on the exported ONNX decoder or on PyTorch.

The exported graph (``textgen.export``) takes ``input_ids``, ``attention_mask``
(over past + new tokens), ``position_ids`` and one ``past_key_values.{i}.key`` /
``.value`` per layer, shaped (batch, heads, past, head size), and returns
``logits`` plus the ``present.{i}.key`` / ``.value`` to feed back. The first
call (prefill) passes an empty past (length 0) and the whole prompt; every
later call passes only the new token, so the prefix is never recomputed.

For GPT-2 models the export writes the in-place graph instead
(``textgen.inplace``, its ``InplaceDecoder``); :func:`onnx_decoder` picks the
decoder from the graph's inputs.

:class:`OnnxDecoder` runs the generic graph; :class:`TorchDecoder` runs the same
steps on the PyTorch model (the reference of the parity checks and the bench).
:func:`decode` is the loop both share: greedy when ``temperature`` is 0, else
temperature + nucleus (``top_p``) sampling from a seeded generator; it yields
each token as soon as it is chosen (streaming sends it before the next one is
computed) and stops at EOS, at ``max_new_tokens`` or when the caller stops
iterating. Batches are left-padded, so every row's next token sits in the last
column.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rayrelay_workloads.textgen.inplace import InplaceDecoder, is_inplace


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


class StepModel(Protocol):
    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray: ...

    def step(self, tokens: np.ndarray) -> np.ndarray: ...


def left_pad(batch: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of ``batch``, padded on the left to the longest row."""
    width = max(len(row) for row in batch)
    ids = np.full((len(batch), width), pad, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for i, row in enumerate(batch):
        if row:
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
    return ids, mask


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


class OnnxDecoder:
    """The exported decoder in onnxruntime: one session, the cache held between calls."""

    def __init__(self, session: Any, pad_id: int) -> None:
        self.session = session
        self.pad_id = pad_id
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = sorted(
            (n for n in inputs if n.startswith("past_key_values.")),
            key=lambda n: (int(n.split(".")[1]), n.split(".")[2] != "key"),
        )
        if not self.past_names or "input_ids" not in inputs:
            raise ValueError("the ONNX model is not a decoder with past_key_values inputs")
        shape = inputs[self.past_names[0]].shape  # (batch, heads, past, head_size)
        self.heads, self.head_size = int(shape[1]), int(shape[3])
        self.output_names = [o.name for o in session.get_outputs()]
        self.past: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)
        self.next_pos = np.zeros((0, 1), dtype=np.int64)

    def _run(self, ids: np.ndarray, pos: np.ndarray) -> np.ndarray:
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": self.mask, "position_ids": pos}
        feed.update(zip(self.past_names, self.past, strict=True))
        outs = self.session.run(self.output_names, feed)
        self.past = list(outs[1:])
        logits: np.ndarray = outs[0][:, -1, :]
        return logits

    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        ids, self.mask = left_pad(batch, self.pad_id)
        empty = np.zeros((len(batch), self.heads, 0, self.head_size), dtype=np.float32)
        self.past = [empty] * len(self.past_names)
        pos = positions(self.mask)
        self.next_pos = pos[:, -1:] + 1
        return self._run(ids, pos)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), dtype=np.int64)], axis=1)
        pos = self.next_pos
        self.next_pos = pos + 1
        return self._run(tokens.reshape(-1, 1).astype(np.int64), pos)

    def full_logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits of every position of one row (a prefill on an empty past; the cache is left as it is)."""
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([list(ids)], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            "position_ids": np.arange(len(ids), dtype=np.int64)[None],
        }
        empty = np.zeros((1, self.heads, 0, self.head_size), dtype=np.float32)
        feed |= {n: empty for n in self.past_names}
        logits: np.ndarray = self.session.run(["logits"], feed)[0][0]
        return logits


def onnx_decoder(session: Any, pad_id: int) -> OnnxDecoder | InplaceDecoder:
    """The decoder that drives ``session``'s graph: the in-place one (``textgen.inplace``) or the
    generic one with past and present caches."""
    if is_inplace(session):
        return InplaceDecoder(session, pad_id)
    return OnnxDecoder(session, pad_id)


class TorchDecoder:
    """The same steps on the PyTorch model (``DynamicCache``): the reference."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.cache: Any = None
        self.mask: Any = None
        self.next_pos: Any = None

    def _run(self, ids: Any, pos: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(
                input_ids=ids,
                attention_mask=self.mask,
                position_ids=pos,
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache = out.past_key_values
        logits: np.ndarray = out.logits[:, -1, :].float().numpy()
        return logits

    def prefill(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        import torch
        from transformers import DynamicCache

        ids, mask = left_pad(batch, self.pad_id)
        self.mask = torch.from_numpy(mask)
        self.cache = DynamicCache()
        pos = torch.from_numpy(positions(mask))
        self.next_pos = pos[:, -1:] + 1
        return self._run(torch.from_numpy(ids), pos)

    def step(self, tokens: np.ndarray) -> np.ndarray:
        import torch

        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=torch.long)], dim=1)
        pos = self.next_pos
        self.next_pos = pos + 1
        return self._run(torch.from_numpy(tokens.reshape(-1, 1).astype(np.int64)), pos)


def choose(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> np.ndarray:
    """The next token of each row: argmax when greedy, else temperature + top-p sampling."""
    if sampling.temperature <= 0:
        return np.asarray(logits.argmax(axis=-1), dtype=np.int64)
    scaled = logits.astype(np.float64) / sampling.temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.empty(len(probs), dtype=np.int64)
    for i, row in enumerate(probs):
        order = np.argsort(-row, kind="stable")
        sorted_p = row[order]
        keep = (
            int(np.searchsorted(np.cumsum(sorted_p), sampling.top_p) + 1) if sampling.top_p < 1 else len(row)
        )
        kept = sorted_p[:keep] / sorted_p[:keep].sum()
        out[i] = order[rng.choice(keep, p=kept)]
    return out


def decode(
    model: StepModel, prompts: Sequence[Sequence[int]], sampling: Sampling, eos_id: int | None
) -> Iterator[np.ndarray]:
    """Yield the next token of every row, step by step (rows that ended yield ``eos_id`` again).

    Ends when every row emitted EOS or ``max_new_tokens`` were produced.
    """
    rng = np.random.default_rng(sampling.seed)
    logits = model.prefill(prompts)
    done = np.zeros(len(prompts), dtype=bool)
    for produced in range(sampling.max_new_tokens):
        tokens = choose(logits, sampling, rng)
        if eos_id is not None:
            tokens = np.where(done, eos_id, tokens)
            done |= tokens == eos_id
        yield tokens
        if done.all() or produced + 1 == sampling.max_new_tokens:
            return
        logits = model.step(tokens)


def generate_ids(
    model: StepModel, prompts: Sequence[Sequence[int]], sampling: Sampling, eos_id: int | None
) -> list[list[int]]:
    """Every row's new tokens (up to and including its EOS)."""
    rows: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    for tokens in decode(model, prompts, sampling, eos_id):
        for i, token in enumerate(tokens.tolist()):
            if not ended[i]:
                rows[i].append(int(token))
                ended[i] = eos_id is not None and token == eos_id
    return rows


class TextStream:
    """Incremental detokenisation: the new text of each token, holding back half a character.

    A fast tokenizer (``backend_tokenizer``) decodes through ``tokenizers``' own
    ``DecodeStream``, which keeps its place in the text and so does constant work per token
    (about 7 us here, against 50 us for decoding the whole text again at 64 tokens); it
    writes the same text (``tests/unit/test_textgen_stream_text.py``). Any other tokenizer,
    or one that cleans up spaces after decoding, decodes the whole text each time and sends
    what grew.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.stream: Any = None
        if self.backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=True)

    def push(self, token: int) -> str:
        if self.stream is not None:
            return self.stream.step(self.backend, token) or ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
