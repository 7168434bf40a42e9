"""Loss evaluation and the two kinds of probe: one coordinate, or a random direction.

Both perturb the arrays handed to ``loss_fn`` in place and put the saved values back
afterwards; the engine additionally restores every tensor from its snapshot in a ``finally``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.errors import LossError

__all__ = [
    "CheckTimeout",
    "Evaluator",
    "central_coord",
    "central_coord_curvature",
    "one_sided_coord",
    "directional",
    "directional_values",
    "loss_precision",
]


def loss_precision(value: Any) -> float:
    """Machine epsilon of the loss as returned: float32 losses carry float32 round-off."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating) and dtype.itemsize < 8:
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def _as_scalar(value: Any) -> float:
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise LossError(f"loss_fn returned a bool ({value}); it must return the loss as a float")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic)):
        if value.size != 1:
            raise LossError(
                f"loss_fn returned an array of shape {np.shape(value)}; it must return one scalar "
                "loss: reduce it, e.g. float(np.mean(per_example_losses))"
            )
        if not np.issubdtype(value.dtype, np.floating) and not np.issubdtype(
            value.dtype, np.integer
        ):
            raise LossError(f"loss_fn returned dtype {value.dtype}; it must return a real float")
        return float(np.asarray(value).reshape(-1)[0])
    raise LossError(
        f"loss_fn returned {type(value).__name__}; it must return the loss as a float "
        "(if it returns (loss, grads), wrap it: lambda p: f(p)[0])"
    )


def _fresh_container(params: Any) -> Any:
    """A shallow copy of a mutable container (same array objects), so a ``loss_fn`` that
    rebinds or adds keys changes only its own copy, never the caller's dict or list, and
    every call sees the arrays the check perturbs."""
    if type(params) is dict:
        return dict(params)
    if isinstance(params, (list, Mapping)):
        try:
            return copy.copy(params)
        except Exception:  # noqa: BLE001 - an uncopyable container is passed as it is
            return params
    return params  # tuples and namedtuples cannot be rebound


class CheckTimeout(Exception):
    """The check's time limit passed: no further loss evaluation is started."""


class Evaluator:
    """Calls ``loss_fn`` on a shallow copy of ``work_params``, counts calls and checks that
    the result is a scalar. With a ``deadline`` (``time.perf_counter()`` value) it raises
    :class:`CheckTimeout` instead of starting an evaluation after it."""

    def __init__(
        self, loss_fn: Callable[[Any], Any], work_params: Any, deadline: float | None = None
    ) -> None:
        self.loss_fn = loss_fn
        self.work_params = work_params
        self.deadline = deadline
        self.count = 0
        self.last_raw: Any = None

    def __call__(self) -> float:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise CheckTimeout
        self.count += 1
        raw = self.loss_fn(_fresh_container(self.work_params))
        self.last_raw = raw
        return _as_scalar(raw)


def _finite_or_raise(values: tuple[float, ...], where: str, step: float) -> None:
    if not all(np.isfinite(v) for v in values):
        raise LossError(
            f"loss_fn returned a non-finite value ({', '.join(f'{v:g}' for v in values)}) with "
            f"{where} perturbed by ±{step:.1e}: the loss must be finite near the current "
            "parameters (look for log(0), division by zero or overflow), or pass a smaller eps"
        )


def _safe_step(x: float, h: float, dtype: np.dtype) -> float:
    # A step below the spacing of x vanishes in floating point; keep it representable.
    return max(h, 8.0 * float(np.spacing(np.asarray(abs(x), dtype=dtype))))


def _evaluate_both_sides(
    ev: Evaluator, t: Tensor, index: tuple[int, ...], h: float
) -> tuple[float, float, float, float, float, float]:
    """Set θ_i to x+h then x−h in place, evaluate each, put x back bit for bit.

    Returns ``(x, x_plus, x_minus, J(x_plus), J(x_minus), h)`` with the values actually
    stored (the realized step) and the step used.
    """
    arr = t.work
    saved = arr[index].copy()  # numpy scalar of the array's dtype: bit-exact
    x = float(saved)
    h = _safe_step(x, h, arr.dtype)
    try:
        arr[index] = x + h
        xp = float(arr[index])
        jp = ev()
        arr[index] = x - h
        xm = float(arr[index])
        jm = ev()
    finally:
        arr[index] = saved
    _finite_or_raise((jp, jm), f"{t.name}{list(index)}", h)
    return x, xp, xm, jp, jm, h


