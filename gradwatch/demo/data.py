"""Seeded synthetic classification data (no download)."""

from __future__ import annotations

import numpy as np

__all__ = ["make_blobs"]


def make_blobs(
    n: int = 2048, dim: int = 784, classes: int = 10, seed: int = 0, spread: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: ``n`` rows of ``dim`` features around ``classes`` random centres.

    X, y = make_blobs(n=512, dim=20, classes=3, seed=1)   # X (512, 20) float64, y (512,) int
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + spread * rng.normal(0.0, 1.0, size=(n, dim))
    X /= np.sqrt(dim)
    return X, y
