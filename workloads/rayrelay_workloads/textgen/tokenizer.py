"""The text-generation replica's tokenizer without importing transformers (a cold start's largest cost).

``textgen.serving`` calls its tokenizer in few ways: ``tok(prompt, add_special_tokens=False)``
and, for the plain chat template, ``split_special_tokens=True`` as well (control tokens in a
message encoded as text); ``decode(ids, skip_special_tokens=True)`` and ``backend_tokenizer``
(``decoding.TextStream``); ``pad_token_id``, ``eos_token_id`` and ``chat_template``. A
transformers fast tokenizer does each of these by calling the artifact set's
``tokenizer.json``, a ``tokenizers.Tokenizer``. :class:`LightTextTokenizer` calls that very
object and reads the special tokens from ``tokenizer_config.json``, without importing
transformers, which took seconds of every replica start (docs/textgen.md, "Cold start").

:func:`light_text_tokenizer` gives one only where it is known to write what transformers
writes (``tests/unit/test_textgen_light_tokenizer.py`` compares them): a ``tokenizer.json``
whose class is transformers' generic fast tokenizer (``PreTrainedTokenizerFast``,
``TokenizersBackend``: a class of its own may rebuild the pipeline from its config), no chat
template (``apply_chat_template`` with ``sanitize_control_tokens`` is transformers'), and no
``clean_up_tokenization_spaces``. GPT-2's own class (``GPT2Tokenizer``, as transformers 5
saves GPT-2-style models; ``GPT2TokenizerFast`` before) rebuilds its pipeline from the
vocabulary and merges: a byte-level BPE, no normalizer, a ByteLevel pre-tokenizer and decoder,
no template. Where ``tokenizer.json`` is that very pipeline (:func:`is_gpt2_pipeline`), it gives
the same ids and is run as it is too. Otherwise it returns None and the replica loads
transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# transformers' generic fast tokenizer classes: they run tokenizer.json as it is.
GENERIC_CLASSES = frozenset({"PreTrainedTokenizerFast", "TokenizersBackend"})
# GPT-2's tokenizer classes: they rebuild tokenizer.json's pipeline (see is_gpt2_pipeline).
GPT2_CLASSES = frozenset({"GPT2Tokenizer", "GPT2TokenizerFast"})
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class LightTextTokenizer:
    """A ``tokenizers.Tokenizer`` called the way ``textgen.serving`` calls a transformers one.

    Not thread-safe (``split_special_tokens`` sets the tokenizer's ``encode_special_tokens``
    for one call): the engine calls it under its tokenizer lock, as it does transformers'."""

    chat_template: str | None = None
    clean_up_tokenization_spaces = False

    def __init__(self, tokenizer: Any, pad_token_id: int | None, eos_token_id: int | None) -> None:
        tokenizer.no_truncation()  # transformers' __call__ neither truncates nor pads by default
        tokenizer.no_padding()
        self.backend_tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

    def __call__(
        self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False
    ) -> dict[str, list[int]]:
        tok = self.backend_tokenizer
        tok.encode_special_tokens = split_special_tokens
        try:
            ids = tok.encode(text, add_special_tokens=add_special_tokens).ids
        finally:
            tok.encode_special_tokens = False
        return {"input_ids": list(ids)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text: str = self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))


def _token(config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def is_gpt2_pipeline(pipeline: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether ``tokenizer.json`` (``pipeline``) is what transformers' ``GPT2Tokenizer`` builds from
    its vocabulary and merges with this ``tokenizer_config.json``: a plain byte-level BPE
    (no dropout, affixes, unknown-fusing or byte fallback), no normalizer, a ByteLevel
    pre-tokenizer with GPT-2's split pattern and no prefix space, a ByteLevel decoder, nothing
    added around the ids (no template post-processor, no ``add_bos_token``/``add_eos_token``)."""
    if any(config.get(key) for key in ("add_prefix_space", "add_bos_token", "add_eos_token")):
        return False
    model = pipeline.get("model") or {}
    pre = pipeline.get("pre_tokenizer") or {}
    post = pipeline.get("post_processor")
    return (
        pipeline.get("normalizer") is None
        and model.get("type") == "BPE"
        and model.get("dropout") is None
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("fuse_unk")
        and not model.get("byte_fallback")
        and not model.get("ignore_merges")
        and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space")
        and pre.get("use_regex", True) is True
        and (pipeline.get("decoder") or {}).get("type") == "ByteLevel"
        and (post is None or post.get("type") == "ByteLevel" or _adds_nothing(post))
    )


def _adds_nothing(post: dict[str, Any]) -> bool:
    """A template post-processor that puts nothing around a sequence (transformers 5 writes one
    for GPT-2's class: ``single`` = the sequence alone, no special tokens)."""
    return (
        post.get("type") == "TemplateProcessing"
        and not post.get("special_tokens")
        and [list(piece) for piece in post.get("single") or []] == [["Sequence"]]
    )


def light_text_tokenizer(folder: str | Path) -> LightTextTokenizer | None:
    """The folder's tokenizer as a :class:`LightTextTokenizer`, or None where transformers must load it."""
    folder = Path(folder)
    path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not path.is_file() or any((folder / name).exists() for name in CHAT_TEMPLATE_FILES):
        return None
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if not isinstance(config, dict) or config.get("chat_template"):
        return None
    if config.get("clean_up_tokenization_spaces"):
        return None
    cls = config.get("tokenizer_class")
    if cls in GPT2_CLASSES:
        if not is_gpt2_pipeline(json.loads(path.read_text()), config):
            return None
    elif cls not in GENERIC_CLASSES:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    pad, eos = _token(config, "pad_token"), _token(config, "eos_token")
    pad_id = tokenizer.token_to_id(pad) if pad else None
    eos_id = tokenizer.token_to_id(eos) if eos else None
    return LightTextTokenizer(tokenizer, pad_id, eos_id)
