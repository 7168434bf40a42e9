"""Alert detectors: each an immutable state plus a pure ``update`` (optax style).

    det = loss_divergence(factor=10.0, patience=10)
    state = det.init()
    finding, state = det.update(state, StepObservation(step=1, loss=9025.0))
    if finding is not None: print(finding.message)

A detector never mutates its state and never does I/O, so a run can be replayed from its
journal (or evaluated server-side) and give the same findings. Cooldown, de-duplication and
severity overrides live in :mod:`gradwatch.alerts.engine`, not here.

Every tolerance is a named parameter with a documented default; :data:`DETECTORS` lists each
rule type with its parameters, which is what the YAML schema in :mod:`gradwatch.config`
validates against.
"""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import fnmatch
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from gradwatch import schema
from gradwatch.alerts.observations import CheckObservation, StepObservation
from gradwatch.errors import InputError

__all__ = [
    "DETECTORS",
    "PROBLEMS",
    "Detector",
    "DetectorSpec",
    "Finding",
    "Param",
    "baseline_drift",
    "build_detector",
    "check_failure",
    "dead_units",
    "exploding_gradients",
    "grad_norm_drift",
    "loss_divergence",
    "nonfinite",
    "rel_error_drift",
    "saturated_units",
    "slow_learning",
    "stale_run",
    "stalled_learning",
    "stuck_loss",
    "threshold",
    "vanishing_gradients",
]

Observation = StepObservation | CheckObservation

# Relative-error bands of gradient checks (contracts / course notes): above 1e-2 almost
# surely a bug, 1e-4..1e-2 suspicious, below 1e-7 good.
REL_ERROR_CRITICAL = 1e-2
REL_ERROR_WARNING = 1e-4
REL_ERROR_GOOD = 1e-7
# A correct backprop's check error grows as training shrinks the gradients (round-off over
# |g|): a clean MLP drifts from 1e-9 to 1e-7. Drift below this is not worth an alert.
DRIFT_IGNORE_BELOW = 1e-6
# Checks of float32 (and lower) tensors work to a 200x looser tolerance (2e-3 against 1e-5).
LOW_PRECISION = ("float32", "float16", "bfloat16")
LOW_PRECISION_ERROR_SCALE = 200.0
# Floor for logs of norms and errors: keeps log(0) finite without changing real values.
_TINY = 1e-300


class Finding(NamedTuple):
    """What a detector reports when it fires.

    ``severity`` is the detector's suggestion (``None``: the rule decides); ``details`` is
    JSON-serializable.
    """

    message: str
    details: Mapping[str, Any]
    severity: str | None = None


class Detector(NamedTuple):
    """``init() -> state`` and the pure ``update(state, observation) -> (finding|None, state)``."""

    init: Callable[[], Any]
    update: Callable[[Any, Observation], tuple[Finding | None, Any]]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _sortable(x: float) -> float:
    return math.inf if math.isnan(x) else x


def _band(rel_error: float, critical: float, warning: float) -> str:
    if not rel_error <= critical:  # NaN too: a check that cannot even compare is a bug
        return "critical"
    if rel_error >= warning:
        return "warning"
    return "info"


