"""The decorator form ``watch.wrap(train_step)``, on a model that keeps its weights as attributes.

    python examples/custom_loop.py                 # 200 steps
    python examples/custom_loop.py --steps 50

gradwatch takes parameters as a dict (or list) of arrays and perturbs those arrays *in place*
during a check, restoring them bit for bit afterwards. A model that stores its weights as
attributes (``self.W1``, ``self.b1``, ...) is passed as a dict *view* of its own arrays, built
once: the dict holds the very array objects the model computes with, so perturbing
``params["W1"]`` perturbs ``model.W1``. Two rules keep the view valid:

- update in place (``model.W1 -= lr * dW1``), never rebind (``model.W1 = model.W1 - ...``
  makes a new array the view does not see);
- the loss must read the arrays it is given or the model's attributes (here: the same arrays).

``watch.wrap(train_step, lr=...)`` turns ``train_step(params, *batch) -> (loss, grads)`` into a
function that also calls ``watch.step()``, right after backprop and before your update, and
uses ``train_step`` itself (same batch) as the loss for checks.
"""

from __future__ import annotations

import argparse

import numpy as np

import gradwatch
from gradwatch.demo import make_blobs


class TwoLayerNet:
    """A tanh network with softmax cross-entropy whose weights are plain attributes."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.W1 = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, n_hidden))
        self.b1 = np.zeros(n_hidden)
        self.W2 = rng.normal(0.0, 1.0 / np.sqrt(n_hidden), size=(n_hidden, n_out))
        self.b2 = np.zeros(n_out)
        self.name = "two-layer tanh"  # attributes that are not arrays are left out below

    def parameters(self) -> dict[str, np.ndarray]:
        """A dict view of the model's own arrays (the same objects, not copies)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    def loss_and_grads(self, X: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        h = np.tanh(X @ self.W1 + self.b1)
        logits = h @ self.W2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(len(y)), y].mean())
        delta = np.exp(logp)
        delta[np.arange(len(y)), y] -= 1.0
        delta /= len(y)
        dh = (delta @ self.W2.T) * (1.0 - h**2)
        grads = {"W1": X.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ delta, "b2": delta.sum(axis=0)}
        return loss, grads


class StepDecay:
    """lr halves every ``every`` steps; ``wrap(lr=schedule.current)`` reads it each step."""

    def __init__(self, lr: float, every: int) -> None:
        self.lr0, self.every, self.t = lr, every, 0

    def current(self) -> float:
        return self.lr0 * 0.5 ** (self.t // self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size (default 64)")
    args = parser.parse_args()

    X, y = make_blobs(n=1024, dim=32, classes=4, seed=2)
    model = TwoLayerNet(32, 64, 4)
    params = model.parameters()  # built once: {"W1": model.W1, "b1": model.b1, ...}
    schedule = StepDecay(0.5, every=max(1, args.steps // 2))
    rng = np.random.default_rng(0)

    def train_step(params, X_batch, y_batch):
        # `params` holds the model's own arrays, so the model can compute from its attributes.
        return model.loss_and_grads(X_batch, y_batch)

    with gradwatch.GradWatch(
        every=max(1, args.steps // 4),
        experiment="gradwatch-examples",
        run_name="custom-loop",
        params={"model": model.name, "lr0": schedule.lr0, "batch": args.batch},
        config=False,
        seed=0,
    ) as watch:
        step_fn = watch.wrap(train_step, lr=schedule.current)
        for _ in range(args.steps):
            idx = rng.choice(len(X), size=args.batch, replace=False)
            loss, grads = step_fn(params, X[idx], y[idx])  # backprop + watch.step()
            lr = schedule.current()
            for name, grad in grads.items():
                params[name] -= lr * grad  # in place: model.W1 is params["W1"]
            schedule.t += 1

    assert params["W1"] is model.W1  # the view is still the model's own arrays
    report = watch.last_report
    print(f"final loss {loss:.4f}, lr {schedule.current():g}")
    print(f"checks: {watch.checks}, failed: {watch.checks_failed}")
    print(f"last check: {report}")
    print(watch.close_result)  # run id and records shipped, or what is pending and how to sync


if __name__ == "__main__":
    main()
