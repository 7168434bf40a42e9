"""The default rules on the loss of real minibatch training: silent when healthy, quick when not.

The network is the online book's: sigmoid layers, quadratic cost, eta=3.0, minibatches of 10,
trained here on overlapping synthetic classes. Its per-batch loss swings far past 10x its best
batch on a healthy run. Observations reach the engine the way the hook sends them: loss and
lr every step, in batches of 32 (``AlertEngine.observe_steps``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradwatch.alerts import AlertEngine, Rule, StepObservation, default_rules
from gradwatch.demo import make_blobs


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def book_network(seed: int, steps: int, eta: float = 3.0, batch: int = 10, eta_from=None):
    """Losses of SGD on a 20-30-3 sigmoid network with the quadratic cost, and its accuracy.

    ``eta_from=(step, eta)`` changes the learning rate at that step (a schedule bug)."""
    rng = np.random.default_rng(seed)
    X, y = make_blobs(n=1000, dim=20, classes=3, seed=seed, spread=2.5)
    X = X * math.sqrt(20)
    onehot = np.eye(3)[y]
    p = {
        "W1": rng.normal(0, 1, (20, 30)),
        "b1": rng.normal(0, 1, 30),
        "W2": rng.normal(0, 1, (30, 3)),
        "b2": rng.normal(0, 1, 3),
    }
    losses, order, pos = [], rng.permutation(1000), 0
    with np.errstate(all="ignore"):
        for step in range(steps):
            if eta_from and step == eta_from[0]:
                eta = eta_from[1]
            if pos + batch > 1000:
                order, pos = rng.permutation(1000), 0
            idx, pos = order[pos : pos + batch], pos + batch
            h = sigmoid(X[idx] @ p["W1"] + p["b1"])
            a = sigmoid(h @ p["W2"] + p["b2"])
            losses.append(float(0.5 * np.sum((a - onehot[idx]) ** 2) / batch))
            d2 = (a - onehot[idx]) * a * (1 - a) / batch
            d1 = (d2 @ p["W2"].T) * h * (1 - h)
            grads = {"W2": h.T @ d2, "b2": d2.sum(0), "W1": X[idx].T @ d1, "b1": d1.sum(0)}
            for k in p:
                p[k] -= eta * grads[k]
        predicted = np.argmax(sigmoid(sigmoid(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]), axis=1)
    return losses, float(np.mean(predicted == y))


def alerts(losses, lr=3.0, rules=None):
    """Feed ``losses`` as the hook does; return ``[(rule, step, test)]``."""
    engine = AlertEngine(default_rules() if rules is None else rules)
    obs = [StepObservation(s, loss, lr, timestamp=0.0) for s, loss in enumerate(losses)]
    fired = []
    for i in range(0, len(obs), 32):
        fired += engine.observe_steps(obs[i : i + 32])
    return [(a.rule, a.step, a.details.get("test")) for a in fired]


@pytest.fixture(scope="module")
def healthy():
    return {seed: book_network(seed, 3000) for seed in (1, 2, 3)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_healthy_noisy_minibatch_run_raises_nothing(healthy, seed):
    losses, accuracy = healthy[seed]
    assert accuracy > 0.6  # it learned (3 classes: chance is 1/3)
    late = losses[300:]
    assert max(late) > 10 * min(losses)  # the noise that fooled the old rule
    assert alerts(losses) == []


def test_one_huge_batch_does_not_fire(healthy):
    losses = list(healthy[1][0])
    losses[2000] *= 1000.0  # one pathological batch, then training goes on
    assert alerts(losses) == []


def test_nan_loss_fires_nonfinite_at_that_step(healthy):
    losses = list(healthy[2][0])
    losses[700] = math.nan
    assert alerts(losses)[0][:2] == ("nonfinite", 700)
    losses[700] = math.inf
    assert alerts(losses)[0][:2] == ("nonfinite", 700)


@pytest.mark.parametrize("lr,within", [(0.05, None), (1.5, 5), (10.0, 3)])
def test_learning_rate_too_large_fires_within_a_few_steps(lr, within):
    # Linear regression, minibatches of 10, unit-scale features: stable below lr ~ 1/20.
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1.0, (1000, 20))
    target = X @ rng.normal(0, 1, 20) + rng.normal(0, 1.0, 1000)
    w, losses = np.zeros(20), []
    with np.errstate(all="ignore"):
        for _ in range(500):
            idx = rng.integers(0, 1000, 10)
            r = X[idx] @ w - target[idx]
            losses.append(float(0.5 * np.mean(r**2)))
            w -= lr * X[idx].T @ r / 10
    fired = alerts(losses, lr=lr)
    if within is None:
        assert losses[-1] < losses[0] / 5 and fired == []  # it learns: silent
    else:
        assert fired[0][:3] == ("loss_divergence", fired[0][1], "factor")
        assert fired[0][1] <= within


def test_learning_rate_raised_mid_run_fires_within_a_few_steps():
    losses, _ = book_network(4, 1200, eta=3.0, eta_from=(1000, 3000.0))
    fired = alerts(losses)
    assert fired and fired[0][0] == "loss_divergence"
    # Sigmoids saturate: the quadratic cost can only climb from ~0.05 to ~1, yet it is seen.
    assert 1000 <= fired[0][1] <= 1010


@pytest.mark.parametrize("rate,within", [(1.1, 40), (1.05, 50), (1.02, 100)])
def test_geometric_rise_from_a_noisy_plateau_fires_in_time(healthy, rate, within):
    start = 1500
    for seed, (losses, _) in healthy.items():
        rising = [v * rate ** max(0, s - start) for s, v in enumerate(losses)]
        fired = alerts(rising)
        assert fired, (seed, rate)
        rule, step, test = fired[0]
        assert rule == "loss_divergence" and test == "trend", fired
        assert start < step <= start + within, (seed, rate, step)


def test_rules_can_be_tuned_for_faster_detection(healthy):
    # A smaller window and z trade false-alarm margin for speed; the parameters reach the rule.
    losses, _ = healthy[1]
    rising = [v * 1.05 ** max(0, s - 1500) for s, v in enumerate(losses)]
    default = alerts(rising)[0][1]
    fast = alerts(rising, rules=[Rule("div", "loss_divergence", params={"z": 3.0, "window": 20})])
    assert fast[0][1] < default


def test_zero_and_negative_losses_are_handled():
    # A negative log-likelihood that keeps falling, and a loss that starts at exactly 0.
    assert alerts([-0.5 * s for s in range(300)]) == []
    assert alerts([0.0] * 100) == []
    fired = alerts([0.0] * 100 + [1.0] * 5)  # from exactly 0 to 1: an infinite ratio
    assert fired and fired[0][:2] == ("loss_divergence", 101)  # two of the last three
