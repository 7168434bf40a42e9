"""Name the integration trap behind a pattern of disagreements, from the evidence only.

- element-wise clipping: analytic values sitting exactly at a bound ±c that two or more
  gradient entries share bit for bit (``clip_bounds``), while the loss is steeper;
- a constant factor *every* tensor shares: the loss and its gradient follow different
  conventions (a loss averaged over the batch with gradients summed, gradient-norm clipping);
  a factor in one tensor or a subset is a bug in their backward pass, named as such;
- every tensor disagrees without a shared factor: the misuse the engine can test (call order,
  by re-evaluating at θ + lr·g) is tested, and when ruled out the likeliest cause named is a
  bug in a backward path the tensors share;
- invariance: numeric and analytic gradients both ~0, the loss does not depend on a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.check.report import Probe, TensorReport, _factor_text

__all__ = [
    "SHARED_RATIO_TOLERANCE",
    "clip_bounds",
    "clipping_note",
    "disagreement",
    "every_tensor_hint",
    "factor_hint",
    "invariance_note",
    "shared_ratio",
    "subset_hint",
]

#: Disagreeing probes share one ratio analytic/numeric when all ratios lie within 1% of each other.
SHARED_RATIO_TOLERANCE = 0.01

CLIPPING_ADVICE = "check the gradients before clipping"
#: The likeliest cause when every tensor disagrees and misuse is ruled out.
SHARED_PATH = (
    "a bug in a backward path every tensor shares (the loss gradient or the output layer's "
    "delta, a shared gate or activation derivative)"
)
#: What the check cannot test itself when every tensor disagrees.
OTHER_INPUTS = (
    "loss_fn evaluated on other inputs or state than backprop (another batch, an RNN's hidden "
    "state after the forward pass instead of before it)"
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


def clipping_note(per_param: dict[str, TensorReport]) -> str | None:
    """The note on element-wise clipping, when probes sat at a clipping bound."""
    clipped = {name: tr for name, tr in per_param.items() if tr.num_clipped}
    if not clipped:
        return None
    # Coordinates only: a direction's analytic value is a projection, not the bound.
    probes = [p for tr in clipped.values() for p in tr.coords if p.verdict == "clipped"]
    bounds = sorted({abs(p.analytic) for p in probes})
    return (
        f"gradients clipped element-wise: {len(probes)} probed "
        f"coordinate{'s' if len(probes) != 1 else ''} of "
        f"{', '.join(clipped)} {'sit' if len(probes) != 1 else 'sits'} exactly at the bound "
        f"{' / '.join(f'±{b:.6g}' for b in bounds)} while the loss is steeper in the same "
        f"direction; {CLIPPING_ADVICE} (give step() the unclipped gradients, or clip after "
        "step()). Clipped coordinates do not fail the check"
    )


def _mismatches(tr: TensorReport) -> list[Probe]:
    return [p for p in tr.probes if p.verdict == "mismatch"]


def ignored_by_loss(tr: TensorReport) -> bool:
    """Perturbing the tensor never moved the loss, yet its gradient disagrees: loss_fn does
    not read the arrays it is given."""
    return bool(tr.coords) and all(p.numeric == 0.0 for p in tr.coords) and tr.num_mismatches > 0


def disagreement(per_param: dict[str, TensorReport]) -> tuple[str, list[str], float | None]:
    """The pattern of a failed check's mismatches: ``(pattern, failing tensors, factor)``.

    ``pattern`` is ``"factor"`` when every tensor that carries a gradient (not invariant)
    fails and all their mismatches share one ratio analytic/numeric (two tensors at least);
    ``"every"`` when every such tensor fails without one shared ratio; else ``"subset"`` (a
    bug in the tensors named; ``factor`` when their mismatches share a ratio).
    """
    failing = [name for name, tr in per_param.items() if tr.num_mismatches]
    carrying = [name for name, tr in per_param.items() if tr.probes and not tr.invariant]
    ratio = _shared_ratio([p for name in failing for p in _mismatches(per_param[name])])
    every = len(carrying) >= 2 and set(carrying) <= set(failing)
    if every and ratio is not None:
        return "factor", failing, ratio
    if every and not any(ignored_by_loss(per_param[n]) for n in failing):
        return "every", failing, None
    return "subset", failing, ratio


def subset_hint(per_param: dict[str, TensorReport], failing: list[str], factor) -> str:
    """The hint for a bug confined to some tensors."""
    ignored = [n for n in failing if ignored_by_loss(per_param[n])]
    if ignored:
        return (
            f"perturbing {', '.join(ignored)} never changed the loss: does loss_fn use the "
            "params it is given (not a global or closure copy)?"
        )
    names = failing[0] if len(failing) == 1 else ", ".join(failing[:-1]) + " and " + failing[-1]
    subject = (
        f"the gradient of {names} is" if len(failing) == 1 else f"the gradients of {names} are"
    )
    others = " while the other tensors agree" if len(failing) < len(per_param) else ""
    if factor is not None:
        return (
            f"{subject} off by a factor {_factor_text(factor)}{others}: a bug in the backward "
            f"pass of {names} (a term counted twice, a constant missing or extra), not a loss "
            "convention (that would scale every tensor)"
        )
    ratios = {n: _shared_ratio(_mismatches(per_param[n])) for n in failing}
    if len(failing) > 1 and all(r is not None for r in ratios.values()):
        each = ", ".join(f"{_factor_text(r)} ({n})" for n, r in ratios.items())
        return (
            f"{subject} off by factors {each}{others}: bugs in the backward pass of {names} "
            "(a term counted twice, a constant missing or extra)"
        )
    verb = "disagrees" if len(failing) == 1 else "disagree"
    subject = subject.rsplit(" ", 1)[0]
    return (
        f"{subject} {verb} with the loss's slope{others}: a bug in the backward pass of "
        f"{names} (a sign, a transpose or index, a missing term)"
    )


def factor_hint(factor: float) -> str:
    return (
        f"analytic = {_factor_text(factor)} × numeric in every tensor: the loss and its gradient "
        "follow different conventions (1/batch size in one of them? gradient-norm clipping "
        "before step()?)"
    )


def every_tensor_hint(call_order: str, first_step: bool) -> str:
    """The hint when every tensor disagrees without a shared factor, from what was tested.

    ``call_order``: ``"ruled_out"`` (re-evaluated at θ + lr·g, the gradients disagree too),
    ``"untested"`` (no lr given).
    """
    if call_order == "ruled_out":
        tested = (
            "re-evaluated at θ + lr·g (the parameters before a plain SGD update) the gradients "
            "disagree too, so step() after the update is ruled out"
        )
        return f"every tensor disagrees; {tested}. Likeliest: {SHARED_PATH}; else {OTHER_INPUTS}"
    if first_step:
        return (
            "every tensor disagrees at the first step, where no gradients can be stale "
            f"(step() before backprop ruled out). Likeliest: {SHARED_PATH}; else "
            f"{OTHER_INPUTS}. If step() runs after the optimizer's update, pass lr= to step() "
            "so the check can test it"
        )
    return (
        f"every tensor disagrees, with no shared factor. Likeliest: {SHARED_PATH}; else step() "
        f"called after the update (pass lr= to step() so the check tests it) or {OTHER_INPUTS}"
    )


CALL_ORDER_HINT = (
    "re-evaluated at θ + lr·g (the parameters before the SGD update) the gradients agree: "
    "step() was called after the update; call it between backprop and the update"
)


def invariance_note(name: str) -> str:
    return (
        f"the loss does not depend on '{name}' here: its numeric and analytic gradients are "
        "both ~0 (e.g. a bias feeding a batchnorm); not a failure"
    )
