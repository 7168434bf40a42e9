"""The scalar arguments of ``step()``: refused with an InputError naming them when they are
not what MLflow and the alert rules can use.

    as_step(2**70)               # InputError: outside the 64-bit integers MLflow stores
    as_float("1.5", "loss")      # InputError: a string
    as_float(np.float32(0.3), "loss") == 0.30000001192092896
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from gradwatch.errors import InputError
from gradwatch.schema import LOSS, LR

__all__ = ["as_float", "as_step", "scalars"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def as_step(step: Any) -> int:
    """``step`` as an int that MLflow can store (int64), else InputError."""
    if isinstance(step, numbers.Integral) and not isinstance(step, bool):
        s = int(step)
        if _INT64_MIN <= s <= _INT64_MAX:
            return s
        raise InputError(
            f"step={s} is outside the 64-bit integers MLflow stores steps in; "
            "pass the training step count (or leave step= out to count from 0)"
        )
    raise InputError(f"step must be an integer, got {type(step).__name__} {str(step)[:40]}")


def as_float(value: Any, what: str) -> float | None:
    """A scalar ``loss``/``lr`` as a float. Strings, complex numbers and arrays of several
    values are refused (not parsed, truncated or reduced to their first element)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (str, bytes)):
        raise InputError(
            f"{what} must be a number, got the string {value[:40]!r}; "
            "convert it with float() if that is what you mean"
        )
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - report any unconvertible value the same way
        arr = None
    if arr is None or arr.dtype.kind not in "biuf":
        kind = (
            type(value).__name__ if arr is None else f"{type(value).__name__} of dtype {arr.dtype}"
        )
        hint = ""
        if arr is not None and arr.dtype.kind == "c":
            hint = " (a complex value has no order; pass the real loss)"
        raise InputError(f"{what} must be a real number (a float or a 0-d array), got {kind}{hint}")
    if arr.size != 1:
        raise InputError(
            f"{what} must be one number, got an array of shape {arr.shape}: pass "
            f"the scalar {what} (e.g. {what}=float(batch_{what}.mean()))"
        )
    return float(arr.reshape(()))


def scalars(loss: float | None, lr: float | None) -> dict[str, float]:
    """The step's ``loss``/``lr`` metrics (those given)."""
    metrics = {}
    if loss is not None:
        metrics[LOSS] = loss
    if lr is not None:
        metrics[LR] = lr
    return metrics
