"""Continuous (iteration-level) batching of decode steps for one text-generation replica.

``textgen.serving`` turns each request into a :class:`Row` (its prompt, its own
sampling parameters and seeded generator, and a ``turn`` function that makes a
:class:`Piece` of each chosen token: detokenising, stop sequences, EOS,
``max_tokens``). Rows then run here:

- :class:`DecodeBatch` holds the rows decoding together and their one KV
  cache over the exported decoder (``textgen.export``'s graph:
  ``attention_mask`` over past + new and ``position_ids`` are inputs, which is
  what batching rows of different lengths needs). Rows are right-aligned:
  each row's cache ends in the last column and is padded on the left with
  masked zeros, so one step feeds every row's last token and each row keeps
  its own positions. Joining rows are prefilled together (left-padded) and
  their cache is merged in; leaving rows are cut out and the columns no row
  uses any more are trimmed, so the cache is always
  ``rows x the longest row's length``.
- :class:`InplaceBatch` does the same on the in-place decoder
  (``textgen.inplace``, what the export writes for GPT-2): each row has a
  slot of cache buffers the graph writes into, and its own length, so
  nothing is padded, masked or copied per step (:func:`batch_for` picks the
  batch from the decoder).
- :class:`Scheduler` runs one decode loop per replica on its own thread
  (onnxruntime releases the GIL, so the event loop keeps streaming): at each
  step boundary it drops cancelled rows (a client gone), admits waiting rows
  in arrival order while the caps allow (``spec.generation.maxBatchSize``
  rows, ``maxCachedTokens`` cache positions reserved as ``rows x the largest
  prompt + max_tokens``), prefills them, then runs one step for all rows.
  Each token is handed to its row's ``emit`` as soon as it is chosen. Waiting
  rows beyond ``maxQueuedRequests`` are refused (:class:`QueueFull`, a 429).

Nothing here knows HTTP or Serve; the server posts pieces to its event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayrelay_workloads.textgen.decoding import OnnxDecoder, Sampling, choose, left_pad, positions
from rayrelay_workloads.textgen.inplace import InplaceDecoder, KvSlots, right_pad

log = logging.getLogger("ray.serve")


@dataclass
class Piece:
    """One step of a generation: the token, the text it adds (maybe ""), and why it ended."""

    token: int | None
    text: str
    finish_reason: str | None = None


@dataclass(eq=False)
class Row:
    """One request in (or waiting for) the batch."""

    prompt: Sequence[int]
    sampling: Sampling
    turn: Callable[[int], Piece]  # token -> the piece to send (finish_reason set at the end)
    emit: Callable[[Piece | BaseException], None]  # called on the decode thread
    rng: np.random.Generator = field(init=False)
    last: int = 0  # the token fed at the next step
    pos: int = 0  # its position id
    produced: int = 0
    cancelled: bool = False
    done: bool = False
    # perf_counter times for the replica's metrics: queued (made), first and latest token chosen.
    queued_at: float = field(init=False)
    first_at: float = 0.0
    last_at: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.sampling.seed)
        self.queued_at = time.perf_counter()

    @property
    def reserve(self) -> int:
        """The most cache positions this row can need: prompt + max_tokens."""
        return len(self.prompt) + self.sampling.max_new_tokens

    def take(self, logits: np.ndarray) -> None:
        """Choose this row's next token from its logits row and emit its piece."""
        token = int(choose(logits[None], self.sampling, self.rng)[0])
        self.produced += 1
        self.last_at = time.perf_counter()
        if self.produced == 1:
            self.first_at = self.last_at
        piece = self.turn(token)
        self.last, self.pos = token, self.pos + 1
        self.done = piece.finish_reason is not None
        self.emit(piece)