def _num(value: Any) -> float:
    """A report number as float: the check engine writes NaN/Inf as strings ("nan")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _probes(tensor: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [*(tensor.get("coords") or ()), *(tensor.get("directions") or ())]


def _where(probe: Mapping[str, Any]) -> str:
    index = probe.get("index")
    return f"index {list(index)}" if index is not None else "a random direction"


def _fmt_names(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# check_failure

#: Probe verdicts that fail a check. ``clipped`` (an analytic value sitting exactly at a
#: clipping bound), ``kink`` and ``noise`` are explained disagreements and do not.
FAILING_VERDICTS = ("mismatch",)


def _clipped_note(per_param: Mapping[str, Mapping[str, Any]]) -> str:
    clipped = {
        name: sum(p.get("verdict") == "clipped" for p in _probes(t))
        for name, t in per_param.items()
    }
    shown = [f"{n} clipped coordinate(s) in {name}" for name, n in clipped.items() if n]
    return f" ({'; '.join(shown)}: not counted)" if shown else ""


class CheckFailureState(NamedTuple):
    checks: int = 0  # checks seen
    failures: int = 0  # checks that had mismatches


def check_failure(
    critical: float = REL_ERROR_CRITICAL,
    warning: float = REL_ERROR_WARNING,
    min_mismatches: int = 1,
    max_coords: int = 5,
) -> Detector:
    """Fire when a gradient check has mismatching coordinates.

        det = check_failure(critical=1e-2, warning=1e-4)

    Severity comes from the worst failing tensor's max relative error: above ``critical``
    -> critical, from ``warning`` up -> warning, below -> info. The finding names each failing
    tensor and its ``max_coords`` worst mismatching coordinates (index, analytic, numeric).
    A tensor fails when it has at least ``min_mismatches`` coordinates with verdict "mismatch".
    """

    def update(state: CheckFailureState, obs: Observation):
        if not isinstance(obs, CheckObservation):
            return None, state
        per_param = obs.report.get("per_param") or {}
        failing: dict[str, dict[str, Any]] = {}
        for name, tensor in per_param.items():
            if int(tensor.get("num_mismatches") or 0) < min_mismatches:
                continue
            coords = [dict(p) for p in _probes(tensor) if p.get("verdict") in FAILING_VERDICTS]
            # NaN errors sort first: a NaN probe is the most alarming.
            coords.sort(
                key=lambda p: (
                    -_num(p.get("rel_error")) if _finite(_num(p.get("rel_error"))) else -math.inf
                )
            )
            failing[name] = {
                "shape": list(tensor.get("shape") or ()),
                "max_rel_error": _num(tensor.get("max_rel_error")),
                "num_mismatches": int(tensor["num_mismatches"]),
                "worst": coords[:max_coords],
            }
        new_state = state._replace(checks=state.checks + 1)
        if not failing:
            return None, new_state
        order = sorted(failing, key=lambda n: -_sortable(failing[n]["max_rel_error"]))
        worst_name = order[0]
        worst = failing[worst_name]
        where = ""
        if worst["worst"]:
            c = worst["worst"][0]
            where = (
                f" at {_where(c)}: analytic {_num(c.get('analytic')):.6g}"
                f" vs numeric {_num(c.get('numeric')):.6g}"
            )
        message = (
            f"gradient check failed in {_fmt_names(order)}: {worst_name} has "
            f"{worst['num_mismatches']} mismatching coordinate(s), max rel error "
            f"{worst['max_rel_error']:.3g}{where}{_clipped_note(per_param)}"
        )
        details = {
            "tensor": worst_name,
            "tensors": failing,
            "max_rel_error": worst["max_rel_error"],
        }
        severity = _band(worst["max_rel_error"], critical, warning)
        return Finding(message, details, severity), new_state._replace(failures=state.failures + 1)

    return Detector(CheckFailureState, update)


# --------------------------------------------------------------------------------------------
# rel_error_drift


class ErrorHistory(NamedTuple):
    baseline: tuple[float, ...] = ()  # log10 errors of the tensor's first checks
    recent: tuple[float, ...] = ()  # log10 errors of its last `window` checks after those


class RelErrorDriftState(NamedTuple):
    tensors: Mapping[str, ErrorHistory] = {}


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def _error_floor(tensor: Mapping[str, Any], ignore_below: float) -> float:
    """``ignore_below`` is for float64; lower precisions check to a looser tolerance."""
    dtype = str(tensor.get("dtype") or "float64")
    return ignore_below * (LOW_PRECISION_ERROR_SCALE if dtype in LOW_PRECISION else 1.0)


def rel_error_drift(
    window: int = 3,
    baseline_checks: int = 3,
    factor: float = 3.0,
    ignore_below: float = DRIFT_IGNORE_BELOW,
    stop_above: float = REL_ERROR_CRITICAL,
) -> Detector:
    """Fire when a tensor's check error rises and stays up, before it fails the check.

        det = rel_error_drift(window=3, factor=3.0)

    Reads each tensor's ``max_rel_error`` in the check report: the triage-resolved error
    (kinks and round-off resolved by evidence), which is stable from check to check. The
    first ``baseline_checks`` checks of a tensor are its baseline (their median). It fires when
    the median of the last ``window`` checks (one spike is not drift) is ``factor`` x above
    that baseline and at least ``ignore_below``, and the latest is below ``stop_above``
    (above it check_failure speaks). A correct float64 network's error, 1e-9 growing to 1e-7 as its
    gradients shrink, stays under ``ignore_below`` (1e-6) and never fires; a backprop error
    growing x2 every 100 steps from 1e-6 fires near 1e-5 with checks every 50 steps. For
    float32/float16 tensors ``ignore_below`` is scaled by 200, like the check's tolerance.
    """

    def update(state: RelErrorDriftState, obs: Observation):
        if not isinstance(obs, CheckObservation):
            return None, state
        tensors = dict(state.tensors)
        drifting: dict[str, dict[str, float]] = {}
        for name, tensor in (obs.report.get("per_param") or {}).items():
            err = _num(tensor.get("max_rel_error"))
            if not _finite(err):
                continue  # NaN is a failed check: check_failure's
            log_err = math.log10(max(err, _TINY))
            hist = tensors.get(name, ErrorHistory())
            if len(hist.baseline) < baseline_checks:
                tensors[name] = hist._replace(baseline=hist.baseline + (log_err,))
                continue
            hist = tensors[name] = hist._replace(recent=(hist.recent + (log_err,))[-window:])
            base = _median(hist.baseline)
            bar = max(base + math.log10(factor), math.log10(_error_floor(tensor, ignore_below)))
            if len(hist.recent) == window and err < stop_above and _median(hist.recent) >= bar:
                drifting[name] = {
                    "rel_error": err,
                    "baseline": 10**base,
                    "bar": 10**bar,
                    "ratio": 10 ** (log_err - base),
                    "checks": [10**e for e in hist.recent],
                }
        new_state = RelErrorDriftState(tensors)
        if not drifting:
            return None, new_state
        order = sorted(drifting, key=lambda n: -drifting[n]["ratio"])
        d = drifting[order[0]]
        message = (
            f"check error rising in {_fmt_names(order)}: {order[0]} rel error {d['rel_error']:.3g}"
            f" is {d['ratio']:.3g}x its early level {d['baseline']:.3g} (median of the last"
            f" {window} checks above {d['bar']:.3g}); a backprop error growing before it fails?"
        )
        return Finding(message, {"tensor": order[0], "tensors": drifting}), new_state

    return Detector(RelErrorDriftState, update)


# --------------------------------------------------------------------------------------------
# grad_norm_drift


class NormStats(NamedTuple):
    n: int = 0  # observations so far
    mean: float = 0.0  # EWMA of log(norm)
    var: float = 0.0  # EWMA variance of log(norm)
    window: tuple[float, ...] = ()  # last norms, for method="median"
    low: int = 0  # consecutive observations below the vanishing threshold


class GradNormDriftState(NamedTuple):
    tensors: Mapping[str, NormStats] = {}


GRAD_NORM_METHODS = ("zscore", "median")
DIRECTIONS = ("both", "explosion", "vanishing")


def _zscore_step(s: NormStats, x: float, z: float, alpha: float, warmup: int, min_std: float):
    """Score ``x`` (a log norm) against ``s`` and return ``(z or None, new stats)``."""
    if s.n < warmup:
        # Warm-up: plain running mean/variance (Welford), so the first steps' transients
        # are averaged rather than dominating an EWMA started at step 0.
        n = s.n + 1
        delta = x - s.mean
        mean = s.mean + delta / n
        var = s.var + (delta * (x - mean) - s.var) / n
        return None, s._replace(n=n, mean=mean, var=var)
    std = max(math.sqrt(s.var), min_std)
    score = (x - s.mean) / std
    # Winsorize the update: one huge spike must not inflate the variance and blind the detector.
    delta = max(-z * std, min(z * std, x - s.mean))
    mean = s.mean + alpha * delta
    var = (1.0 - alpha) * (s.var + alpha * delta * delta)
    return score, s._replace(n=s.n + 1, mean=mean, var=var)


def grad_norm_drift(
    method: str = "zscore",
    z: float = 6.0,
    alpha: float = 0.05,
    warmup: int = 20,
    min_std: float = 0.1,
    ratio: float = 10.0,
    window: int = 50,
    direction: str = "both",
    vanish_patience: int = 5,
) -> Detector:
    """Fire when a tensor's gradient norm explodes or vanishes relative to its own history.

        det = grad_norm_drift(method="zscore", z=6.0, direction="both")

    Works on log(norm), so explosion and vanishing are symmetric. ``method="zscore"``: z-score
    against an exponentially weighted mean/variance (weight ``alpha``), after ``warmup``
    statistics steps that only accumulate; the std is floored at ``min_std`` (log units,
    0.1 ~ 10 %) so a flat norm does not turn noise into huge scores. ``method="median"``:
    norm / median of the last ``window`` norms above ``ratio`` or below 1/``ratio``.
    ``direction`` is one of ``both``, ``explosion``, ``vanishing``. One huge gradient is news,
    one tiny one is not (minibatch bias gradients dip near zero all the time): vanishing
    fires only after ``vanish_patience`` consecutive low observations.
    """
    if method not in GRAD_NORM_METHODS:
        raise InputError(f"method must be one of {', '.join(GRAD_NORM_METHODS)}, not {method!r}")
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    log_ratio = math.log(ratio)

    def update(state: GradNormDriftState, obs: Observation):
        if not isinstance(obs, StepObservation) or not obs.grad_norms:
            return None, state
        tensors = dict(state.tensors)
        fired: dict[str, dict[str, Any]] = {}
        for name, norm in obs.grad_norms.items():
            if not _finite(norm):
                continue  # NaN/Inf is the nonfinite detector's job
            s = tensors.get(name, NormStats())
            x = math.log(max(float(norm), _TINY))
            if method == "zscore":
                score, tensors[name] = _zscore_step(s, x, z, alpha, warmup, min_std)
                ref = math.exp(s.mean)
                threshold = z
            else:
                enough = len(s.window) >= min(warmup, window)
                ref = _median(s.window) if enough else None
                score = x - math.log(max(ref, _TINY)) if ref is not None else None
                tensors[name] = s._replace(n=s.n + 1, window=(s.window + (float(norm),))[-window:])
                threshold = log_ratio
            if score is None:
                continue
            low = tensors[name].low + 1 if score < -threshold else 0
            tensors[name] = tensors[name]._replace(low=low)
            if score > threshold and direction != "vanishing":
                fired[name] = {
                    "direction": "explosion",
                    "norm": float(norm),
                    "reference": ref,
                    "score": score,
                }
            elif low >= vanish_patience and direction != "explosion":
                fired[name] = {
                    "direction": "vanishing",
                    "norm": float(norm),
                    "reference": ref,
                    "score": score,
                }
        new_state = GradNormDriftState(tensors)
        if not fired:
            return None, new_state
        order = sorted(fired, key=lambda n: -abs(fired[n]["score"]))
        f = fired[order[0]]
        what = "z" if method == "zscore" else "log ratio"
        message = (
            f"gradient norm {f['direction']} in {_fmt_names(order)}: {order[0]} norm "
            f"{f['norm']:.3g} vs typical {f['reference']:.3g} ({what} {f['score']:+.2f})"
        )
        return Finding(message, {"tensor": order[0], "method": method, "tensors": fired}), new_state

    return Detector(GradNormDriftState, update)


# --------------------------------------------------------------------------------------------
# nonfinite


class NonfiniteState(NamedTuple):
    seen: frozenset[str] = frozenset()  # names already reported (first occurrence only)


def nonfinite() -> Detector:
    """Fire at the first step a NaN/Inf shows up in the loss or a tensor (once per name).

        det = nonfinite()

    Sources: a non-finite ``loss`` (reported as "loss"), ``nonfinite`` counts > 0, and
    non-finite grad/param norms of tensors with no count (a norm of finite values can still
    overflow float64: where a count says 0, the tensor is finite and its norm is ignored).
    """

    def update(state: NonfiniteState, obs: Observation):
        if not isinstance(obs, StepObservation):
            return None, state
        bad: dict[str, dict[str, Any]] = {}
        if obs.loss is not None and not math.isfinite(obs.loss):
            bad["loss"] = {"where": "loss", "value": str(obs.loss)}
        for name, count in (obs.nonfinite or {}).items():
            if count:
                bad.setdefault(name, {"where": "grads+params", "count": int(count)})
        for where, norms in (("grads", obs.grad_norms), ("params", obs.param_norms)):
            for name, norm in (norms or {}).items():
                counted = obs.nonfinite is not None and name in obs.nonfinite
                if norm is not None and not math.isfinite(norm) and not counted:
                    bad.setdefault(name, {"where": where, "value": str(norm)})
        new = {n: v for n, v in bad.items() if n not in state.seen}
        if not new:
            return None, state
        names = list(new)
        message = (
            f"NaN/Inf first seen in {_fmt_names(names)}. Usual fix: a lower learning rate, "
            "gradient clipping, guards on log/exp/division (log(p + eps))"
        )
        new_state = NonfiniteState(state.seen | frozenset(names))
        details = {"problem": PROBLEMS["nonfinite"], "tensor": names[0], "tensors": new}
        return Finding(message, details), new_state

    return Detector(NonfiniteState, update)


# --------------------------------------------------------------------------------------------
# loss_divergence


class LossDivergenceState(NamedTuple):
    n: int = 0  # finite losses seen
    log_floor: float = -math.inf  # log of floor x |first loss|: lower losses count as this
    recent: tuple[float, ...] = ()  # log losses of the last `window` steps, oldest first
    best: float = math.inf  # lowest smoothed log level so far
    reference: float = math.nan  # slowly following smoothed log level (EWMA of the level)


def _noise(xs: Sequence[float]) -> float:
    """Std of the step-to-step noise of ``xs``, from their first differences: a steady trend
    (a loss rising x1.5 per step) is not noise, so it does not raise the bar it must pass."""
    if len(xs) < 3:
        return 0.0
    diffs = [b - a for a, b in zip(xs, xs[1:], strict=False)]
    mean = sum(diffs) / len(diffs)
    return math.sqrt(sum((d - mean) ** 2 for d in diffs) / (2 * (len(diffs) - 1)))


def loss_divergence(
    factor: float = 10.0,
    window: int = 30,
    fast: int = 3,
    rise: float = 2.0,
    z: float = 5.0,
    halflife: float = 100.0,
    floor: float = 0.01,
) -> Detector:
    """Fire when the loss blows up or climbs steadily; not on minibatch noise.

        det = loss_divergence(factor=10.0, window=30)

    Minibatch losses are noisy (with batches of 10 a healthy run's batch loss swings far past
    10x its best batch), so no test reads a single batch. On log losses:

    - explosion (``test: factor``): the median of the last ``fast`` losses is ``factor`` x
      above the lowest *level* so far (level: the geometric mean of the last ``window``
      losses) and ``z`` noise-sigmas above it. lr=10 on x0^2 + x1^2 fires at step 3.
    - rise (``test: trend``): the level stands ``rise`` x above a slow reference (an EWMA of
      the level with ``halflife`` steps) and ``z`` standard errors above it. A loss rising
      x1.05 per step from a noisy plateau fires after ~30-55 steps, x1.02 after ~50-120.

    The noise is the run's own step-to-step spread (std of first differences of the log
    losses, so a steady trend is not counted as noise): a run whose batches differ by 100x
    needs a larger excursion to fire. Losses below ``floor`` x the first loss count as that
    floor, so a loss converging to ~0 is not judged against a vanishing best. NaN/Inf losses
    are the ``nonfinite`` rule's.
    """
    log_factor, log_rise = math.log(factor), math.log(rise)
    alpha = 1.0 - 0.5 ** (1.0 / halflife)
    min_level = min(fast, window)  # losses needed before a level counts as the best

    def update(state: LossDivergenceState, obs: Observation):
        loss = obs.loss if isinstance(obs, StepObservation) else None
        if not _finite(loss):
            return None, state
        loss = float(loss)
        log_floor = state.log_floor
        if state.n == 0:  # _TINY: a zero first loss (or floor 0) must not make it -inf
            log_floor = math.log(max(floor * abs(loss), _TINY))
        # A loss <= 0 (a negative log-likelihood can be) counts as the floor: the rule judges
        # rises of a positive loss.
        x = max(math.log(loss), log_floor) if loss > 0 else log_floor
        recent = (state.recent + (x,))[-window:]
        n = state.n + 1
        level = sum(recent) / len(recent)
        best = min(state.best, level) if n >= min_level else state.best
        reference = state.reference
        if n == window:
            reference = level
        elif n > window:
            reference += alpha * (level - reference)
        new_state = LossDivergenceState(n, log_floor, recent, best, reference)
        # Each test first compares with its fixed ratio (cheap), then with the run's own noise
        # (the batch-to-batch spread of log losses): a run whose batches differ by 10x from
        # one another needs a larger excursion to count.
        if n > min_level:
            burst = _median(recent[-fast:])
            if burst - state.best >= log_factor:
                # Noise measured before the burst: an explosion must not set its own bar.
                if burst - state.best >= z * _noise(recent[:-fast]):
                    return _explosion(math.exp(burst), math.exp(state.best), factor), new_state
        if n > window and level - state.reference >= log_rise:
            if level - state.reference >= z * _noise(recent) / math.sqrt(window):
                return _rise(math.exp(level), math.exp(state.reference), window), new_state
        return None, new_state

    return Detector(LossDivergenceState, update)


def _explosion(burst: float, best: float, factor: float) -> Finding:
    message = (
        f"loss diverging: {burst:.4g} (median of the last steps) is above {factor:g}x its "
        f"lowest smoothed level ({best:.4g}); learning rate too large?"
    )
    return Finding(message, {"loss": burst, "best": best, "test": "factor"})


def _rise(level: float, reference: float, window: int) -> Finding:
    message = (
        f"loss rising steadily: its median over the last {window} steps is {level:.4g}, "
        f"{level / reference:.3g}x its recent level ({reference:.4g}); learning rate too large?"
    )
    return Finding(message, {"loss": level, "reference": reference, "test": "trend"})


# --------------------------------------------------------------------------------------------
# stalled_learning


class StalledLearningState(NamedTuple):
    low: Mapping[str, int] = {}  # tensor -> consecutive observations below min_ratio


def stalled_learning(
    min_ratio: float = 1e-6, patience: int = 20, estimate: bool = True
) -> Detector:
    """Fire when updates are too small to learn: ||Δθ||/||θ|| < ``min_ratio`` for long.

        det = stalled_learning(min_ratio=1e-6, patience=20)

    Per tensor, ``patience`` consecutive statistics steps below ``min_ratio`` (healthy SGD is
    around 1e-3; lr=1e-10 on x0^2 + x1^2 gives ~2e-10). Without ``update_ratios`` and with
    ``estimate`` on, the plain-SGD estimate lr * ||g|| / ||θ|| is used.
    """

    def ratios(obs: StepObservation) -> dict[str, float]:
        if obs.update_ratios:
            return {k: v for k, v in obs.update_ratios.items() if _finite(v)}
        if not (estimate and _finite(obs.lr) and obs.grad_norms and obs.param_norms):
            return {}
        out = {}
        for name, g in obs.grad_norms.items():
            p = obs.param_norms.get(name)
            if _finite(g) and _finite(p) and p > 0:
                out[name] = obs.lr * g / p
        return out

    def update(state: StalledLearningState, obs: Observation):
        if not isinstance(obs, StepObservation):
            return None, state
        r = ratios(obs)
        if not r:
            return None, state
        low = dict(state.low)
        for name, value in r.items():
            low[name] = low.get(name, 0) + 1 if value < min_ratio else 0
        new_state = StalledLearningState(low)
        stalled = sorted(n for n in r if low[n] >= patience)
        if not stalled:
            return None, new_state
        worst = min(stalled, key=lambda n: r[n])
        message = (
            f"learning stalled in {_fmt_names(stalled)}: update/weight ratio of {worst} is "
            f"{r[worst]:.3g} < {min_ratio:g} for {low[worst]} observations; learning rate too small?"
        )
        details = {"tensor": worst, "ratios": {n: r[n] for n in stalled}, "lr": obs.lr}
        return Finding(message, details), new_state

    return Detector(StalledLearningState, update)


# --------------------------------------------------------------------------------------------
# Observations by metric name (threshold, baseline_drift)

#: Check-report fields and the metric names the hook logs them under.


def observation_metrics(obs: Observation) -> dict[str, float]:
    """``obs`` as ``{metric name: value}``, named as the hook logs them (finite values only).

    observation_metrics(StepObservation(3, loss=0.5, grad_norms={"W1": 2.0}))
    # {"loss": 0.5, "grad_norm/W1": 2.0}

    The names and the mapping are the run schema's (:func:`gradwatch.schema.step_metrics`,
    :func:`gradwatch.schema.check_metrics`), so a rule sees exactly what lands in MLflow.
    """
    if isinstance(obs, StepObservation):
        out = {**(obs.metrics or {}), **schema.step_metrics(obs)}
    else:
        out = schema.check_metrics(obs.report)
    return {k: float(v) for k, v in out.items() if _finite(v)}


# --------------------------------------------------------------------------------------------
# threshold


class ThresholdState(NamedTuple):
    beyond: Mapping[str, int] = {}  # metric -> consecutive observations beyond the bound


def threshold(
    metric: str = "loss",
    above: float | None = None,
    below: float | None = None,
    n: int = 1,
) -> Detector:
    """Fire when a metric (or each metric matching a glob) is beyond a bound ``n`` times in a row.

        det = threshold("grad_norm/*", above=100.0, n=3)      # any tensor's norm > 100, 3x
        det = threshold("gradcheck/passed", below=0.5)        # every failed check

    ``metric`` is a name as logged in MLflow (``loss``, ``lr``, ``grad_norm/W1``,
    ``gradcheck/max_rel_error``, ``grad_zero_frac/W1``, a user metric in
    ``StepObservation.metrics``) or an fnmatch glob; each matching name keeps its own count.
    Give ``above``, ``below`` or both (outside the band fires). A name not observed at a step
    keeps its count (statistics are logged every few steps).
    """
    if above is None and below is None:
        raise InputError("threshold needs `above` or `below` (or both)")
    if above is not None and below is not None and below >= above:
        raise InputError(f"below ({below:g}) must be smaller than above ({above:g})")
    is_glob = any(c in metric for c in "*?[")

    def beyond(value: float) -> bool:
        return (above is not None and value > above) or (below is not None and value < below)

    def update(state: ThresholdState, obs: Observation):
        values = observation_metrics(obs)
        names = fnmatch.filter(values, metric) if is_glob else [metric] * (metric in values)
        if not names:
            return None, state
        counts = dict(state.beyond)
        for name in names:
            counts[name] = counts.get(name, 0) + 1 if beyond(values[name]) else 0
        new_state = ThresholdState(counts)
        hits = sorted(name for name in names if counts[name] >= n)
        if not hits:
            return None, new_state
        bound = " or ".join(
            f"{op} {v:g}" for op, v in (("above", above), ("below", below)) if v is not None
        )
        first = hits[0]
        times = f" for {counts[first]} observations" if n > 1 else ""
        message = (
            f"{_fmt_names(hits)} {'is' if len(hits) == 1 else 'are'} beyond the bound "
            f"({first} = {values[first]:.4g}, bound: {bound}){times}"
        )
        details = {
            "metric": first,
            "values": {h: values[h] for h in hits},
            "above": above,
            "below": below,
            "n": n,
        }
        return Finding(message, details), new_state

    return Detector(ThresholdState, update)


# --------------------------------------------------------------------------------------------
# dead_units


class ZeroFracHistory(NamedTuple):
    baseline: tuple[float, ...] = ()  # first fractions seen
    high: int = 0  # consecutive observations high above the baseline


class DeadUnitsState(NamedTuple):
    tensors: Mapping[str, ZeroFracHistory] = {}


ZERO_FRAC_PREFIX = schema.GRAD_ZERO_FRAC


def dead_units(
    jump: float = 0.25, min_frac: float = 0.5, patience: int = 5, baseline: int = 5
) -> Detector:
    """Fire when a tensor's fraction of exactly-zero gradients jumps and stays high.

        det = dead_units(jump=0.25, min_frac=0.5, patience=5)

    Reads ``grad_zero_frac/<tensor>`` (from ``StepObservation.metrics``, logged on statistics
    steps). A tensor's first ``baseline`` observations set its usual level (median: a ReLU
    layer has some zeros by nature, a sparse embedding many). It fires when the fraction is at
    least ``min_frac`` and ``jump`` above that level for ``patience`` observations in a row:
    units that stopped receiving gradient (dead ReLUs after a too-large step, a saturated
    layer), not one batch that happened to miss them.
    """

    def update(state: DeadUnitsState, obs: Observation):
        if not isinstance(obs, StepObservation) or not obs.metrics:
            return None, state
        fracs = {
            k[len(ZERO_FRAC_PREFIX) :]: v
            for k, v in obs.metrics.items()
            if k.startswith(ZERO_FRAC_PREFIX) and _finite(v)
        }
        if not fracs:
            return None, state
        tensors = dict(state.tensors)
        dead: dict[str, dict[str, float]] = {}
        for name, frac in fracs.items():
            hist = tensors.get(name, ZeroFracHistory())
            if len(hist.baseline) < baseline:
                tensors[name] = hist._replace(baseline=hist.baseline + (float(frac),))
                continue
            usual = _median(hist.baseline)
            high = hist.high + 1 if frac >= min_frac and frac - usual >= jump else 0
            tensors[name] = hist._replace(high=high)
            if high >= patience:
                dead[name] = {"zero_frac": float(frac), "usual": usual, "observations": high}
        new_state = DeadUnitsState(tensors)
        if not dead:
            return None, new_state
        order = sorted(dead, key=lambda n: -(dead[n]["zero_frac"] - dead[n]["usual"]))
        d = dead[order[0]]
        message = (
            f"dead units in {_fmt_names(order)}: {d['zero_frac']:.0%} of {order[0]}'s gradient "
            f"entries are exactly zero (usually {d['usual']:.0%}) for {d['observations']} "
            "observations: units that no longer learn (ReLUs pushed below 0 by a too-large "
            "step, or a saturated layer). Usual fix: a lower learning rate, He initialization, "
            "leaky ReLU"
        )
        details = {"problem": PROBLEMS["dead_units"], "tensor": order[0], "tensors": dead}
        return Finding(message, details), new_state

    return Detector(DeadUnitsState, update)


# --------------------------------------------------------------------------------------------
# Named training problems: what the default rules diagnose, in the words a reviewer would use.

#: Rule type -> the problem it names (the run report and ``compare`` show these words).
PROBLEMS = schema.PROBLEMS


class LossProgress(NamedTuple):
    """How far the loss has come, sampled on statistics steps (their loss is as good a sample
    as any step's, and the rules that read it then cost nothing on the other steps)."""

    n: int = 0  # finite losses sampled
    step: int = 0  # step of the last sample
    first: float = 0.0  # log of the first loss
    start: float = 0.0  # mean log loss of the first START_SAMPLES samples
    level: float = math.nan  # EWMA of the log loss, halflife LEVEL_HALFLIFE steps


START_SAMPLES = 5
LEVEL_HALFLIFE = 20.0


def _progress(p: LossProgress, step: int, loss: Any) -> LossProgress:
    if not _finite(loss) or loss <= 0:
        return p
    x = math.log(float(loss))
    if p.n == 0:
        return LossProgress(1, step, x, x, x)
    n = p.n + 1
    start = p.start + (x - p.start) / n if n <= START_SAMPLES else p.start
    weight = 1.0 - 0.5 ** (max(step - p.step, 1) / LEVEL_HALFLIFE)  # samples are uneven
    return LossProgress(n, step, p.first, start, p.level + weight * (x - p.level))


def _improved(p: LossProgress) -> float:
    """Loss level now / at the start (1.0: no progress; 0.1: down 10x)."""
    return math.exp(p.level - p.start) if p.n > START_SAMPLES else 1.0


def _statistics_step(obs: Observation) -> bool:
    """An observation that carries statistics or update ratios (not a plain loss step)."""
    return isinstance(obs, StepObservation) and bool(obs.grad_norms or obs.update_ratios)


def _ordered_norms(norms: Mapping[str, float] | None) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in (norms or {}).items() if _finite(v)]


