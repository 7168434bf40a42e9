"""Per-tensor training statistics, pure numpy: gradient and parameter norms, update ratios,
non-finite counts. The hook computes them every few steps (see ``GradWatch(stats_every=)``).

    stats = tensor_stats({"W1": W1}, {"dW1": dW1})   # {"W1": TensorStats(...)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["TensorStats", "norm", "tensor_stats", "update_ratio"]


@dataclass(frozen=True)
class TensorStats:
    grad_norm: float
    param_norm: float
    nonfinite: int  # NaN/Inf entries in the gradient plus the parameter


def norm(a: np.ndarray) -> float:
    """L2 norm as a Python float (float64 accumulation, any shape)."""
    flat = a.reshape(-1)
    if flat.dtype != np.float64:
        flat = flat.astype(np.float64)
    return math.sqrt(float(np.dot(flat, flat)))


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
        out[name] = TensorStats(gn, pn, _nonfinite(g, gn) + _nonfinite(p, pn))
    return out


def update_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """‖after − before‖ / ‖before‖: how far one optimizer step moved a tensor, relatively."""
    denom = norm(before)
    moved = norm(np.subtract(after, before, dtype=np.float64))
    if denom == 0.0:
        return 0.0 if moved == 0.0 else math.inf
    return moved / denom
