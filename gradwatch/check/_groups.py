"""Many small tensors, one bounded check: shared directional probes over groups of tensors.

A check that probed every tensor on its own would cost at least four loss evaluations per
tensor: with 10,000 tensors, 40,000 evaluations whatever ``num_samples`` says. Instead the
tensors are split into groups; each group is moved at once along one random ±1 direction
(each tensor scaled by its own step), which costs two evaluations whatever its size, and
checks g·v against (J(θ+v) − J(θ−v))/2. Only a group that disagrees is localized, by
bisection over its tensors (the directional derivative is linear in the direction, so when
one half agrees the other holds the disagreement), down to one tensor, which is then
triaged like any tensor's direction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradwatch.check._inputs import Tensor
from gradwatch.check._probes import Evaluator
from gradwatch.check._triage import Context, Tolerance, probe_direction, triage_direction
from gradwatch.check.report import Probe, TensorReport

__all__ = ["Member", "probe_groups"]


@dataclass
class Member:
    """One tensor of a group: its probing context and its share of the random direction."""

    tensor: Tensor
    report: TensorReport
    ctx: Context
    step: float
    rtol: float
    signs: np.ndarray | None = None


def _group_probe(ev: Evaluator, members: list[Member], j0: float, loss_eps: float) -> Probe:
    """Move every member along its signs at once; ``ok`` or ``mismatch`` (see module)."""
    n = sum(m.tensor.work.size for m in members)
    saved = [m.tensor.work.copy() for m in members]
    disps = [m.signs.reshape(m.tensor.work.shape) * (m.step / math.sqrt(n)) for m in members]
    try:
        for m, base, d in zip(members, saved, disps):
            np.add(base, d, out=m.tensor.work, casting="unsafe")
        plus = [m.tensor.work.astype(np.float64) for m in members]
        jp = ev()
        for m, base, d in zip(members, saved, disps):
            np.subtract(base, d, out=m.tensor.work, casting="unsafe")
        halves = [0.5 * (p - m.tensor.work) for p, m in zip(plus, members)]  # realized steps
        jm = ev()
    finally:
        for m, base in zip(members, saved):
            np.copyto(m.tensor.work, base)
    s = math.sqrt(sum(float(np.vdot(r, r)) for r in halves)) or 1.0
    analytic = sum(float(np.vdot(m.tensor.grad, r)) for m, r in zip(members, halves)) / s
    numeric = (jp - jm) / (2 * s)
    weighted = [m.tensor.grad * r for m, r in zip(members, halves)]
    typical = math.sqrt(sum(float(np.vdot(w, w)) for w in weighted)) / s
    base_tol = members[0].ctx.tolerance(max(m.rtol for m in members), s)
    extra = max(m.ctx.extra_atol for m in members)
    tol = Tolerance(base_tol.rtol, max(base_tol.atol + extra, 0.1 * typical * base_tol.rtol))
    finite = math.isfinite(jp) and math.isfinite(jm)
    verdict = "ok" if finite and tol.agree(analytic, numeric) else "mismatch"
    label = f"{len(members)} tensors ({members[0].tensor.name} … {members[-1].tensor.name})"
    rel = tol.rel_error(analytic, numeric) if finite else math.inf
    return Probe(label, None, analytic, numeric, rel, verdict, s, n, note=label)


def _localize(ev, members: list[Member], j0, loss_eps, known_bad: bool, budget: list[int]) -> None:
    """Bisect a disagreeing group down to single tensors; each is probed and triaged along
    its own share of the direction and the probe lands in its :class:`TensorReport`."""
    if budget[0] <= 0:
        return
    if len(members) == 1:
        m = members[0]
        t, tr = m.tensor, m.report
        backup = t.snapshot if t.work is t.array and t.snapshot is not None else t.work.copy()
        probe = probe_direction(m.ctx, t, backup, m.signs, 0, t.work.size, m.step, m.rtol)
        budget[0] -= 1
        if probe.verdict != "ok":
            max_probes = 2 * math.ceil(math.log2(t.work.size + 1)) + 8
            verdict, resolved, note, leaves = triage_direction(
                m.ctx, t, backup, m.signs, probe, m.rtol, max_probes
            )
            probe.verdict, probe.resolved, probe.note = verdict, resolved, note
            seen = set(tr.indices)
            tr.coords.extend(leaf for leaf in leaves if leaf.index not in seen)
        tr.directions.append(probe)
        return
    if not known_bad:
        budget[0] -= 1
        if _group_probe(ev, members, j0, loss_eps).verdict == "ok":
            return
    half = len(members) // 2
    first, second = members[:half], members[half:]
    budget[0] -= 1
    first_bad = _group_probe(ev, first, j0, loss_eps).verdict != "ok"
    if first_bad:
        _localize(ev, first, j0, loss_eps, True, budget)
    # Linear in the direction: when the first half agrees, the second holds the disagreement.
    _localize(ev, second, j0, loss_eps, not first_bad, budget)


def probe_groups(
    ev: Evaluator,
    members: list[Member],
    num_groups: int,
    rng: np.random.Generator,
    j0: float,
    loss_eps: float,
) -> list[Probe]:
    """One shared direction per group of tensors; localize the groups that disagree.

    Returns the group probes (for the report); tensors found disagreeing get their own
    direction probe (and its triage) in their ``TensorReport``.
    """
    for m in members:
        size = m.tensor.work.size
        m.signs = rng.integers(0, 2, size=size, dtype=np.int8) * np.int8(2) - np.int8(1)
    out = []
    for chunk in np.array_split(np.arange(len(members)), max(1, min(num_groups, len(members)))):
        group = [members[i] for i in chunk]
        probe = _group_probe(ev, group, j0, loss_eps)
        out.append(probe)
        if probe.verdict != "ok":
            budget = [4 * math.ceil(math.log2(len(group) + 1)) + 8]
            _localize(ev, group, j0, loss_eps, True, budget)
            if not any(m.report.num_mismatches for m in group):
                probe.verdict = "noise"
                probe.note += ": disagreement not localized to any tensor"
            else:
                bad = [m.tensor.name for m in group if m.report.num_mismatches]
                probe.note += f": localized to {', '.join(bad)}"
    return out
