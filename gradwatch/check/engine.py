"""``check_gradients``: compare backprop gradients with central finite differences.

The public function validates everything first, then plans probes, runs them with the
parameters perturbed in place, triages disagreements, and always restores every parameter
bit for bit — also when ``loss_fn`` raises or the check is interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradwatch.check._explain import (
    CALL_ORDER_HINT,
    clip_bounds,
    clipping_note,
    disagreement,
    every_tensor_hint,
    factor_hint,
    invariance_note,
    subset_hint,
)
from gradwatch.check._groups import Member, probe_groups
from gradwatch.check._inputs import Tensor, normalize
from gradwatch.check._probes import CheckTimeout, Evaluator, central_coord, loss_precision
from gradwatch.check._steps import central_step, coord_rtol
from gradwatch.check._triage import (
    Context,
    clipped_note,
    is_clipped,
    probe_direction,
    triage_coordinate,
    triage_direction,
)
from gradwatch.check.report import CheckReport, Finding, Probe, TensorReport
from gradwatch.errors import InputError, LossError

__all__ = ["check_gradients", "validate_options", "MODES", "DEFAULT_NUM_SAMPLES", "MAX_NUM_SAMPLES"]

MODES = ("auto", "sampled", "directional", "full")
DEFAULT_NUM_SAMPLES = 32
#: More samples than this is a typo (or a wish for mode="full"), not a plan.
MAX_NUM_SAMPLES = 2**31 - 1
#: Two calls at the same parameters may differ by this many ulps of the loss before the loss
#: is called non-deterministic (summation order can legitimately differ by an ulp or two).
STOCHASTIC_ULPS = 16.0
#: Tensors beyond which (and beyond num_samples / 2) they are probed in shared groups: up to
#: this many, every tensor gets its own direction (a check then costs at most
#: 2·num_samples + 2·GROUPED_ABOVE + 2 evaluations when it passes); above, about
#: 3·num_samples + 2 whatever the number of tensors.
GROUPED_ABOVE = 16
#: Disagreeing coordinates triaged per tensor until this many mismatches are confirmed: the
#: tensor has failed, the rest (and its directions) inherit the verdict without evaluations,
#: so a failing check costs little more than a passing one.
MAX_CONFIRMED_PER_TENSOR = 1


def check_gradients(
    loss_fn: Callable[[Any], Any],
    params: Any,
    grads: Any,
    mode: str = "auto",
    num_samples: int = DEFAULT_NUM_SAMPLES,
    eps: float | None = None,
    seed: int | None = None,
    *,
    lr: float | None = None,
    first_step: bool = False,
    timeout: float | None = None,
) -> CheckReport:
    """Check backprop gradients against central finite differences.

        report = gradwatch.check_gradients(lambda p: forward(p, X, Y), params, grads)
        assert report.passed, str(report)

    Args:
        loss_fn: ``loss_fn(params) -> float``, the loss at the given parameters (bind the batch
            in a closure). It receives a shallow copy of the ``params`` container holding the
            same arrays (float64 copies of float32 tensors), so rebinding or adding keys
            inside ``loss_fn`` never changes the caller's dict.
        params: dict of float arrays (``{"W1": ..., "b1": ...}``), a namedtuple of arrays
            (tensors named by its fields) or a list/tuple of arrays.
            Perturbed in place and restored bit for bit; never replaced.
        grads: the backprop gradients, keyed like ``params`` or ``"dW1"`` for ``"W1"`` (a list
            in the same order for list params); same shapes as the parameters.
        mode: ``"auto"`` (sampled coordinates plus one random-direction probe per tensor, so a
            bug confined to one coordinate of any tensor is still caught), ``"sampled"``
            (seeded random coordinates, every tensor covered), ``"directional"`` (random
            directions only, 2 evaluations each) or ``"full"`` (every coordinate: 2n
            evaluations, the classic method).
        num_samples: coordinates (or directions) to probe in the sampled modes, spread over the
            tensors with at least one per tensor; with more than ``GROUPED_ABOVE`` (16) and
            ``num_samples / 2`` tensors, half of them coordinates on tensors drawn at random
            and half shared directions over groups of tensors (every tensor covered), so the
            cost stays about 3·num_samples + 2 evaluations whatever the number of tensors.
        eps: ``None`` picks the central-difference step per tensor as (100·EPS)^(1/3)·max(1, rms),
            EPS of the loss's precision (see ``gradwatch.check._steps``); a float forces that step everywhere.
        seed: seeds the choice of coordinates and directions; ``None`` draws one and records it
            in ``report.seed`` so any check can be repeated.
        lr: the learning rate of a plain SGD update, when known: if every tensor disagrees,
            the check re-evaluates at θ + lr·g (the parameters before such an update) to
            confirm or rule out "step() called after the update".
        first_step: True when these are the loop's first gradients (none can be stale).
        timeout: seconds after which no further loss evaluation starts: the check ends
            INCONCLUSIVE with the probes it made (a mismatch already confirmed still fails).

    Returns:
        A :class:`CheckReport`; ``report.passed`` is False only for mismatches (backprop bugs,
        non-finite gradient entries) or an inconclusive check (a non-deterministic loss);
        noise, kinks and element-wise clipped coordinates do not fail. ``max_rel_error`` is
        what remains after triage (see :class:`TensorReport`). ``finding`` is the verdict in
        words (the tensors, a factor, the likeliest cause); notes add clipping and invariance.

    Raises:
        InputError: malformed params/grads or options (before any evaluation).
        LossError: ``loss_fn`` did not return a finite scalar.
    """
    validate_options(mode, num_samples, eps, seed)
    if lr is not None and not (isinstance(lr, (int, float, np.floating)) and math.isfinite(lr)):
        raise InputError(f"lr must be a finite float or None; got {lr!r}")
    if timeout is not None and not (
        isinstance(timeout, (int, float, np.floating)) and timeout > 0 and math.isfinite(timeout)
    ):
        raise InputError(f"timeout must be a positive number of seconds or None; got {timeout!r}")
    if not callable(loss_fn):
        raise InputError(
            f"loss_fn must be callable as loss_fn(params) -> float; got {type(loss_fn).__name__}"
        )
    seed = int(np.random.SeedSequence().entropy % (2**32)) if seed is None else int(seed)
    started = time.perf_counter()
    tensors, work_params, _ = normalize(params, grads, upcast=True)
    refused = _nonfinite_gradients(tensors, mode, seed, started)
    if refused is not None:
        return refused
    snapshots = [t.array.copy() for t in tensors]
    for t, snap in zip(tensors, snapshots):
        t.snapshot = snap  # read-only; also the directional probes' base values
    try:
        plan = _Plan(mode, int(num_samples), eps, seed, lr, first_step, timeout)
        return _run(loss_fn, params, tensors, work_params, plan, started)
    finally:
        for t, snap in zip(tensors, snapshots):
            np.copyto(t.array, snap)


#: Non-finite gradient entries listed per tensor (the note gives the count of all of them).
LISTED_NONFINITE = 5


def _nonfinite_gradients(tensors: list[Tensor], mode, seed, started) -> CheckReport | None:
    """Fail the check at once when any analytic gradient entry is NaN or ±inf.

    One ``isfinite`` pass over every gradient, whether or not a coordinate would be drawn: a
    non-finite gradient is wrong whatever the loss does, and no finite difference is needed
    (none is evaluated) to say so.
    """
    bad = {t.name: np.flatnonzero(~np.isfinite(t.grad)) for t in tensors}
    if not any(flat.size for flat in bad.values()):
        return None
    per_param, notes, bad_names = {}, [], []
    for t in tensors:
        tr = TensorReport(t.name, tuple(t.array.shape), str(t.array.dtype), 0.0)
        per_param[t.name] = tr
        flat_bad = bad[t.name]
        for flat in flat_bad[:LISTED_NONFINITE]:
            index = tuple(int(i) for i in np.unravel_index(int(flat), t.array.shape))
            value = float(t.grad.reshape(-1)[flat])
            tr.coords.append(
                Probe(
                    t.name,
                    index,
                    value,
                    math.nan,
                    math.inf,
                    "mismatch",
                    note="analytic gradient is not finite",
                )
            )
        if flat_bad.size:
            bad_names.append(t.name)
            shown = ", ".join(
                f"{p.label} = {p.analytic}" for p in tr.coords[: min(3, flat_bad.size)]
            )
            more = f" and {flat_bad.size - 3} more" if flat_bad.size > 3 else ""
            notes.append(
                f"the analytic gradient of '{t.name}' is not finite in {flat_bad.size} of "
                f"{t.grad.size} entries ({shown}{more}): backprop overflowed or divided by zero "
                "(or the loss already diverged); loss_fn was not evaluated"
            )
    return CheckReport(
        passed=False,
        status="failed",
        max_rel_error=math.inf,
        difference=math.nan,
        num_evals=0,
        seconds=time.perf_counter() - started,
        mode=mode,
        seed=seed,
        loss=math.nan,
        stochastic_loss=False,
        per_param=per_param,
        notes=notes,
        finding=Finding(
            "bug",
            tuple(bad_names),
            None,
            f"the gradient of {', '.join(bad_names)} holds NaN or ±inf: backprop overflowed or "
            "divided by zero (or the loss already diverged)",
        ),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def validate_options(
    mode: str = "auto",
    num_samples: Any = DEFAULT_NUM_SAMPLES,
    eps: Any = None,
    seed: Any = None,
) -> None:
    """Raise :class:`InputError` naming the first bad check option (the same rules for
    arguments and configuration files).

        validate_options(mode="auto", num_samples=32, eps=None, seed=0)
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not _is_int(num_samples) or not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise InputError(
            f"num_samples must be an integer from 1 to {MAX_NUM_SAMPLES}; got {num_samples!r} "
            "(to check every coordinate use mode='full')"
        )
    if eps is not None and not (
        isinstance(eps, (int, float, np.floating))
        and not isinstance(eps, bool)
        and math.isfinite(eps)
        and eps > 0
    ):
        raise InputError(f"eps must be a positive float or None (automatic); got {eps!r}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**64):
        raise InputError(
            f"seed must be an integer from 0 to 2**64 - 1, or None (drawn and recorded); "
            f"got {seed!r}"
        )


@dataclass(frozen=True)
class _Plan:
    """The check's options, validated."""

    mode: str
    num_samples: int
    eps: float | None
    seed: int
    lr: float | None
    first_step: bool
    timeout: float | None


@dataclass
class _Probed:
    """One tensor's probing context: kept for the tests of hypotheses after the probes."""

    tensor: Tensor
    ctx: Context
    step: float
    rtol: float


def _run(loss_fn, params, tensors, work_params, plan: _Plan, started: float) -> CheckReport:
    notes: list[str] = []
    deadline = None if plan.timeout is None else started + plan.timeout
    ev = Evaluator(loss_fn, work_params, deadline)
    if work_params is not params:
        # float32 parameters are checked on float64 copies, if the loss works on them.
        ev, tensors, note = _choose_precision(loss_fn, params, work_params, tensors, deadline)
        if note:
            notes.append(note)
    per_param = {
        t.name: TensorReport(t.name, tuple(t.array.shape), str(t.array.dtype), 0.0) for t in tensors
    }
    probed: dict[str, _Probed] = {}
    groups: list[Probe] = []
    try:
        j0 = ev()
        if not math.isfinite(j0):
            raise LossError(
                f"loss_fn returned {j0} at the current parameters: a gradient check needs a "
                "finite loss (training has already diverged or the loss has log(0))"
            )
        loss_eps = loss_precision(ev.last_raw)
        if any(t.work is t.array and t.array.dtype.itemsize < 8 for t in tensors):
            # Checked in their own precision: the loss carries that round-off, whatever it returns.
            loss_eps = max([loss_eps] + [float(np.finfo(t.array.dtype).eps) for t in tensors])
        j0_again = ev()
        if abs(j0_again - j0) > STOCHASTIC_ULPS * loss_eps * max(abs(j0), 1e-300):
            return _stochastic(per_param, ev, started, plan, j0, j0_again, notes)
        groups.extend(_probe_all(ev, tensors, per_param, probed, plan, j0, loss_eps))
    except CheckTimeout:
        report = _timed_out(per_param, probed, ev, started, plan, notes)
    else:
        report = _conclude(ev, per_param, probed, plan, started, j0, notes)
    report.groups = groups
    return report


def _probe_all(
    ev, tensors, per_param, probed, plan: _Plan, j0: float, loss_eps: float
) -> list[Probe]:
    """Probe every tensor; returns the shared group probes (none unless there are more
    tensors than ``num_samples / 2``)."""
    rng = np.random.default_rng(plan.seed)
    checkable = [t for t in tensors if t.array.size > 0]
    bounds = clip_bounds(checkable)
    if plan.mode != "full" and len(checkable) > max(GROUPED_ABOVE, plan.num_samples // 2):
        return _probe_grouped(ev, checkable, per_param, probed, plan, j0, loss_eps, bounds, rng)
    counts = _allocate(checkable, plan.num_samples)
    for t in checkable:
        ctx, h, rtol = _tensor_context(t, ev, j0, loss_eps, plan.eps, bounds)
        tr = per_param[t.name]
        tr.step = h
        probed[t.name] = _Probed(t, ctx, h, rtol)
        if plan.mode in ("auto", "sampled", "full"):
            count = t.array.size if plan.mode == "full" else counts[t.name]
            _probe_coordinates(ctx, t, tr, rng, count, h, rtol, full=(plan.mode == "full"))
        if plan.mode in ("auto", "directional"):
            directions = 1 if plan.mode == "auto" else counts[t.name]
            _probe_directions(ctx, t, tr, rng, directions, h, rtol)
        tr.invariant = _is_invariant(tr, ctx.tolerance(rtol, h).atol)
    return []


def _tensor_context(t: Tensor, ev, j0, loss_eps, eps, bounds) -> tuple[Context, float, float]:
    """``(context, step, rtol)`` of one tensor: its step and the tolerances its precision allows."""
    h = float(eps) if eps is not None else central_step(t.work, loss_eps)
    grad_eps = float(np.finfo(t.grad_dtype).eps)
    rtol = max(coord_rtol(loss_eps), coord_rtol(grad_eps))
    extra_atol = 0.0
    if grad_eps > np.finfo(np.float64).eps * 1.01:
        # A float32 analytic gradient carries round-off relative to the tensor's scale.
        extra_atol = math.sqrt(grad_eps) * float(np.sqrt(np.mean(t.grad**2)))
    return Context(ev, j0, loss_eps, extra_atol, bounds.get(t.name)), h, rtol


def _probe_grouped(
    ev, checkable, per_param, probed, plan, j0, loss_eps, bounds, rng
) -> list[Probe]:
    """More tensors than ``GROUPED_ABOVE`` and ``num_samples / 2``: a cost bounded by ``num_samples``, not by the
    number of tensors. ``num_samples / 2`` coordinates (modes auto and sampled) on tensors
    drawn at random, and ``num_samples / 2`` shared directions over groups of tensors (all
    of them covered), localized by bisection only when a group disagrees."""
    members = []
    for t in checkable:
        ctx, h, rtol = _tensor_context(t, ev, j0, loss_eps, plan.eps, bounds)
        tr = per_param[t.name]
        tr.step = h
        probed[t.name] = _Probed(t, ctx, h, rtol)
        members.append(Member(t, tr, ctx, h, rtol))
    half = max(1, plan.num_samples // 2)
    if plan.mode in ("auto", "sampled"):
        weights = np.sqrt([t.array.size for t in checkable])
        count = min(half, len(checkable))
        picks = rng.choice(len(checkable), size=count, replace=False, p=weights / weights.sum())
        for i in sorted(int(i) for i in picks):
            m = members[i]
            _probe_coordinates(m.ctx, m.tensor, m.report, rng, 1, m.step, m.rtol, full=False)
    groups = half if plan.mode != "directional" else plan.num_samples
    return probe_groups(ev, members, groups, rng, j0, loss_eps)


def _is_invariant(tr: TensorReport, atol: float) -> bool:
    """Every probe's numeric and analytic values at round-off level: the loss does not
    (measurably) depend on the tensor here."""
    return bool(tr.probes) and all(
        abs(p.analytic) <= atol and abs(p.numeric) <= atol and p.verdict != "mismatch"
        for p in tr.probes
    )


def _stochastic(per_param, ev, started, plan, j0, j0_again, notes) -> CheckReport:
    hint = (
        f"loss_fn is non-deterministic: two calls at the same parameters returned {j0!r} and "
        f"{j0_again!r}. Finite differences need the same loss every call: fix the random "
        "state inside loss_fn (a fixed dropout mask, or save numpy's RNG state before the "
        "forward pass and restore it in loss_fn), or evaluate without dropout/noise"
    )
    notes.append(hint)
    finding = Finding("stochastic", (), None, hint)
    return _report(per_param, "inconclusive", ev, started, plan, j0, True, notes, finding)


def _timed_out(per_param, probed, ev, started, plan, notes) -> CheckReport:
    covered = [name for name, tr in per_param.items() if tr.probes]
    hint = (
        f"check_timeout of {plan.timeout:g} s reached after {ev.count} loss evaluations; "
        f"{len(covered)} of {len(per_param)} tensors probed"
        + (f" ({', '.join(covered[:8])}{' ...' if len(covered) > 8 else ''})" if covered else "")
        + ": raise check_timeout or lower num_samples to cover them all"
    )
    notes.append(hint)
    if any(tr.num_mismatches for tr in per_param.values()):
        # A mismatch confirmed before the limit is a bug whatever the rest would show.
        pattern, failing, factor = disagreement(per_param)
        finding = Finding("bug", tuple(failing), factor, subset_hint(per_param, failing, factor))
        return _report(per_param, "failed", ev, started, plan, math.nan, False, notes, finding)
    finding = Finding("timeout", tuple(covered), None, hint)
    return _report(per_param, "inconclusive", ev, started, plan, math.nan, False, notes, finding)


def _conclude(ev, per_param, probed, plan: _Plan, started, j0, notes) -> CheckReport:
    """The finding: which tensors, what factor, the likeliest cause (hypotheses tested)."""
    note = clipping_note(per_param)
    if note:
        notes.append(note)
    notes.extend(invariance_note(name) for name, tr in per_param.items() if tr.invariant)
    if not any(tr.num_mismatches for tr in per_param.values()):
        return _report(per_param, "passed", ev, started, plan, j0, False, notes, Finding())
    pattern, failing, factor = disagreement(per_param)
    if pattern == "factor":
        finding = Finding("factor", tuple(failing), factor, factor_hint(factor))
    elif pattern == "every":
        call_order = "untested"
        if plan.lr:
            try:
                call_order = _test_call_order(ev, per_param, probed, plan.lr)
            except CheckTimeout:
                call_order = "untested"
        if call_order == "confirmed":
            finding = Finding("call_order", tuple(failing), None, CALL_ORDER_HINT)
        else:
            finding = Finding(
                "bug", tuple(failing), None, every_tensor_hint(call_order, plan.first_step)
            )
    else:
        finding = Finding("bug", tuple(failing), factor, subset_hint(per_param, failing, factor))
    return _report(per_param, "failed", ev, started, plan, j0, False, notes, finding)


def _test_call_order(ev, per_param, probed: dict[str, _Probed], lr: float) -> str:
    """Re-probe each failing tensor's worst mismatching coordinate at θ + lr·g, the
    parameters before a plain SGD update: ``"confirmed"`` when they all agree there (step()
    was called after the update), ``"ruled_out"`` when any still disagrees, ``"untested"``
    when no coordinate mismatched (only directions)."""
    chosen = []
    for name, tr in per_param.items():
        coords = [p for p in tr.coords if p.verdict == "mismatch" and p.index is not None]
        if coords:
            chosen.append((probed[name], max(coords, key=lambda p: p.rel_error)))
    if not chosen:
        return "untested"
    tensors = [pr.tensor for pr in probed.values()]
    saved = [t.work.copy() for t in tensors]
    try:
        for t in tensors:
            np.add(t.work, lr * t.grad, out=t.work, casting="unsafe")
        for pr, probe in chosen:
            numeric, used = central_coord(ev, pr.tensor, probe.index, pr.step)
            if not pr.ctx.tolerance(pr.rtol, used).agree(probe.analytic, numeric):
                return "ruled_out"
    finally:
        for t, copy in zip(tensors, saved):
            np.copyto(t.work, copy)
    return "confirmed"


def _choose_precision(loss_fn, params, work_params, tensors, deadline=None):
    """Use float64 copies of low-precision tensors only if ``loss_fn`` honours them.

    The returned dtype is not proof: a loss may cast to float32 inside and still return a
    Python float. So the copies are nudged by 2^-30 relative — far below float32's resolution,
    far above float64's — and the loss must move. Both calls count in ``num_evals``.
    """
    ev = Evaluator(loss_fn, work_params, deadline)
    upcast = [t for t in tensors if t.work is not t.array]
    try:
        before = ev()
        ok = loss_precision(ev.last_raw) < 1e-10 and math.isfinite(before)
        if ok and any(np.any(t.work) for t in upcast):
            for t in upcast:
                t.work *= 1.0 + 2.0**-30
            try:
                ok = ev() != before
            finally:
                for t in upcast:
                    np.copyto(t.work, t.array)  # float32 -> float64 is exact
    except (LossError, InputError, CheckTimeout):
        raise
    except Exception:  # noqa: BLE001 - a loss that rejects float64 just falls back
        ok = False
    if ok:
        return ev, tensors, ""
    for t in upcast:
        t.work = t.array
    fallback = Evaluator(loss_fn, params, deadline)
    fallback.count = ev.count
    note = (
        "loss_fn does not compute in float64 on float64 copies of the low-precision parameters; "
        "they were checked in their own precision with float32 tolerances"
    )
    return fallback, tensors, note


def _allocate(tensors: list[Tensor], num_samples: int) -> dict[str, int]:
    """Samples per tensor: one each, the rest proportional to sqrt(size), capped at the size.

    sqrt keeps small tensors (biases) from being starved by large weight matrices.
    """
    plan = {t.name: 1 for t in tensors}
    remaining = num_samples - len(tensors)
    if remaining > 0:
        weights = np.array([math.sqrt(t.array.size) for t in tensors])
        extra = np.floor(remaining * weights / weights.sum()).astype(int)
        leftover = remaining - int(extra.sum())
        for i in np.argsort(-weights)[:leftover]:
            extra[i] += 1
        for t, e in zip(tensors, extra):
            plan[t.name] = min(t.array.size, 1 + int(e))
    return plan


def _probe_coordinates(ctx, t: Tensor, tr: TensorReport, rng, count, h, rtol, full: bool) -> None:
    size = t.array.size
    flat_indices = np.arange(size) if full else np.sort(rng.choice(size, size=count, replace=False))
    grad_flat = t.grad.reshape(-1)
    disagreeing: list[Probe] = []
    for flat in flat_indices:
        index = tuple(int(i) for i in np.unravel_index(int(flat), t.array.shape))
        analytic = float(grad_flat[flat])
        numeric, used = central_coord(ctx.ev, t, index, h)
        tol = ctx.tolerance(rtol, used)
        probe = Probe(
            t.name, index, analytic, numeric, tol.rel_error(analytic, numeric), "ok", used
        )
        if not tol.agree(analytic, numeric):  # gradients are finite: checked up front
            disagreeing.append(probe)
        tr.coords.append(probe)
    confirmed = 0
    for probe in sorted(disagreeing, key=lambda p: -p.rel_error):
        if is_clipped(ctx, probe.analytic, probe.numeric):
            probe.verdict, probe.note = "clipped", clipped_note(ctx.clip_bound)
            continue
        if confirmed >= MAX_CONFIRMED_PER_TENSOR:
            probe.verdict, probe.note = "mismatch", "(tensor already confirmed mismatched)"
            continue
        probe.verdict, probe.resolved, probe.note = triage_coordinate(
            ctx, t, probe.index, probe.analytic, probe.numeric, probe.step, rtol
        )
        confirmed += probe.verdict == "mismatch"


def _probe_directions(ctx, t: Tensor, tr: TensorReport, rng, count, h, rtol) -> None:
    size = t.array.size
    backup = t.snapshot if t.work is t.array and t.snapshot is not None else t.work.copy()
    max_probes = 2 * int(math.ceil(math.log2(size + 1))) + 8
    for _ in range(count):
        # ±1 signs as int8: one cheap pass; scaled to a unit vector inside the probe.
        signs = rng.integers(0, 2, size=size, dtype=np.int8) * np.int8(2) - np.int8(1)
        probe = probe_direction(ctx, t, backup, signs, 0, size, h, rtol)
        if probe.verdict != "ok" and tr.num_mismatches:
            # The tensor has failed already: no triage, no bisection (a failing check must
            # not cost many times a passing one).
            probe.note = "(tensor already confirmed mismatched)"
        elif probe.verdict != "ok":
            verdict, resolved, note, leaves = triage_direction(
                ctx, t, backup, signs, probe, rtol, max_probes
            )
            probe.verdict, probe.note = verdict, note
            probe.resolved = resolved
            seen = set(tr.indices)
            tr.coords.extend(leaf for leaf in leaves if leaf.index not in seen)
        tr.directions.append(probe)


def _report(
    per_param, status, ev, started, plan: _Plan, j0, stochastic, notes, finding
) -> CheckReport:
    # The classic difference is over the checked coordinates; over the directions when no
    # coordinate was checked (directional mode).
    use_coords = any(tr.coords for tr in per_param.values())
    probes = [p for tr in per_param.values() for p in (tr.coords if use_coords else tr.directions)]
    a = np.asarray([p.analytic for p in probes])
    n = np.asarray([p.numeric for p in probes])
    denom = float(np.linalg.norm(a) + np.linalg.norm(n)) if a.size else 0.0
    difference = float(np.linalg.norm(a - n)) / denom if denom > 0 else 0.0
    return CheckReport(
        passed=status == "passed",
        status=status,
        max_rel_error=max((tr.max_rel_error for tr in per_param.values()), default=0.0),
        difference=difference,
        num_evals=ev.count,
        seconds=time.perf_counter() - started,
        mode=plan.mode,
        seed=plan.seed,
        loss=j0,
        stochastic_loss=stochastic,
        per_param=per_param,
        notes=notes,
        finding=finding,
    )