class VanishingState(NamedTuple):
    low: int = 0  # consecutive observations with the early tensors far below the late ones


def vanishing_gradients(ratio: float = 100.0, patience: int = 5) -> Detector:
    """Fire when a tensor of the first half (in the order the hook was given the tensors: the
    input layers, for a model listed input to output) has a gradient norm ``ratio`` x below
    the largest of the second half, for ``patience`` statistics steps in a row.

        det = vanishing_gradients(ratio=100.0, patience=5)

    Deep sigmoid nets and deep tanh nets with too small an init show 300x-80,000x; healthy
    MLPs (batch-1 SGD, deep tanh with Xavier init, 512-wide layers) stay below 30x. Tensors
    with an exactly-zero gradient (a frozen layer fed zeros) are not judged.
    """

    def update(state: VanishingState, obs: Observation):
        if not isinstance(obs, StepObservation) or not obs.grad_norms:
            return None, state
        norms = _ordered_norms(obs.grad_norms)
        half = (len(norms) + 1) // 2
        early = [kv for kv in norms[:half] if kv[1] > 0.0]
        late = norms[half:]
        if len(norms) < 2 or not early or not late:
            return None, state
        low_name, g_low = min(early, key=lambda kv: kv[1])
        top, g_top = max(late, key=lambda kv: kv[1])
        low = state.low + 1 if g_top >= ratio * g_low else 0
        new_state = VanishingState(low)
        if low < patience:
            return None, new_state
        below = g_top / g_low
        message = (
            f"vanishing gradients: {low_name}'s gradient norm {g_low:.3g} is {below:,.0f}x "
            f"below {top}'s ({g_top:.3g}) for {low} statistics steps, so the first layers "
            "barely learn. Usual fix: He/Xavier initialization, ReLU or leaky ReLU instead of "
            "sigmoid/tanh, normalization layers or residual connections"
        )
        details = {
            "problem": PROBLEMS["vanishing_gradients"],
            "tensor": low_name,
            "tensors": [low_name, top],
            "grad_norms": {low_name: g_low, top: g_top},
            "ratio": below,
            "observations": low,
        }
        return Finding(message, details), new_state

    return Detector(VanishingState, update)


