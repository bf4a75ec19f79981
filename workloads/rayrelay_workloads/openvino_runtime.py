"""The bf16 variant's runtime: OpenVINO reading the published fp32 ONNX with a bf16 precision hint.

On CPUs with bf16 instructions (AMX on Sapphire Rapids and later, AVX-512 BF16)
OpenVINO's CPU plugin runs the exported fp32 graph in bf16 when its
``INFERENCE_PRECISION_HINT`` is ``bf16``; measured on such a host (MiniLM,
8 x 128, 2 threads) it ran 30 ms against onnxruntime int8's 64.5 ms at fp32's
accuracy (``docs/operator.md``, "Which variant a replica serves"). No other file is
published for it: the ``bf16`` variant of a manifest names the fp32 ONNX file, so
its digest checks are fp32's.

Both sides use this module, so what the export measures is what a replica serves:

- ``export.py`` runs the validation set through :class:`OpenVinoSession` (accuracy,
  logit difference; ``quality.bf16_decision`` gates it);
- ``serve/model.py`` creates the served session with it when a replica serves bf16, or
  ``fp32-openvino``: the fp32 file in fp32, a serve-time candidate of ``variant: auto``
  that a replica offers when asked to (:func:`fp32_offered`; ``rayrelay_core.variants``).

Where the CPU has no bf16 instructions, OpenVINO still accepts the hint and *emulates*
bf16 (its compiled model reports ``bfloat16``; measured here on AVX-512 VNNI: the
logits move by bf16 rounding, and a call takes about 20x fp32's time).
:func:`capability` says which of the two runs, so the manifest records what actually
ran and ``variant: auto`` never times an emulated bf16 (``rayrelay_core.variants``).

:class:`OpenVinoSession` answers the part of ``onnxruntime.InferenceSession`` that the
export and the replica call (``run``, ``get_inputs``, ``get_outputs``,
``get_providers``). OpenVINO is imported only here, and only when bf16 is measured or
served; without the package the variant is simply not available.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from dataclasses import dataclass
from typing import Any

RUNTIME = "openvino"
PROVIDER = "OpenVINO:CPU"  # what get_providers() reports, beside onnxruntime's provider names
EMULATED = "bf16-emulated"  # the precision label of a bf16 that the CPU emulates
# Time an emulated bf16 too (tests on hosts without bf16 instructions; never worth it in production).
ALLOW_EMULATED_ENV = "RAYRELAY_BF16_EMULATED"
NO_BF16 = "this CPU has no bf16 instructions (OpenVINO would emulate bf16, about 20x slower than fp32)"
# "1" makes a replica offer fp32-openvino to variant: auto (OpenVINO running fp32's file in
# fp32). Off by default: on the AVX-512 VNNI host measured it did not beat onnxruntime int8 at
# the replica's timing batch, and timing it costs the first replica on a node OpenVINO's import and compile
# (docs/operator.md, "fp32 in OpenVINO").
OPENVINO_FP32_ENV = "RAYRELAY_OPENVINO_FP32"


@dataclass(frozen=True)
class Capability:
    """Whether OpenVINO can run bf16 here, and how."""

    installed: bool
    version: str = ""
    hardware_bf16: bool = False  # "BF16" in the CPU plugin's OPTIMIZATION_CAPABILITIES
    error: str = ""  # why OpenVINO is unusable (not installed, no CPU device)

    @property
    def precision(self) -> str:
        """What a bf16 hint runs here: ``bf16`` on bf16 hardware, else ``bf16-emulated``."""
        return "bf16" if self.hardware_bf16 else EMULATED

    def unavailable(self, allow_emulated: bool | None = None) -> str | None:
        """Why ``variant: auto`` should not time bf16 on this host, or None when it should."""
        if not self.installed:
            return f"OpenVINO is not installed in this image ({self.error})"
        if allow_emulated is None:
            allow_emulated = os.environ.get(ALLOW_EMULATED_ENV, "") == "1"
        if not self.hardware_bf16 and not allow_emulated:
            return NO_BF16
        return None


_capability: Capability | None = None
_lock = threading.Lock()
# The CPU flags (/proc/cpuinfo) behind OpenVINO's BF16 capability on x86.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def serving_unavailable(cpuinfo: str | None = None) -> str | None:
    """:meth:`Capability.unavailable` for a replica, without importing OpenVINO where the CPU
    flags already rule bf16 out (importing it costs a replica's start ~0.4 s)."""
    from rayrelay_workloads.hardware import cpu_flags

    allow_emulated = os.environ.get(ALLOW_EMULATED_ENV, "") == "1"
    if not allow_emulated and not set(BF16_FLAGS) & set(cpu_flags(cpuinfo)):
        return NO_BF16
    return capability().unavailable(allow_emulated)


def serving_key() -> list[object]:
    """What of OpenVINO a replica's node memo of the auto choice depends on."""
    why = serving_unavailable()
    return [why] if why == NO_BF16 else [capability().version, capability().hardware_bf16, why]


def fp32_offered() -> bool:
    """Whether this replica offers ``fp32-openvino`` to ``variant: auto`` (``RAYRELAY_OPENVINO_FP32=1``)."""
    return os.environ.get(OPENVINO_FP32_ENV, "") == "1"


def fp32_unavailable() -> str | None:
    """Why an offered ``fp32-openvino`` cannot be timed here, or None when it can.

    Found without importing OpenVINO (that costs ~0.4 s, paid only when it is timed)."""
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed in this image"
    return None


def installed_version() -> str:
    """OpenVINO's version from its package metadata ("" when absent), without importing it."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return ""


def capability() -> Capability:
    """OpenVINO's presence and the CPU's bf16 support (probed once per process)."""
    global _capability
    with _lock:
        if _capability is None:
            _capability = _probe()
        return _capability


def _probe() -> Capability:
    try:
        import openvino as ov
    except ImportError as exc:
        return Capability(False, error=f"{type(exc).__name__}: {exc}"[:200])
    try:
        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception as exc:  # no CPU plugin: as good as absent
        return Capability(False, str(ov.__version__), error=f"{type(exc).__name__}: {exc}"[:200])
    return Capability(True, str(ov.__version__).split("-")[0], "BF16" in {str(c) for c in caps})


class _Port:
    """An input or output as ``onnxruntime.NodeArg`` shows it (the name is what callers read)."""

    def __init__(self, name: str) -> None:
        self.name = name


class OpenVinoSession:
    """An ONNX model (a path or its bytes) compiled by OpenVINO's CPU plugin at ``precision``.

    ``precision_ran`` is what the compiled model reports (``bf16`` / ``fp32``) and
    ``emulated`` whether the CPU lacks bf16 instructions for it. One infer request, used
    under a lock: the replica calls :meth:`run` from its batch worker and, at start, from
    its timing; OpenVINO's requests are not for concurrent use.
    """

    def __init__(self, model: str | bytes, threads: int, precision: str = "bf16") -> None:
        import openvino as ov

        core = ov.Core()
        read = core.read_model(model=model)
        config = {
            # OpenVINO spells the precisions f32 / bf16 / f16.
            "INFERENCE_PRECISION_HINT": {"fp32": "f32", "fp16": "f16"}.get(precision, precision),
            "INFERENCE_NUM_THREADS": max(1, int(threads)),
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # Replicas share a node's cores with each other and with Serve: no pinning.
            "ENABLE_CPU_PINNING": False,
        }
        self._compiled = core.compile_model(read, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._inputs = [port.any_name for port in self._compiled.inputs]
        self._outputs = [port.any_name for port in self._compiled.outputs]
        self._lock = threading.Lock()
        ran = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.precision_ran = "bf16" if "bf" in ran.lower() else "fp32" if "32" in ran else ran
        cap = capability()
        self.emulated = self.precision_ran == "bf16" and not cap.hardware_bf16
        self.version = cap.version

    @property
    def precision_label(self) -> str:
        """``bf16``, ``bf16-emulated`` or ``fp32``: what runs, for the manifest and /metrics."""
        return EMULATED if self.emulated else self.precision_ran

    def get_inputs(self) -> list[_Port]:
        return [_Port(name) for name in self._inputs]

    def get_outputs(self) -> list[_Port]:
        return [_Port(name) for name in self._outputs]

    def get_providers(self) -> list[str]:
        return [PROVIDER]

    def run(self, output_names: list[str] | None, feeds: dict[str, Any]) -> list[Any]:
        """The outputs named (all when None), as onnxruntime's ``run`` returns them."""
        import numpy as np

        inputs = {name: feeds[name] for name in self._inputs if name in feeds}
        with self._lock:
            self._request.infer(inputs)
            names = output_names or self._outputs
            return [np.array(self._request.get_tensor(name).data, copy=True) for name in names]
