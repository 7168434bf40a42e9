"""gradwatch: keep your numpy backprop honest while it trains.

    import gradwatch
    report = gradwatch.check_gradients(loss_fn, params, grads)      # one check
    with gradwatch.GradWatch(every=100, experiment="mlp") as watch:  # continuous, to MLflow
        ...
        watch.step(params, grads, loss=loss, lr=lr, loss_fn=loss_fn)

The check engine (``gradwatch.check``) is pure numpy; MLflow is imported only where it is
needed (the shipper process of the embedded store, the CLI's readers), never by the hook.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from gradwatch.errors import (
    AlertStop,
    ConfigError,
    GradwatchError,
    InputError,
    LossError,
    NotFoundError,
    TrackingError,
)

if TYPE_CHECKING:
    from gradwatch.check import CheckReport, TensorReport, check_gradients
    from gradwatch.hook import GradWatch

__version__ = "0.1.0"

__all__ = [
    "AlertStop",
    "CheckReport",
    "ConfigError",
    "GradWatch",
    "GradwatchError",
    "InputError",
    "LossError",
    "NotFoundError",
    "TensorReport",
    "TrackingError",
    "__version__",
    "check_gradients",
    "load_config",
    "param",
]

# Loaded on first use: the shipper process imports this package and needs neither numpy
# (the engine) nor the hook.
_LAZY = {
    "CheckReport": "gradwatch.check",
    "GradWatch": "gradwatch.hook",
    "TensorReport": "gradwatch.check",
    "check_gradients": "gradwatch.check",
    "load_config": "gradwatch.config",
    "param": "gradwatch.params",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