class ExplodingState(NamedTuple):
    early: tuple[float, ...] = ()  # total gradient norms of the first `baseline` observations
    high: int = 0  # consecutive observations above factor x the early level


def exploding_gradients(factor: float = 100.0, baseline: int = 5, patience: int = 2) -> Detector:
    """Fire when the total gradient norm grows ``factor`` x above its early level (the median
    of the first ``baseline`` statistics steps) for ``patience`` statistics steps in a row:
    gradients blowing up, usually some time before the loss turns NaN.

        det = exploding_gradients(factor=100.0)

    Healthy runs, noisy batch-1 SGD and early transients included, stay within ~35x.
    """

    def update(state: ExplodingState, obs: Observation):
        if not isinstance(obs, StepObservation) or not obs.grad_norms:
            return None, state
        norms = _ordered_norms(obs.grad_norms)
        if not norms or len(norms) < len(obs.grad_norms):
            return None, state  # NaN/Inf: the nonfinite rule's
        total = math.hypot(*(v for _, v in norms))
        if not math.isfinite(total):
            return None, state
        if len(state.early) < baseline:
            return None, state._replace(early=state.early + (total,))
        ref = _median(state.early)
        high = state.high + 1 if ref > 0 and total >= factor * ref else 0
        new_state = state._replace(high=high)
        if high < patience:
            return None, new_state
        top, g_top = max(norms, key=lambda kv: kv[1])
        message = (
            f"exploding gradients: the total gradient norm {total:.3g} is {total / ref:,.0f}x "
            f"its early level ({ref:.3g}) for {high} statistics steps, largest in {top} "
            f"({g_top:.3g}); NaN is likely next. Usual fix: lower the learning rate (check its "
            "schedule), clip gradients by norm"
        )
        details = {
            "problem": PROBLEMS["exploding_gradients"],
            "tensor": top,
            "grad_norm": total,
            "early": ref,
            "ratio": total / ref,
            "grad_norms": dict(norms),
        }
        return Finding(message, details), new_state

    return Detector(ExplodingState, update)


