"""Rules are declared once: validate_rule is the schema YAML and Python both go through; the
threshold and dead_units rules; gradwatch errors (never a bare ValueError) on bad input."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from gradwatch.alerts import (
    DETECTORS,
    AlertEngine,
    CheckObservation,
    Rule,
    StepObservation,
    build_detector,
    check_action,
    validate_rule,
)
from gradwatch.demo import MLP, make_blobs
from gradwatch.errors import ConfigError, GradwatchError, InputError


def test_detector_defaults_are_the_factories_own():
    for kind, spec in DETECTORS.items():
        signature = inspect.signature(spec.factory).parameters
        assert list(spec.params) == list(signature), kind
        for name, param in spec.params.items():
            assert param.default == signature[name].default, (kind, name)


def test_validate_rule_builds_the_same_rule_as_the_constructor():
    rule = validate_rule(
        {
            "name": "g",
            "type": "grad_norm_drift",
            "z": 4,
            "cooldown": 20,
            "actions": ["log", "webhook:slack"],
            "severity": "critical",
        },
        webhooks={"slack"},
    )
    assert rule == Rule(
        "g", "grad_norm_drift", "critical", {"z": 4.0}, 20, ("log", "webhook:slack")
    )
    assert rule.params == {"z": 4.0}  # normalized to the parameter's type
    assert validate_rule({"type": "nonfinite"}) == Rule("nonfinite", "nonfinite")
    assert validate_rule({"name": "loss_divergence"}).type == "loss_divergence"
    assert validate_rule({"type": "nonfinite", "enabled": False}).enabled is False


@pytest.mark.parametrize(
    "spec,key,text",
    [
        ({"name": "x"}, "type", "rule needs a `type`"),
        ({"type": "grad_norm"}, "type", "did you mean `grad_norm_drift`?"),
        ({"type": "nonfinite", "cooldwn": 3}, "cooldwn", "did you mean `cooldown`?"),
        (
            {"type": "nonfinite", "severity": "fatal"},
            "severity",
            "allowed: info, warning, critical",
        ),
        ({"type": "nonfinite", "cooldown": -5}, "cooldown", ">= 0"),
        ({"type": "nonfinite", "cooldown": True}, "cooldown", "integer"),
        ({"type": "nonfinite", "name": "a b"}, "name", "letters, digits"),
        ({"type": "nonfinite", "enabled": "yes"}, "enabled", "true or false"),
        ({"type": "nonfinite", "actions": ["log", "email"]}, "actions.1", "unknown action 'email'"),
        ({"type": "nonfinite", "actions": ["webhook:slak"]}, "actions.0", "did you mean `slack`?"),
        ({"type": "nonfinite", "actions": 3}, "actions", "list of strings"),
        ({"type": "loss_divergence", "factor": 0.5}, "factor", "must be > 1"),
        ({"type": "loss_divergence", "factor": "big"}, "factor", "expected a number"),
        ({"type": "grad_norm_drift", "method": "medain"}, "method", "did you mean `median`?"),
        ({"type": "threshold", "metric": "loss"}, "params", "needs `above` or `below`"),
    ],
)
def test_validate_rule_errors_name_the_key(spec, key, text):
    with pytest.raises(ConfigError) as err:
        validate_rule(spec, webhooks={"slack"})
    assert err.value.key == key and text in str(err.value), str(err.value)


def test_a_bare_webhook_action_needs_a_webhook_when_they_are_known():
    with pytest.raises(ConfigError, match="no alerts.webhooks are defined"):
        validate_rule({"type": "nonfinite", "actions": ["webhook"]}, webhooks=())
    assert validate_rule({"type": "nonfinite", "actions": ["webhook"]}).actions == ("webhook",)


def test_library_errors_are_gradwatch_errors():
    with pytest.raises(InputError, match="unknown action 'email'"):
        check_action("email")
    with pytest.raises(InputError, match="unknown rule type 'nope'"):
        build_detector("nope")
    with pytest.raises(InputError, match="unknown parameter 'zz'"):
        build_detector("grad_norm_drift", {"zz": 1})
    with pytest.raises(InputError, match="parameter 'z' of grad_norm_drift"):
        build_detector("grad_norm_drift", {"z": -1})
    with pytest.raises(GradwatchError):
        Rule("x", "threshold", params={"metric": "loss", "above": 1.0, "below": 2.0})


# -------------------------------------------------------------------------------------------
# threshold


def run(rule: Rule, observations) -> list[tuple[int, dict]]:
    engine = AlertEngine([rule])
    fired = []
    for obs in observations:
        step = isinstance(obs, StepObservation)
        fired += engine.observe_step(obs) if step else engine.observe_check(obs)
    return [(a.step, dict(a.details)) for a in fired]


def test_threshold_on_a_glob_fires_after_n_consecutive_observations_per_tensor():
    norms = [{"W1": 1.0, "W2": 1.0}] * 3 + [{"W1": 200.0, "W2": 1.0}] * 2
    norms += [{"W1": 1.0, "W2": 300.0}] * 2 + [{"W1": 1.0, "W2": 300.0}]
    obs = [StepObservation(s, grad_norms=n) for s, n in enumerate(norms)]
    rule = Rule(
        "big", "threshold", params={"metric": "grad_norm/*", "above": 100.0, "n": 2}, cooldown=0
    )
    fired = run(rule, obs)
    assert [s for s, _ in fired] == [4, 6, 7]
    assert fired[0][1]["metric"] == "grad_norm/W1" and fired[1][1]["metric"] == "grad_norm/W2"


def test_threshold_below_on_check_metrics_and_user_metrics():
    checks = [
        CheckObservation(s, {"passed": s != 200, "max_rel_error": 1e-9, "per_param": {}})
        for s in (100, 200, 300)
    ]
    rule = Rule("failed", "threshold", params={"metric": "gradcheck/passed", "below": 0.5})
    assert [s for s, _ in run(rule, checks)] == [200]
    accuracy = [StepObservation(s, metrics={"val_acc": a}) for s, a in enumerate([0.5, 0.4, 0.3])]
    rule = Rule("acc", "threshold", params={"metric": "val_acc", "below": 0.45, "n": 2})
    assert [s for s, _ in run(rule, accuracy)] == [2]
    loss = [StepObservation(s, loss=v) for s, v in enumerate([1.0, 9.0, 0.5, 0.05])]
    band = Rule(
        "band", "threshold", params={"metric": "loss", "above": 5.0, "below": 0.1}, cooldown=0
    )
    assert [s for s, _ in run(band, loss)] == [1, 3]


def test_threshold_from_yaml_shaped_spec():
    rule = validate_rule({"name": "lr-cap", "type": "threshold", "metric": "lr", "above": 1})
    assert rule.params == {"metric": "lr", "above": 1.0}
    assert run(rule, [StepObservation(0, lr=0.5), StepObservation(1, lr=2.0)])[0][0] == 1


# -------------------------------------------------------------------------------------------
# dead_units, on the zero fraction of a real ReLU layer's gradients


def zero_fracs(steps: int, kill_at: int | None, seed: int = 0) -> list[StepObservation]:
    """grad_zero_frac/<t> of a 20-64-3 ReLU MLP; at ``kill_at`` most hidden units are driven
    dead (a large negative shift of b1, as one too-large step does)."""
    X, y = make_blobs(n=512, dim=20, classes=3, seed=seed)
    mlp = MLP([20, 64, 3], seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for step in range(steps):
        if step == kill_at:
            mlp.params["b1"][:48] -= 50.0
        idx = rng.integers(0, len(y), size=32)
        _, grads = mlp.loss_and_grads(mlp.params, X[idx], y[idx])
        for k in mlp.params:
            mlp.params[k] -= 0.05 * grads["d" + k]
        if step % 5 == 0:  # a statistics step
            fracs = {f"grad_zero_frac/{k[1:]}": float(np.mean(g == 0)) for k, g in grads.items()}
            out.append(StepObservation(step, metrics=fracs))
    return out


def test_dead_units_fires_when_units_die_and_not_on_a_healthy_relu_net():
    healthy = zero_fracs(1500, None)
    assert max(o.metrics["grad_zero_frac/b1"] for o in healthy) > 0  # ReLU zeros happen
    assert run(Rule("dead", "dead_units"), healthy) == []
    killed = zero_fracs(600, kill_at=300)
    fired = run(Rule("dead", "dead_units"), killed)
    assert fired, "48 of 64 units dead"
    step, details = fired[0]
    assert 300 < step <= 300 + 5 * 5  # patience: 5 statistics steps
    # Dead hidden units zero their rows of dW1 and db1, and their columns of dW2.
    assert {"W1", "b1", "W2"} <= set(details["tensors"])
    assert details["tensors"]["b1"]["zero_frac"] >= 0.7


def test_a_detector_that_raises_never_stops_the_engine(caplog):
    """A value a detector cannot read (here a string where a norm belongs) is said once on
    the log and skipped; the engine goes on and the next real problem still fires."""
    import math

    from gradwatch.alerts.rules import default_rules

    engine = AlertEngine(default_rules())
    junk = StepObservation(
        0, 1.0, grad_norms={"w": "junk"}, param_norms={"w": 1.0}, update_ratios={"w": "x"}
    )
    with caplog.at_level("ERROR", logger="gradwatch.alerts"):
        assert engine.observe_step(junk) == []
        engine.observe_step(StepObservation(1, 1.0, grad_norms={"w": "junk"}))
    failed = [r for r in caplog.records if "failed at step" in r.getMessage()]
    assert failed and len({r.getMessage().split("'")[1] for r in failed}) == len(failed)
    assert [a.rule for a in engine.observe_step(StepObservation(2, math.nan))] == ["nonfinite"]
