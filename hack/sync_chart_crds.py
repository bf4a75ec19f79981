"""Copy the generated CRDs from crds/ into the Helm chart, or check that they match.

``crds/*.yaml`` is generated from the core API models (``rayrelay crds``); the
chart ships the same files, byte for byte, in ``charts/rayrelay/crds/`` so that
``helm install`` creates them. ``make chart`` runs this script to copy them;
``make test`` runs it with ``--check``, which exits 1 and names every file
that differs, is missing, or is left over.

The chart's ``crds/`` also holds kopf's own peering CRDs (``kopf.dev_*.yaml``),
which are written by hand and are not this script's business.

Usage: python hack/sync_chart_crds.py [--check] [--root DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SOURCE = Path("crds")
TARGET = Path("charts/rayrelay/crds")
# Files in the chart's crds/ that do not come from crds/ (kept, never compared).
NOT_OURS_PREFIX = "kopf.dev_"


def plan(root: Path) -> tuple[dict[Path, bytes], list[Path]]:
    """Return (chart file -> wanted bytes) for every source CRD, and stale chart files."""
    source, target = root / SOURCE, root / TARGET
    wanted = {target / p.name: p.read_bytes() for p in sorted(source.glob("*.yaml"))}
    stale = [
        p for p in sorted(target.glob("*.yaml")) if p not in wanted and not p.name.startswith(NOT_OURS_PREFIX)
    ]
    return wanted, stale


def check(root: Path) -> list[str]:
    """Messages, one per file that is not in sync; empty when in sync."""
    wanted, stale = plan(root)
    problems = []
    for path, content in wanted.items():
        rel = path.relative_to(root)
        if not path.exists():
            problems.append(f"{rel}: missing (copy of {SOURCE / path.name})")
        elif path.read_bytes() != content:
            problems.append(f"{rel}: differs from {SOURCE / path.name}")
    problems += [f"{p.relative_to(root)}: not in {SOURCE}/ (stale)" for p in stale]
    return problems


def sync(root: Path) -> list[str]:
    """Copy every source CRD into the chart and remove stale ones; return what changed."""
    wanted, stale = plan(root)
    changed = []
    (root / TARGET).mkdir(parents=True, exist_ok=True)
    for path, content in wanted.items():
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed.append(f"wrote {path.relative_to(root)}")
    for path in stale:
        path.unlink()
        changed.append(f"removed {path.relative_to(root)}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the chart's CRDs differ")
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parent.parent, help="repository root"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    if not any((root / SOURCE).glob("*.yaml")):
        print(f"sync_chart_crds: no CRDs in {root / SOURCE} (run `make crds` first)", file=sys.stderr)
        return 1
    if args.check:
        problems = check(root)
        for line in problems:
            print(f"sync_chart_crds: {line}; run `make chart`", file=sys.stderr)
        return 1 if problems else 0
    for line in sync(root):
        print(f"sync_chart_crds: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
