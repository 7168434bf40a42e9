"""Sensitivity: a small real backprop error is a mismatch, noise and kinks stay quiet, and the
per-tensor error is the triage-resolved one (stable on a correct network)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradwatch
from gradwatch.demo import MLP, make_blobs
from tests.zoo import CORRECT

SEEDS = range(5)


def _trained_mlp(seed, sizes=(50, 64, 10), steps=100, dtype=np.float64):
    """A ReLU MLP after some SGD steps, and a fresh batch to check on."""
    X, y = make_blobs(512, sizes[0], sizes[-1], seed=seed)
    X = X.astype(dtype)
    mlp = MLP(list(sizes), seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(X), 64, replace=False)
        _, grads = mlp.loss_and_grads(mlp.params, X[idx], y[idx])
        for name, value in mlp.params.items():
            value -= dtype(0.1) * grads["d" + name]
    idx = rng.choice(len(X), 64, replace=False)
    xb, yb = X[idx], y[idx]
    _, grads = mlp.loss_and_grads(mlp.params, xb, yb)
    return (lambda p: mlp.loss(p, xb, yb)), mlp.params, grads


@pytest.fixture(scope="module")
def trained():
    return {seed: _trained_mlp(seed) for seed in SEEDS}


def _scaled(grads, tensor, delta):
    wrong = dict(grads)
    wrong["d" + tensor] = grads["d" + tensor] * (1.0 + delta)
    return wrong


@pytest.mark.parametrize("tensor", ["W1", "b1", "W2", "b2"])
def test_a_1e4_relative_error_is_flagged_in_every_seed_and_tensor(trained, tensor):
    for seed in SEEDS:
        loss_fn, params, grads = trained[seed]
        report = gradwatch.check_gradients(loss_fn, params, _scaled(grads, tensor, 1e-4), seed=seed)
        assert not report.passed, f"seed {seed}:\n{report}"
        assert report.mismatched_tensors == [tensor]
        # The resolved error is the size of the error, not of the noise around it.
        assert 3e-5 < report.per_param[tensor].max_rel_error < 3e-4


def test_the_correct_network_raises_no_false_alarm_and_pays_no_extra_evaluation(trained):
    for seed in SEEDS:
        loss_fn, params, grads = trained[seed]
        report = gradwatch.check_gradients(loss_fn, params, grads, seed=seed)
        assert report.passed, str(report)
        probes = [p for t in report.per_param.values() for p in t.probes]
        if all(p.verdict == "ok" for p in probes):
            # 2 calls for the loss and its repeat, 2 per probe, nothing else.
            assert report.num_evals == 2 + 2 * len(probes)
        assert report.max_rel_error < 1e-6


def test_float32_network_flags_a_1e2_error_and_stays_quiet_when_correct():
    for seed in range(3):
        loss_fn, params, grads = _trained_mlp(seed, sizes=(20, 32, 5), steps=50, dtype=np.float32)
        assert gradwatch.check_gradients(loss_fn, params, grads, seed=seed).passed
        for tensor in ("W1", "b2"):
            wrong = _scaled(grads, tensor, 1e-2)
            report = gradwatch.check_gradients(loss_fn, params, wrong, seed=seed)
            assert tensor in report.mismatched_tensors, str(report)


def test_a_small_error_in_a_bias_shows_in_its_per_tensor_error_but_not_elsewhere(trained):
    # What a drift detector reads: per-tensor "max_rel_error" from to_dict, resolved by triage.
    for seed in SEEDS:
        loss_fn, params, grads = trained[seed]
        clean = gradwatch.check_gradients(loss_fn, params, grads, seed=seed).to_dict()
        small = gradwatch.check_gradients(
            loss_fn, params, _scaled(grads, "b1", 2e-5), seed=seed
        ).to_dict()
        assert max(t["max_rel_error"] for t in clean["per_param"].values()) < 1e-6
        assert small["per_param"]["b1"]["max_rel_error"] > 1e-5
        assert small["per_param"]["W2"]["max_rel_error"] < 1e-6


def test_relu_kinks_are_resolved_so_both_error_figures_agree():
    # One exact ReLU kink: the first-pass error is large, what remains after triage is not, and
    # the report and the tensor say the same resolved figure.
    net = CORRECT["relu_zero_padded_rows"]
    kinked = 0
    for seed in range(5):
        params, X, y = net.make(seed)
        grads = net.backward(params, X, y)
        report = gradwatch.check_gradients(lambda p: net.loss(p, X, y), params, grads, seed=seed)
        assert report.passed
        tensors = report.per_param.values()
        assert report.max_rel_error == max(t.max_rel_error for t in tensors)
        assert report.max_rel_error < 1e-4
        kinks = [p for t in tensors for p in t.probes if p.verdict == "kink"]
        kinked += bool(kinks) and max(t.max_raw_rel_error for t in tensors) > 1e-2
        data = json.loads(json.dumps(report.to_dict()))
        for name, t in data["per_param"].items():
            assert t["max_rel_error"] == report.per_param[name].max_rel_error
            assert t["max_raw_rel_error"] >= t["max_rel_error"]
            assert all("resolved" in p for p in t["coords"] + t["directions"])
    assert kinked >= 2


def test_a_bug_that_agrees_at_a_larger_step_is_still_a_mismatch():
    # f(x) = x + x³ at 0: f' = 1, f'' = 0, and the central difference at step s is 1 + s².
    # With h = 1e-3 the step 10h gives 1 + 1e-4, so an analytic 1 + 1e-4 "agrees at a larger
    # step" — yet it is off by 1e-4 at every step, and extrapolation says so.
    x = np.zeros(4)
    report = gradwatch.check_gradients(
        lambda p: float(np.sum(p[0] + p[0] ** 3)), [x], [np.full(4, 1 + 1e-4)], eps=1e-3
    )
    assert not report.passed, str(report)
    assert all(p.verdict == "mismatch" for p in report.per_param["0"].coords)
    assert report.max_rel_error == pytest.approx(1e-4, rel=0.05)


def test_a_growing_bias_error_is_visible_from_1e6_and_fails_by_2e5():
    # A backprop error in b1 doubling between checks, from 1e-6: the per-tensor error a drift
    # detector reads tracks it from the start (different coordinates drawn at each check), and
    # the check itself fails once it passes ~2e-5.
    for seed in range(3):
        loss_fn, params, grads = _trained_mlp(seed)
        for k in range(7):
            delta = 1e-6 * 2**k
            wrong = _scaled(grads, "b1", delta)
            report = gradwatch.check_gradients(loss_fn, params, wrong, seed=100 * seed + k)
            b1 = report.to_dict()["per_param"]["b1"]["max_rel_error"]
            assert b1 == pytest.approx(delta, rel=0.2)
            others = [t.max_rel_error for n, t in report.per_param.items() if n != "b1"]
            assert max(others) < 1e-7
            assert report.passed == (delta < 1e-5), f"δ={delta}:\n{report}"
