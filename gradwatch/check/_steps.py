"""Step sizes and tolerances: named rules that depend on the precision, not magic numbers.

Central differences have truncation error O(h^2) and round-off error O(EPS_J*|J|/h); balancing
them gives h ~ EPS_J^(1/3) (scipy's ``_numdiff`` rule), scaled by the magnitude of the tensor.
One-sided differences balance O(h) against O(EPS_J*|J|/h), so h ~ EPS_J^(1/2).

EPS_J is the round-off of one *loss evaluation*, not of one operation: a loss sums many terms
through exp and log and carries about a hundred ulps (``EVAL_ULPS``). Measured on the classic
3-layer network, the EPS^(1/3) step gave a difference of 1.9e-9, this one 4e-10.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "central_step",
    "one_sided_step",
    "coord_rtol",
    "roundoff_atol",
    "RTOL_FLOAT64",
    "RTOL_FLOAT32",
    "RTOL_FLOAT16",
]

#: Round-off of one loss evaluation, in units of the loss dtype's machine epsilon.
EVAL_ULPS = 100.0
#: Relative error above which a float64 coordinate is re-examined by triage. Correct float64
#: networks land near 1e-10..1e-8 with the EPS^(1/3) step; bugs land at 1e-3 and above.
RTOL_FLOAT64 = 1e-5
#: The same for float32 losses or gradients (EPS32^(2/3) ~ 2.4e-5 is the attainable accuracy).
RTOL_FLOAT32 = 2e-3
#: float16: only gross errors are detectable.
RTOL_FLOAT16 = 5e-2
#: Round-off of (J+ - J-)/(2h) is about EPS*|J|/h; disagreements below this many times that
#: are floating-point noise, whatever the relative error says (near-zero gradients). Ten
#: times EVAL_ULPS: the derivative divides two evaluations' round-off by the step.
ROUNDOFF_SAFETY = 1000.0


def central_step(work: np.ndarray, loss_eps: float) -> float:
    """Step for central differences on one tensor: (EVAL_ULPS*EPS)^(1/3) * max(1, rms(tensor))."""
    scale = float(np.sqrt(abs(np.vdot(work, work)) / work.size)) if work.size else 1.0
    if not np.isfinite(scale):
        scale = 1.0
    return float(np.cbrt(EVAL_ULPS * loss_eps) * max(1.0, scale))


def one_sided_step(central: float, loss_eps: float) -> float:
    """Step for forward/backward differences used by triage, (EVAL_ULPS*EPS)^(1/2) scaled like
    ``central``."""
    eps_j = EVAL_ULPS * loss_eps
    return float(central / np.cbrt(eps_j) * np.sqrt(eps_j))


def coord_rtol(eps: float) -> float:
    """Per-coordinate relative tolerance for a given machine epsilon."""
    if eps <= np.finfo(np.float64).eps * 1.01:
        return RTOL_FLOAT64
    if eps <= np.finfo(np.float32).eps * 1.01:
        return RTOL_FLOAT32
    return RTOL_FLOAT16


def roundoff_atol(loss_eps: float, loss_value: float, step: float) -> float:
    """Absolute noise floor of a central-difference derivative taken with ``step``."""
    return ROUNDOFF_SAFETY * loss_eps * max(abs(loss_value), 1e-300) / step