class SaturatedState(NamedTuple):
    fracs: Mapping[str, float] = {}  # zero-gradient fractions of the last statistics step
    grad_norms: Mapping[str, float] = {}  # gradient norms of the last statistics step
    still: Mapping[str, int] = {}  # tensor -> consecutive measurements mostly zero and still


def saturated_units(min_frac: float = 0.5, ratio: float = 1000.0, patience: int = 3) -> Detector:
    """Fire when most of a tensor's gradient entries are exactly zero and the tensor has all
    but stopped moving: its update/weight ratio ``ratio`` x below the median tensor's, for
    ``patience`` measurements in a row. Units pinned where their derivative is 0 (tanh/sigmoid
    saturated by unnormalized inputs or too large weights; ReLUs dead from the start).

        det = saturated_units(min_frac=0.5, ratio=1000.0)

    Reads ``grad_zero_frac/<tensor>`` and the update ratios. Batch-1 ReLU nets have half their
    gradient entries at zero too, but each step moves them as much as the other tensors; a
    frozen tensor (not updated although its gradient is not zero) is not judged.
    """

    def update(state: SaturatedState, obs: Observation):
        if not isinstance(obs, StepObservation):
            return None, state
        if obs.grad_norms or obs.metrics:
            fracs = {
                k[len(ZERO_FRAC_PREFIX) :]: float(v)
                for k, v in (obs.metrics or {}).items()
                if k.startswith(ZERO_FRAC_PREFIX) and _finite(v)
            }
            state = state._replace(fracs=fracs, grad_norms=dict(_ordered_norms(obs.grad_norms)))
        if not obs.update_ratios:
            return None, state
        moving = sorted(r for r in obs.update_ratios.values() if _finite(r) and r > 0)
        if len(moving) < 2:
            return None, state
        ref = _median(moving)
        still = dict(state.still)
        for name, r in obs.update_ratios.items():
            frac, grad = state.fracs.get(name), state.grad_norms.get(name)
            stopped = _finite(r) and (0 < r <= ref / ratio or (r == 0 and grad == 0.0))
            still[name] = (
                still.get(name, 0) + 1 if frac is not None and frac >= min_frac and stopped else 0
            )
        new_state = state._replace(still=still)
        hits = [n for n in obs.update_ratios if still[n] >= patience]
        if not hits:
            return None, new_state
        worst = max(hits, key=lambda n: state.fracs[n])
        r = obs.update_ratios[worst]
        message = (
            f"saturated units: {state.fracs[worst]:.0%} of {worst}'s gradient entries are "
            f"exactly zero and each step moves it by {r:.2g} of its size, against {ref:.2g} for "
            f"the median tensor ({still[worst]} measurements): units stuck where their derivative "
            "is 0. Usual fix: normalize the inputs, smaller initial weights (Xavier/He), a "
            "lower learning rate; leaky ReLU for dead ReLUs"
        )
        details = {
            "problem": PROBLEMS["saturated_units"],
            "tensor": worst,
            "tensors": {n: state.fracs[n] for n in hits},
            "update_ratio": r,
            "median_update_ratio": ref,
        }
        return Finding(message, details), new_state

    return Detector(SaturatedState, update)


