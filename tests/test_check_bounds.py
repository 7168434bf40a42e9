"""A check's cost is bounded by num_samples, not by the number of tensors, and by
``timeout`` when given; a failing check costs at most twice a passing one."""

from __future__ import annotations

import time

import numpy as np
import pytest

import gradwatch
from gradwatch.demo import MLP, make_blobs


def _many(count: int, seed: int = 0):
    """``count`` small tensors (a 3-vector each) and a loss that reads every one of them."""
    rng = np.random.default_rng(seed)
    names = [f"t{i}" for i in range(count)]
    weights = rng.normal(size=(count, 3))
    params = {name: rng.normal(size=3) for name in names}

    def loss_fn(p):
        stacked = np.stack([p[name] for name in names])
        return float(np.sum(weights * np.tanh(stacked)))

    grads = {name: weights[i] * (1 - np.tanh(params[name]) ** 2) for i, name in enumerate(names)}
    return params, grads, loss_fn


@pytest.mark.slow
def test_ten_thousand_tensors_cost_what_num_samples_says():
    params, grads, loss_fn = _many(10_000)
    before = {k: v.copy() for k, v in params.items()}
    report = gradwatch.check_gradients(loss_fn, params, grads, seed=0)
    assert report.passed, str(report)
    # 2 (the loss twice) + 16 coordinates x 2 + 16 shared group directions x 2.
    assert report.num_evals <= 3 * 32 + 2  # the default num_samples=32
    assert len(report.groups) == 16 and sum(g.size for g in report.groups) == 30_000

    bad = dict(grads, t4321=grads["t4321"] * 2)
    failing = gradwatch.check_gradients(loss_fn, params, bad, seed=0)
    assert failing.finding.kind == "bug" and failing.finding.tensors == ("t4321",)
    # Bisection over one group of 625 tensors: about 2 log2(625) probes of 2 evaluations.
    assert failing.num_evals <= report.num_evals + 4 * 10 + 20
    assert all(np.array_equal(params[k], before[k]) for k in params)


def test_a_check_timeout_ends_inconclusive_with_what_it_covered():
    params, grads, loss_fn = _many(40)

    def slow_loss(p):
        time.sleep(0.02)
        return loss_fn(p)

    before = {k: v.copy() for k, v in params.items()}
    report = gradwatch.check_gradients(slow_loss, params, grads, seed=0, timeout=0.3)
    assert report.status == "inconclusive" and report.finding.kind == "timeout"
    assert "check_timeout of 0.3 s reached" in report.finding.hint
    assert report.num_evals < 40  # stopped well before the plan's ~70 evaluations
    assert all(np.array_equal(params[k], before[k]) for k in params)

    # A mismatch confirmed before the limit still fails the check: t0 (probed first) is
    # confirmed within 14 evaluations, then the loss turns slow and the limit passes.
    small, small_grads, small_loss = _many(3)
    calls = [0]

    def slowing_loss(p):
        calls[0] += 1
        if calls[0] > 14:
            time.sleep(0.5)
        return small_loss(p)

    bad = dict(small_grads, t0=small_grads["t0"] * 2)
    failing = gradwatch.check_gradients(slowing_loss, small, bad, seed=0, timeout=0.4)
    assert failing.status == "failed" and failing.finding.tensors == ("t0",)
    assert "check_timeout of 0.4 s reached" in " ".join(failing.notes)
    assert not failing.per_param["t2"].probes  # never reached


@pytest.mark.parametrize(
    "bug",
    ["one_tensor_x2", "every_tensor_x128", "every_tensor_no_factor", "one_coordinate"],
)
def test_a_failing_check_costs_at_most_twice_a_passing_one(bug):
    X, y = make_blobs(256, 64, 10, seed=0)
    mlp = MLP([64, 32, 10], seed=0)
    params, xb, yb = mlp.params, X[:64], y[:64]
    _, grads = mlp.loss_and_grads(params, xb, yb)
    passing = gradwatch.check_gradients(lambda p: mlp.loss(p, xb, yb), params, grads, seed=0)
    assert passing.passed
    if bug == "one_tensor_x2":
        bad = dict(grads, dW2=grads["dW2"] * 2)
    elif bug == "every_tensor_x128":
        bad = {k: v * 128 for k, v in grads.items()}
    elif bug == "every_tensor_no_factor":
        bad = mlp.loss_and_grads(params, xb, (yb + 1) % 10)[1]
    else:
        bad = {k: v.copy() for k, v in grads.items()}
        bad["dW1"][30, 7] += 10 * float(np.abs(grads["dW1"]).max())
    failing = gradwatch.check_gradients(lambda p: mlp.loss(p, xb, yb), params, bad, seed=0, lr=0.1)
    assert not failing.passed
    assert failing.num_evals <= 2 * passing.num_evals, str(failing)