def central_coord(
    ev: Evaluator, t: Tensor, index: tuple[int, ...], h: float
) -> tuple[float, float]:
    """Central difference at one coordinate; returns ``(derivative, step used)``.

    Divides by the step actually realized, (x+h) - (x-h), as scipy does.
    """
    _, xp, xm, jp, jm, h = _evaluate_both_sides(ev, t, index, h)
    return (jp - jm) / (xp - xm), h


def central_coord_curvature(
    ev: Evaluator, t: Tensor, index: tuple[int, ...], h: float, j0: float
) -> tuple[float, float, float]:
    """Central difference and second difference at one coordinate:
    ``(derivative, curvature, step used)``; the curvature predicts how far the one-sided
    derivatives of a smooth point differ."""
    x, xp, xm, jp, jm, h = _evaluate_both_sides(ev, t, index, h)
    curvature = ((jp - j0) / (xp - x) - (j0 - jm) / (x - xm)) / (0.5 * (xp - xm))
    return (jp - jm) / (xp - xm), curvature, h


def one_sided_coord(
    ev: Evaluator, t: Tensor, index: tuple[int, ...], h: float, j0: float
) -> tuple[float, float]:
    """Forward and backward differences at one coordinate (triage of kinks)."""
    x, xp, xm, jp, jm, _ = _evaluate_both_sides(ev, t, index, h)
    return (jp - j0) / (xp - x), (j0 - jm) / (x - xm)


def directional_values(
    ev: Evaluator, t: Tensor, backup: np.ndarray, signs: np.ndarray, lo: int, hi: int, h: float
) -> tuple[float, float, float]:
    """Move along a random ±1 direction over flat coordinates ``[lo, hi)``, scaled to length h.

    Returns ``(analytic, J(θ+), J(θ−))``: analytic is g·Δ/(2h) for the displacement
    Δ = θ+ − θ−, the directional derivative on the same scale as (J(θ+) − J(θ−))/(2h). Only
    the segment is touched, so bisection probes cost O(segment), not O(tensor).
    """
    arr = t.work
    c = h / np.sqrt(hi - lo)
    if arr.flags.c_contiguous:
        seg, base_seg = arr.reshape(-1)[lo:hi], backup.reshape(-1)[lo:hi]
        disp = signs[lo:hi] * c
        g = t.grad.reshape(-1)[lo:hi]
    else:  # a strided view: perturb through a full-size displacement (C order, like indices)
        seg, base_seg = arr, backup
        full = np.zeros(arr.size)
        full[lo:hi] = signs[lo:hi] * c
        disp, g = full.reshape(arr.shape), t.grad
    exact = arr.dtype.itemsize < 8  # low precision: the realized step differs from 2*disp
    try:
        np.add(base_seg, disp, out=seg, casting="unsafe")
        plus = seg.astype(np.float64) if exact else None
        jp = ev()
        np.subtract(base_seg, disp, out=seg, casting="unsafe")
        realized = plus - seg if exact else None
        jm = ev()
    finally:
        np.copyto(seg, base_seg)
    _finite_or_raise((jp, jm), f"{t.name} (a random direction)", h)
    if realized is None:
        # float64: fl(b ± d) − fl(b ∓ d) = 2d to ~EPS·|b|/|d| (~1e-10 here), which averages out.
        analytic = float(np.dot(g.reshape(-1), disp.reshape(-1))) / h
    else:
        analytic = float(np.dot(g.reshape(-1), realized.reshape(-1))) / (2 * h)
    return analytic, jp, jm


def directional(
    ev: Evaluator, t: Tensor, backup: np.ndarray, signs: np.ndarray, lo: int, hi: int, h: float
) -> tuple[float, float]:
    """``(analytic, numeric)`` along a random direction: see :func:`directional_values`."""
    analytic, jp, jm = directional_values(ev, t, backup, signs, lo, hi, h)
    return analytic, (jp - jm) / (2 * h)