class StuckLossState(NamedTuple):
    loss: LossProgress = LossProgress()
    first_norm: float = math.nan  # total parameter norm at the first statistics step
    norm: float = math.nan  # ... at the last one
    since: int | None = None  # first step of the current stretch (stuck, weights blown up)


def _total_update(ratios: Mapping[str, float], param_norms: Mapping[str, float]) -> float:
    """||Δθ|| / ||θ|| of the whole model from per-tensor ratios (NaN: nothing measured)."""
    # math.hypot scales internally: huge finite norms neither overflow nor raise.
    pairs = [(r, param_norms[n]) for n, r in ratios.items() if _finite(r) and n in param_norms]
    weights = math.hypot(*(p for _, p in pairs))
    if not weights > 0:
        return math.nan
    return math.hypot(*(r * p for r, p in pairs)) / weights


def _param_norms(obs: StepObservation, known: Mapping[str, float]) -> Mapping[str, float]:
    if not obs.param_norms:
        return known
    return {k: float(v) for k, v in obs.param_norms.items() if _finite(v)}


def stuck_loss(steps: int = 50, growth: float = 3.0, above: float = 1.0) -> Detector:
    """Fire when the loss does not come down while the steps are far too large: for ``steps``
    consecutive steps the weights (the total parameter norm) are ``growth`` x their size at the
    first step or more, and the smoothed loss (a geometric mean over ~20 steps) is still at or
    above ``above`` x the first loss. A learning rate so large that every step overshoots: the
    weights blow up and the loss bounces at a high level (without necessarily diverging).

        det = stuck_loss(steps=50, growth=3.0)

    Healthy runs, batch-1 SGD included, keep their total weight norm within ~1.2x of its
    initial value over their first hundreds of steps, and fall below their first loss; a lr
    400x too large grows it 20-200x within 30 steps. A loss that stalls with weights that stay
    put (a pure 2-cycle, or tiny steps: ``slow_learning``) is not this rule's.
    """

    def update(state: StuckLossState, obs: Observation):
        if not _statistics_step(obs):
            return None, state
        progress = _progress(state.loss, obs.step, obs.loss)
        first, now = state.first_norm, state.norm
        if obs.param_norms:
            norms = [float(v) for v in obs.param_norms.values()]
            if all(_finite(v) for v in norms):
                now = math.hypot(*norms)
                first = now if math.isnan(first) else first
        stuck = (
            progress.n > START_SAMPLES
            and first > 0
            and now >= growth * first
            and progress.level >= progress.first + math.log(above)
        )
        since = (obs.step if state.since is None else state.since) if stuck else None
        new_state = StuckLossState(progress, first, now, since)
        if since is None or obs.step - since < steps:
            return None, new_state
        message = (
            f"loss not improving: for {obs.step - since} steps the smoothed loss "
            f"({math.exp(progress.level):.4g}) has stayed above the first loss "
            f"({math.exp(progress.first):.4g}) while the weights grew to {now / first:.3g}x "
            "their initial size: the steps overshoot and the loss bounces. Usual fix: lower "
            "the learning rate (10x), normalize the inputs, clip gradients"
        )
        details = {
            "problem": PROBLEMS["stuck_loss"],
            "loss": math.exp(progress.level),
            "first": math.exp(progress.first),
            "weight_growth": now / first,
            "steps": obs.step - since,
        }
        return Finding(message, details), new_state

    return Detector(StuckLossState, update)


class SlowLearningState(NamedTuple):
    loss: LossProgress = LossProgress()
    param_norms: Mapping[str, float] = {}  # of the last statistics step
    low: int = 0  # consecutive update-ratio observations below max_ratio


def slow_learning(max_ratio: float = 1e-4, stuck: float = 0.5, patience: int = 5) -> Detector:
    """Fire when the whole update, ||Δθ|| / ||θ|| over all tensors, stays below ``max_ratio``
    for ``patience`` measurements while the loss has not fallen below ``stuck`` x its start.

        det = slow_learning(max_ratio=1e-4)

    Healthy SGD moves the weights by ~1e-3 of their size per step; a run converged to ~0 loss
    or at the end of an lr schedule has small updates too, but its loss came down. An update of
    exactly 0 (every tensor frozen) is not judged.
    """

    def update(state: SlowLearningState, obs: Observation):
        if not _statistics_step(obs):
            return None, state
        progress = _progress(state.loss, obs.step, obs.loss)
        norms = _param_norms(obs, state.param_norms)
        if not obs.update_ratios:
            return None, state._replace(loss=progress, param_norms=norms)
        ratio = _total_update(obs.update_ratios, state.param_norms)
        if not ratio > 0:  # nothing measured, or nothing moved at all (frozen)
            return None, SlowLearningState(progress, norms, 0)
        low = state.low + 1 if ratio < max_ratio else 0
        new_state = SlowLearningState(progress, norms, low)
        if low < patience or _improved(progress) < stuck:
            return None, new_state
        message = (
            f"learning too slow: each step moves the weights by {ratio:.2g} of their size "
            f"(healthy: ~1e-3) for {low} measurements, and the loss is still "
            f"{_improved(progress):.0%} of where it started. Usual fix: raise the learning "
            "rate (10x steps), check the lr schedule and the gradient scaling"
        )
        details = {
            "problem": PROBLEMS["slow_learning"],
            "update_ratio": ratio,
            "lr": obs.lr,
            "loss_vs_start": _improved(progress),
        }
        return Finding(message, details), new_state

    return Detector(SlowLearningState, update)


# --------------------------------------------------------------------------------------------
# stale_run


def stale_run(minutes: float = 30.0) -> Detector:
    """A RUNNING run that logged no step for ``minutes``: judged by ``gradwatch monitor`` only.

        rule = Rule("host-died", "stale_run", params={"minutes": 30.0})

    Staleness is the absence of observations, so no observation can reveal it: the monitor
    judges it from the run's metric timestamps (:func:`gradwatch.runs.monitor.stale_run_alert`).
    In the training process the process itself is what goes stale, so the rule is accepted
    there (one rules file serves both) but :class:`~gradwatch.alerts.AlertEngine` skips it;
    this detector, should anything run it, never fires.
    """
    del minutes  # read by the monitor from the rule's params

    def update(state: tuple, obs: Observation):
        return None, state

    return Detector(tuple, update)


