"""A zoo of small numpy networks: correct ones that naive checks misjudge, and backprop bugs.

    case = CORRECT["tanh"]; params, X, y = case.make(seed)
    grads = case.backward(params, X, y)      # BUGS[...] cases plant their bug here

Every network is a plain MLP: X (m, d) @ W1 (d, h1) + b1 -> act -> ... -> output, with a
softmax cross-entropy or squared-error loss, mean or sum over examples, optional L2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Net:
    sizes: tuple[int, ...] = (6, 8, 8, 3)
    act: str = "relu"
    loss_kind: str = "xent"  # or "mse"
    reduce: str = "mean"  # or "sum"
    l2: float = 0.0
    dtype: type = np.float64
    m: int = 16
    weight_scale: float = 1.0
    zero_pad_rows: int = 0  # trailing all-zero examples with zero biases: exact ReLU kinks
    tiny_feature: float = 0.0  # scale one input feature down (near-zero gradients)
    bug: str | None = None
    extras: dict = field(default_factory=dict)

    # -- data and parameters -------------------------------------------------------------
    def make(self, seed: int):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(self.m, self.sizes[0]))
        if self.zero_pad_rows:
            X[-self.zero_pad_rows :] = 0.0
        if self.tiny_feature:
            X[:, 0] *= self.tiny_feature
        y = rng.integers(0, self.sizes[-1], size=self.m)
        params = {}
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:]), start=1):
            params[f"W{i}"] = (rng.normal(size=(a, b)) * self.weight_scale / np.sqrt(a)).astype(
                self.dtype
            )
            bias = np.zeros(b) if self.zero_pad_rows else rng.normal(size=b) * 0.1
            params[f"b{i}"] = bias.astype(self.dtype)
        return params, X.astype(self.dtype), y

    # -- forward -------------------------------------------------------------------------
    def _act(self, z):
        return np.maximum(z, 0) if self.act == "relu" else np.tanh(z)

    def _layers(self, params, X):
        n = len(self.sizes) - 1
        acts, zs = [X], []
        h = X
        for i in range(1, n + 1):
            z = h @ params[f"W{i}"] + params[f"b{i}"]
            zs.append(z)
            h = self._act(z) if i < n else z
            acts.append(h)
        return acts, zs

    def _target(self, y):
        return np.eye(self.sizes[-1])[y]

    def loss(self, params, X, y) -> float:
        acts, _ = self._layers(params, X)
        out = acts[-1]
        if self.loss_kind == "xent":
            shifted = out - out.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            per = -logp[np.arange(len(y)), y]
        else:
            per = 0.5 * np.sum((out - self._target(y)) ** 2, axis=1)
        total = per.sum() if self.reduce == "sum" else per.mean()
        n = len(self.sizes) - 1
        reg = (
            0.5
            * self.l2
            * sum(np.sum(params[f"W{i}"].astype(np.float64) ** 2) for i in range(1, n + 1))
        )
        return total + reg

    # -- backward (with the planted bug, if any) -----------------------------------------
    def backward(self, params, X, y, X_other=None):
        bug = self.bug
        if bug == "other_batch":
            X = X[::-1].copy()  # gradients of a different batch than the loss sees
            y = y[::-1].copy()
            X[0] += 1.0
        acts, zs = self._layers(params, X)
        out = acts[-1]
        m = len(y)
        scale = 1.0 if self.reduce == "sum" else 1.0 / m
        if self.loss_kind == "xent":
            p = np.exp(out - out.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            delta = p - (0 if bug == "softmax_no_target" else self._target(y))
        else:
            delta = out - self._target(y)
        delta = delta * scale
        n = len(self.sizes) - 1
        grads = {}
        for i in range(n, 0, -1):
            W = params[f"W{i}"]
            grads[f"dW{i}"] = acts[i - 1].T @ delta
            grads[f"db{i}"] = delta.sum(axis=0)
            if self.l2 and bug != "missing_l2":
                grads[f"dW{i}"] = grads[f"dW{i}"] + self.l2 * W
            if i > 1:
                back = delta @ (W if (bug == "untransposed" and i == 2) else W.T)
                a = acts[i - 1]
                if self.act == "relu":
                    deriv = (zs[i - 2] > 0).astype(X.dtype)
                    if bug == "missing_relu_mask" and i == 2:
                        deriv = np.ones_like(deriv)
                else:
                    deriv = 1 - a if bug == "tanh_deriv" else 1 - a**2
                delta = back * deriv
        if bug == "scaled":
            grads["dW1"] = grads["dW1"] * 2
        elif bug == "sign_flip":
            grads["db2"] = -grads["db2"]
        elif bug == "one_row":
            grads["dW2"][1, :] *= 1.5
        elif bug == "one_coord":
            g = grads["dW1"]
            flat = int(np.argmax(np.abs(g)))  # a real coordinate, not a zero one
            g.reshape(-1)[flat] *= 3.0
        elif bug == "bias_four_over_m":
            grads["db1"] = grads["db1"] * 4
        elif bug == "sum_not_mean":
            grads["dW2"] = grads["dW2"] * m
        elif bug == "transposed_square":
            grads["dW2"] = grads["dW2"].T.copy()
        return {k: v.astype(self.dtype) for k, v in grads.items()}


BUGS: dict[str, Net] = {
    "scaled": Net(bug="scaled"),
    "sign_flip": Net(bug="sign_flip"),
    "one_row": Net(bug="one_row"),
    "one_coord_large_tensor": Net(sizes=(64, 48, 48, 4), bug="one_coord", m=32),
    "untransposed_square": Net(bug="untransposed"),
    "tanh_wrong_derivative": Net(act="tanh", bug="tanh_deriv"),
    "missing_relu_mask": Net(bug="missing_relu_mask"),
    "missing_l2": Net(l2=0.05, bug="missing_l2"),
    "other_batch": Net(bug="other_batch"),
    "bias_four_over_m": Net(bug="bias_four_over_m"),
    "sum_not_mean": Net(bug="sum_not_mean"),
    "softmax_no_target": Net(bug="softmax_no_target"),
    "transposed_square_grad": Net(bug="transposed_square"),
}

CORRECT: dict[str, Net] = {
    "float32": Net(dtype=np.float32, act="tanh"),
    "float32_relu": Net(dtype=np.float32),
    "relu_zero_padded_rows": Net(zero_pad_rows=6, m=16),
    "sum_over_thousands": Net(reduce="sum", m=5000),
    "near_zero_gradients": Net(tiny_feature=1e-9, act="tanh"),
    "regularization_dominated": Net(l2=1e3),
    "tanh": Net(act="tanh", loss_kind="mse"),
    "large_weights": Net(act="tanh", weight_scale=30.0),
    "relu_deep": Net(sizes=(5, 16, 16, 16, 2)),
}
