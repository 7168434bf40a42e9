"""Alert detectors and the engine, driven by real numpy training dynamics (no mocks).

The observations are built the way the hook builds them: plain floats of the loss, per-tensor
gradient/parameter norms, update ratios ||Δθ||/||θ|| and NaN/Inf counts; check reports are
real ``check_gradients(...).to_dict()`` results.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradwatch
import gradwatch.stats
from gradwatch.alerts import (
    AlertEngine,
    CheckObservation,
    Rule,
    StepObservation,
    build_detector,
    default_rules,
)
from gradwatch.alerts.detectors import (
    baseline_drift,
    check_failure,
    grad_norm_drift,
    loss_divergence,
    nonfinite,
    rel_error_drift,
    stalled_learning,
)
from gradwatch.demo import MLP, make_blobs
from gradwatch.errors import ConfigError


def observe(step, params, grads, loss, lr, old_params=None) -> StepObservation:
    """What the hook reports for one step (statistics on every step here)."""
    norms = {k: float(np.linalg.norm(v)) for k, v in params.items()}
    ratios = None
    if old_params is not None:
        ratios = {}
        for k, v in params.items():
            base = float(np.linalg.norm(old_params[k]))
            if base > 0:
                ratios[k] = float(np.linalg.norm(v - old_params[k])) / base
    return StepObservation(
        step=step,
        loss=float(loss),
        lr=lr,
        grad_norms={k: float(np.linalg.norm(g)) for k, g in grads.items()},
        param_norms=norms,
        update_ratios=ratios,
        nonfinite={
            k: int(
                np.size(v) - np.isfinite(v).sum() + np.size(grads[k]) - np.isfinite(grads[k]).sum()
            )
            for k, v in params.items()
        },
    )


def run(detector, observations):
    """Replay ``observations`` through a pure detector; return the steps where it fired."""
    state, fired = detector.init(), []
    for obs in observations:
        finding, state = detector.update(state, obs)
        if finding is not None:
            fired.append((obs.step, finding))
    return fired


# --------------------------------------------------------------------------------------------
# The quadratic of the course notes: f(x) = x0^2 + x1^2, gradient descent from (-3, 4).


def quadratic(lr: float, steps: int, nan_at: int | None = None) -> list[StepObservation]:
    x = np.array([-3.0, 4.0])
    out = []
    with np.errstate(all="ignore"):
        for step in range(steps):
            if step == nan_at:
                x = x.copy()
                x[1] = np.nan
            grad = 2 * x
            loss = float(np.sum(x**2))
            new = x - lr * grad
            out.append(observe(step, {"x": x}, {"x": grad}, loss, lr, None))
            ratio = float(np.linalg.norm(new - x) / np.linalg.norm(x))
            out[-1] = StepObservation(**{**out[-1].__dict__, "update_ratios": {"x": ratio}})
            x = new
    return out


def test_quadratic_dynamics_match_the_course_notes():
    x = np.array([-3.0, 4.0])
    for _ in range(100):
        x = x - 10 * 2 * x
    assert abs(x[0]) > 1e13 or abs(x[1]) > 1e12  # lr=10 blows up
    obs = quadratic(10.0, 100)
    assert obs[-1].loss > 1e26


def test_lr_10_fires_loss_divergence_within_three_steps():
    fired = run(loss_divergence(), quadratic(10.0, 100))
    assert fired, "lr=10 diverges to 1e13: must fire"
    # x361 per step: the median of the last three losses passes 10x the first level at step 3.
    assert fired[0][0] == 3
    assert "diverging" in fired[0][1].message and fired[0][1].details["test"] == "factor"


def test_lr_01_does_not_fire_loss_divergence_nor_stalled():
    obs = quadratic(0.1, 100)
    assert run(loss_divergence(), obs) == []
    assert run(stalled_learning(), obs) == []


def test_lr_1e10_fires_stalled_learning_after_patience():
    obs = quadratic(1e-10, 100)
    fired = run(stalled_learning(min_ratio=1e-6, patience=20), obs)
    assert fired and fired[0][0] == 19  # the 20th consecutive tiny update
    assert fired[0][1].details["tensor"] == "x"
    assert run(loss_divergence(), obs) == []


def test_stalled_learning_estimates_ratio_from_lr_without_update_ratios():
    obs = [StepObservation(**{**o.__dict__, "update_ratios": None}) for o in quadratic(1e-10, 30)]
    assert run(stalled_learning(patience=20), obs)
    obs = [StepObservation(**{**o.__dict__, "update_ratios": None}) for o in quadratic(0.1, 30)]
    assert run(stalled_learning(patience=20), obs) == []


def test_loss_divergence_trend_test_fires_on_a_slow_steady_rise():
    # A flat loss, then +10 % per step: the factor test (x100) cannot see it, the trend can.
    losses = [1.0] * 100 + [1.1**i for i in range(1, 60)]
    obs = [StepObservation(step=i, loss=v) for i, v in enumerate(losses)]
    fired = run(loss_divergence(factor=100.0), obs)
    assert fired and fired[0][1].details["test"] == "trend"
    # The 30-step geometric mean doubles its reference about 15 steps after the rise starts.
    assert 100 < fired[0][0] <= 100 + 20


@pytest.mark.parametrize("k", [0, 7, 42])
def test_nan_at_step_k_fires_nonfinite_at_step_k(k):
    fired = run(nonfinite(), quadratic(0.1, 60, nan_at=k))
    assert [step for step, _ in fired] == [k]  # first occurrence only, then silent
    assert "x" in fired[0][1].details["tensors"] and "loss" in fired[0][1].details["tensors"]


def test_huge_finite_tensors_are_not_called_nonfinite():
    """Finite 1e308 entries: the statistics count no NaN/Inf and the norm of one such entry
    is finite (rescaled, not squared into overflow); a norm that overflows float64 anyway
    raises no ``nonfinite`` alert while the tensor's count says it holds no NaN/Inf."""
    huge = np.full(10, 1e308)
    stats = gradwatch.stats.tensor_stats({"x": huge}, {"x": huge})["x"]
    assert stats.nonfinite == 0 and math.isinf(stats.grad_norm)  # sqrt(10) * 1e308 > max
    assert gradwatch.stats.norm(np.array([1e308, 0.0])) == 1e308
    obs = [
        StepObservation(**{**o.__dict__, "grad_norms": {"x": math.inf}, "nonfinite": {"x": 0}})
        for o in quadratic(0.1, 10)
    ]
    assert run(nonfinite(), obs) == []
    obs[5] = StepObservation(**{**obs[5].__dict__, "nonfinite": {"x": 1}})
    assert [step for step, _ in run(nonfinite(), obs)] == [5]