# --------------------------------------------------------------------------------------------
# baseline_drift


class BaselineDriftState(NamedTuple):
    compared: int = 0  # metric values compared with the baseline so far


DEFAULT_BASELINE_METRICS = (
    schema.GRAD_NORM + "*",
    schema.CHECK_MAX_REL_ERROR,
    schema.CHECK_REL_ERROR + "*",
)


def baseline_drift(
    baseline: Mapping[str, Mapping[int, float]] | None = None,
    metrics: Sequence[str] = DEFAULT_BASELINE_METRICS,
    factor: float = 3.0,
    error_factor: float = 100.0,
    ignore_below: float = REL_ERROR_GOOD,
    step_tolerance: int = 0,
    run_id: str | None = None,
    experiment: str | None = None,
) -> Detector:
    """Fire when this run departs from a baseline run at the same steps.

        det = baseline_drift({"grad_norm/W1": {100: 0.8, 200: 0.6}}, factor=3.0)

    ``baseline`` maps a metric name to ``{step: value}`` (see
    :func:`gradwatch.alerts.baseline.load_baseline`); only metrics matching a glob in
    ``metrics`` are compared, at the baseline step nearest to this one within
    ``step_tolerance`` steps. Norms fire outside [1/``factor``, ``factor``] x baseline;
    ``gradcheck/*`` errors fire above ``error_factor`` x max(baseline, ``ignore_below``).
    With no baseline the detector never fires. ``run_id`` / ``experiment`` only tell
    :func:`gradwatch.alerts.baseline.attach_baselines` which run to load (default: the latest
    run tagged ``gradwatch.baseline``); the detector itself ignores them.
    """
    del run_id, experiment  # consumed by the loader, see above
    series: dict[str, tuple[list[int], list[float]]] = {}
    for name, points in (baseline or {}).items():
        steps = sorted(int(s) for s in points)
        by_step = {int(s): float(v) for s, v in points.items()}
        series[name] = (steps, [by_step[s] for s in steps])

    def at(name: str, step: int) -> float | None:
        steps, values = series[name]
        i = bisect.bisect_left(steps, step)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(steps) and abs(steps[j] - step) <= step_tolerance:
                if best is None or abs(steps[j] - step) < abs(steps[best] - step):
                    best = j
        return values[best] if best is not None else None

    def update(state: BaselineDriftState, obs: Observation):
        if not series:
            return None, state
        off: dict[str, dict[str, float]] = {}
        compared = 0
        for name, value in observation_metrics(obs).items():
            if name not in series or not any(fnmatch.fnmatchcase(name, p) for p in metrics):
                continue
            base = at(name, obs.step)
            if base is None or not _finite(base):
                continue
            compared += 1
            if name.startswith(schema.CHECK_PREFIX):
                ref = max(base, ignore_below)
                if value > error_factor * ref:
                    off[name] = {"value": value, "baseline": base, "ratio": value / ref}
            elif base > 0 and not 1.0 / factor <= value / base <= factor:
                off[name] = {"value": value, "baseline": base, "ratio": value / base}
        new_state = BaselineDriftState(state.compared + compared)
        if not off:
            return None, new_state
        order = sorted(off, key=lambda n: -abs(math.log(max(off[n]["ratio"], _TINY))))
        o = off[order[0]]
        message = (
            f"departs from baseline run in {_fmt_names(order)}: {order[0]} = {o['value']:.3g} "
            f"vs baseline {o['baseline']:.3g} ({o['ratio']:.3g}x)"
        )
        return Finding(message, {"metric": order[0], "metrics": off}), new_state

    return Detector(BaselineDriftState, update)


# --------------------------------------------------------------------------------------------
# Registry: the schema of every rule type.


@dataclass(frozen=True)
class Param:
    """A detector parameter: default, type (``kind``), bounds and documentation."""

    default: Any
    kind: (
        str  # "float" | "int" | "int_or_auto" | "bool" | "str" | "str_list" | "series" | "mapping"
    )
    doc: str
    minimum: float | None = None
    exclusive: bool = False  # minimum itself not allowed
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    nullable: bool = False  # null / None allowed (means "not given")

    def check(self, value: Any) -> Any:
        """Return ``value`` normalized, or raise InputError describing what is wrong."""
        kind = self.kind
        if value is None and (self.nullable or self.default is None):
            return None
        if kind == "int_or_auto":
            if value == "auto":
                return value
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"expected an integer or auto, got {value!r}")
            kind = "int"
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"expected a number, got {type(value).__name__} {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"expected a finite number, got {value!r}")
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"expected an integer, got {type(value).__name__} {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise InputError(f"expected true or false, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str):
                raise InputError(f"expected a string, got {type(value).__name__} {value!r}")
            if self.choices and value not in self.choices:
                close = difflib.get_close_matches(value, self.choices, n=1, cutoff=0.6)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                raise InputError(f"{value!r} is not one of {', '.join(self.choices)}{hint}")
        elif kind == "str_list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise InputError(f"expected a list of strings, got {value!r}")
            value = tuple(value)
        elif kind == "series":
            if not isinstance(value, Mapping) or not all(
                isinstance(v, Mapping) for v in value.values()
            ):
                raise InputError("expected a mapping metric -> {step: value}")
        if self.minimum is not None and kind in ("float", "int") and value != "auto":
            if value < self.minimum or (self.exclusive and value == self.minimum):
                op = ">" if self.exclusive else ">="
                raise InputError(f"must be {op} {self.minimum:g}, got {value!r}")
        if self.maximum is not None and kind in ("float", "int") and value > self.maximum:
            raise InputError(f"must be <= {self.maximum:g}, got {value!r}")
        return value


# Parameter declarations carry no default: each default is written once, in its factory's
# signature, and copied into DETECTORS by _spec.
_FROM_SIGNATURE: Any = object()


def _param(kind: str, doc: str, **bounds: Any) -> Param:
    return Param(_FROM_SIGNATURE, kind, doc, **bounds)


def _pos(doc: str) -> Param:
    return _param("float", doc, minimum=0.0, exclusive=True)


def _above_one(doc: str) -> Param:
    return _param("float", doc, minimum=1.0, exclusive=True)


def _count(doc: str, minimum: int = 1) -> Param:
    return _param("int", doc, minimum=minimum)


@dataclass(frozen=True)
class DetectorSpec:
    """A rule type: its factory, parameters, default severity (None: the detector decides).

    ``monitor_only``: judged by ``gradwatch monitor`` alone; the engine skips such rules.
    ``statistics_only``: the detector reads nothing but statistics steps (norms, update
    ratios, zero fractions); the engine does not call it on plain loss steps.
    """

    factory: Callable[..., Detector]
    params: Mapping[str, Param]
    summary: str
    severity: str | None = "warning"
    monitor_only: bool = False
    statistics_only: bool = False


def _spec(
    factory: Callable[..., Detector],
    params: Mapping[str, Param],
    summary: str,
    severity: str | None = "warning",
    monitor_only: bool = False,
    statistics_only: bool = False,
) -> DetectorSpec:
    """``params`` with their defaults read from ``factory``'s signature (declared once)."""
    signature = inspect.signature(factory).parameters
    if list(signature) != list(params):  # a programming error: fail at import, in tests
        raise TypeError(
            f"{factory.__name__}: DETECTORS declares {list(params)}, "
            f"the factory takes {list(signature)}"
        )
    filled = {
        name: dataclasses.replace(p, default=signature[name].default) for name, p in params.items()
    }
    return DetectorSpec(factory, filled, summary, severity, monitor_only, statistics_only)