class DecodeBatch:
    """The rows decoding together and their KV cache (right-aligned, masked left padding)."""

    def __init__(self, decoder: OnnxDecoder) -> None:
        self.session = decoder.session
        self.pad_id = decoder.pad_id
        self.past_names = decoder.past_names
        self.output_names = decoder.output_names
        self.heads, self.head_size = decoder.heads, decoder.head_size
        self.rows: list[Row] = []
        self.past: list[np.ndarray] = []
        self.mask = np.zeros((0, 0), dtype=np.int64)

    @property
    def cached_tokens(self) -> int:
        """Cache positions held now, padding included (rows x width)."""
        return int(self.mask.size)

    @property
    def width(self) -> int:
        """The longest row's cached length."""
        return int(self.mask.shape[1])

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[np.ndarray]) -> Any:
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
        feed.update(zip(self.past_names, past, strict=True))
        return self.session.run(self.output_names, feed)

    def join(self, rows: list[Row]) -> None:
        """Prefill ``rows`` together, emit each one's first token, merge the unfinished into the batch."""
        ids, mask = left_pad([r.prompt for r in rows], self.pad_id)
        empty = np.zeros((len(rows), self.heads, 0, self.head_size), dtype=np.float32)
        outs = self._run(ids, mask, positions(mask), [empty] * len(self.past_names))
        for i, row in enumerate(rows):
            row.pos = len(row.prompt) - 1
            row.take(outs[0][i, -1])
        keep = [i for i, row in enumerate(rows) if not row.done]
        if not keep:
            return
        self._merge([rows[i] for i in keep], mask[keep], [p[keep] for p in outs[1:]])

    def _merge(self, rows: list[Row], mask: np.ndarray, past: list[np.ndarray]) -> None:
        if not self.rows:
            self.rows, self.mask, self.past = rows, mask, past
            self._trim()
            return
        width = max(self.mask.shape[1], mask.shape[1])
        old = _pad_left(self.mask, self.past, width)
        new = _pad_left(mask, past, width)
        self.mask = np.concatenate([old[0], new[0]], axis=0)
        self.past = [np.concatenate([a, b], axis=0) for a, b in zip(old[1], new[1], strict=True)]
        self.rows = self.rows + rows
        self._trim()

    def step(self) -> None:
        """One decode step of every row: feed its last token, choose and emit the next."""
        if not self.rows:
            return
        ids = np.array([[r.last] for r in self.rows], dtype=np.int64)
        pos = np.array([[r.pos] for r in self.rows], dtype=np.int64)
        self.mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
        outs = self._run(ids, self.mask, pos, self.past)
        self.past = list(outs[1:])
        for i, row in enumerate(self.rows):
            row.take(outs[0][i, -1])
        self.drop()

    def drop(self) -> None:
        """Cut out rows that ended or were cancelled, and the columns no remaining row uses."""
        keep = [i for i, r in enumerate(self.rows) if not (r.done or r.cancelled)]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.past, self.mask = [], np.zeros((0, 0), dtype=np.int64)
            return
        self.mask = self.mask[keep]
        self.past = [p[keep] for p in self.past]
        self._trim()

    def _trim(self) -> None:
        # Rows are right-aligned, so the columns no row uses lead; cutting them keeps the cache
        # at rows x the longest row, which is what admission reserves against.
        first = int(self.mask.any(axis=0).argmax())
        if first:
            self.mask = self.mask[:, first:]
            self.past = [p[:, :, first:, :] for p in self.past]

    def fail(self, exc: BaseException) -> None:
        """A step failed: every row gets the error and the batch empties."""
        for row in self.rows:
            row.done = True
            row.emit(exc)
        self.drop()