# --------------------------------------------------------------------------------------------
# A small numpy MLP trained with SGD, checked with the real check engine.


def train_mlp(steps, *, bug_from=None, check_every=100, lr=0.1, seed=0, spike_at=None):
    """Yield observations of ``steps`` SGD steps; db1 gets the classic 4/m bug from ``bug_from``."""
    X, y = make_blobs(n=512, dim=20, classes=3, seed=seed)
    mlp = MLP([20, 32, 3], seed=seed)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.integers(0, len(y), size=64)
        xb, yb = X[idx], y[idx]
        loss, grads = mlp.loss_and_grads(mlp.params, xb, yb)
        grads = {k[1:]: v for k, v in grads.items()}  # "dW1" -> "W1"
        if bug_from is not None and step >= bug_from:
            grads["b1"] = grads["b1"] * 4.0  # db1 = 4/m * sum(dZ1): the planted course bug
        if spike_at is not None and step == spike_at:
            grads["W2"] = grads["W2"] * 1e4
        report = None
        if check_every and step % check_every == 0 and step > 0:
            # Checked where the gradients were computed, before the update.
            report = gradwatch.check_gradients(
                lambda p, xb=xb, yb=yb: mlp.loss(p, xb, yb),
                mlp.params,
                grads,
                num_samples=16,
                seed=step,
            )
        old = {k: v.copy() for k, v in mlp.params.items()}
        for k in mlp.params:
            mlp.params[k] -= lr * grads[k]
        yield observe(step, mlp.params, grads, loss, lr, old)
        if report is not None:
            yield CheckObservation(step=step, report=report.to_dict())


@pytest.fixture(scope="module")
def clean_run():
    return list(train_mlp(2000))


@pytest.fixture(scope="module")
def buggy_run():
    return list(train_mlp(1000, bug_from=500))


def test_2000_clean_mlp_steps_fire_nothing_with_default_rules(clean_run):
    engine = AlertEngine(default_rules())
    alerts = []
    for obs in clean_run:
        alerts += (
            engine.observe_step(obs)
            if isinstance(obs, StepObservation)
            else (engine.observe_check(obs))
        )
    assert alerts == []
    assert engine.state.detectors["check_failure"].checks == 19
    steps = [o for o in clean_run if isinstance(o, StepObservation)]
    assert steps[-1].loss < steps[0].loss / 2  # it really trained


