"""Integration traps named, not blamed on backprop: element-wise clipping inside the loss
function, a constant factor between loss and gradients, and a loss_fn that sees another
state than backprop did (an RNN's hidden state)."""

from __future__ import annotations

import numpy as np
import pytest

import gradwatch
from tests.zoo import BUGS

SEEDS = range(3)

# -- the script shapes: written for these tests ----------------------------------------------

TEXT = "the quick brown fox jumps over the lazy dog; the dog sleeps. "


class CharRNN:
    """A character-level vanilla RNN; ``loss_and_grads`` returns ``(loss, grads, last_hidden)``
    and, like many public scripts, may clip every gradient element-wise before returning."""

    def __init__(
        self, hidden: int = 16, seed: int = 0, scale: float = 0.1, clip: float | None = None
    ):
        chars = sorted(set(TEXT))
        self.ix = {c: i for i, c in enumerate(chars)}
        self.vocab = len(chars)
        rng = np.random.default_rng(seed)
        self.params = {
            "Wxh": rng.normal(0, scale, (hidden, self.vocab)),
            "Whh": rng.normal(0, scale, (hidden, hidden)),
            "Why": rng.normal(0, scale, (self.vocab, hidden)),
            "bh": np.zeros((hidden, 1)),
            "by": np.zeros((self.vocab, 1)),
        }
        self.hidden = hidden
        self.clip = clip

    def batch(self, start: int, length: int = 60):
        idx = [self.ix[c] for c in (TEXT * 4)[start : start + length + 1]]
        return idx[:-1], idx[1:]

    def loss_and_grads(self, params, inputs, targets, hprev):
        """Forward over the sequence from ``hprev``, backprop through time; returns
        ``(loss, grads, last_hidden_state)``."""
        Wxh, Whh, Why, bh, by = (params[k] for k in ("Wxh", "Whh", "Why", "bh", "by"))
        xs, hs, ps = {}, {-1: np.copy(hprev)}, {}
        loss = 0.0
        for t, (i, j) in enumerate(zip(inputs, targets)):
            xs[t] = np.zeros((self.vocab, 1))
            xs[t][i] = 1.0
            hs[t] = np.tanh(Wxh @ xs[t] + Whh @ hs[t - 1] + bh)
            y = Why @ hs[t] + by
            e = np.exp(y - y.max())
            ps[t] = e / e.sum()
            loss += -float(np.log(ps[t][j, 0]))
        grads = {"d" + k: np.zeros_like(v) for k, v in params.items()}
        dh_next = np.zeros((self.hidden, 1))
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1.0
            grads["dWhy"] += dy @ hs[t].T
            grads["dby"] += dy
            dh = Why.T @ dy + dh_next
            draw = (1.0 - hs[t] ** 2) * dh
            grads["dbh"] += draw
            grads["dWxh"] += draw @ xs[t].T
            grads["dWhh"] += draw @ hs[t - 1].T
            dh_next = Whh.T @ draw
        if self.clip is not None:
            for g in grads.values():
                np.clip(g, -self.clip, self.clip, out=g)
        return loss, grads, hs[len(inputs) - 1]


def mean_loss_summed_grads(seed: int, m: int = 32):
    """An MLP (tanh) whose loss is the batch mean but whose gradients are batch sums."""
    rng = np.random.default_rng(seed)
    X, y = rng.normal(size=(m, 5)), rng.integers(0, 3, size=m)
    params = {
        "W1": rng.normal(0, 0.5, (5, 8)),
        "b1": rng.normal(0, 0.1, 8),
        "W2": rng.normal(0, 0.5, (8, 3)),
        "b2": rng.normal(0, 0.1, 3),
    }

    def forward(p):
        h = np.tanh(X @ p["W1"] + p["b1"])
        z = h @ p["W2"] + p["b2"]
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return h, logp

    def loss(p):
        return float(-forward(p)[1][np.arange(m), y].mean())

    h, logp = forward(params)
    delta = np.exp(logp)
    delta[np.arange(m), y] -= 1.0  # summed over the batch: no division by m
    dh = (delta @ params["W2"].T) * (1 - h**2)
    grads = {"dW2": h.T @ delta, "db2": delta.sum(0), "dW1": X.T @ dh, "db1": dh.sum(0)}
    return loss, params, grads


# -- the tests -------------------------------------------------------------------------------


def _rnn_step(seed, clip=None, scale=0.1):
    rnn = CharRNN(seed=seed, clip=clip, scale=scale)
    inputs, targets = rnn.batch(seed)
    hprev = np.zeros((rnn.hidden, 1))
    _, grads, hlast = rnn.loss_and_grads(rnn.params, inputs, targets, hprev)
    return rnn, inputs, targets, hprev, hlast, grads


