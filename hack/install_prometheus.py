"""Install the prometheus and promtool binaries into a virtualenv's bin/ folder.

The monitoring tests (tests/unit/test_monitoring.py, tests/cluster/test_prometheus_scrape.py)
run a real Prometheus server and promtool. They come from Debian bookworm's ``prometheus``
package, pinned by version and sha256: ``apt-get download`` fetches the .deb into a cache
folder without installing anything (no root, no prompt; it needs only apt's package lists),
and ``dpkg-deb -x`` unpacks the two binaries (static Go programs linked against libc only).

Where apt is missing or the package cannot be had, this prints why and exits 0: the tests
that need the binaries skip with that reason, and every check that needs neither (the
chart rendered with helm, the rules' metric names against what the code exports) still runs.

Usage: python hack/install_prometheus.py .venv/bin
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"
SHA256 = {"amd64": "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55"}
BINARIES = ("prometheus", "promtool")
# Why the binaries are missing, for the tests' skip message.
MISSING_NOTE = ".prometheus-missing"


def _arch() -> str:
    out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(cache: Path, arch: str) -> Path:
    """The pinned .deb, from the cache or downloaded into it; checked against its sha256."""
    deb = cache / f"{PACKAGE}_{VERSION.replace(':', '%3a')}_{arch}.deb"
    if not deb.exists():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["apt-get", "download", f"{PACKAGE}={VERSION}"],
            cwd=cache,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not deb.exists():
            raise RuntimeError(f"apt-get download {PACKAGE}={VERSION} failed: {proc.stderr.strip()[-300:]}")
    got = _sha256(deb)
    if got != SHA256[arch]:
        deb.unlink()
        raise RuntimeError(f"{deb.name}: sha256 {got}, expected {SHA256[arch]}")
    return deb


def install(bin_dir: Path, cache: Path) -> str | None:
    """Install both binaries; None when done, else why not."""
    if all((bin_dir / b).exists() for b in BINARIES):
        return None
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        return "apt-get / dpkg-deb not found (Debian's prometheus package is the pinned source)"
    try:
        arch = _arch()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"dpkg --print-architecture failed: {exc}"
    if arch not in SHA256:
        return f"no pinned {PACKAGE} package for architecture {arch}"
    try:
        deb = _fetch(cache, arch)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True, capture_output=True)
        for name in BINARIES:
            dest = bin_dir / name
            shutil.copyfile(Path(tmp) / "usr" / "bin" / name, dest)
            dest.chmod(0o755)
            print(f"install_prometheus: installed {dest} ({PACKAGE} {VERSION})")
    return None


def main(bin_dir: str) -> int:
    target = Path(bin_dir)
    target.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rayrelay" / "debs"
    note = target.parent / MISSING_NOTE
    reason = install(target, cache)
    if reason is None:
        note.unlink(missing_ok=True)
        return 0
    note.write_text(reason + "\n")
    print(f"install_prometheus: not installed: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
