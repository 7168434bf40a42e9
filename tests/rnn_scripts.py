"""Small training-script shapes that trip naive gradient checks, written for the tests.

A character-level vanilla RNN whose ``loss_and_grads`` returns ``(loss, grads, last_hidden)``,
optionally clipping every gradient element-wise inside (a common habit), and an MLP whose
loss is averaged over the batch while its gradients are summed.
"""

from __future__ import annotations

import numpy as np

TEXT = "the quick brown fox jumps over the lazy dog; the dog sleeps. "


class CharRNN:
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
    params = {"W1": rng.normal(0, 0.5, (5, 8)), "b1": rng.normal(0, 0.1, 8),
              "W2": rng.normal(0, 0.5, (8, 3)), "b2": rng.normal(0, 0.1, 3)}  # fmt: skip

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
