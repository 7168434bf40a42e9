"""Per-tensor training statistics, pure numpy: gradient and parameter norms, update ratios,
non-finite counts, quantiles of |g| and |θ| and the fraction of exactly-zero gradient entries.
The hook computes them every few steps (see ``GradWatch(stats_every=)``).

    stats = tensor_stats({"W1": W1}, {"W1": dW1})   # {"W1": TensorStats(...)}
    stats["W1"].grad_zero_frac                      # 0.4: 40 % of dW1 is exactly 0 (dead ReLUs?)
    log_histogram(dW1)                              # |dW1| on fixed log-spaced bins

On histogram steps :func:`tensor_stats_and_histograms` gives both at the cost of one sort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "HIST_BINS",
    "HIST_EDGES",
    "TensorStats",
    "abs_quantiles",
    "hist_edges",
    "histogram_record",
    "log_histogram",
    "norm",
    "tensor_norms",
    "tensor_stats",
    "tensor_stats_and_histograms",
    "update_ratio",
]


@dataclass(frozen=True)
class TensorStats:
    grad_norm: float
    param_norm: float
    nonfinite: int  # NaN/Inf entries in the gradient plus the parameter
    grad_abs_p50: float = math.nan  # median of |g|
    grad_abs_p99: float = math.nan  # 99th percentile of |g|
    grad_zero_frac: float = math.nan  # fraction of gradient entries that are exactly 0
    param_abs_p99: float = math.nan  # 99th percentile of |θ|


def norm(a: np.ndarray) -> float:
    """L2 norm as a Python float (float64 accumulation, any shape). Finite entries whose
    squares overflow (|x| > ~1e154) are rescaled by the largest |x|, so the norm is Inf only
    when the tensor holds a NaN/Inf or the norm itself exceeds float64's range.

        norm(np.array([3e200, 4e200]))  # 5e200 (to rounding), not Inf
    """
    flat = a.reshape(-1)
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        squared = float(np.dot(flat, flat))
        if math.isfinite(squared) or not np.isfinite(flat).all():
            return math.sqrt(squared)
        # The slow path, only for huge finite entries: scale, sum, scale back.
        scale = float(np.max(np.abs(flat)))
        scaled = flat / scale
        return scale * math.sqrt(float(np.dot(scaled, scaled)))


def _abs_flat(a: np.ndarray) -> np.ndarray:
    """|a| as a fresh flat array. Integers go through float64: ``abs(int8(-128))`` wraps."""
    flat = a.reshape(-1)
    if not np.issubdtype(flat.dtype, np.floating):
        return np.abs(flat, dtype=np.float64)
    return np.abs(flat)


def abs_quantiles(a: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of |a| (nearest rank, ``round(q * (n - 1))``) by one ``np.partition``: O(n),
    not a sort. NaN entries count as the largest. An empty array gives 0.0.

        abs_quantiles(np.array([-3.0, 1.0, 2.0]), (0.5,)) == (2.0,)
    """
    flat = _abs_flat(a)  # a fresh array: partitioned in place below
    if flat.size == 0:
        return tuple(0.0 for _ in qs)
    ranks = [round(q * (flat.size - 1)) for q in qs]
    # One single-rank partition per quantile, highest first, each on the part below the last
    # (everything there is <= it): numpy's multi-rank partition is several times slower.
    found: dict[int, float] = {}
    end = flat.size
    for k in sorted(set(ranks), reverse=True):
        flat[:end].partition(k)
        found[k] = float(flat[k])
        end = k + 1
    return tuple(found[k] for k in ranks)


