"""What a run's curves and checks say: diverged, stalled, and the checks' findings.

    v = loss_verdict(losses)          # v.diverged, v.stalled, v.start, v.end, v.first, ...
    kinds = check_findings(passed_history, finding_history)   # {step: ("bug", None), ...}

Pure functions of numbers and dicts (no MLflow), so the rules are tested directly. The loss
curve is judged here; a gradient check is judged only by the engine (``gradwatch.check``),
whose finding is read back as it was logged, never re-derived from the probes.

Loss verdicts are judged on a smoothed curve, because per-batch losses are noisy: the run is
cut into tenths (at least one step each) and each tenth is represented by its median.
``start`` is the first tenth's median and ``end`` the last one's.

``diverged``
    A non-finite loss at any step; or the smoothed curve, after its best tenth, rose to more
    than :data:`DIVERGENCE_FACTOR` times that best *and* ended above where it started; or
    the last few steps all sit that far above the best (an explosion in the final tenth); or
    the loss blew up ten-fold over its best and the smoothed end stayed above the first
    loss by more than the noise (a network that died after one step too large).
``stalled``
    Not diverged, and ``start - end`` is within the noise: at most the larger of
    :data:`STALL_TOLERANCE` × ``|start|`` and three standard errors of the difference of the
    two medians (the per-step noise estimated from successive differences). A flat run with noisy batches is stalled; one that learns is
    not, however noisy its batches.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradwatch.schema import CHECK_FINDINGS, float_or_nan, from_mlflow_value

__all__ = [
    "DIVERGENCE_FACTOR",
    "STALL_TOLERANCE",
    "LossVerdict",
    "check_findings",
    "clip_bound",
    "is_finite",
    "loss_verdict",
]

#: The smoothed loss above this multiple of its best (and above the start) counts as diverged.
DIVERGENCE_FACTOR = 10.0
#: Relative improvement of the end over the start below which a run is "stalled" (at least).
STALL_TOLERANCE = 0.01
#: Standard errors of the start-end difference a real improvement must exceed.
STALL_SIGMAS = 3.0
#: Consecutive final steps that, all far above the best, make an explosion at the very end.
TAIL_STEPS = 5
_FLOAT_MAX = 1.7976931348623157e308


def is_finite(value: float | None) -> bool:
    """True for a real, finite number that is not MLflow's stand-in for infinity."""
    return value is not None and math.isfinite(value) and abs(value) < _FLOAT_MAX


@dataclass(frozen=True)
class LossVerdict:
    """The loss curve in a few numbers; ``start``/``end`` are the smoothed levels."""

    first: float | None = None
    final: float | None = None
    best: float | None = None
    start: float | None = None
    end: float | None = None
    diverged: bool = False
    stalled: bool = False


