"""Triage: re-examine a disagreeing probe and say *why* it disagrees.

- coordinate: one-sided differences with a smaller step tell a kink (they differ, and the
  analytic value is one of them or between them) from a smooth point; at a smooth point a
  step ten times larger or smaller tells floating-point noise from a real mismatch.
- direction: a random direction crosses many kinks, each coordinate on its own side, so a
  disagreement is localized first: the direction is split in halves and probed again, down to
  single coordinates (O(log n) evaluations for one bad coordinate), which are then triaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.check._probes import Evaluator, central_coord, directional, one_sided_coord
from gradwatch.check._steps import one_sided_step, roundoff_atol
from gradwatch.check.report import Probe

__all__ = [
    "Tolerance",
    "localize_direction",
    "probe_direction",
    "triage_coordinate",
    "triage_direction",
]


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

    def tolerance(self, rtol: float, step: float) -> Tolerance:
        return Tolerance(rtol, roundoff_atol(self.loss_eps, self.j0, step) + self.extra_atol)


def triage_coordinate(
    ctx: Context, t: Tensor, index: tuple[int, ...], analytic: float, h: float, rtol: float
) -> tuple[str, float, str]:
    """Classify a disagreeing coordinate; returns ``(verdict, resolved_rel_error, note)``."""
    h1 = one_sided_step(h, ctx.loss_eps)
    tol1 = ctx.tolerance(rtol, h1)
    fwd, bwd = one_sided_coord(ctx.ev, t, index, h1, ctx.j0)
    best = min(tol1.rel_error(analytic, fwd), tol1.rel_error(analytic, bwd))
    if not tol1.agree(fwd, bwd):
        # Non-differentiable here: backprop may legitimately return either side (ReLU at 0).
        lo, hi = min(fwd, bwd), max(fwd, bwd)
        if tol1.agree(analytic, fwd) or tol1.agree(analytic, bwd) or lo <= analytic <= hi:
            return (
                "kink",
                0.0 if lo <= analytic <= hi else best,
                (f"one-sided derivatives {bwd:.6g} (left) and {fwd:.6g} (right) differ"),
            )
        return (
            "mismatch",
            best,
            (f"at a kink: left {bwd:.6g}, right {fwd:.6g}, analytic matches neither"),
        )
    mid = 0.5 * (fwd + bwd)
    if tol1.agree(analytic, mid):
        # Smooth at this point with a small step: the first step crossed a nearby kink or met
        # truncation error; either way the gradient is right.
        return "noise", tol1.rel_error(analytic, mid), "agrees with a smaller step"
    for factor in (0.1, 10.0):
        numeric, used = central_coord(ctx.ev, t, index, h * factor)
        tol = ctx.tolerance(rtol, used)
        if tol.agree(analytic, numeric):
            return "noise", tol.rel_error(analytic, numeric), f"agrees with step {used:.1e}"
    return "mismatch", tol1.rel_error(analytic, mid), f"smooth here: numeric {mid:.6g}"


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
    h: float,
    rtol: float,
    max_probes: int,
) -> tuple[str, float, str, list[Probe]]:
    """Classify a disagreeing whole-tensor direction: ``(verdict, resolved_error, note, leaves)``.

    First the same direction with a step ten times smaller: a bug's error does not depend on
    the step, while kinks crossed by the first step (ReLU units whose input was within the
    step of 0) mostly are not crossed any more, and truncation error falls a hundredfold. Only
    a direction that still disagrees is bisected to coordinates.
    """
    size = t.work.size
    small = probe_direction(ctx, t, backup, signs, 0, size, h / 10, rtol)
    if small.verdict == "ok":
        return (
            "noise",
            small.rel_error,
            f"agrees with step {h / 10:.1e} (kink or truncation within the step)",
            [],
        )
    verdict, note, leaves = localize_direction(ctx, t, backup, signs, 0, size, h, rtol, max_probes)
    resolved = max((p.rel_error for p in leaves if p.verdict == "mismatch"), default=0.0)
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
                verdict, resolved, note = triage_coordinate(ctx, t, index, analytic, used, rtol)
                probe.verdict, probe.note = verdict, note
                probe.resolved = resolved
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
    if any(p.verdict == "kink" for p in leaves):
        verdict, note = "kink", "crosses non-differentiable points"
    else:
        verdict, note = "noise", "disagreement not localized to any coordinate"
    if stack:
        note += f" (search stopped after {max_probes} probes)"
    return verdict, note, leaves
