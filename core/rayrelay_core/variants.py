"""Which model variant a replica serves: the hardware-aware choice behind ``variant: auto``.

The training job publishes every variant that passed its quality gate
(``runs.Manifest.variants``: ``fp32`` always, ``int8`` when its accuracy drop was
small enough, ``bf16`` when OpenVINO measured it within ``maxBf16AccuracyDrop``)
and recommends one (``recommendedVariant``: int8 when accepted). How fast each runs
depends on the replica's hardware, not the trainer's: dynamic int8 is 2-4x fp32 on
a CPU with VNNI, much less on an AVX2-only one, and does not run on onnxruntime's
CUDA provider at all; on a CPU with AMX, OpenVINO running the fp32 graph in bf16
beats both (:data:`RUNTIMES`: which runtime and precision each variant runs in). So with ``variant: auto`` a replica
(``rayrelay_workloads.serve.model``) times the accepted variants on its own
hardware, a few batches each in turns under a total time budget, and serves the
fastest (the recommended one unless another is clearly faster, :func:`choose`):

- a variant its quality gate rejected is never a candidate;
- a candidate this host cannot run well (``unavailable``: bf16 without OpenVINO in the
  image, or on a CPU without bf16 instructions, where OpenVINO only emulates it) is
  never loaded nor timed, and the reason says so;
- the replica may add serve-time candidates (``extra``, :data:`DERIVED`): another
  runtime running a published variant's own file, with that variant's digest checks
  and quality gate (it has no file nor accuracy of its own). ``fp32-openvino`` is
  OpenVINO running the fp32 graph in fp32, offered only when asked for (it did not beat
  onnxruntime int8 on the AVX-512 VNNI host measured, and costs OpenVINO's import and compile:
  ``docs/operator.md``, "fp32 in OpenVINO");
- a forced variant (``fp32``/``int8``) is served as asked, never timed;
- with a GPU (CUDA provider available and ``resources.gpus`` > 0) the candidates
  are the variants that run there: fp32 only, chosen without timing.

A replica records its timed choice in the node cache's folder of the artifact set
(keyed by instruction set, providers, threads and batch), and a later replica on the
same node with the same settings serves that variant at once instead of timing again
(:func:`from_memo`): a scale-up or a start from zero pays the timing once per node.

The replica exports its choice on ``/metrics`` (``INFO_METRIC`` with the labels
below, ``TIMING_METRIC`` per variant) and the operator reads them back into
``status.model`` (``rayrelay_operator.backends.ray``); :func:`describe` writes the
reason both show. Everything here is pure: the timing source is passed in, so the
choice is tested with a fake one (``tests/unit/test_variant_choice.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from rayrelay_core.runs import Manifest, ManifestError

AUTO = "auto"
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# Variants a replica can time and serve, in order of preference when timings tie.
CPU_VARIANTS = ("int8", "bf16", "fp32", "fp32-openvino")
# onnxruntime's CUDA provider runs no dynamically quantized (int8) graph.
GPU_VARIANTS = ("fp32",)

# The runtime and precision each variant runs in. bf16 has no file of its own: OpenVINO
# reads the fp32 ONNX with a bf16 precision hint (rayrelay_workloads.openvino_runtime).
ONNXRUNTIME, OPENVINO = "onnxruntime", "openvino"
RUNTIMES = {
    "fp32": (ONNXRUNTIME, "fp32"),
    "int8": (ONNXRUNTIME, "int8"),
    "bf16": (OPENVINO, "bf16"),
    "fp32-openvino": (OPENVINO, "fp32"),
}
# Serve-time candidates, in no manifest: the published variant whose file (and digests, and
# quality gate: the numerics are that variant's) each runs. Only a replica that offers one
# (``extra``: asked for, and the runtime is in its image) times it; no spec can force one.
DERIVED = {"fp32-openvino": "fp32"}


def file_variant(variant: str) -> str:
    """The manifest variant whose model file ``variant`` runs (itself, or a derived one's base)."""
    return DERIVED.get(variant, variant)


# The /metrics contract between a replica and the operator.
INFO_METRIC = "rayrelay_variant_info"
INFO_LABELS = (
    "model",
    "replica",
    "requested",
    "variant",
    "isa",
    "provider",
    "batch",
    "timed",
    "runtime",
    "precision",
    "not_timed",
)
# ``timed``: who measured the timings: this replica, an earlier replica on the same node
# (the node memo, below), or nobody (forced, or a lone candidate).
TIMED_HERE, TIMED_ON_NODE, NOT_TIMED = "here", "node", "no"
TIMING_METRIC = "rayrelay_variant_batch_seconds"
TIMING_LABELS = ("model", "replica", "variant")


@dataclass(frozen=True)
class VariantChoice:
    """What a replica serves and why."""

    requested: str  # auto, fp32, int8 or bf16 (the spec)
    variant: str  # what it serves
    isa: str  # the CPU's vector instruction set (rayrelay_workloads.hardware)
    provider: str  # the onnxruntime provider of the replica's onnxruntime sessions
    batch: int = 0  # texts per timing batch (0: not timed)
    timings_s: dict[str, float] = field(default_factory=dict)  # seconds per batch, by variant
    skipped: dict[str, str] = field(default_factory=dict)  # candidates that failed to load or run, and why
    timed: str = NOT_TIMED  # TIMED_HERE, TIMED_ON_NODE or NOT_TIMED
    # The served variant's runtime and the precision it runs in ("" = RUNTIMES' entry); a bf16
    # the CPU only emulates is "bf16-emulated" (rayrelay_workloads.openvino_runtime).
    runtime: str = ""
    precision: str = ""
    # Accepted candidates this host cannot run well, never timed, and why (not failures).
    unavailable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        runtime, precision = RUNTIMES.get(self.variant, (ONNXRUNTIME, self.variant))
        object.__setattr__(self, "runtime", self.runtime or runtime)
        object.__setattr__(self, "precision", self.precision or precision)

    @property
    def reason(self) -> str:
        text = describe(
            self.requested,
            self.variant,
            self.timings_s,
            self.isa,
            self.provider,
            self.batch,
            self.runtime,
            self.precision,
        )
        for name, why in sorted(self.unavailable.items()):
            text += f"; {name} not timed: {why}"
        return text + " (timed by an earlier replica on this node)" if self.timed == TIMED_ON_NODE else text

    def memo(self) -> dict[str, object]:
        """What a later replica on the same node may reuse instead of timing again (:func:`from_memo`)."""
        return {"variant": self.variant, "batch": self.batch, "timingsS": dict(self.timings_s)}


def not_timed_label(unavailable: Mapping[str, str]) -> str:
    """``VariantChoice.unavailable`` as one label value, ``bf16: why; ...`` (:func:`parse_not_timed`)."""
    return "; ".join(f"{name}: {why.replace(';', ',')}" for name, why in sorted(unavailable.items()))


def parse_not_timed(label: str) -> dict[str, str]:
    """The inverse of :func:`not_timed_label`."""
    pairs = (part.split(": ", 1) for part in label.split("; ") if ": " in part)
    return {name: why for name, why in pairs}


def from_memo(
    memo: Mapping[str, object],
    manifest: Manifest,
    isa: str,
    provider: str,
    unavailable: Mapping[str, str] | None = None,
    extra: Collection[str] = (),
) -> VariantChoice | None:
    """An earlier replica's auto choice on this node, or None when it no longer applies here
    (not an auto candidate of this manifest, or not a well-formed record)."""
    variant, batch, timings = memo.get("variant"), memo.get("batch"), memo.get("timingsS")
    if not (isinstance(variant, str) and isinstance(batch, int) and isinstance(timings, dict)):
        return None
    gone = dict(unavailable or {})
    accepted = auto_candidates(manifest, provider == CUDA_PROVIDER, extra)
    candidates = [c for c in accepted if c not in gone]
    if variant not in candidates or len(timings) < 2:
        return None
    seconds = {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}
    not_timed = {k: v for k, v in gone.items() if k in accepted}
    return VariantChoice(
        AUTO, variant, isa, provider, batch, seconds, timed=TIMED_ON_NODE, unavailable=not_timed
    )


def describe(
    requested: str,
    variant: str,
    timings_s: Mapping[str, float],
    isa: str,
    provider: str,
    batch: int,
    runtime: str = ONNXRUNTIME,
    precision: str = "",
) -> str:
    """The reason for people, e.g. ``auto: int8 fastest on avx2 (CPUExecutionProvider), ...``
    or ``auto: bf16 fastest on amx (OpenVINO, bf16), ...``."""
    if runtime == OPENVINO:
        where = f"{isa} (OpenVINO, {precision or variant})"
    else:
        where = f"{isa} ({provider})" if provider != CUDA_PROVIDER else f"the GPU ({provider}, CPU {isa})"
    if requested not in (AUTO, "", None):
        return f"{variant} forced by the spec (not timed); running on {where}"
    if not timings_s:
        why = "int8 does not run on the CUDA provider" if provider == CUDA_PROVIDER else "the only candidate"
        return f"auto: {variant}, {why}; running on {where}"
    ranked = sorted(timings_s.items(), key=lambda kv: kv[1])
    figures = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in ranked)
    return f"auto: {variant} fastest on {where}: {figures} per batch of {batch}"