def _sorted_quantiles(ranked: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """:func:`abs_quantiles` of an array whose |values| ``ranked`` are already sorted."""
    if ranked.size == 0:
        return tuple(0.0 for _ in qs)
    return tuple(float(ranked[round(q * (ranked.size - 1))]) for q in qs)


def _nonfinite(a: np.ndarray, n: float) -> int:
    # The norm is finite iff every entry is (barring overflow): count only when it is not.
    if math.isfinite(n):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def _zero_frac(nonzero: int, size: int) -> float:
    return float(1.0 - nonzero / size) if size else 0.0


def tensor_stats(
    params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> dict[str, TensorStats]:
    """Statistics of every tensor; ``grads`` keyed like ``params`` (already matched)."""
    out = {}
    for name, p in params.items():
        g = grads[name]
        gn, pn = norm(g), norm(p)
        g50, g99 = abs_quantiles(g, (0.5, 0.99))
        (p99,) = abs_quantiles(p, (0.99,))
        out[name] = TensorStats(
            gn,
            pn,
            _nonfinite(g, gn) + _nonfinite(p, pn),
            g50,
            g99,
            _zero_frac(np.count_nonzero(g), g.size),
            p99,
        )
    return out


def tensor_norms(
    params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> dict[str, TensorStats]:
    """The cheap part of :func:`tensor_stats`: norms, NaN/Inf counts and the zero-gradient
    fraction, no quantiles (NaN). About a third of the cost; what the alert rules read.

        tensor_norms({"W1": W1}, {"W1": dW1})["W1"].grad_zero_frac
    """
    out = {}
    for name, p in params.items():
        g = grads[name]
        gn, pn = norm(g), norm(p)
        out[name] = TensorStats(
            gn,
            pn,
            _nonfinite(g, gn) + _nonfinite(p, pn),
            grad_zero_frac=_zero_frac(np.count_nonzero(g), g.size),
        )
    return out


def tensor_stats_and_histograms(
    step: int, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> tuple[dict[str, TensorStats], dict[str, Any]]:
    """``(tensor_stats(params, grads), histogram_record(step, params, grads))`` at the cost of
    one sort of each |array|: binning on uneven edges sorts anyway (``np.histogram`` does),
    and the sorted array gives the quantiles for free. Same values as the two calls.

        stats, record = tensor_stats_and_histograms(300, {"W1": W1}, {"W1": dW1})
    """
    stats, tensors = {}, {}
    for name, p in params.items():
        g = grads[name]
        g_ranked, p_ranked = _sorted_abs(g), _sorted_abs(p)
        g_hist, p_hist = _histogram_of_sorted(g_ranked), _histogram_of_sorted(p_ranked)
        g50, g99 = _sorted_quantiles(g_ranked, (0.5, 0.99))
        (p99,) = _sorted_quantiles(p_ranked, (0.99,))
        stats[name] = TensorStats(
            norm(g),
            norm(p),
            g_hist["nonfinite"] + p_hist["nonfinite"],
            g50,
            g99,
            _zero_frac(g.size - g_hist["zero"], g.size),
            p99,
        )
        tensors[name] = {"grad": g_hist, "param": p_hist}
    return stats, _record(step, tensors)


def update_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """‖after − before‖ / ‖before‖: how far one optimizer step moved a tensor, relatively."""
    denom = norm(before)
    moved = norm(np.subtract(after, before, dtype=np.float64))
    if denom == 0.0:
        return 0.0 if moved == 0.0 else math.inf
    return moved / denom


# -- histograms on fixed log-spaced bins -------------------------------------------------------

#: Bins of |x|: 4 per decade from 1e-10 to 1e4, the same for every tensor, step and run, so
#: histograms stack into a picture of how a distribution moved and compare across runs.
HIST_LOG10_LO = -10
HIST_LOG10_HI = 4
HIST_PER_DECADE = 4
HIST_BINS = {"log10_lo": HIST_LOG10_LO, "log10_hi": HIST_LOG10_HI, "per_decade": HIST_PER_DECADE}


def hist_edges(bins: Mapping[str, int]) -> np.ndarray:
    """The bin edges a histogram record's ``bins`` entry describes: hist_edges(rec["bins"])."""
    lo, hi, per = int(bins["log10_lo"]), int(bins["log10_hi"]), int(bins["per_decade"])
    return np.logspace(lo, hi, (hi - lo) * per + 1)


HIST_EDGES = hist_edges(HIST_BINS)


def log_histogram(a: np.ndarray) -> dict[str, Any]:
    """Histogram of |a| on :data:`HIST_EDGES`, with what falls outside them counted apart.

        log_histogram(np.array([0.0, 1e-3, -2e-3, 1e9]))
        # {"counts": [..56 ints..], "zero": 1, "under": 0, "over": 1, "nonfinite": 0}

    ``counts[i]`` holds ``HIST_EDGES[i] <= |x| < HIST_EDGES[i+1]`` (the last bin includes its
    right edge); ``under`` is ``0 < |x| < 1e-10``, ``over`` is ``|x| > 1e4``, ``zero`` is
    exactly 0 and ``nonfinite`` NaN/Inf. The five add up to ``a.size``. Values are compared
    with the edges exactly (float16/float32 as their float64 values), integers as numbers.
    """
    return _histogram_of_sorted(_sorted_abs(a))


def _sorted_abs(a: np.ndarray) -> np.ndarray:
    """|a| flat and sorted (NaN last, as np.sort puts it)."""
    ranked = _abs_flat(a)
    ranked.sort()
    return ranked


def _histogram_of_sorted(ranked: np.ndarray) -> dict[str, Any]:
    """:func:`log_histogram` of sorted |values|: a binary search per edge, not per value."""
    exact = ranked if ranked.dtype == np.float64 else ranked.astype(np.float64)  # stays sorted
    cuts = np.searchsorted(exact, HIST_EDGES, side="left")
    cuts[-1] = np.searchsorted(exact, HIST_EDGES[-1], side="right")  # the last bin is closed
    zero = int(np.searchsorted(exact, 0.0, side="right"))
    finite = int(np.searchsorted(exact, np.inf, side="left"))  # Inf, then NaN, sort last
    return {
        "counts": np.diff(cuts).tolist(),
        "zero": zero,
        "under": int(cuts[0]) - zero,
        "over": finite - int(cuts[-1]),
        "nonfinite": exact.size - finite,
    }


def histogram_record(
    step: int, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """One line of ``gradwatch/histograms.jsonl``: |g| and |θ| of every tensor at ``step``.

        histogram_record(300, {"W1": W1}, {"W1": dW1})
        # {"step": 300, "bins": HIST_BINS, "tensors": {"W1": {"grad": {...}, "param": {...}}}}

    ``grads`` keyed like ``params`` (already matched); each entry is a :func:`log_histogram`.
    """
    tensors = {
        name: {"grad": log_histogram(grads[name]), "param": log_histogram(p)}
        for name, p in params.items()
    }
    return _record(step, tensors)


def _record(step: int, tensors: dict[str, Any]) -> dict[str, Any]:
    return {"step": int(step), "bins": dict(HIST_BINS), "tensors": tensors}
