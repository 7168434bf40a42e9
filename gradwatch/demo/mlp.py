"""A plain numpy MLP (ReLU hidden layers, softmax cross-entropy), the demo and benchmark model.

mlp = MLP([784, 256, 10], seed=0)
loss, grads = mlp.loss_and_grads(mlp.params, X[:128], y[:128])
loss_only = mlp.loss(mlp.params, X[:128], y[:128])
"""

from __future__ import annotations

import numpy as np

__all__ = ["MLP"]


class MLP:
    """Parameters live in ``self.params`` as ``{"W1", "b1", "W2", "b2", ...}``; grads as ``"dW1"``..."""

    def __init__(
        self, sizes: list[int], seed: int = 0, dtype=np.float64, weight_decay: float = 0.0
    ):
        rng = np.random.default_rng(seed)
        self.sizes = list(sizes)
        self.weight_decay = weight_decay
        self.params: dict[str, np.ndarray] = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            scale = np.sqrt(2.0 / fan_in)
            self.params[f"W{i}"] = (rng.normal(0, scale, size=(fan_in, fan_out))).astype(dtype)
            self.params[f"b{i}"] = np.zeros(fan_out, dtype=dtype)

    @property
    def num_layers(self) -> int:
        return len(self.sizes) - 1

    def _forward(self, params, X):
        acts = [X]
        h = X
        for i in range(1, self.num_layers + 1):
            z = h @ params[f"W{i}"] + params[f"b{i}"]
            h = np.maximum(z, 0) if i < self.num_layers else z
            acts.append(h)
        return acts

    def _softmax_xent(self, logits, y):
        shifted = logits - logits.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        logp = shifted - logsum
        return -logp[np.arange(len(y)), y].mean(), logp

    def _decay(self, params) -> float:
        if not self.weight_decay:
            return 0.0
        return (
            0.5
            * self.weight_decay
            * sum(float(np.sum(params[f"W{i}"] ** 2)) for i in range(1, self.num_layers + 1))
        )

    def loss(self, params, X, y) -> float:
        """Mean cross-entropy (+ L2 weight decay) at ``params`` on the batch ``(X, y)``."""
        logits = self._forward(params, X)[-1]
        return float(self._softmax_xent(logits, y)[0]) + self._decay(params)

    def loss_and_grads(self, params, X, y) -> tuple[float, dict[str, np.ndarray]]:
        """Forward and backward pass: ``(loss, {"dW1": ..., "db1": ..., ...})``."""
        acts = self._forward(params, X)
        loss, logp = self._softmax_xent(acts[-1], y)
        delta = np.exp(logp)
        delta[np.arange(len(y)), y] -= 1.0
        delta /= len(y)
        grads = {}
        for i in range(self.num_layers, 0, -1):
            grads[f"dW{i}"] = acts[i - 1].T @ delta
            if self.weight_decay:
                grads[f"dW{i}"] += self.weight_decay * params[f"W{i}"]
            grads[f"db{i}"] = delta.sum(axis=0)
            if i > 1:
                delta = (delta @ params[f"W{i}"].T) * (acts[i - 1] > 0)
        return float(loss) + self._decay(params), grads