def auto_candidates(manifest: Manifest, gpu: bool, extra: Collection[str] = ()) -> list[str]:
    """The accepted variants a replica may serve with ``auto``, the recommended one first.

    On a GPU only those that run on the CUDA provider; when none does, the CPU ones.
    ``extra``: the serve-time candidates (:data:`DERIVED`) the replica offers, each a
    candidate on a CPU where the variant whose file it runs is.
    """
    # A manifest lists no serve-time candidate (DERIVED): only a replica offers one.
    servable = [name for name in (GPU_VARIANTS if gpu else CPU_VARIANTS) if name not in DERIVED]
    accepted = [
        name for name, info in manifest.variants.items() if info.accepted and info.file and name in servable
    ]
    if not gpu:
        accepted += [name for name in extra if name in DERIVED and DERIVED[name] in accepted]
    if not accepted and gpu:
        return auto_candidates(manifest, False, extra)
    if not accepted:
        raise ManifestError("no variant of this artifact set passed its quality gate")
    order = CPU_VARIANTS if not gpu else GPU_VARIANTS
    accepted.sort(key=lambda name: (name != manifest.recommended_variant, order.index(name)))
    return accepted


def first_variant(manifest: Manifest, requested: str, gpu: bool) -> str:
    """The variant a replica loads first: the forced one, or auto's first candidate."""
    if requested in (AUTO, "", None):
        return auto_candidates(manifest, gpu)[0]
    return manifest.servable_variant(requested)


