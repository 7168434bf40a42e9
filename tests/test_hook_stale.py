"""Arrays rebound instead of updated in place (issue: a script that does
``self.weights = [w - eta * nw ...]`` hands the hook stale arrays): the hook says so once, in
plain words, and records checks on stale parameters as not run, not as backprop bugs."""

from __future__ import annotations

import logging

import mlflow
import numpy as np

from gradwatch import GradWatch


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


class Network:
    """A sigmoid network in the shape of a well-known online book's code: lists of weights and
    biases, backprop per minibatch, and an update that *rebinds* the lists every step."""

    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.biases = [rng.standard_normal((y, 1)) for y in sizes[1:]]
        self.weights = [rng.standard_normal((y, x)) for x, y in zip(sizes[:-1], sizes[1:])]

    @staticmethod
    def loss(weights, biases, X, Y):
        a = X
        for b, w in zip(biases, weights):
            a = sigmoid(w @ a + b)
        return 0.5 * float(np.sum((a - Y) ** 2)) / X.shape[1]

    def backprop(self, X, Y):
        activations, zs, a = [X], [], X
        for b, w in zip(self.biases, self.weights):
            z = w @ a + b
            zs.append(z)
            a = sigmoid(z)
            activations.append(a)
        n = X.shape[1]
        delta = (activations[-1] - Y) * sigmoid(zs[-1]) * (1 - sigmoid(zs[-1])) / n
        nabla_b, nabla_w = [None] * len(self.biases), [None] * len(self.weights)
        nabla_b[-1], nabla_w[-1] = delta.sum(axis=1, keepdims=True), delta @ activations[-2].T
        for layer in range(2, len(self.weights) + 1):
            sp = sigmoid(zs[-layer]) * (1 - sigmoid(zs[-layer]))
            delta = (self.weights[-layer + 1].T @ delta) * sp
            nabla_b[-layer] = delta.sum(axis=1, keepdims=True)
            nabla_w[-layer] = delta @ activations[-layer - 1].T
        return nabla_b, nabla_w

    def update_rebinding(self, nabla_b, nabla_w, eta):
        self.weights = [w - eta * nw for w, nw in zip(self.weights, nabla_w)]
        self.biases = [b - eta * nb for b, nb in zip(self.biases, nabla_b)]

    def update_in_place(self, nabla_b, nabla_w, eta, frozen=()):
        for i, (w, nw) in enumerate(zip(self.weights, nabla_w)):
            if f"w{i}" not in frozen:
                w -= eta * nw
        for b, nb in zip(self.biases, nabla_b):
            b -= eta * nb


def _params(net):
    return {
        **{f"w{i}": w for i, w in enumerate(net.weights)},
        **{f"b{i}": b for i, b in enumerate(net.biases)},
    }


def _grads(nabla_b, nabla_w):
    return {
        **{f"w{i}": w for i, w in enumerate(nabla_w)},
        **{f"b{i}": b for i, b in enumerate(nabla_b)},
    }


def _loss_fn(X, Y):
    def loss(p):
        n = sum(k.startswith("w") for k in p)
        return Network.loss([p[f"w{i}"] for i in range(n)], [p[f"b{i}"] for i in range(n)], X, Y)

    return loss


def _train(watch, update, steps=60, params_once=True, **update_kwargs):
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((4, 300)), rng.random((2, 300))
    net = Network([4, 8, 2])
    params = _params(net)  # built once, before the loop, as the README's first example does
    for s in range(steps):
        cols = slice((s * 10) % 300, (s * 10) % 300 + 10)
        nabla_b, nabla_w = net.backprop(X[:, cols], Y[:, cols])
        current = params if params_once else _params(net)
        watch.step(
            current,
            _grads(nabla_b, nabla_w),
            lr=3.0,
            loss_fn=_loss_fn(X[:, cols], Y[:, cols]),
            loss=Network.loss(net.weights, net.biases, X[:, cols], Y[:, cols]),
        )
        getattr(net, update)(nabla_b, nabla_w, 3.0, **update_kwargs)


def _gradwatch_records(caplog, level):
    return [r for r in caplog.records if r.name.startswith("gradwatch") and r.levelno >= level]


def test_rebound_arrays_warn_once_and_checks_are_not_run(tracking_uri, caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    with GradWatch(every=5, experiment="stale-rebound", config=False) as watch:
        _train(watch, "update_rebinding")
    warnings = _gradwatch_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "instead of updating them in place" in text and "watch.step(" in text
    assert watch.checks_failed == 0 and watch.checks_not_run >= 10
    assert not [a for a in watch.alerts if a.rule == "check_failure"]
    run = mlflow.MlflowClient(tracking_uri).get_run(watch.run.run_id)
    assert "replaced instead of updated in place" in run.data.tags["gradwatch.check_not_run"]
    assert "gradwatch.alert.check_failure" not in run.data.tags


def test_fresh_arrays_every_step_are_checked_and_pass(tracking_uri, caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    with GradWatch(every=5, experiment="stale-fresh", config=False) as watch:
        _train(watch, "update_rebinding", params_once=False)
    assert not _gradwatch_records(caplog, logging.WARNING)
    assert watch.checks == 12 and watch.checks_failed == 0 and watch.checks_not_run == 0


def test_frozen_layer_is_at_most_a_note(tracking_uri, caplog):
    caplog.set_level(logging.INFO, logger="gradwatch")
    with GradWatch(every=5, experiment="stale-frozen", config=False) as watch:
        _train(watch, "update_in_place", frozen=("w0",))
    assert not _gradwatch_records(caplog, logging.WARNING)
    notes = [r.getMessage() for r in _gradwatch_records(caplog, logging.INFO)]
    assert any("w0" in n and "frozen layer" in n for n in notes), notes
    assert watch.checks == 12 and watch.checks_not_run == 0 and not watch.alerts