def test_clean_mlp_fires_no_optional_detector_either(clean_run):
    for det in (
        grad_norm_drift(),
        grad_norm_drift(method="median"),
        rel_error_drift(),
        stalled_learning(),
    ):
        assert run(det, clean_run) == []


def test_backprop_bug_at_step_500_fires_check_failure_at_the_next_check_only(buggy_run):
    engine = AlertEngine([Rule("check_failure", "check_failure", cooldown=0)])
    fired = []
    for obs in buggy_run:
        if isinstance(obs, CheckObservation):
            fired += [(a.step, a) for a in engine.observe_check(obs)]
    assert fired[0][0] == 500  # the first check after the bug switched on, not before
    alert = fired[0][1]
    assert alert.details["tensor"] == "b1"
    assert alert.severity == "critical"  # (4-1)/(4+1) = 0.6 relative error
    assert "b1" in alert.message and alert.details["tensors"]["b1"]["worst"]
    assert all(step >= 500 for step, _ in fired)


def test_cooldown_sends_one_alert_per_rule_per_cooldown(buggy_run):
    engine = AlertEngine([Rule("check_failure", "check_failure", cooldown=300)])
    steps = []
    for obs in buggy_run:
        if isinstance(obs, CheckObservation):
            steps += [a.step for a in engine.observe_check(obs)]
    # Checks fail at 500, 600, ..., 900: one alert at 500, the next allowed from 800.
    assert steps == [500, 800]
    assert engine.state.fired == {"check_failure": 2}
    assert engine.state.suppressed == {"check_failure": 3}


def test_escalation_breaks_through_the_cooldown():
    engine = AlertEngine([Rule("div", "loss_divergence", cooldown=1000)])
    det_sev = []
    # A critical finding, then more of them: the later ones are suppressed.
    for i, loss in enumerate([1.0] * 5 + [1e3, 1e6, 1e9, 1e12]):
        det_sev += [(a.step, a.severity) for a in engine.observe_step(StepObservation(i, loss))]
    assert det_sev == [(6, "critical")]
    assert engine.state.suppressed["div"] >= 1
    # A warning rule escalated to critical by the detector passes even within the cooldown.
    report = {"per_param": {"W": {"max_rel_error": 1e-3, "num_mismatches": 1, "coords": []}}}
    worse = {"per_param": {"W": {"max_rel_error": 0.5, "num_mismatches": 1, "coords": []}}}
    engine = AlertEngine([Rule("cf", "check_failure", cooldown=1000)])
    got = [a.severity for a in engine.observe_check(CheckObservation(100, report))]
    got += [a.severity for a in engine.observe_check(CheckObservation(200, report))]
    got += [a.severity for a in engine.observe_check(CheckObservation(300, worse))]
    assert got == ["warning", "critical"]


def test_grad_norm_spike_fires_explosion_at_that_step():
    obs = list(train_mlp(400, check_every=0, spike_at=300))
    fired = run(grad_norm_drift(), obs)
    # The spike itself, then the real aftermath of a 1e4x update (the engine's cooldown
    # turns these into one alert).
    assert fired[0][0] == 300 and all(s < 320 for s, _ in fired)
    assert fired[0][1].details["tensor"] == "W2"
    assert fired[0][1].details["tensors"]["W2"]["direction"] == "explosion"
    fired = run(grad_norm_drift(method="median"), obs)
    assert fired[0][0] == 300
    engine = AlertEngine([Rule("g", "grad_norm_drift", cooldown=200)])
    assert [a.step for o in obs for a in engine.observe_step(o)] == [300]


def test_grad_norm_vanishing_is_detected_and_direction_filters():
    norms = [1.0 + 0.05 * math.sin(i) for i in range(60)] + [1e-4] * 5
    obs = [StepObservation(step=i, grad_norms={"W": n}) for i, n in enumerate(norms)]
    fired = run(grad_norm_drift(vanish_patience=5), obs)
    assert fired[0][0] == 64 and fired[0][1].details["tensors"]["W"]["direction"] == "vanishing"
    assert run(grad_norm_drift(direction="explosion"), obs) == []


def tensor_report(err: float, verdict: str = "ok") -> dict:
    coord = {
        "index": [0],
        "analytic": 1.0,
        "numeric": 1.0 + err,
        "rel_error": err,
        "verdict": verdict,
    }
    return {
        "max_rel_error": err,
        "num_mismatches": int(verdict == "mismatch"),
        "verdict": verdict,
        "coords": [coord],
        "directions": [],
    }


