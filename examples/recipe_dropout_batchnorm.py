"""Recipe: a deterministic ``loss_fn`` for networks with dropout or batchnorm.

    python examples/recipe_dropout_batchnorm.py          # three runs, 60 steps each
    python examples/recipe_dropout_batchnorm.py --steps 20

Finite differences compare the loss at nearby parameters, so ``loss_fn`` must return the
same value every call at the same parameters, and must not change the model's state:

- dropout, fixed mask: draw the mask once per training step and let ``loss_fn`` reuse it;
- dropout, restored RNG state: save numpy's global RNG state before the training forward
  pass and restore it at the start of ``loss_fn``, so every call draws the same mask;
- batchnorm: ``loss_fn`` uses the batch statistics, as training does, and never updates the
  running mean/variance (``update_running=False``), which the check would otherwise disturb
  with every evaluation.
"""

from __future__ import annotations

import argparse

import numpy as np

import gradwatch
from gradwatch.demo import make_blobs

KEEP = 0.8


class Net:
    """Linear -> batchnorm -> tanh -> dropout -> linear, softmax cross-entropy."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.normal(size=(8, 16)) / 3,
            "b1": np.zeros(16),
            "gamma": np.ones(16),
            "beta": np.zeros(16),
            "W2": rng.normal(size=(16, 3)) / 4,
            "b2": np.zeros(3),
        }
        self.running_mean, self.running_var = np.zeros(16), np.ones(16)

    def forward(self, p, X, y, mask, update_running: bool):
        z = X @ p["W1"] + p["b1"]
        mu, var = z.mean(0), z.var(0)
        if update_running:  # training state: only the real training step moves it
            self.running_mean = 0.9 * self.running_mean + 0.1 * mu
            self.running_var = 0.9 * self.running_var + 0.1 * var
        zhat = (z - mu) / np.sqrt(var + 1e-5)
        h = np.tanh(p["gamma"] * zhat + p["beta"])
        hd = h * mask / KEEP
        scores = hd @ p["W2"] + p["b2"]
        scores = scores - scores.max(1, keepdims=True)
        probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        loss = float(-np.log(probs[np.arange(len(y)), y]).mean())
        return loss, (X, zhat, var, h, hd, probs, mask)

    def backward(self, p, y, cache):
        X, zhat, var, h, hd, probs, mask = cache
        m = len(y)
        delta = probs.copy()
        delta[np.arange(m), y] -= 1
        delta /= m
        g = {"dW2": hd.T @ delta, "db2": delta.sum(0)}
        da = delta @ p["W2"].T * mask / KEEP * (1 - h**2)
        g["dgamma"], g["dbeta"] = (da * zhat).sum(0), da.sum(0)
        dzhat = da * p["gamma"]
        dz = (m * dzhat - dzhat.sum(0) - zhat * (dzhat * zhat).sum(0)) / (m * np.sqrt(var + 1e-5))
        g["dW1"], g["db1"] = X.T @ dz, dz.sum(0)
        return g


def train(shape: str, steps: int, X, y, lr: float = 0.2) -> gradwatch.GradWatch:
    net = Net()
    p = net.params
    rng = np.random.default_rng(1)
    with gradwatch.GradWatch(every=20, experiment="recipes", run_name=shape, config=False) as w:
        for _ in range(steps):
            if shape == "dropout-fixed-mask":
                mask = rng.random((len(X), 16)) < KEEP  # drawn once for this step

                def loss_fn(q, mask=mask):
                    return net.forward(q, X, y, mask, update_running=False)[0]

            else:  # "dropout-rng-state" and "batchnorm": the mask comes from np.random
                state = np.random.get_state()
                mask = np.random.random((len(X), 16)) < KEEP

                def loss_fn(q, state=state):
                    np.random.set_state(state)  # the same draw as the training step
                    return net.forward(q, X, y, np.random.random((len(X), 16)) < KEEP, False)[0]

            running = net.running_mean.copy()
            loss, cache = net.forward(p, X, y, mask, update_running=True)
            grads = net.backward(p, y, cache)
            after = net.running_mean.copy()
            w.step(p, grads, loss=loss, lr=lr, loss_fn=loss_fn)
            # loss_fn left the running statistics as the training step set them.
            assert np.array_equal(net.running_mean, after) and not np.array_equal(after, running)
            for k in p:
                p[k] -= lr * grads["d" + k]
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    X, y = make_blobs(n=64, dim=8, classes=3, seed=0)
    for shape in ("dropout-fixed-mask", "dropout-rng-state", "batchnorm"):
        w = train(shape, args.steps, X, y)
        print(f"{shape}: checks: {w.checks}, failed: {w.checks_failed}")


if __name__ == "__main__":
    main()