DETECTORS: dict[str, DetectorSpec] = {
    "check_failure": _spec(
        check_failure,
        {
            "critical": _pos("max rel error above this -> critical"),
            "warning": _pos("max rel error from this up -> warning (else info)"),
            "min_mismatches": _count("mismatching coordinates needed for a tensor to fail"),
            "max_coords": _count("worst coordinates reported per tensor"),
        },
        "a gradient check found mismatching coordinates",
        severity=None,
    ),
    "rel_error_drift": _spec(
        rel_error_drift,
        {
            "window": _count("recent checks whose median is compared (one spike is not drift)"),
            "baseline_checks": _count("first checks of a tensor that form its baseline"),
            "factor": _above_one("median of recent errors / baseline at least this fires"),
            "ignore_below": _pos("errors below this never count as drift (float64)"),
            "stop_above": _pos("above this check_failure takes over"),
        },
        "a tensor's check error rising and staying above its own early level",
    ),
    "grad_norm_drift": _spec(
        grad_norm_drift,
        {
            "method": _param(
                "str", "zscore (EWMA) or median (rolling median ratio)", choices=GRAD_NORM_METHODS
            ),
            "z": _pos("|z| of log(norm) that fires (method zscore)"),
            "alpha": _param(
                "float", "EWMA weight of the newest norm", minimum=0.0, exclusive=True, maximum=1.0
            ),
            "warmup": _count("statistics steps that only accumulate before firing", 0),
            "min_std": _pos("floor of the std of log(norm) (0.1 ~ 10 %)"),
            "ratio": _above_one("norm / rolling median that fires (method median)"),
            "window": _count("norms in the rolling median (method median)"),
            "direction": _param("str", "both, explosion or vanishing", choices=DIRECTIONS),
            "vanish_patience": _count("consecutive low observations before vanishing fires"),
        },
        "per-tensor gradient norm explosion or vanishing",
    ),
    "nonfinite": _spec(
        nonfinite, {}, "NaN/Inf in the loss, gradients or parameters", severity="critical"
    ),
    "loss_divergence": _spec(
        loss_divergence,
        {
            "factor": _above_one("recent losses above factor x the lowest smoothed level fire"),
            "window": _count("losses in the smoothed level (a geometric mean)", minimum=3),
            "fast": _count("losses in the median the factor test reads"),
            "rise": _above_one("smoothed level above rise x its slow reference fires"),
            "z": _pos("a finding must also exceed z noise-sigmas of the run"),
            "halflife": _pos("steps: how slowly the rise test's reference follows"),
            "floor": _param(
                "float", "losses below floor x the first loss count as that", minimum=0.0
            ),
        },
        "loss blowing up or climbing steadily (too-large learning rate)",
        severity="critical",
    ),
    "stalled_learning": _spec(
        stalled_learning,
        {
            "min_ratio": _pos("update/weight ratio below this counts as stalled"),
            "patience": _count("consecutive stalled statistics steps that fire"),
            "estimate": _param("bool", "without update_ratios use lr*|g|/|θ| (plain SGD)"),
        },
        "updates too small to learn (too-small learning rate)",
    ),
    "threshold": _spec(
        threshold,
        {
            "metric": _param("str", "metric name or glob, as logged (loss, grad_norm/*, ...)"),
            "above": _param("float", "values above this are beyond the bound", nullable=True),
            "below": _param("float", "values below this are beyond the bound", nullable=True),
            "n": _count("consecutive observations beyond the bound that fire"),
        },
        "any metric above or below a bound for n observations in a row",
    ),
    "dead_units": _spec(
        dead_units,
        {
            "jump": _param(
                "float",
                "rise of the zero fraction over its usual level that counts",
                minimum=0.0,
                exclusive=True,
                maximum=1.0,
            ),
            "min_frac": _param(
                "float",
                "zero fraction that counts as high",
                minimum=0.0,
                exclusive=True,
                maximum=1.0,
            ),
            "patience": _count("consecutive high observations that fire"),
            "baseline": _count("first observations that set a tensor's usual level"),
        },
        "a tensor's fraction of exactly-zero gradients jumps and stays high (dead units)",
        statistics_only=True,
    ),
    "vanishing_gradients": _spec(
        vanishing_gradients,
        {
            "ratio": _above_one("late tensors' largest gradient norm / early ones' smallest"),
            "patience": _count("consecutive statistics steps that fire"),
        },
        "vanishing gradients: the first layers' gradients far below the last layers'",
        statistics_only=True,
    ),
    "exploding_gradients": _spec(
        exploding_gradients,
        {
            "factor": _above_one("total gradient norm / its early level that counts"),
            "baseline": _count("first statistics steps that set the early level"),
            "patience": _count("consecutive statistics steps that fire"),
        },
        "exploding gradients: the total gradient norm far above its early level",
        severity="critical",
        statistics_only=True,
    ),
    "saturated_units": _spec(
        saturated_units,
        {
            "min_frac": _param(
                "float",
                "zero-gradient fraction that counts",
                minimum=0.0,
                exclusive=True,
                maximum=1.0,
            ),
            "ratio": _above_one("median tensor's update ratio / this tensor's that counts"),
            "patience": _count("consecutive measurements that fire"),
        },
        "saturated units: gradients mostly exactly zero and the tensor no longer moving",
        statistics_only=True,
    ),
    "stuck_loss": _spec(
        stuck_loss,
        {
            "steps": _count("consecutive steps stuck, with the weights blown up, that fire"),
            "growth": _above_one("total parameter norm / its first value that counts"),
            "above": _pos("smoothed loss / the first loss at or above which it is stuck"),
        },
        "loss not improving while the weights blow up (learning rate far too high)",
        statistics_only=True,
    ),
    "slow_learning": _spec(
        slow_learning,
        {
            "max_ratio": _pos("total update/weight ratio below this counts as slow"),
            "stuck": _pos("loss level / starting level at or above which it counts"),
            "patience": _count("consecutive measurements that fire"),
        },
        "learning too slow: tiny updates while the loss stays high (lr too small)",
        statistics_only=True,
    ),
    "stale_run": _spec(
        stale_run,
        {"minutes": _pos("minutes without a new step before a RUNNING run counts as stale")},
        "a RUNNING run logged no step for `minutes` (gradwatch monitor only)",
        monitor_only=True,
    ),
    "baseline_drift": _spec(
        baseline_drift,
        {
            "baseline": _param("series", "metric -> {step: value}; filled by the loader"),
            "metrics": _param("str_list", "metric name globs compared"),
            "factor": _above_one("norms outside [1/factor, factor] x baseline fire"),
            "error_factor": _param("float", "check errors above this x baseline fire", minimum=1.0),
            "ignore_below": _pos("check errors below this are never drift"),
            "step_tolerance": _count("match the nearest baseline step within this", 0),
            "run_id": _param("str", "baseline run id (default: latest tagged gradwatch.baseline)"),
            "experiment": _param("str", "experiment searched for the tagged baseline run"),
        },
        "this run departs from a baseline run at the same steps",
    ),
}


def build_detector(kind: str, params: Mapping[str, Any] | None = None) -> Detector:
    """Validate ``params`` against :data:`DETECTORS` ``[kind]`` and build the detector.

        det = build_detector("loss_divergence", {"factor": 5.0})

    Raises InputError naming the parameter (unknown names list the allowed ones).
    """
    if kind not in DETECTORS:
        raise InputError(f"unknown rule type {kind!r}; allowed: {', '.join(DETECTORS)}")
    spec = DETECTORS[kind]
    kwargs = {}
    for name, value in (params or {}).items():
        if name not in spec.params:
            allowed = ", ".join(spec.params) or "none"
            raise InputError(f"unknown parameter {name!r} for {kind}; allowed: {allowed}")
        try:
            kwargs[name] = spec.params[name].check(value)
        except ValueError as exc:
            raise InputError(f"parameter {name!r} of {kind}: {exc}") from None
    return spec.factory(**kwargs)