def choose(
    manifest: Manifest,
    requested: str,
    load: Callable[[str], object],
    run: Callable[[str], float],
    *,
    isa: str,
    provider: str,
    batch: int,
    rounds: int,
    budget_s: float,
    margin: float = 0.1,
    clock: Callable[[], float] = time.perf_counter,
    unavailable: Mapping[str, str] | None = None,
    extra: Collection[str] = (),
) -> VariantChoice:
    """Time the candidates and pick the fastest: ``load(variant)`` readies one (raising when it
    cannot run), ``run(variant)`` times one batch of it in seconds.

    A forced variant is never loaded nor timed, nor a lone candidate. The loaded candidates
    are timed in turns (one batch each per round, so load from elsewhere on the node slows
    them alike), ``rounds`` rounds or until ``budget_s`` has passed, at least one; each
    variant's time is its fastest batch. The first candidate (the recommended one) is
    kept unless another is faster by more than ``margin`` (a fraction): timings on shared
    cores are noisy, and the recommendation should not flip on noise. A candidate that
    cannot be loaded or run is skipped with the error as its reason, and so is one not
    loaded yet when the budget has passed (loading another runtime is the dearest step).
    ``unavailable``: accepted variants this host cannot run well (name -> why), never
    loaded nor timed. ``extra``: the serve-time candidates the replica offers (:data:`DERIVED`).
    """
    gpu = provider == CUDA_PROVIDER
    if requested not in (AUTO, "", None):
        return VariantChoice(requested, manifest.servable_variant(requested), isa, provider)
    accepted = auto_candidates(manifest, gpu, extra)
    gone = {name: why for name, why in (unavailable or {}).items() if name in accepted}
    candidates = [name for name in accepted if name not in gone]
    if not candidates:
        raise ManifestError(f"no accepted variant of this artifact set runs on this host: {gone}")
    if len(candidates) == 1:
        return VariantChoice(AUTO, candidates[0], isa, provider, unavailable=gone)
    start = clock()
    skipped: dict[str, str] = {}
    ready: list[str] = []
    for name in candidates:
        if ready and clock() - start > budget_s:
            skipped[name] = f"not loaded: the timing budget ({budget_s:g} s) was spent"
            continue
        try:
            load(name)
            ready.append(name)
        except Exception as exc:  # a candidate that cannot run is not chosen; say why
            skipped[name] = _why(exc)
    timings: dict[str, float] = {}
    for _ in range(max(1, rounds)):
        for name in list(ready):
            try:
                seconds = float(run(name))
            except Exception as exc:
                skipped[name] = _why(exc)
                ready.remove(name)
                timings.pop(name, None)
                continue
            timings[name] = min(seconds, timings.get(name, seconds))
        if clock() - start > budget_s:
            break
    if not timings:
        raise ManifestError(f"no variant of this artifact set could be timed: {skipped}")
    first = next(name for name in candidates if name in timings)
    fastest = min(timings, key=lambda name: timings[name])
    best = fastest if timings[fastest] < timings[first] * (1 - margin) else first
    return VariantChoice(AUTO, best, isa, provider, batch, timings, skipped, TIMED_HERE, unavailable=gone)


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
