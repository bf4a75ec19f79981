"""No credentials in the tree: every file git tracks is scanned for secrets' shapes.

Part of ``make test`` (issue 12): AWS access keys, private keys, bearer tokens and
kubeconfig tokens have recognisable shapes. moto's throwaway ``testing`` keys and
the envtest control plane's loopback token are not secrets and do not match.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?(?!testing\b|\.\.\.)[A-Za-z0-9/+=]{40}\b"
    ),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |)PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "JWT (e.g. a ServiceAccount token)": re.compile(
        r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    ),
    "Slack token": re.compile(r"\bxox[baprs]-[A-Za-z0-9-]{10,}"),
}


def find_secrets(text: str) -> list[str]:
    return [name for name, pattern in PATTERNS.items() if pattern.search(text)]


def tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name]


def test_the_patterns_find_what_they_are_for() -> None:
    # Built from parts so that this file itself holds no match.
    samples = {
        "AWS access key id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS secret access key": "AWS_SECRET_ACCESS_KEY=" + "a1B2" * 10,
        "private key": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "GitHub token": "ghp_" + "x" * 36,
        "JWT (e.g. a ServiceAccount token)": "eyJ" + "a" * 12 + ".eyJ" + "b" * 12 + "." + "c" * 12,
    }
    for name, sample in samples.items():
        assert name in find_secrets(f"config: {sample}\n"), name
    assert find_secrets("AWS_SECRET_ACCESS_KEY=testing\nAWS_SECRET_ACCESS_KEY=...\n") == []


def test_no_tracked_file_holds_a_secret() -> None:
    found = []
    for path in tracked_files():
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(REPO)}: {name}" for name in find_secrets(text)]
    assert not found, "secrets in the tree:\n" + "\n".join(found)
