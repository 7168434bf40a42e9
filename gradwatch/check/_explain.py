"""Name the integration trap behind a pattern of disagreements, from the evidence only.

- element-wise clipping: analytic values sitting exactly at a bound ±c that two or more
  gradient entries share bit for bit (``clip_bounds``), while the loss is steeper;
- a constant factor: every disagreeing probe has the same ratio analytic/numeric (a loss
  averaged over the batch with gradients summed, gradient-norm clipping);
- every tensor disagrees without either signature: the check and backprop saw different
  things (call order, batch, or state such as an RNN's hidden state).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.check.report import Probe, TensorReport

__all__ = ["clip_bounds", "explain_disagreements", "shared_ratio", "SHARED_RATIO_TOLERANCE"]

#: Disagreeing probes share one ratio analytic/numeric when all ratios lie within 1% of each other.
SHARED_RATIO_TOLERANCE = 0.01

CLIPPING_ADVICE = "check the gradients before clipping"
CONSTANT_FACTOR_HINT = "a constant factor (1/batch size in one of them? gradient norm clipping?)"
EVERY_TENSOR_HINT = (
    "every tensor disagrees, with no constant factor and no clipping: the usual causes are "
    "(1) step() called before backprop or after the update, (2) loss_fn evaluated on another "
    "batch than the gradients, (3) loss_fn evaluated at different inputs or state than "
    "backprop (e.g. an RNN's hidden state after the forward pass instead of before it)"
)


#: Round clipping bounds (1, 2, 5 times a power of ten, 0.01 to 5000) as floats, bit for bit.
ROUND_BOUNDS = frozenset(float(f"{m}e{k}") for m in (1, 2, 5) for k in range(-2, 4))


def clip_bounds(tensors: list[Tensor]) -> dict[str, float]:
    """Per tensor, its largest |gradient| c when c looks like an element-wise clipping bound.

    c is a bound when, bit for bit, either
    - two or more entries (of the tensors whose largest |gradient| is c) sit exactly at ±c:
      ordinary float gradients practically never share their largest magnitude to the last
      bit, while ``np.clip(g, -5, 5)`` makes every entry beyond the bound exactly ±5; or
    - c is a round number (1, 2 or 5 times a power of ten, 0.01 to 5000) and the largest
      |gradient| of all tensors: one entry clipped at 5.0 exactly. A computed gradient lands
      on a round number to the last bit only in toy losses.
    A probe is then ``clipped`` only where its analytic value is exactly ±c *and* the loss is
    steeper in the same direction, so an understated clipped slope is the only thing excused.
    """
    maxima: dict[str, tuple[float, int]] = {}
    for t in tensors:
        if t.grad.size == 0:
            continue
        magnitude = np.abs(t.grad)
        top = float(magnitude.max())
        if math.isfinite(top) and top > 0:
            maxima[t.name] = (top, int(np.count_nonzero(magnitude == top)))
    shared: dict[float, int] = {}
    for top, count in maxima.values():
        shared[top] = shared.get(top, 0) + count
    overall = max((top for top, _ in maxima.values()), default=0.0)
    return {
        name: top
        for name, (top, _) in maxima.items()
        if shared[top] >= 2 or (top == overall and top in ROUND_BOUNDS)
    }


def _format_factor(ratio: float) -> str:
    text = f"{ratio:.4g}"
    if 0 < ratio < 0.5:
        inverse = 1.0 / ratio
        if abs(inverse - round(inverse)) <= 1e-4 * inverse:  # e.g. 1/batch size
            text += f" (1/{round(inverse)})"
    return text


def shared_ratio(pairs: Iterable[tuple[float, float]]) -> float | None:
    """The one positive factor r with analytic = r × numeric in every (analytic, numeric) pair
    (within ``SHARED_RATIO_TOLERANCE``; at least two pairs), else None. A sign flip is no
    shared factor: it is a backprop bug.

        shared_ratio([(0.3, 3.0), (-0.7, -7.0)]) == 0.1
    """
    pairs = list(pairs)
    ratios = [a / n for a, n in pairs if n != 0 and math.isfinite(n) and math.isfinite(a)]
    if len(ratios) < 2 or len(ratios) < len(pairs) or min(ratios) <= 0:
        return None
    if max(ratios) > (1 + SHARED_RATIO_TOLERANCE) * min(ratios):
        return None
    return float(np.median(ratios))


def _shared_ratio(probes: list[Probe]) -> float | None:
    return shared_ratio((p.analytic, p.numeric) for p in probes)


def explain_disagreements(per_param: dict[str, TensorReport]) -> list[str]:
    """Notes for the report: clipping, a shared constant factor, or the every-tensor hint."""
    notes = []
    clipped = {name: tr for name, tr in per_param.items() if tr.num_clipped}
    if clipped:
        # Coordinates only: a direction's analytic value is a projection, not the bound.
        probes = [p for tr in clipped.values() for p in tr.coords if p.verdict == "clipped"]
        bounds = sorted({abs(p.analytic) for p in probes})
        notes.append(
            f"gradients clipped element-wise: {len(probes)} probed "
            f"coordinate{'s' if len(probes) != 1 else ''} of "
            f"{', '.join(clipped)} {'sit' if len(probes) != 1 else 'sits'} exactly at the bound "
            f"{' / '.join(f'±{b:.6g}' for b in bounds)} while the loss is steeper in the same "
            f"direction; {CLIPPING_ADVICE} (give step() the unclipped gradients, or clip after "
            "step()). Clipped coordinates do not fail the check"
        )
    failing = {name: tr for name, tr in per_param.items() if tr.num_mismatches}
    mismatches = {
        name: [p for p in tr.probes if p.verdict == "mismatch"] for name, tr in failing.items()
    }
    everywhere = _shared_ratio([p for ps in mismatches.values() for p in ps])
    factor_noted = False
    if everywhere is not None and len(failing) >= 2:
        notes.append(
            f"analytic = {_format_factor(everywhere)} × numeric in every disagreeing probe of "
            f"every failing tensor ({', '.join(failing)}): {CONSTANT_FACTOR_HINT}"
        )
        factor_noted = True
    else:
        for name, probes in mismatches.items():
            ratio = _shared_ratio(probes)
            if ratio is not None:
                notes.append(
                    f"analytic = {_format_factor(ratio)} × numeric in every disagreeing probe "
                    f"of '{name}': {CONSTANT_FACTOR_HINT}"
                )
                factor_noted = True
    if len(per_param) >= 2 and len(failing) == len(per_param) and not factor_noted and not clipped:
        notes.append(EVERY_TENSOR_HINT)
    return notes
