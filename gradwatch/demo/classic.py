"""The classic 3-layer network of the gradient-checking exercise, with its two planted bugs.

LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID, mean cross-entropy over m examples.
Shapes: W1 5x4, b1 5x1, W2 3x5, b2 3x1, W3 1x3, b3 1x1 (47 numbers).

    x, y, params = classic_test_case()
    cost, cache = classic_forward(x, y, params)
    grads = classic_backward(x, y, cache, bugs=ClassicBugs.planted())
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CLASSIC_SHAPES",
    "ClassicBugs",
    "classic_test_case",
    "classic_forward",
    "classic_backward",
]

#: The exercise's network, LINEAR -> RELU -> LINEAR -> RELU -> LINEAR -> SIGMOID (47 numbers).
CLASSIC_SHAPES: dict[str, tuple[int, int]] = {
    "W1": (5, 4),
    "b1": (5, 1),
    "W2": (3, 5),
    "b2": (3, 1),
    "W3": (1, 3),
    "b3": (1, 1),
}


@dataclass(frozen=True)
class ClassicBugs:
    """Which of the exercise's deliberate backprop bugs to plant."""

    dW2_times_two: bool = False  # dW2 = 1/m * dZ2 A1^T * 2
    db1_four_over_m: bool = False  # db1 = 4/m * sum(dZ1)

    @classmethod
    def planted(cls) -> ClassicBugs:
        return cls(dW2_times_two=True, db1_four_over_m=True)


def classic_test_case() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The exercise's test data: seed 1, x = randn(4,3), y = [1,1,0], then W1, b1, ..., b3."""
    np.random.seed(1)
    x = np.random.randn(4, 3)
    y = np.array([1, 1, 0])
    params = {}
    for name, shape in CLASSIC_SHAPES.items():
        params[name] = np.random.randn(*shape)
    return x, y, params


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(0, z)


def classic_forward(x: np.ndarray, y: np.ndarray, params: dict[str, np.ndarray]):
    """Return ``(cost, cache)``; ``cache`` feeds :func:`classic_backward`."""
    m = x.shape[1]
    W1, b1, W2, b2, W3, b3 = (params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    Z1 = W1 @ x + b1
    A1 = _relu(Z1)
    Z2 = W2 @ A1 + b2
    A2 = _relu(Z2)
    Z3 = W3 @ A2 + b3
    A3 = 1.0 / (1.0 + np.exp(-Z3))
    logprobs = -np.log(A3) * y - np.log(1 - A3) * (1 - y)
    cost = float(np.sum(logprobs) / m)
    return cost, (Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3)


def classic_backward(x, y, cache, bugs: ClassicBugs = ClassicBugs()) -> dict[str, np.ndarray]:
    """Backprop of the classic network; returns ``{"dW1": ..., "db1": ..., ...}``."""
    m = x.shape[1]
    Z1, A1, W1, b1, Z2, A2, W2, b2, Z3, A3, W3, b3 = cache
    dZ3 = A3 - y
    dW3 = dZ3 @ A2.T / m
    db3 = np.sum(dZ3, axis=1, keepdims=True) / m
    dA2 = W3.T @ dZ3
    dZ2 = dA2 * (A2 > 0)
    dW2 = dZ2 @ A1.T / m * (2 if bugs.dW2_times_two else 1)
    db2 = np.sum(dZ2, axis=1, keepdims=True) / m
    dA1 = W2.T @ dZ2
    dZ1 = dA1 * (A1 > 0)
    dW1 = dZ1 @ x.T / m
    db1 = (4.0 if bugs.db1_four_over_m else 1.0) / m * np.sum(dZ1, axis=1, keepdims=True)
    return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2, "dW3": dW3, "db3": db3}
