"""Triage: re-examine a disagreeing probe and say *why* it disagrees.

Noise has a signature; a backprop error does not. Along the probed line (one coordinate or a
random direction) the central difference D(s) = f' + c·s² + r(s) changes with the step s as
truncation (∝ s²) and round-off (∝ 1/s) predict, while an analytic value off by Δ stays off by
Δ at every step. So a disagreeing probe is re-measured with one-sided differences at a small
step h1 (~h/185 in float64) and, unless those settle it, with central differences at 2h and
h/2, and judged on what Richardson extrapolation leaves:

- ``kink``: the one-sided derivatives at h1 differ (a non-differentiable point within h1:
  their split does not grow with the step as curvature's would) and the analytic value is
  one of them or between them.
- ``noise``: the discrepancy at h all but vanishes at h1 (two evaluations, as a passing check
  always paid); or the analytic value agrees with the extrapolated derivative (4·D(h) − D(2h))/3 to
  within its own error estimate (the spread between the extrapolations from (2h, h) and
  (h, h/2)) and the round-off floor; or the discrepancy changes with the step (a kink crossed
  by the larger steps) and vanishes at the small step h1.
- ``mismatch``: the extrapolation disagrees beyond its error estimate *and* the small step
  sees the same discrepancy (the one-sided derivatives agree with each other and with the
  extrapolation): it stays put from 2h down to h1. Or the analytic value matches neither the
  extrapolation nor the small step.

Which extrapolation decides is fixed in advance, never chosen by agreement with the analytic
value: accepting "agrees at some step" lets a small real error pass wherever truncation
happens to cancel it.

A random direction crosses many kinks, so a direction the line test cannot call a mismatch
outright is localized: split in halves and probed again, down to single coordinates
(O(log n) evaluations for one bad coordinate), which are then triaged the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.check._probes import (
    Evaluator,
    central_coord,
    central_coord_curvature,
    directional,
    directional_values,
    one_sided_coord,
)
from gradwatch.check._steps import one_sided_step, roundoff_atol
from gradwatch.check.report import Probe

__all__ = [
    "Tolerance",
    "clipped_note",
    "localize_direction",
    "probe_direction",
    "triage_coordinate",
    "triage_direction",
]

#: The extrapolated discrepancy must exceed this many times Richardson's own error estimate.
RICHARDSON_SAFETY = 3.0
#: "Stays put": the small step must reproduce the discrepancy to within this fraction of it.
STAYS_PUT = 0.5
#: "Vanishes": at the small step the discrepancy is below this fraction of the first one.
VANISHES = 0.1


@dataclass(frozen=True)
class Tolerance:
    """Agreement test: |a − n| ≤ max(rtol·max(|a|, |n|), atol)."""

    rtol: float
    atol: float

    def agree(self, a: float, n: float) -> bool:
        return abs(a - n) <= max(self.rtol * max(abs(a), abs(n)), self.atol)

    def rel_error(self, a: float, n: float) -> float:
        """|a − n| / max(|a|, |n|, atol/rtol): the floor keeps near-zero gradients honest."""
        denom = max(abs(a), abs(n), self.atol / self.rtol)
        return abs(a - n) / denom if denom > 0 else 0.0


@dataclass
class Context:
    ev: Evaluator
    j0: float
    loss_eps: float
    extra_atol: float  # noise floor contributed by low-precision analytic gradients
    #: The tensor's largest |gradient| when it is shared, bit for bit, by two or more entries
    #: of the gradients (element-wise clipping's signature); None otherwise.
    clip_bound: float | None = None

    def tolerance(self, rtol: float, step: float) -> Tolerance:
        return Tolerance(rtol, roundoff_atol(self.loss_eps, self.j0, step) + self.extra_atol)


#: The one-sided split is re-measured at this multiple of the small step to tell a kink from
#: curvature: a smooth point's split grows with the step (f''·h), a kink's stays its jump.
KINK_TEST = 4.0


def _kink_between(fwd: float, bwd: float, wider: tuple[float, float]) -> bool:
    """The one-sided derivatives differ because of a non-differentiable point, not curvature:
    at a step ``KINK_TEST`` times larger their split has not grown ``KINK_TEST / 2``-fold."""
    split, wider_split = abs(fwd - bwd), abs(wider[0] - wider[1])
    return not wider_split > 0.5 * KINK_TEST * split


@dataclass(frozen=True)
class LineResult:
    verdict: str
    resolved: float  # relative error left after triage
    note: str
    by_signature: bool = False  # mismatch because the discrepancy stays put at every step


def classify_line(
    analytic: float,
    d_h: float,
    h: float,
    h1: float,
    central: Callable[[float], tuple[float, float]],
    sides: Callable[[float], tuple[float, float]],
    tol_at: Callable[[float], Tolerance],
) -> LineResult:
    """Judge a disagreeing probe along one line (see the module docstring).

    ``d_h`` is the first-pass central difference at step ``h``; ``central(s)`` returns
    ``(D(s), curvature)`` and ``sides(s)`` the forward and backward differences.
    """
    a = analytic
    fwd, bwd = sides(h1)
    tol1 = tol_at(h1)
    if not tol1.agree(fwd, bwd) and _kink_between(fwd, bwd, sides(KINK_TEST * h1)):
        # Non-differentiable here: backprop may legitimately return either side (ReLU at 0).
        lo, hi = min(fwd, bwd), max(fwd, bwd)
        best = min(tol1.rel_error(a, fwd), tol1.rel_error(a, bwd))
        if tol1.agree(a, fwd) or tol1.agree(a, bwd) or lo <= a <= hi:
            note = f"one-sided derivatives {bwd:.6g} (left) and {fwd:.6g} (right) differ"
            return LineResult("kink", 0.0 if lo <= a <= hi else best, note)
        note = f"at a kink: left {bwd:.6g}, right {fwd:.6g}, analytic matches neither"
        return LineResult("mismatch", best, note)
    mid = 0.5 * (fwd + bwd)
    if tol1.agree(a, mid) and abs(a - mid) <= VANISHES * abs(a - d_h):
        # Noise's plainest signature, for the price of the one-sided pair: the discrepancy
        # at h all but vanishes at h1 (truncation falls as h², a kink the larger step crossed
        # is not reached). A backprop error would be as large at h1 as at h.
        note = (
            f"the discrepancy at step {h:.1e} vanishes at step {h1:.1e} (numeric {mid:.8g}): "
            "truncation, or a kink the larger step crossed"
        )
        return LineResult("noise", tol1.rel_error(a, mid), note)
    d_2h, _ = central(2.0 * h)
    d_half, curvature = central(0.5 * h)
    extrapolated = (4.0 * d_h - d_2h) / 3.0
    spread = abs(extrapolated - (4.0 * d_half - d_h) / 3.0)
    tol = tol_at(h)
    err = abs(a - extrapolated)
    floor = max(tol.atol, tol.rtol * max(abs(a), abs(extrapolated)))
    ladder = f"{d_2h:.8g}, {d_h:.8g}, {d_half:.8g} at steps {2 * h:.1e}, {h:.1e}, {h / 2:.1e}"
    jump = (fwd - bwd) - curvature * h1  # the one-sided split a kink leaves beyond curvature
    split = abs(jump)
    if err <= floor:
        return _resolve_agreement(a, extrapolated, spread, mid, jump, h1, ladder, tol, tol1)
    stays_put = abs(mid - extrapolated) <= STAYS_PUT * err and split <= STAYS_PUT * err
    if err > RICHARDSON_SAFETY * spread and stays_put:
        note = (
            f"smooth here: numeric {extrapolated:.6g} at every step from {2 * h:.1e} down to "
            f"{h1:.1e} (extrapolated; error estimate {spread:.1e})"
        )
        return LineResult("mismatch", tol.rel_error(a, extrapolated), note, True)
    if tol1.agree(a, mid):
        note = (
            f"the central difference changes with the step ({ladder}) and agrees at step "
            f"{h1:.1e} ({mid:.8g}): a kink within the larger steps or truncation"
        )
        return LineResult("noise", tol1.rel_error(a, mid), note)
    note = f"numeric {mid:.6g} at step {h1:.1e}, {extrapolated:.6g} extrapolated: matches neither"
    return LineResult("mismatch", tol1.rel_error(a, mid), note)


def _resolve_agreement(
    a: float,
    extrapolated: float,
    spread: float,
    mid: float,
    jump: float,
    h1: float,
    ladder: str,
    tol: Tolerance,
    tol1: Tolerance,
) -> LineResult:
    """The analytic value agrees with the extrapolation: quiet either way. The resolved error
    says which explanation the evidence favours, so it stays at round-off level on a correct
    network (a drift signal, not a verdict)."""
    err = abs(a - extrapolated)
    side = extrapolated + math.copysign(0.5 * abs(jump), a - extrapolated)
    if abs(jump) >= err and abs(a - side) < err:
        note = (
            f"a kink here: the one-sided derivatives differ by {jump:.2e} beyond the "
            f"curvature; the analytic value is the one-sided derivative {side:.8g}"
        )
        return LineResult("kink", tol.rel_error(a, side), note)
    if abs(mid - extrapolated) > STAYS_PUT * err:
        # The ladder does not follow h² (a kink in the curvature nearby): the small step,
        # which no such point reaches, is the better estimate.
        note = (
            f"the central difference changes with the step unlike truncation ({ladder}); "
            f"agrees at step {h1:.1e} ({mid:.8g})"
        )
        return LineResult("noise", tol1.rel_error(a, mid), note)
    note = (
        f"truncation or round-off: agrees with the extrapolated derivative "
        f"{extrapolated:.8g} (error estimate {spread:.1e})"
    )
    return LineResult("noise", tol.rel_error(a, extrapolated), note)


def is_clipped(ctx: Context, analytic: float, numeric: float) -> bool:
    """Element-wise clipping: the analytic value sits exactly at the shared bound ±c while the
    loss is steeper in the same direction."""
    c = ctx.clip_bound
    return c is not None and abs(analytic) == c and analytic * numeric > 0 and abs(numeric) > c


def clipped_note(bound: float) -> str:
    return f"at the clipping bound ±{bound:.6g}, the loss is steeper"


def triage_coordinate(
    ctx: Context,
    t: Tensor,
    index: tuple[int, ...],
    analytic: float,
    numeric: float,
    h: float,
    rtol: float,
) -> tuple[str, float, str]:
    """Classify a disagreeing coordinate; returns ``(verdict, resolved_rel_error, note)``."""

    def central(s: float) -> tuple[float, float]:
        d, curvature, _ = central_coord_curvature(ctx.ev, t, index, s, ctx.j0)
        return d, curvature

    result = classify_line(
        analytic,
        numeric,
        h,
        one_sided_step(h, ctx.loss_eps),
        central,
        lambda s: one_sided_coord(ctx.ev, t, index, s, ctx.j0),
        lambda s: ctx.tolerance(rtol, s),
    )
    return result.verdict, result.resolved, result.note


def direction_tolerance(
    ctx: Context, t: Tensor, lo: int, hi: int, h: float, rtol: float
) -> Tolerance:
    # Random signs can cancel, making g·v tiny by chance; floor the denominator at a tenth of
    # its typical size ‖g_S‖/√|S| so such a probe is not judged on round-off alone.
    g = t.grad.reshape(-1)[lo:hi]
    typical = float(np.sqrt(np.dot(g, g))) / np.sqrt(hi - lo)
    tol = ctx.tolerance(rtol, h)
    return Tolerance(tol.rtol, max(tol.atol, 0.1 * typical * rtol))


def probe_direction(
    ctx: Context,
    t: Tensor,
    backup: np.ndarray,
    signs: np.ndarray,
    lo: int,
    hi: int,
    h: float,
    rtol: float,
) -> Probe:
    """One directional probe over flat coordinates ``[lo, hi)``; verdict ok or mismatch."""
    analytic, numeric = directional(ctx.ev, t, backup, signs, lo, hi, h)
    tol = direction_tolerance(ctx, t, lo, hi, h, rtol)
    verdict = "ok" if tol.agree(analytic, numeric) else "mismatch"
    return Probe(
        t.name, None, analytic, numeric, tol.rel_error(analytic, numeric), verdict, h, hi - lo
    )


def triage_direction(
    ctx: Context,
    t: Tensor,
    backup: np.ndarray,
    signs: np.ndarray,
    first: Probe,
    rtol: float,
    max_probes: int,
) -> tuple[str, float, str, list[Probe]]:
    """Classify a disagreeing whole-tensor direction: ``(verdict, resolved_error, note, leaves)``.

    The line test first (a few evaluations): a discrepancy that stays put at every step is a
    mismatch of the direction as a whole — a small error spread over the whole tensor is
    found this way even when no single coordinate can resolve it. Anything else that is not
    explained as noise is bisected to coordinates.
    """
    size = t.work.size
    h = first.step
    a = first.analytic

    def line(s: float) -> tuple[float, float, float]:
        analytic_s, jp, jm = directional_values(ctx.ev, t, backup, signs, 0, size, s)
        shift = a - analytic_s  # low precision: the realized step moves the analytic value
        return (jp - jm) / (2 * s) + shift, (jp - ctx.j0) / s + shift, (ctx.j0 - jm) / s + shift

    def central(s: float) -> tuple[float, float]:
        d, fwd, bwd = line(s)
        return d, (fwd - bwd) / s

    def sides(s: float) -> tuple[float, float]:
        _, fwd, bwd = line(s)
        return fwd, bwd

    result = classify_line(
        a,
        first.numeric,
        h,
        one_sided_step(h, ctx.loss_eps),
        central,
        sides,
        lambda s: direction_tolerance(ctx, t, 0, size, s, rtol),
    )
    if result.verdict == "noise" or result.verdict == "kink":
        return result.verdict, result.resolved, result.note, []
    verdict, note, leaves = localize_direction(ctx, t, backup, signs, 0, size, h, rtol, max_probes)
    if verdict == "mismatch" or (result.by_signature and verdict != "clipped"):
        resolved = max([p.resolved for p in leaves if p.verdict == "mismatch"] + [result.resolved])
        return "mismatch", resolved, f"{result.note}; {note}", leaves
    resolved = max((p.resolved for p in leaves if p.verdict != "clipped"), default=0.0)
    return verdict, resolved, note, leaves


def localize_direction(
    ctx: Context,
    t: Tensor,
    backup: np.ndarray,
    signs: np.ndarray,
    lo: int,
    hi: int,
    h: float,
    rtol: float,
    max_probes: int,
) -> tuple[str, str, list[Probe]]:
    """Bisect a disagreeing direction down to single coordinates and triage those.

    Returns ``(verdict, note, coordinate_probes_found)``. Stops at the first confirmed
    mismatch. A half that agrees clears itself; when the first half agrees, the error must
    sit in the second (the directional derivative is linear in the direction), which is then
    split without probing it.
    """
    leaves: list[Probe] = []
    stack: list[tuple[int, int, bool]] = [(lo, hi, True)]  # (range, known to disagree)
    probes = 0
    while stack and probes < max_probes:
        a, b, known_bad = stack.pop()
        if not known_bad:
            probes += 1
            if probe_direction(ctx, t, backup, signs, a, b, h, rtol).verdict == "ok":
                continue
        if b - a == 1:
            index = tuple(int(i) for i in np.unravel_index(a, t.work.shape))
            analytic = float(t.grad.reshape(-1)[a])
            numeric, used = central_coord(ctx.ev, t, index, h)
            tol = ctx.tolerance(rtol, used)
            probe = Probe(
                t.name, index, analytic, numeric, tol.rel_error(analytic, numeric), "ok", used
            )
            if not tol.agree(analytic, numeric):
                if is_clipped(ctx, analytic, numeric):
                    probe.verdict, probe.note = "clipped", clipped_note(ctx.clip_bound)
                else:
                    probe.verdict, probe.resolved, probe.note = triage_coordinate(
                        ctx, t, index, analytic, numeric, used, rtol
                    )
            leaves.append(probe)
            if probe.verdict == "mismatch":
                return "mismatch", f"localized to {probe.label}", leaves
            continue
        mid = (a + b) // 2
        probes += 1
        if probe_direction(ctx, t, backup, signs, a, mid, h, rtol).verdict == "ok":
            stack.append((mid, b, True))
        else:
            stack.append((mid, b, False))
            stack.append((a, mid, True))
    if any(p.verdict == "clipped" for p in leaves):
        verdict, note = "clipped", "localized to coordinates at the clipping bound"
    elif any(p.verdict == "kink" for p in leaves):
        verdict, note = "kink", "crosses non-differentiable points"
    else:
        verdict, note = "noise", "disagreement not localized to any coordinate"
    if stack:
        note += f" (search stopped after {max_probes} probes)"
    return verdict, note, leaves
