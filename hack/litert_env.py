"""Create (or find up to date) the LiteRT converter environment; print its Python.

``litert-torch`` cannot be installed beside the project's pinned ``pydantic``
(its dependencies want pydantic 2.11 and typing_extensions 4.12), so the
converter lives in an environment of its own, next to the Python that runs
this script (``<sys.prefix>/litert``: ``.venv/litert`` for ``make``, the
image's Python prefix in ``workloads/Dockerfile``). It is an overlay: a venv
whose ``site-packages`` holds only ``hack/litert-requirements.txt`` (pinned,
installed with ``--no-deps``) and a ``.pth`` file that appends the base
environment's ``site-packages``, so its own packages are found first and
torch, transformers and numpy come from the base (the same torch that wrote
the program the converter reads). Measured against a full separate venv in
docs/litert.md: 0.86 GB instead of 2.1 GB.

Idempotent: a stamp records the requirements, the base environment and its
torch; when they match, nothing is installed and the script returns at once.
``workloads/rayrelay_workloads/litert.py`` finds the environment at the same
place (or ``RAYRELAY_LITERT_PYTHON``).

``--edge`` builds the other environment the project needs for LiteRT: what a
device runs ``edge_check.py`` with (``hack/edge-requirements.txt``: the LiteRT
interpreter, ``tokenizers``, numpy; a plain venv, no overlay, no torch), at
``<sys.prefix>/litert-edge``.

Usage: python hack/litert_env.py [--edge] [--prefix DIR]   (prints DIR/bin/python)
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("litert-requirements.txt")
EDGE_REQUIREMENTS = Path(__file__).with_name("edge-requirements.txt")
STAMP = ".rayrelay-litert"
# What must import in the environment for it to count as built.
SMOKE = "import litert_torch, ai_edge_litert.interpreter, ai_edge_quantizer, torch, numpy"
EDGE_SMOKE = "import ai_edge_litert.interpreter, tokenizers, numpy"


def base_paths() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def stamp_text(edge: bool) -> str:
    if edge:  # stands alone: only its requirements matter
        return f"edge {hashlib.sha256(EDGE_REQUIREMENTS.read_bytes()).hexdigest()[:16]}\n"
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = "missing"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    return f"requirements {digest}\nbase {' '.join(base_paths())}\ntorch {torch}\n"


def build_edge(prefix: Path) -> None:
    """A plain venv with the edge requirements (resolved by pip: no overlay, nothing shared)."""
    python = prefix / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(EDGE_REQUIREMENTS)], check=True)
    subprocess.run([str(python), "-c", EDGE_SMOKE], check=True)


def build(prefix: Path, edge: bool) -> None:
    started = time.monotonic()
    if prefix.exists():
        shutil.rmtree(prefix)
    subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True)
    python = prefix / "bin" / "python"
    if edge:
        build_edge(prefix)
        (prefix / STAMP).write_text(stamp_text(edge))
        print(f"litert_env: built {prefix} in {time.monotonic() - started:.0f} s", file=sys.stderr)
        return
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Appended to sys.path after the environment's own site-packages: its pins win.
    (Path(own) / "_rayrelay_base.pth").write_text("\n".join(base_paths()) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "-r", str(REQUIREMENTS)],
        check=True,
    )
    subprocess.run([str(python), "-c", SMOKE], check=True)
    (prefix / STAMP).write_text(stamp_text(edge))
    print(f"litert_env: built {prefix} in {time.monotonic() - started:.0f} s", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", type=Path, help="where it lives (default: <sys.prefix>/litert[-edge])")
    parser.add_argument("--edge", action="store_true", help="the edge environment (edge-requirements.txt)")
    args = parser.parse_args(argv)
    prefix: Path = args.prefix or Path(sys.prefix) / ("litert-edge" if args.edge else "litert")
    stamp = prefix / STAMP
    if not (stamp.exists() and stamp.read_text() == stamp_text(args.edge)):
        build(prefix, args.edge)
    print(prefix / "bin" / "python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
