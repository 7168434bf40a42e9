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
