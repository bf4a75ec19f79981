"""Build the shipped pairs files from the shipped support tickets (``examples/data/``).

``python -m rayrelay_workloads.embedding.make_pairs`` writes
``examples/data/embedding-train.jsonl`` and ``embedding-validation.jsonl``. The tickets
are written from a few dozen problems ("my account got locked after N attempts"), each
wrapped in greetings, details and sign-offs and naming various items, days and amounts.
Two tickets about the same problem make a pair (anchor, positive): finding the other
ticket about the same problem is the retrieval task (duplicate-ticket search). Half of
the training rows carry a hard negative: a ticket of the same label about another
problem. Validation holds one pair per problem, so each anchor has exactly one right
answer among the validation positives (recall@1 is well defined). Deterministic (seeded).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

SEED = 27
TRAIN_PAIRS = 640
NEGATIVE_SHARE = 0.5
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\.\.\.\s*")
_GREETING = re.compile(
    r"^(hi support,?|hi,|hello team,|good morning,|quick question:|urgent:|sorry to bother you again,|"
    r"hey there\.?|hoping you can help\.?)\s*"
)
_ITEMS = re.compile(
    r"desk lamp|phone case|headphones|jacket|coffee machine|birthday present|set of knives|pair of shoes|"
    r"backpack|subscription box|monitor|order"
)
_DAY = re.compile(
    r"(on |until |since )(monday|tuesday|wednesday|thursday|friday|saturday|sunday|last week|the n\w*)"
)
_MONEY = re.compile(r"(eur|£|\$)\s?n\.n")
FILLER_MIN_COUNT = 40  # a sentence in this many tickets is a wrapper, not a problem


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _norm(sentence: str) -> str:
    return re.sub(r"\d+", "n", sentence.lower()).rstrip(".!? ")


def fillers(texts: list[str]) -> set[str]:
    counts: dict[str, int] = defaultdict(int)
    for text in texts:
        for s in sentences(text):
            counts[_norm(s)] += 1
    return {s for s, n in counts.items() if n >= FILLER_MIN_COUNT}


def problem_of(text: str, filler: set[str]) -> str:
    """The ticket's problem with its wrapper, items, days and amounts taken out."""
    parts = []
    for s in sentences(text):
        s = _GREETING.sub("", _norm(s))
        for f in sorted(filler, key=len, reverse=True):
            s = s.replace(f, "")
        s = _DAY.sub(r"\1DAY", _MONEY.sub("MONEY", _ITEMS.sub("ITEM", s))).strip(" ,.!?")
        if s and not s.startswith("i ordered it on"):
            parts.append(s)
    return " | ".join(parts)


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def groups(rows: list[dict[str, str]], filler: set[str]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        out[problem_of(row["text"], filler)].append(row)
    return {k: v for k, v in out.items() if k and len({r["text"] for r in v}) >= 2}


def train_pairs(by_problem: dict[str, list[dict[str, str]]], rng: random.Random) -> list[dict[str, str]]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, rows in by_problem.items():
        by_label[rows[0]["label"]].append(key)
    pairs = []
    for key in sorted(by_problem):
        rows = list(by_problem[key])
        rng.shuffle(rows)
        for a, b in zip(rows[0::2], rows[1::2], strict=False):
            if a["text"] != b["text"]:
                pairs.append((key, a, b))
    rng.shuffle(pairs)
    out = []
    for key, a, b in pairs[:TRAIN_PAIRS]:
        row = {"anchor": a["text"], "positive": b["text"]}
        others = [k for k in by_label[a["label"]] if k != key]
        if others and rng.random() < NEGATIVE_SHARE:
            row["negative"] = rng.choice(by_problem[rng.choice(others)])["text"]
        out.append(row)
    return out


def validation_pairs(by_problem: dict[str, list[dict[str, str]]], rng: random.Random) -> list[dict[str, str]]:
    out = []
    for key in sorted(by_problem):
        texts = sorted({r["text"] for r in by_problem[key]})
        a, b = rng.sample(texts, 2)
        out.append({"anchor": a, "positive": b})
    rng.shuffle(out)
    return out


def build(data_dir: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    train, validation = read(data_dir / "train.jsonl"), read(data_dir / "validation.jsonl")
    filler = fillers([r["text"] for r in train + validation])
    rng = random.Random(SEED)
    return (
        train_pairs(groups(train, filler), rng),
        validation_pairs(groups(validation, filler), rng),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="examples/data", help="folder of train.jsonl and validation.jsonl")
    args = parser.parse_args(argv)
    data_dir = Path(args.data)
    train, validation = build(data_dir)
    for name, rows in (("embedding-train.jsonl", train), ("embedding-validation.jsonl", validation)):
        (data_dir / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"{data_dir / name}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
