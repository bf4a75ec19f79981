"""Incremental detokenisation of a stream (``textgen.decoding.TextStream``, issue 25).

The streamed pieces of any token sequence must join into the text the tokenizer decodes
from the whole sequence at once, whether ``TextStream`` goes through ``tokenizers``'
``DecodeStream`` (a fast tokenizer) or decodes the whole text each time (any other; a
wrapper without ``backend_tokenizer`` stands in for a slow tokenizer here). The tokenizer
is the byte-level BPE of the tiny test model, so random ids split multi-byte characters.
"""

from __future__ import annotations

import random
from typing import Any

from textgen_replica import tiny_decoder

from rayrelay_workloads.textgen.decoding import TextStream


class SlowTokenizer:
    """The same tokenizer seen without ``backend_tokenizer``: the decode-everything path."""

    def __init__(self, inner: Any) -> None:
        self.decode = inner.decode


def streamed(tokenizer: Any, ids: list[int]) -> tuple[str, bool]:
    stream = TextStream(tokenizer)
    return "".join(stream.push(i) for i in ids), stream.stream is not None


def test_streamed_pieces_join_into_the_whole_decoded_text() -> None:
    _, tokenizer = tiny_decoder()
    rng = random.Random(25)
    text = "Où est ma commande ? 🙂 Das Paket kam nicht an — ¿por qué? 注文はどこ"
    samples = [tokenizer(text, add_special_tokens=False)["input_ids"]]
    samples += [[rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 48))] for _ in range(300)]
    for ids in samples:
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        fast, used_stream = streamed(tokenizer, ids)
        slow, used_slow = streamed(SlowTokenizer(tokenizer), ids)
        assert used_stream and not used_slow
        # A sequence may end inside a character: both paths hold its bytes back.
        expected = whole[:-1] if whole.endswith("\ufffd") else whole
        assert fast == slow, ids
        assert expected.startswith(fast) and (fast == expected or whole.endswith("\ufffd")), ids
    assert streamed(tokenizer, samples[0])[0] == text