def test_gradients_clipped_inside_the_loss_function_are_named_not_failed():
    for seed in SEEDS:
        rnn, inputs, targets, hprev, _, grads = _rnn_step(seed, clip=5.0)
        assert np.any(np.abs(grads["dby"]) == 5.0)  # the script really clipped
        report = gradwatch.check_gradients(
            lambda p: rnn.loss_and_grads(p, inputs, targets, hprev)[0], rnn.params, grads, seed=seed
        )
        assert report.passed, str(report)
        clipped = [p for t in report.per_param.values() for p in t.coords if p.verdict == "clipped"]
        assert clipped and all(abs(p.analytic) == 5.0 for p in clipped)
        assert all(abs(p.numeric) > 5.0 and p.numeric * p.analytic > 0 for p in clipped)
        note = next(n for n in report.notes if "clipped" in n)
        assert "by" in note and "±5" in note and "check the gradients before clipping" in note
        assert report.per_param["by"].to_dict()["num_clipped"] >= 1
        assert "by" in report.clipped_tensors and report.to_dict()["num_clipped"] >= 1
        assert "every tensor disagrees" not in str(report)


def test_clipping_never_hides_a_real_bug_elsewhere_in_the_same_check():
    for seed in SEEDS:
        rnn, inputs, targets, hprev, _, grads = _rnn_step(seed, clip=5.0)
        grads = dict(grads, dWhh=grads["dWhh"] * 1.5)
        report = gradwatch.check_gradients(
            lambda p: rnn.loss_and_grads(p, inputs, targets, hprev)[0], rnn.params, grads, seed=seed
        )
        assert not report.passed
        assert report.mismatched_tensors == ["Whh"]


def test_a_lone_unround_value_at_the_maximum_is_not_taken_for_clipping():
    # One gradient entry replaced by a smaller value, the largest of the tensor: a bug, not a
    # clipping bound (not shared by a second entry, not a round number).
    x = np.linspace(0.5, 2.0, 6)
    grads = 2 * x
    grads[-1] = 3.7  # true slope 4.0: understated, same sign, the largest |value|
    report = gradwatch.check_gradients(lambda p: float(np.sum(p[0] ** 2)), [x], [grads])
    assert not report.passed
    assert "clipped" not in [p.verdict for p in report.per_param["0"].probes]


def test_a_loss_averaged_over_the_batch_with_summed_gradients_names_the_factor():
    for seed in SEEDS:
        loss_fn, params, grads = mean_loss_summed_grads(seed, m=32)
        report = gradwatch.check_gradients(loss_fn, params, grads, seed=seed)
        assert not report.passed
        assert set(report.mismatched_tensors) == set(params)
        assert report.finding.kind == "factor" and report.finding.factor == pytest.approx(32)
        assert report.finding.hint.startswith("analytic = 32 × numeric in every tensor")
        assert "1/batch size" in report.finding.hint
        assert "every tensor disagrees" not in str(report)


def test_gradient_norm_clipping_names_the_shared_factor():
    for seed in SEEDS:
        loss_fn, params, grads = mean_loss_summed_grads(seed, m=32)
        norm = np.sqrt(sum(float(np.sum((g / 32) ** 2)) for g in grads.values()))
        clipped = {k: g / 32 * (0.1 / norm) for k, g in grads.items()}  # clip-by-norm to 0.1
        report = gradwatch.check_gradients(loss_fn, params, clipped, seed=seed)
        assert not report.passed
        ratio = 0.1 / norm
        assert f"analytic = {ratio:.4g} × numeric" in str(report)


def test_one_scaled_tensor_is_named_with_its_factor():
    net = BUGS["scaled"]  # dW1 doubled
    params, X, y = net.make(0)
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, net.backward(params, X, y), seed=0
    )
    assert report.mismatched_tensors == ["W1"]
    # A factor in one tensor is a bug there, not a loss convention.
    assert report.finding.kind == "bug" and report.finding.tensors == ("W1",)
    assert report.finding.factor == pytest.approx(2.0)
    assert "BACKPROP BUG in W1 (analytic = 2 × numeric)" in str(report)
    assert "bug in the backward pass of W1" in report.finding.hint


def test_rnn_loss_fn_on_the_hidden_state_after_the_forward_pass_gets_the_state_hint():
    for seed in SEEDS:
        rnn, inputs, targets, _, hlast, grads = _rnn_step(seed, scale=0.3)
        # The natural mistake: the hidden state the forward pass just returned, not the one it
        # started from.
        report = gradwatch.check_gradients(
            lambda p: rnn.loss_and_grads(p, inputs, targets, hlast)[0], rnn.params, grads, seed=seed
        )
        assert not report.passed
        assert len(report.mismatched_tensors) == len(rnn.params)
        assert report.finding.kind == "bug"
        hint = report.finding.hint
        assert hint.startswith("every tensor disagrees")
        assert "hidden state" in hint and "batch" in hint and "step()" in hint
        assert "a bug in a backward path every tensor shares" in hint
        assert "constant factor (" not in str(report)


@pytest.mark.parametrize("bug", ["sign_flip", "one_row", "missing_relu_mask"])
def test_a_bug_in_some_tensors_gets_no_every_tensor_hint(bug):
    net = BUGS[bug]
    params, X, y = net.make(0)
    report = gradwatch.check_gradients(
        lambda p: net.loss(p, X, y), params, net.backward(params, X, y), seed=0
    )
    assert not report.passed
    assert "every tensor disagrees" not in str(report)
