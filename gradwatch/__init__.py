"""gradwatch: keep your numpy backprop honest while it trains.

    import gradwatch
    report = gradwatch.check_gradients(loss_fn, params, grads)      # one check
    with gradwatch.GradWatch(every=100, experiment="mlp") as watch:  # continuous, to MLflow
        ...
        watch.step(params, grads, loss=loss, lr=lr, loss_fn=loss_fn)

The check engine (``gradwatch.check``) is pure numpy; MLflow is imported only when the
hook, the tracking pipeline or the CLI is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from gradwatch.check import CheckReport, TensorReport, check_gradients
from gradwatch.errors import (
    AlertStop,
    ConfigError,
    GradwatchError,
    InputError,
    LossError,
    TrackingError,
)

__version__ = "0.1.0"

__all__ = [
    "AlertStop",
    "CheckReport",
    "ConfigError",
    "GradWatch",
    "GradwatchError",
    "InputError",
    "LossError",
    "TensorReport",
    "TrackingError",
    "__version__",
    "check_gradients",
    "load_config",
    "param",
]

# Names whose modules import MLflow (slow) are loaded on first use.
_LAZY = {
    "GradWatch": "gradwatch.hook",
    "load_config": "gradwatch.config",
    "param": "gradwatch.params",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
