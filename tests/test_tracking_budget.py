"""``budget`` covers the shipping of what statistics and checks log, not only ``step()``.

The shipper process spends CPU on every metric it ships (on the embedded sqlite store ~50-70
us, ``RunTracker.ship_cpu_per_metric``). The hook charges its own time with that for every
metric its statistics and checks log, so the budget's account holds everything the hook
causes; the every-step loss and lr are never thinned and not charged.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradwatch

pytestmark = pytest.mark.server  # the embedded store and a shipper process


def test_the_budget_account_holds_the_shipping_of_statistics_and_checks(tmp_path):
    rng = np.random.default_rng(0)
    # Many small tensors: each statistics step logs 7 metrics a tensor, which cost the
    # shipper far more than computing them costs step().
    params = {f"w{i}": rng.normal(size=4) for i in range(60)}

    def loss_fn(p):
        return float(sum((v * v).sum() for v in p.values()))

    steps = 800
    with gradwatch.GradWatch(every=100, budget=0.05, experiment="t-budget", config=False) as watch:
        for _ in range(steps):
            grads = {k: 2 * v for k, v in params.items()}
            watch.step(params, grads, loss=loss_fn(params), lr=0.01, loss_fn=loss_fn)
            for k in params:
                params[k] -= 0.01 * grads[k]
    cpu_seconds, metrics = watch.run.ship_cpu
    assert watch.close_result.pending == 0 and metrics > 2 * steps + 1000
    charged_metrics = metrics - 2 * steps  # everything but loss and lr
    # Each was charged at the shipper's figure of the moment: its first estimate (65 us),
    # then its measured CPU per metric, which moves during the run (hence the half).
    per_metric = min(cpu_seconds / metrics, 65e-6)
    assert watch.clock.hook_seconds >= 0.5 * charged_metrics * per_metric


def _sleepy_run(budget: float, steps: int, caplog) -> gradwatch.GradWatch:
    import time

    params = {"w": np.ones(3)}

    def loss_fn(p):
        return float((p["w"] ** 2).sum())

    with gradwatch.GradWatch(
        every=50, budget=budget, stats_every=1000, experiment="t-floor", config=False
    ) as watch:
        for _ in range(steps):
            time.sleep(0.0005)  # a 0.5 ms training step: loss and lr shipping is a large share
            grads = {"w": 2 * params["w"]}
            watch.step(params, grads, loss=loss_fn(params), lr=1e-3, loss_fn=loss_fn)
            params["w"] -= 1e-3 * grads["w"]
    return watch


def test_the_budget_pays_for_shipping_loss_and_lr_and_says_when_it_holds_checks_back(caplog):
    caplog.set_level("WARNING", logger="gradwatch")
    steps = 5000
    watch = _sleepy_run(0.05, steps, caplog)
    floor = [r for r in caplog.records if "holds gradient checks back" in r.getMessage()]
    assert len(floor) == 1, [r.getMessage() for r in caplog.records]
    message = floor[0].getMessage()
    assert "never thinned" in message and "mlflow server" in message  # the embedded store
    shipping_share = float(message.split("loss and lr every step costs ")[1].split(" %")[0])
    assert shipping_share > 0.05 * 100 * 0.8  # alone more than the usable budget
    # The every-step values all landed (never thinned), and the checks waited for the budget.
    assert watch.close_result.pending == 0
    assert watch.checks < steps // 50 // 2 and watch.checks_deferred > 0
    # With room in the budget: every check runs and nothing is said.
    caplog.clear()
    roomy = _sleepy_run(1.0, 1000, caplog)
    assert roomy.checks == 1000 // 50 and roomy.checks_deferred == 0
    assert not [r for r in caplog.records if "holds gradient checks back" in r.getMessage()]