def test_rel_error_drift_fires_before_the_failure_threshold():
    errs = [1e-9, 2e-9, 1e-9, 1e-9, 3e-9, 2e-8, 1e-7, 5e-7, 2e-6, 1e-5, 1e-4]
    obs = [
        CheckObservation(100 * i, {"per_param": {"W1": tensor_report(e)}})
        for i, e in enumerate(errs)
    ]
    fired = run(rel_error_drift(), obs)
    assert fired and fired[0][0] <= 900  # well before 1e-2
    assert fired[0][1].details["tensor"] == "W1"
    flat = [
        CheckObservation(100 * i, {"per_param": {"W1": tensor_report(e)}})
        for i, e in enumerate([1e-9, 5e-9, 2e-10, 3e-9] * 4)
    ]
    assert run(rel_error_drift(), flat) == []


def test_rel_error_drift_ignores_kinks():
    errs = [tensor_report(1e-9)] * 3 + [tensor_report(0.9, "kink")] * 6
    obs = [CheckObservation(i, {"per_param": {"W1": r}}) for i, r in enumerate(errs)]
    assert run(rel_error_drift(), obs) == []


def test_baseline_drift_compares_at_the_same_steps(clean_run):
    steps = [o for o in clean_run if isinstance(o, StepObservation)][:300]
    baseline = {f"grad_norm/{k}": {o.step: o.grad_norms[k] for o in steps} for k in ("W1", "W2")}
    assert run(baseline_drift(baseline), steps) == []  # a run equal to its baseline
    doubled = [
        StepObservation(o.step, grad_norms={k: 4 * v for k, v in o.grad_norms.items()})
        for o in steps
    ]
    fired = run(baseline_drift(baseline, factor=3.0), doubled)
    assert fired and fired[0][0] == 0 and fired[0][1].details["metric"].startswith("grad_norm/")
    assert run(baseline_drift(None), doubled) == []  # no baseline: never fires
    shifted = [StepObservation(o.step + 1, grad_norms=o.grad_norms) for o in doubled]
    assert run(baseline_drift(baseline, step_tolerance=0), shifted[-1:]) == []
    assert run(baseline_drift(baseline, step_tolerance=1), shifted[-1:])


def test_detectors_are_pure():
    det = loss_divergence()
    s0 = det.init()
    f1, s1 = det.update(s0, StepObservation(0, 25.0))
    f2, s2 = det.update(s1, StepObservation(1, 9025.0))
    again, s2b = det.update(s1, StepObservation(1, 9025.0))
    assert s0 == det.init() and s2 == s2b and f2 == again and f1 is None


def test_check_failure_reports_worst_coordinates_and_bands():
    report = {
        "per_param": {
            "W1": tensor_report(3e-3, "mismatch"),
            "b1": tensor_report(1e-9),
        }
    }
    fired = run(check_failure(), [CheckObservation(7, report)])
    ((step, finding),) = fired
    assert finding.severity == "warning" and finding.details["tensor"] == "W1"
    assert finding.details["tensors"]["W1"]["worst"][0]["index"] == [0]
    assert "b1" not in finding.details["tensors"]
    nan = {"per_param": {"W1": {**tensor_report(1.0, "mismatch"), "max_rel_error": "nan"}}}
    assert run(check_failure(), [CheckObservation(8, nan)])[0][1].severity == "critical"


def test_bad_rules_raise_config_errors_naming_the_problem():
    with pytest.raises(ConfigError, match="allowed: check_failure"):
        Rule("x", "nope")
    with pytest.raises(ConfigError, match="cooldown"):
        Rule("x", "nonfinite", cooldown=-1)
    with pytest.raises(ConfigError, match="severity"):
        Rule("x", "nonfinite", severity="fatal")
    with pytest.raises(ConfigError, match="unknown action 'email'"):
        Rule("x", "nonfinite", actions=("email",))
    with pytest.raises(ConfigError, match="unknown parameter 'zz'.*allowed: method"):
        Rule("x", "grad_norm_drift", params={"zz": 1})
    with pytest.raises(ValueError, match="did you mean `median`"):
        build_detector("grad_norm_drift", {"method": "medain"})
    with pytest.raises(ConfigError, match="duplicate"):
        AlertEngine([Rule("a", "nonfinite"), Rule("a", "loss_divergence")])
