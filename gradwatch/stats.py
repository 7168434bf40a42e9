"""Per-tensor training statistics, pure numpy: gradient and parameter norms, update ratios,
non-finite counts, quantiles of |g| and |θ| and the fraction of exactly-zero gradient entries.
The hook computes them every few steps (see ``GradWatch(stats_every=)``).

    stats = tensor_stats({"W1": W1}, {"W1": dW1})   # {"W1": TensorStats(...)}
    stats["W1"].grad_zero_frac                      # 0.4: 40 % of dW1 is exactly 0 (dead ReLUs?)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["TensorStats", "abs_quantiles", "norm", "tensor_stats", "update_ratio"]


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
    """L2 norm as a Python float (float64 accumulation, any shape)."""
    flat = a.reshape(-1)
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    return math.sqrt(float(np.dot(flat, flat)))


def abs_quantiles(a: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """Quantiles of |a| (nearest rank, ``round(q * (n - 1))``) by one ``np.partition``: O(n),
    not a sort. NaN entries count as the largest. An empty array gives 0.0.

        abs_quantiles(np.array([-3.0, 1.0, 2.0]), (0.5,)) == (2.0,)
    """
    flat = np.abs(a.reshape(-1))  # a fresh array: partitioned in place below
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


def _nonfinite(a: np.ndarray, n: float) -> int:
    # The norm is finite iff every entry is (barring overflow): count only when it is not.
    if math.isfinite(n):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


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
        zero_frac = 1.0 - np.count_nonzero(g) / g.size if g.size else 0.0
        out[name] = TensorStats(gn, pn, _nonfinite(g, gn) + _nonfinite(p, pn),
                                g50, g99, float(zero_frac), p99)  # fmt: skip
    return out


def update_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """‖after − before‖ / ‖before‖: how far one optimizer step moved a tensor, relatively."""
    denom = norm(before)
    moved = norm(np.subtract(after, before, dtype=np.float64))
    if denom == 0.0:
        return 0.0 if moved == 0.0 else math.inf
    return moved / denom