def _tenths(values: Sequence[float]) -> list[list[float]]:
    n = len(values)
    parts = min(10, n)
    return [list(values[i * n // parts : (i + 1) * n // parts]) for i in range(parts)]


def _batch_noise(values: Sequence[float]) -> float:
    """The step-to-step noise (a standard deviation), robust to spikes and to the trend.

    From the median absolute deviation of successive differences: a trend shifts the
    differences only a little, where it would inflate the spread of the values themselves.
    """
    if len(values) < 3:
        return 0.0
    diffs = [b - a for a, b in zip(values, values[1:])]
    mid = statistics.median(diffs)
    return 1.4826 * statistics.median(abs(d - mid) for d in diffs) / math.sqrt(2)


def loss_verdict(losses: Sequence[float]) -> LossVerdict:
    """Judge a loss curve (values in step order); see the module docstring.

    loss_verdict([1.0, 0.5, 80.0]).diverged is True
    """
    if not losses:
        return LossVerdict()
    values = [from_mlflow_value(v) for v in losses]
    first, final = values[0], values[-1]
    finite = [v for v in values if math.isfinite(v)]
    best = min(finite) if finite else None
    if len(finite) < len(values):
        return LossVerdict(first, final, best, diverged=True)
    tenths = _tenths(values)
    levels = [statistics.median(t) for t in tenths]
    start, end = levels[0], levels[-1]
    low = min(levels)
    # Standard error of a median of w values: 1.2533 sigma / sqrt(w); two of them differ.
    sigma = _batch_noise(values)
    noise = STALL_SIGMAS * math.sqrt(2) * 1.2533 * sigma / math.sqrt(len(tenths[0]))
    diverged = low > 0 and (
        _rose(levels, low) or _exploded_at_end(values, low, start) or _blew_up(values, end, noise)
    )
    margin = max(STALL_TOLERANCE * abs(start), noise)
    stalled = not diverged and len(values) > 1 and (start - end) <= margin
    return LossVerdict(first, final, best, start, end, diverged, stalled)


def _rose(levels: Sequence[float], low: float) -> bool:
    """The smoothed curve climbed far above its best and ended above its start."""
    peak_after = max(levels[levels.index(low) :])
    return levels[-1] > levels[0] and peak_after > DIVERGENCE_FACTOR * low


def _exploded_at_end(values: Sequence[float], low: float, start: float) -> bool:
    """The last few steps all sit far above the best (too late for the tenths to show it)."""
    tail = values[-TAIL_STEPS:]
    return len(values) > TAIL_STEPS and all(v > DIVERGENCE_FACTOR * low and v > start for v in tail)


def _blew_up(values: Sequence[float], end: float, noise: float) -> bool:
    """Blew up, then settled above the initial loss: a net that died (ReLUs that never fire
    again) after a step too large. Too short-lived for the tenths, so judged on the values:
    a peak after the best step above ten times it, and an end level above the first loss."""
    best = min(values)
    peak_after = max(values[values.index(best) :])
    return best > 0 and peak_after > DIVERGENCE_FACTOR * best and end > values[0] + noise


# ------------------------------------------------------------------------ checks


def clip_bound(check: Mapping[str, Any]) -> float | None:
    """The bound ``c`` of a check whose engine gave probes the ``clipped`` verdict, else None.

    clip_bound(record) == 5.0
    """
    for tensor in (check.get("per_param") or {}).values():
        if not isinstance(tensor, Mapping):
            continue
        for probe in tensor.get("coords") or ():
            if isinstance(probe, Mapping) and probe.get("verdict") == "clipped":
                value = float_or_nan(probe.get("analytic"))
                return abs(value) if math.isfinite(value) else None
    return None


def check_findings(
    passed: Sequence[Any], findings: Sequence[Any], scales: Sequence[Any] = ()
) -> dict[int, tuple[str, float | None]]:
    """``{step: (kind, factor)}`` of a run's checks, as the engine logged them.

        check_findings(history["gradcheck/passed"], history["gradcheck/finding"])

    Each argument is a metric history (objects with ``step`` and ``value``). The kind is the
    engine's ``gradcheck/finding`` (an index into ``CHECK_FINDINGS``); a check logged before
    that metric existed is ``passed`` or ``bug`` by ``gradcheck/passed`` (``factor`` when it
    logged ``gradcheck/scale``). Nothing is judged again here: these are the engine's words.
    """
    kinds = {m.step: _finding_kind(m.value) for m in findings}
    factors = {m.step: m.value for m in scales if is_finite(m.value)}
    out: dict[int, tuple[str, float | None]] = {}
    for m in passed:
        kind = kinds.get(m.step)
        if kind is None:
            kind = "passed" if m.value >= 0.5 else ("factor" if m.step in factors else "bug")
        out[m.step] = (kind, factors.get(m.step) if kind == "factor" else None)
    return out


def _finding_kind(value: float) -> str | None:
    index = int(value) if is_finite(value) and value == int(value) else -1
    return CHECK_FINDINGS[index] if 0 <= index < len(CHECK_FINDINGS) else None
