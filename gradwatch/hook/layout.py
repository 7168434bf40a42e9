"""The tensors a run watches, fixed at its first step: names, gradient keys and shapes.

    layout = TensorLayout.of(params, grads)      # validates; InputError names key and shape
    layout.verify(params, grads, step)           # every step, about 0.1 us a tensor
    layout.named(params)                         # {"W1": W1, ...}

Names and gradient matching are the check engine's (``gradwatch.check.param_items`` and
``match_gradient_keys``): a dict's keys, a namedtuple's fields, or "0", "1", ... for a list or
tuple; a gradient is found by the parameter's name or with a ``d`` prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradwatch.check import match_gradient_keys, param_items
from gradwatch.errors import InputError

logger = logging.getLogger("gradwatch")

__all__ = ["TensorLayout"]


class TensorLayout:
    """Where each parameter and its gradient are found, and their shapes."""

    def __init__(
        self,
        kind: str,
        names: tuple[str, ...],
        param_keys: tuple[Any, ...],
        grad_keys: tuple[Any, ...],
        shapes: tuple[tuple[int, ...], ...],
        grad_shapes: tuple[tuple[int, ...], ...] | None = None,
    ) -> None:
        self.kind = kind  # "dict" or "list"
        self.names = names
        self.param_keys = param_keys
        self.grad_keys = grad_keys
        self.shapes = shapes
        self._param_key_set = frozenset(param_keys)
        self._grad_key_set = frozenset(grad_keys)
        # A gradient may differ from its parameter by length-1 axes (fixed at the first step).
        self._grad_shapes = tuple(zip(grad_keys, grad_shapes or shapes))

    @classmethod
    def of(cls, params: Any, grads: Any) -> TensorLayout:
        """Validate ``params``/``grads`` exactly as the check engine does (InputError naming
        the key and shape) and record their layout (the first step)."""
        items, kind = param_items(params)
        if not items:
            raise InputError("params is empty: there is nothing to watch")
        grad_key_of = match_gradient_keys(params, grads)
        names = tuple(name for name, _ in items)
        param_keys = tuple(params.keys()) if kind == "dict" else tuple(range(len(items)))
        grad_keys = tuple(grad_key_of[name] for name in names)
        shapes = tuple(value.shape for _, value in items)
        grad_shapes = tuple(np.shape(grads[key]) for key in grad_keys)
        for name, grad_shape, shape in zip(names, grad_shapes, shapes):
            if grad_shape != shape:
                logger.info(
                    "gradwatch: the gradient of '%s' has shape %s for a parameter of shape %s: "
                    "accepted (the same entries; only length-1 axes differ)",
                    name,
                    grad_shape,
                    shape,
                )
        kind_name = "dict" if kind == "dict" else "list"
        return cls(kind_name, names, param_keys, grad_keys, shapes, grad_shapes)

    def verify(self, params: Any, grads: Any, step: int) -> None:
        """Raise InputError if ``params``/``grads`` no longer have this layout: a parameter
        added, removed or renamed, or a gradient of another shape. Cheap enough for every
        step (a set comparison of the keys and one shape comparison per tensor)."""
        try:
            if self.kind == "dict":
                same = params.keys() == self._param_key_set and grads.keys() == self._grad_key_set
            else:
                same = len(params) == len(grads) == len(self.names)
            if same:
                for key, shape in self._grad_shapes:
                    if grads[key].shape != shape:
                        same = False
                        break
        except (AttributeError, KeyError, IndexError, TypeError):
            same = False
        if not same:
            raise self._changed(params, grads, step)

    def _changed(self, params: Any, grads: Any, step: int) -> InputError:
        """What differs from the first step, said plainly."""
        if self.kind == "dict":
            if not isinstance(params, Mapping) or params.keys() != self._param_key_set:
                return self._params_changed(params, step)
            if not isinstance(grads, Mapping) or grads.keys() != self._grad_key_set:
                return self._grads_changed(grads, step)
        elif (
            not isinstance(params, (list, tuple))
            or not isinstance(grads, (list, tuple))
            or (len(params) != len(self.names) or len(grads) != len(self.names))
        ):
            return InputError(
                f"step {step}: params and grads must stay lists of {len(self.names)} arrays "
                f"as at the first step; got {_count(params)} and {_count(grads)}: watch the "
                "same tensors for the whole run"
            )
        for key, shape in self._grad_shapes:
            if getattr(grads[key], "shape", None) != shape:
                return self._bad_shape(key, grads[key], shape, step)
        return InputError(f"step {step}: params/grads differ from the first step's layout")

    def verify_params(self, params: Any, step: int) -> None:
        """Also the parameters' shapes (statistics and checks use them)."""
        for key, name, shape in zip(self.param_keys, self.names, self.shapes):
            value = params[key]
            if not isinstance(value, np.ndarray) or value.shape != shape:
                raise InputError(
                    f"step {step}: param '{name}' is {_describe(value)}, but was an array of shape "
                    f"{shape} at the first step: watch the same tensors for the whole run"
                )

    def named(self, params: Any) -> dict[str, np.ndarray]:
        return {name: params[key] for name, key in zip(self.names, self.param_keys)}

    def named_grads(self, grads: Any) -> dict[str, np.ndarray]:
        return {name: np.asarray(grads[key]) for name, key in zip(self.names, self.grad_keys)}

    # -- messages --------------------------------------------------------------------------

    def _params_changed(self, params: Any, step: int) -> InputError:
        return _keys_changed(
            "params",
            params,
            self._param_key_set,
            step,
            "GradWatch watches the same tensors for the whole run: pass the same keys every "
            "step, or start a new run for another model",
        )

    def _grads_changed(self, grads: Any, step: int) -> InputError:
        return _keys_changed(
            "grads",
            grads,
            self._grad_key_set,
            step,
            "pass one gradient per parameter, with the same keys every step",
        )

    def _bad_shape(self, key: Any, grad: Any, shape: tuple[int, ...], step: int) -> InputError:
        name = self.names[self.grad_keys.index(key)]
        return InputError(
            f"step {step}: gradient for '{name}' is {_describe(grad)} but the parameter has shape "
            f"{shape}: backprop must return one gradient entry per parameter entry"
        )


def _keys_changed(what: str, now: Any, first: frozenset, step: int, advice: str) -> InputError:
    """``what`` (params or grads) no longer has the dict keys it had at the first step."""
    if not isinstance(now, Mapping):
        return InputError(
            f"step {step}: {what} is a {type(now).__name__}, but was a dict at "
            "the first step: pass the same kind of container every step"
        )
    added = sorted(map(str, now.keys() - first))
    removed = sorted(map(str, first - now.keys()))
    return InputError(
        f"step {step}: {what} changed after the first step ({_diff(added, removed)}); {advice}"
    )


def _count(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _diff(added: list[str], removed: list[str]) -> str:
    parts = []
    if added:
        parts.append("added " + ", ".join(f"'{a}'" for a in added))
    if removed:
        parts.append("removed " + ", ".join(f"'{r}'" for r in removed))
    return "; ".join(parts)


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"of shape {shape}" if shape is not None else f"a {type(value).__name__}"