class InplaceBatch:
    """The rows decoding together on the in-place decoder (``textgen.inplace``): row i is slot i.

    Joining rows are prefilled together into the slots after the running ones (right-padded,
    each with its own length); a step feeds every row's last token and the graph writes each
    row's new key/value at the row's own length. A leaving row's slot is filled by moving the
    rows after it down (only their cached positions are copied), so the running rows always sit
    in slots 0 .. n-1 and one graph call serves them all. The buffers are freed when the batch
    empties."""

    def __init__(self, decoder: InplaceDecoder) -> None:
        self.pad_id = decoder.pad_id
        self.slots = KvSlots(decoder.session)
        self.rows: list[Row] = []
        self.lengths: list[int] = []  # each row's cached positions

    @property
    def width(self) -> int:
        """The longest row's cached length."""
        return max(self.lengths, default=0)

    @property
    def cached_tokens(self) -> int:
        """Cache positions held now, counted as the generic batch does (rows x the longest row)."""
        return len(self.rows) * self.width

    def join(self, rows: list[Row]) -> None:
        """Prefill ``rows`` together, emit each one's first token, keep the unfinished in the batch."""
        start = len(self.rows)
        ids, pos, lengths = right_pad([r.prompt for r in rows], self.pad_id)
        reserve = max(r.reserve for r in [*self.rows, *rows])
        self.slots.ensure(start + len(rows), max(reserve, ids.shape[1]))
        logits = self.slots.run(start, ids, pos, lengths)
        self.rows = self.rows + rows
        self.lengths = self.lengths + [int(n) for n in lengths]
        for i, row in enumerate(rows):
            row.pos = len(row.prompt) - 1
            row.take(logits[i, int(lengths[i]) - 1])
        self.drop()

    def step(self) -> None:
        """One decode step of every row: feed its last token, choose and emit the next."""
        if not self.rows:
            return
        ids = np.array([[r.last] for r in self.rows], dtype=np.int64)
        pos = np.array([[r.pos] for r in self.rows], dtype=np.int64)
        after = np.array(self.lengths, dtype=np.int64) + 1
        self.slots.ensure(len(self.rows), int(after.max()))
        logits = self.slots.run(0, ids, pos, after)
        self.lengths = [int(n) for n in after]
        for i, row in enumerate(self.rows):
            row.take(logits[i, -1])
        self.drop()

    def drop(self) -> None:
        """Cut out rows that ended or were cancelled; the rows after them move down a slot."""
        keep = [i for i, r in enumerate(self.rows) if not (r.done or r.cancelled)]
        if len(keep) == len(self.rows):
            return
        for dst, src in enumerate(keep):
            if src != dst:  # keep is increasing, so src's slot is never overwritten before it moves
                self.slots.move(src, dst, self.lengths[src])
        self.rows = [self.rows[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not self.rows:
            self.slots.clear()

    def fail(self, exc: BaseException) -> None:
        """A step failed: every row gets the error and the batch empties."""
        for row in self.rows:
            row.done = True
            row.emit(exc)
        self.drop()


def batch_for(decoder: OnnxDecoder | InplaceDecoder) -> DecodeBatch | InplaceBatch:
    """The batch that drives ``decoder``'s graph."""
    if isinstance(decoder, InplaceDecoder):
        return InplaceBatch(decoder)
    return DecodeBatch(decoder)


def _pad_left(mask: np.ndarray, past: list[np.ndarray], width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    extra = width - mask.shape[1]
    if extra == 0:
        return mask, past
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    return mask, [np.pad(p, ((0, 0), (0, 0), (extra, 0), (0, 0))) for p in past]


@dataclass(frozen=True)
class Caps:
    """``spec.generation``'s bounds on one replica's batch."""

    max_batch_size: int
    max_cached_tokens: int
    max_queued_requests: int


class QueueFull(Exception):
    """The replica's queue holds ``maxQueuedRequests`` already: the request is refused (429)."""


@dataclass
class Stats:
    steps: int = 0
    admitted: int = 0
    cancelled: int = 0
    peak_rows: int = 0
    peak_cached_tokens: int = 0


class Scheduler:
    """One decode loop per replica, on its own thread; rows join and leave at step boundaries."""

    def __init__(self, decoder: OnnxDecoder | InplaceDecoder, caps: Caps) -> None:
        self.batch = batch_for(decoder)
        self.caps = caps
        self.cond = threading.Condition()
        self.waiting: deque[Row] = deque()
        self.stats = Stats()
        self.thread: threading.Thread | None = None

    def check_room(self) -> None:
        """Raise :class:`QueueFull` when a new request would find the queue full."""
        with self.cond:
            if len(self.waiting) >= self.caps.max_queued_requests and self._busy():
                raise QueueFull(
                    f"the replica is busy: {len(self.waiting)} requests wait already "
                    f"(spec.generation.maxQueuedRequests: {self.caps.max_queued_requests}); retry later"
                )

    def _busy(self) -> bool:
        return len(self.batch.rows) >= self.caps.max_batch_size or bool(self.waiting)

    def submit(self, row: Row) -> None:
        """Queue ``row``; it joins the batch at the next step boundary it fits in."""
        with self.cond:
            self.waiting.append(row)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="textgen-decode", daemon=True)
                self.thread.start()
            self.cond.notify()

    def cancel(self, row: Row) -> None:
        """The client is gone: a waiting row leaves now, a running one at the next step boundary."""
        with self.cond:
            if row.done or row.cancelled:
                return
            row.cancelled = True
            self.stats.cancelled += 1
            if row in self.waiting:
                self.waiting.remove(row)

    def queued(self) -> int:
        with self.cond:
            return len(self.waiting)

    def running(self) -> int:
        return len(self.batch.rows)

    def _admit(self) -> list[Row]:
        """Waiting rows that fit now, in arrival order (the head blocks those behind it)."""
        rows = len(self.batch.rows)
        widest = max((r.reserve for r in self.batch.rows), default=0)
        out: list[Row] = []
        while self.waiting and rows < self.caps.max_batch_size:
            wide = max(widest, self.waiting[0].reserve)
            if (rows + 1) * wide > self.caps.max_cached_tokens:
                break
            out.append(self.waiting.popleft())
            rows, widest = rows + 1, wide
        return out

    def _next_joiners(self) -> list[Row]:
        """Block until there is work; drop cancelled rows; the rows that join now."""
        with self.cond:
            while True:
                self.batch.drop()
                joiners = self._admit()
                if joiners or self.batch.rows:
                    return joiners
                self.cond.wait()

    def _loop(self) -> None:
        while True:
            joiners = self._next_joiners()
            try:
                # No lock around the model: submit() and cancel() (the event loop) never wait for a step.
                if joiners:
                    self.stats.admitted += len(joiners)
                    self.batch.join(joiners)
                self._note()
                self.batch.step()
                self.stats.steps += 1
            except Exception as exc:  # the model failed: every request in the batch gets a 500
                log.exception("text-generation decode step failed")
                for row in joiners:
                    if not row.done:
                        row.done = True
                        row.emit(exc)
                self.batch.fail(exc)

    def _note(self) -> None:
        """Peaks of the step about to run (its cache is one column wider than now)."""
        rows = len(self.batch.rows)
        self.stats.peak_rows = max(self.stats.peak_rows, rows)
        held = rows * (self.batch.width + 1) if rows else 0
        self.stats.peak_cached_tokens = max(self.stats.peak_cached_tokens, held)
