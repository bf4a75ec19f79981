"""The CPU's vector instruction sets, as int8 and fp32 kernels care about them.

onnxruntime's int8 kernels run on VNNI dot products (AVX-512 VNNI, AVX-VNNI) or
AMX tiles when the CPU has them, and fall back to slower AVX2 sequences when
not, so how much int8 gains over fp32 depends on these flags. Serving reports
:func:`instruction_set` next to the variant it chose (``serve/model.py``,
``rayrelay_core.variants``); the benchmarks print the same facts next to their
figures. Read from ``/proc/cpuinfo`` (Linux); elsewhere the flags are unknown.
"""

from __future__ import annotations

import platform
from pathlib import Path

# Flags that matter to the kernels, as /proc/cpuinfo spells them.
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)

# Best first: the name :func:`instruction_set` gives for each flag.
_RANKED = (
    ("amx_int8", "amx"),
    ("amx_tile", "amx"),
    ("avx512_vnni", "avx512_vnni"),
    ("avx_vnni", "avx_vnni"),
    ("avx512f", "avx512"),
    ("avx2", "avx2"),
)


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The :data:`VECTOR_FLAGS` this CPU has (``cpuinfo``: the text of /proc/cpuinfo, read when None)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in VECTOR_FLAGS if flag in present]
    return []


def instruction_set(cpuinfo: str | None = None) -> str:
    """The best of amx, avx512_vnni, avx_vnni, avx512, avx2 this CPU has; else its architecture."""
    flags = set(cpu_flags(cpuinfo))
    for flag, name in _RANKED:
        if flag in flags:
            return name
    return platform.machine().lower() or "unknown"
