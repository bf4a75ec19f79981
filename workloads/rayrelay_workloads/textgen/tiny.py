"""A tiny GPT-2-style base model, built locally: for tests, the example and the bench.

No hub is reachable on the machines this project is built on, and no weights
are committed, so ``python -m rayrelay_workloads.textgen.tiny OUT [--data FILE]``
writes a ``save_pretrained`` folder holding a randomly initialised GPT-2 (2
layers, a 64-wide embedding by default) and a byte-level BPE tokenizer trained
with the ``tokenizers`` library on the given JSONL text (the shipped
``examples/data/textgen-train.jsonl`` by default). ``model.source`` of a
text-generation TrainingJob can then point at ``OUT``. A real model (a
``save_pretrained`` folder, ``pkg://``, ``s3://`` or a hub id where the hub is
reachable) works the same way.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

DEFAULT_DATA = "examples/data/textgen-train.jsonl"
EOS = "<|endoftext|>"


def texts_of(path: str | Path) -> list[str]:
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(str(row.get("text") or (row.get("prompt", "") + row.get("completion", ""))))
    return out


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> object:
    """A GPT-2-like byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def build_tiny_gpt2(
    out: str | Path,
    data: str | Path = DEFAULT_DATA,
    layers: int = 2,
    width: int = 64,
    heads: int = 2,
    positions: int = 256,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random tiny GPT-2 and its tokenizer to ``out``; returns the folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts_of(data), vocab_size)
    vocab = len(tokenizer)  # type: ignore[arg-type]
    eos = tokenizer.convert_tokens_to_ids(EOS)  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (save_pretrained layout)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="JSONL text to train the tokenizer on")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args(argv)
    folder = build_tiny_gpt2(args.out, args.data, layers=args.layers, width=args.width)
    print(f"tiny GPT-2 written to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
