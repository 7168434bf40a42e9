"""What the hook prints: one failure prints once, passing checks stay quiet, and the hook's
own arithmetic never puts a numpy warning on the user's terminal."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from gradwatch import GradWatch
from gradwatch.demo import MLP, make_blobs

X, Y = make_blobs(256, 12, 3, seed=0)


def _train(watch, steps, bug=True):
    mlp = MLP([12, 16, 3], seed=0)
    params = mlp.params
    for s in range(steps):
        b = slice((s * 32) % 256, (s * 32) % 256 + 32)
        loss, grads = mlp.loss_and_grads(params, X[b], Y[b])
        if bug:
            grads["dW2"] = grads["dW2"] * 2
        watch.step(params, grads, loss=loss, lr=0.1, loss_fn=lambda p, b=b: mlp.loss(p, X[b], Y[b]))
        for k in params:
            params[k] -= 0.1 * grads["d" + k]


def test_each_failed_check_prints_once_with_its_alert(tracking_uri, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="gradwatch")
    with GradWatch(every=10, experiment="output-once", config=False) as watch:
        _train(watch, 35)
    assert watch.checks == 4 and watch.checks_failed == 4
    printed = [r.getMessage() for r in caplog.records if r.name.startswith("gradwatch")]
    about_checks = [m for m in printed if "gradient check" in m or "check_failure" in m]
    assert len(about_checks) == watch.checks_failed, printed
    fired = [a for a in watch.alerts if a.rule == "check_failure"]
    assert fired  # the alert line heads the report of the check that fired it
    with_alert = [m for m in about_checks if "check_failure at step" in m]
    assert len(with_alert) == len(fired)
    headline = "gradient check FAILED: BACKPROP BUG in W2 (analytic = 2 × numeric)"
    assert all(headline in m for m in about_checks)
    # A few lines per check; the probe table only with the first failure.
    tables = [m for m in about_checks if "(the probe table is printed once per run" in m]
    assert len(tables) == 1 and tables[0] is about_checks[0]
    assert all(len(m.splitlines()) <= 3 for m in about_checks[1:])
    assert all("hint: the gradient of W2 is off by a factor 2" in m for m in about_checks)
    assert capsys.readouterr().out == ""


def test_passing_checks_stay_quiet(tracking_uri, caplog):
    caplog.set_level(logging.DEBUG, logger="gradwatch")
    with GradWatch(every=10, experiment="output-quiet", config=False) as watch:
        _train(watch, 35, bug=False)
    assert watch.checks == 4 and watch.checks_failed == 0
    ours = [r for r in caplog.records if r.name.startswith("gradwatch")]
    # Only the run's closing line (at INFO, hidden by logging's default level) may remain.
    assert [
        r.getMessage()
        for r in ours
        if r.levelno >= logging.INFO and "complete" not in r.getMessage()
    ] == []
    assert not any("check" in r.getMessage() for r in ours)


def test_a_diverging_run_shows_no_numpy_warning_from_the_hook(tracking_uri, capsys):
    """Parameters and gradients at the float64 limit: their norms overflow inside the hook's
    statistics. No RuntimeWarning, and no "NaN/Inf" alert either: every value is finite."""
    params = {"w": np.full(64, 1e308), "b": np.ones(2)}
    grads = {"dw": np.full(64, 1e308), "db": np.ones(2)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradWatch(every=2, stats_every=1, experiment="output-overflow", config=False) as w:
            for _ in range(6):
                w.step(
                    params,
                    grads,
                    loss=1e300 * 10,
                    lr=0.1,
                    loss_fn=lambda p: float(np.sum(p["w"] * 1e-300)),
                )
                params["w"] *= 1.0
    assert [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)] == []
    assert "RuntimeWarning" not in capsys.readouterr().err
    assert "nonfinite" not in {a.rule for a in w.alerts}
