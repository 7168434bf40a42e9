"""Recipe: hand the hook the gradients *before* the update when the update hides in an
optimizer object (Adam) or inside a layer's backward.

    python examples/recipe_optimizer.py            # both shapes, 60 steps each
    python examples/recipe_optimizer.py --steps 20

``watch.step()`` compares the gradients with the loss's slope at the parameters it is given,
so it must run after backprop and before anything moves the parameters:

1. An optimizer object (``opt.step(params, grads)`` updates in place): call
   ``watch.step(params, grads, ...)`` between backprop and ``opt.step``. Pass ``lr`` only for
   plain SGD (the check uses it to test "step() after the update"); Adam's update is not
   ``lr·g``, so leave it out.
2. Layers whose ``backward`` updates their own weights: split "compute the gradients" from
   "apply them". Here ``backward(dout, apply=False)`` stores ``dW``/``db`` and returns; the
   hook sees them; ``apply_updates()`` then moves the weights.
"""

from __future__ import annotations

import argparse

import numpy as np

import gradwatch
from gradwatch.demo import make_blobs


class Adam:
    """A plain Adam optimizer object that updates the arrays it is given in place."""

    def __init__(self, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.lr, self.beta1, self.beta2, self.t = lr, beta1, beta2, 0
        self.m: dict = {}
        self.v: dict = {}

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for k, p in params.items():
            g = grads["d" + k]
            self.m[k] = self.beta1 * self.m.get(k, 0) + (1 - self.beta1) * g
            self.v[k] = self.beta2 * self.v.get(k, 0) + (1 - self.beta2) * g * g
            m_hat = self.m[k] / (1 - self.beta1**self.t)
            v_hat = self.v[k] / (1 - self.beta2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def mlp_loss_and_grads(p: dict, X: np.ndarray, y: np.ndarray):
    h = np.tanh(X @ p["W1"] + p["b1"])
    scores = h @ p["W2"] + p["b2"]
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    loss = float(-np.log(probs[np.arange(len(y)), y]).mean())
    delta = probs
    delta[np.arange(len(y)), y] -= 1
    delta /= len(y)
    dh = delta @ p["W2"].T * (1 - h**2)
    grads = {"dW2": h.T @ delta, "db2": delta.sum(0), "dW1": X.T @ dh, "db1": dh.sum(0)}
    return loss, grads


def train_with_adam(steps: int, X, y) -> gradwatch.GradWatch:
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.normal(size=(8, 16)) / 3,
        "b1": np.zeros(16),
        "W2": rng.normal(size=(16, 3)) / 4,
        "b2": np.zeros(3),
    }
    opt = Adam(lr=0.01)
    with gradwatch.GradWatch(every=20, experiment="recipes", run_name="adam", config=False) as w:
        for _ in range(steps):
            loss, grads = mlp_loss_and_grads(params, X, y)
            # After backprop, before opt.step(): the gradients belong to these parameters.
            w.step(params, grads, loss=loss, loss_fn=lambda p: mlp_loss_and_grads(p, X, y)[0])
            opt.step(params, grads)
    return w


class Dense:
    """A layer whose backward updates its own weights (a common from-scratch library shape)."""

    def __init__(self, n_in: int, n_out: int, rng, lr: float) -> None:
        self.W = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)
        self.b = np.zeros(n_out)
        self.lr = lr

    def forward(self, x, W=None, b=None):
        self.x = x
        return x @ (self.W if W is None else W) + (self.b if b is None else b)

    def backward(self, dout, apply: bool = True):
        self.dW, self.db = self.x.T @ dout, dout.sum(0)
        dx = dout @ self.W.T
        if apply:  # the library's default: update inside backprop
            self.apply_updates()
        return dx

    def apply_updates(self) -> None:
        self.W -= self.lr * self.dW
        self.b -= self.lr * self.db


def train_with_layer_updates(steps: int, X, y, lr: float = 0.3) -> gradwatch.GradWatch:
    rng = np.random.default_rng(1)
    layers = [Dense(8, 16, rng, lr), Dense(16, 3, rng, lr)]
    # A dict *view* of the layers' own arrays: the check perturbs them in place.
    params = {f"{n}{i}": getattr(layer, n) for i, layer in enumerate(layers) for n in ("W", "b")}

    def loss_fn(p):
        h = np.tanh(X @ p["W0"] + p["b0"])
        scores = h @ p["W1"] + p["b1"]
        scores = scores - scores.max(axis=1, keepdims=True)
        return float(-(scores[np.arange(len(y)), y] - np.log(np.exp(scores).sum(1))).mean())

    with gradwatch.GradWatch(
        every=20, experiment="recipes", run_name="layer-updates", config=False
    ) as w:
        for _ in range(steps):
            h = np.tanh(layers[0].forward(X))
            scores = layers[1].forward(h)
            probs = np.exp(scores - scores.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            loss = float(-np.log(probs[np.arange(len(y)), y]).mean())
            delta = probs
            delta[np.arange(len(y)), y] -= 1
            dh = layers[1].backward(delta / len(y), apply=False) * (1 - h**2)
            layers[0].backward(dh, apply=False)
            grads = {
                f"d{n}{i}": getattr(layer, "d" + n)
                for i, layer in enumerate(layers)
                for n in ("W", "b")
            }
            w.step(params, grads, loss=loss, lr=lr, loss_fn=loss_fn)  # plain SGD: lr helps
            for layer in layers:
                layer.apply_updates()
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    X, y = make_blobs(n=64, dim=8, classes=3, seed=0)
    for name, train in (("adam", train_with_adam), ("layer-updates", train_with_layer_updates)):
        w = train(args.steps, X, y)
        print(f"{name}: checks: {w.checks}, failed: {w.checks_failed}")


if __name__ == "__main__":
    main()
