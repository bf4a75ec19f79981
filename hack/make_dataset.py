"""Generate the small labelled dataset that rayrelay ships in ``examples/data/``.

Customer-support messages of an online shop, four classes (``billing``,
``delivery``, ``technical``, ``account``). Texts are composed from many openers,
situations, details and closings so that phrasing and vocabulary vary and no
single keyword decides the class: words such as "order", "app", "card" or
"email" occur in several classes. The generator is deterministic (seeded), so
re-running it reproduces the committed files byte for byte.

The training pipeline (``rayrelay_workloads``), its tests and the quickstart
examples read these files; MiniLM reaches >= 0.85 validation accuracy on them in
one epoch.

Usage: python hack/make_dataset.py [--out examples/data] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OPENERS = [
    "",
    "Hi,",
    "Hello team,",
    "Hey there.",
    "Good morning,",
    "Quick question:",
    "Not happy right now.",
    "Hoping you can help.",
    "Sorry to bother you again,",
    "This is my third message about this.",
    "Hi support,",
    "Urgent:",
]

CLOSINGS = [
    "",
    "Thanks.",
    "Please sort this out.",
    "Can someone get back to me today?",
    "Any help appreciated.",
    "What should I do?",
    "Thanks in advance!",
    "I expect a quick reply.",
    "Let me know.",
    "Cheers",
]

THINGS = [
    "order",
    "jacket",
    "headphones",
    "coffee machine",
    "pair of shoes",
    "phone case",
    "desk lamp",
    "birthday present",
    "subscription box",
    "set of knives",
    "backpack",
    "monitor",
]

# Situations per class; {thing}, {n}, {day} and {amount} are filled in below.
SITUATIONS: dict[str, list[str]] = {
    "billing": [
        "I was charged twice for my {thing}",
        "my card shows a payment of {amount} that I don't recognise",
        "the refund for the {thing} I returned still hasn't reached my account",
        "the invoice for my {thing} has the wrong VAT number on it",
        "you billed me {amount} but the price at checkout was lower",
        "my discount code was accepted but the total didn't change",
        "I cancelled the {thing} and was still charged",
        "the monthly fee went up without any notice",
        "there's a pending authorisation of {amount} that never went away",
        "can I get a receipt for the {thing}, my accountant needs it",
        "the payment failed but the money left my bank anyway",
        "I paid with a gift card and the balance is wrong now",
        "why is there a {amount} fee on my statement from you",
        "I'd like to split the cost of the {thing} across two cards",
        "the refund came back as store credit instead of to my card",
        "I was promised a price match and never got the difference of {amount}",
    ],
    "delivery": [
        "my {thing} was supposed to arrive on {day} and it's still not here",
        "the tracking for my {thing} hasn't updated in {n} days",
        "the courier says delivered but there is nothing at my door",
        "the box arrived crushed and the {thing} inside is broken",
        "I got someone else's parcel instead of my {thing}",
        "can I change the delivery address for the {thing} I ordered",
        "the driver left the {thing} out in the rain",
        "half of my order arrived, the {thing} is missing",
        "it's been {n} days and the {thing} hasn't even shipped",
        "is express shipping possible to an island address",
        "the parcel is stuck at customs, what do I need to do",
        "the pickup point closed and my {thing} was sent back",
        "can you hold the {thing} until {day}, I'm away",
        "the wrong size {thing} turned up at my place",
        "the estimated arrival keeps moving later every day",
        "the package was handed to a neighbour I don't know",
    ],
    "technical": [
        "the app crashes every time I open my {thing} in the order history",
        "the checkout page freezes when I press pay",
        "I can't add the {thing} to my basket, the button does nothing",
        "the website shows an error 500 since {day}",
        "the search returns nothing even for products I know you sell",
        "pictures don't load on the product page of the {thing}",
        "the app logs me out every {n} minutes",
        "notifications from the app arrive {n} times each",
        "the size chart page is blank on my phone",
        "the page keeps reloading after I enter my postcode",
        "the barcode scanner in the app doesn't recognise anything",
        "the {thing} page says out of stock on the app but in stock on the site",
        "after the latest update the app won't start at all",
        "the live chat window is stuck on connecting",
        "videos on the product page of the {thing} won't play",
        "the filters reset every time I scroll down",
    ],
    "account": [
        "I can't log in, it says my password is wrong though I just reset it",
        "please delete my account and all my data",
        "I never received the email to verify my account",
        "someone changed the email on my account without my permission",
        "how do I change the phone number on my profile",
        "my loyalty points from the {thing} disappeared from my account",
        "I want to merge my two accounts into one",
        "the two-factor code never arrives by text",
        "my account got locked after {n} attempts",
        "please unsubscribe me from all newsletters",
        "I'd like to change my username",
        "can I transfer my membership to my partner",
        "I want a copy of the personal data you hold on me",
        "the saved addresses on my profile keep disappearing",
        "my student discount verification expired, how do I renew it",
        "I forgot which email I used to sign up",
    ],
}

# Extra details that add shared vocabulary across classes (so no single word decides).
DETAILS = [
    "",
    "",
    "",
    "Order number {num}.",
    "I ordered it on {day}.",
    "I use the app on an Android phone.",
    "I paid by card.",
    "My email is the same as always.",
    "This is for a gift.",
    "I've been a customer for {n} years.",
    "I already tried twice.",
    "I'm using the website on a laptop.",
]

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "the 12th", "last week"]
LABELS = sorted(SITUATIONS)


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        thing=rng.choice(THINGS),
        n=rng.randint(2, 9),
        day=rng.choice(DAYS),
        amount=f"{rng.choice(['$', 'EUR ', '£'])}{rng.randint(5, 400)}.{rng.randint(0, 99):02d}",
        num=f"#{rng.randint(100000, 999999)}",
    )


def _style(text: str, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return text.lower()
    if roll < 0.2:
        return text.replace(",", "").replace(".", "")
    return text


def make_row(label: str, rng: random.Random) -> dict[str, str]:
    situation = _fill(rng.choice(SITUATIONS[label]), rng)
    situation = situation[0].upper() + situation[1:] + rng.choice([".", ".", "!", "?", "..."])
    parts = [rng.choice(OPENERS), situation, _fill(rng.choice(DETAILS), rng), rng.choice(CLOSINGS)]
    if rng.random() < 0.3:
        # Detail before the situation sometimes, as people write.
        parts[1], parts[2] = parts[2], parts[1]
    text = " ".join(p for p in parts if p)
    return {"text": _style(text, rng), "label": label}


def make_split(n: int, rng: random.Random) -> list[dict[str, str]]:
    rows = [make_row(LABELS[i % len(LABELS)], rng) for i in range(n)]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/data")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--validation", type=int, default=600)
    args = parser.parse_args(argv)
    out = Path(args.out)
    # Separate generators: changing the size of one split never changes the other.
    write_jsonl(out / "train.jsonl", make_split(args.train, random.Random(args.seed)))
    write_jsonl(out / "validation.jsonl", make_split(args.validation, random.Random(args.seed + 1)))
    print(f"wrote {args.train} + {args.validation} rows to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
