"""The text-generation replica's tokenizer without transformers (``textgen.tokenizer``, issue 25 §3).

It must write what transformers' tokenizer writes for every call the replica makes, on the
byte-level BPE tokenizer of the tiny test model (saved as ``save_pretrained`` saves it), and
step aside (None: transformers loads it) where it cannot promise that. A fresh interpreter
checks that the replica's serving module and its tokenizer load leave transformers unimported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textgen_replica import REPO, tiny_decoder

from rayrelay_workloads.textgen.decoding import TextStream
from rayrelay_workloads.textgen.tokenizer import LightTextTokenizer, light_text_tokenizer

PROMPTS = [
    "Where is my order?",
    "  two leading spaces and a trailing one ",
    "Où est ma commande ? 🙂 注文はどこ",
    "a control token <|endoftext|> inside, and another<|endoftext|>",
    "System: be brief\nUser: hello\nAssistant:",
    "",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    tiny_decoder()[1].save_pretrained(out)
    return out


def with_config(src: Path, dst: Path, **changes: Any) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.update(changes)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


def gpt2_class_folder(folder: Path, dst: Path, **options: Any) -> Path:
    """The tiny tokenizer saved by transformers' own GPT-2 class (``GPT2Tokenizer``), as
    transformers 5 saves GPT-2-style models: built from tokenizer.json's vocabulary and merges."""
    from transformers import GPT2Tokenizer

    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tokens = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(k)}
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    GPT2Tokenizer(vocab=model["vocab"], merges=merges, **tokens, **options).save_pretrained(dst)
    assert json.loads((dst / "tokenizer_config.json").read_text())["tokenizer_class"] == "GPT2Tokenizer"
    return dst


def test_it_writes_what_transformers_writes(folder: Path) -> None:
    assert_same(folder)


def test_gpt2_class_tokenizers_whose_json_is_that_pipeline_run_light(folder: Path, tmp_path: Path) -> None:
    assert_same(gpt2_class_folder(folder, tmp_path / "gpt2"))


def assert_same(folder: Path) -> None:
    from transformers import AutoTokenizer

    light = light_text_tokenizer(folder)
    full = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(light, LightTextTokenizer)
    assert (light.pad_token_id, light.eos_token_id) == (full.pad_token_id, full.eos_token_id)
    assert light.pad_token_id is not None and len(light) == len(full)
    assert light.chat_template is None and not full.chat_template
    for prompt in PROMPTS:
        for split in (False, True):
            want = full(prompt, add_special_tokens=False, split_special_tokens=split)["input_ids"]
            got = light(prompt, add_special_tokens=False, split_special_tokens=split)["input_ids"]
            assert got == list(want), (prompt, split)
        ids = full(prompt, add_special_tokens=False)["input_ids"]
        assert light.decode(ids, skip_special_tokens=True) == full.decode(ids, skip_special_tokens=True)
        stream_light, stream_full = TextStream(light), TextStream(full)
        assert [stream_light.push(i) for i in ids] == [stream_full.push(i) for i in ids]
    # The control token is one special id unless split (then it is text, several ids).
    eos = light.eos_token_id
    assert eos in light(PROMPTS[3], add_special_tokens=False)["input_ids"]
    assert eos not in light(PROMPTS[3], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert eos in light(PROMPTS[3], add_special_tokens=False)["input_ids"], "split was for one call only"


def test_it_steps_aside_where_transformers_must_load_the_tokenizer(folder: Path, tmp_path: Path) -> None:
    assert (
        light_text_tokenizer(with_config(folder, tmp_path / "chat", chat_template="{{ messages }}")) is None
    )
    jinja = with_config(folder, tmp_path / "jinja")
    (jinja / "chat_template.jinja").write_text("{{ messages }}")
    assert light_text_tokenizer(jinja) is None
    assert (
        light_text_tokenizer(with_config(folder, tmp_path / "cls", tokenizer_class="BertTokenizer")) is None
    )
    # GPT-2's class where tokenizer.json is not the pipeline it rebuilds: a prefix space, a BOS
    # added to every encoding, a normalizer in tokenizer.json.
    gpt2 = gpt2_class_folder(folder, tmp_path / "gpt2")
    assert isinstance(light_text_tokenizer(gpt2), LightTextTokenizer)
    assert light_text_tokenizer(gpt2_class_folder(folder, tmp_path / "prefix", add_prefix_space=True)) is None
    assert light_text_tokenizer(with_config(gpt2, tmp_path / "bos", add_bos_token=True)) is None
    normalized = with_config(gpt2, tmp_path / "norm")
    pipeline = json.loads((normalized / "tokenizer.json").read_text())
    pipeline["normalizer"] = {"type": "NFKC"}
    (normalized / "tokenizer.json").write_text(json.dumps(pipeline))
    assert light_text_tokenizer(normalized) is None
    cleanup = with_config(folder, tmp_path / "clean", clean_up_tokenization_spaces=True)
    assert light_text_tokenizer(cleanup) is None
    bare = with_config(folder, tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    assert light_text_tokenizer(bare) is None


def test_the_replica_loads_its_tokenizer_without_importing_transformers(folder: Path, tmp_path: Path) -> None:
    chat = with_config(folder, tmp_path / "chat", chat_template="{{ messages }}")
    gpt2 = gpt2_class_folder(folder, tmp_path / "gpt2")
    script = (
        "import sys\n"
        "from rayrelay_workloads.textgen.serving import load_text_tokenizer\n"
        f"tok = load_text_tokenizer({str(gpt2)!r})\n"
        "print(type(tok).__name__, 'transformers' in sys.modules)\n"
        f"tok = load_text_tokenizer({str(folder)!r})\n"
        "print(type(tok).__name__, 'transformers' in sys.modules)\n"
        f"tok = load_text_tokenizer({str(chat)!r})\n"
        "print(type(tok).__name__, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    gpt2_class, light, with_template = out.stdout.split("\n")[:3]
    assert gpt2_class == "LightTextTokenizer False", out.stdout
    assert light == "LightTextTokenizer False", out.stdout
    assert with_template.endswith(" True") and not with_template.startswith("Light"), out.stdout
