"""The tensors a run watches, fixed at its first step: names, gradient keys and shapes.

    layout = TensorLayout.of(params, grads)      # validates; InputError names key and shape
    layout.verify(params, grads, step)           # every step, about 0.1 us a tensor
    layout.named(params)                         # {"W1": W1, ...}

Names are the check engine's: a dict's keys, or "0", "1", ... for a list or tuple (a
namedtuple too). Gradients are matched by the parameter's name or with a ``d`` prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradwatch.errors import InputError

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
    ) -> None:
        self.kind = kind  # "dict" or "list"
        self.names = names
        self.param_keys = param_keys
        self.grad_keys = grad_keys
        self.shapes = shapes
        self._param_key_set = frozenset(param_keys)
        self._grad_key_set = frozenset(grad_keys)
        self._grad_shapes = tuple(zip(grad_keys, shapes))

    @classmethod
    def of(cls, params: Any, grads: Any) -> TensorLayout:
        """Validate ``params``/``grads`` and record their layout (the first step)."""
        kind, param_keys = _keys(params)
        if not param_keys:
            raise InputError("params is empty: there is nothing to watch")
        names = tuple(str(k) for k in param_keys)
        grad_keys = _match_gradients(grads, names, kind)
        shapes = []
        for name, pkey, gkey in zip(names, param_keys, grad_keys):
            value = params[pkey]
            if not isinstance(value, np.ndarray):
                raise InputError(
                    f"param '{name}' is a {type(value).__name__}, not a numpy array: the check "
                    "perturbs parameters in place, so pass the arrays your model uses"
                )
            if not np.issubdtype(value.dtype, np.floating):
                raise InputError(
                    f"param '{name}' has dtype {value.dtype}; gradients exist only for float "
                    f"parameters: store it as float or leave it out of params"
                )
            grad = grads[gkey]
            shape = getattr(grad, "shape", None)
            if shape != value.shape:
                raise InputError(
                    f"gradient for '{name}' has shape {shape} but the parameter has shape "
                    f"{value.shape}: backprop must return one gradient entry per parameter entry"
                )
            if getattr(grad, "dtype", np.dtype(object)).kind not in "fiu":
                kind_of = getattr(grad, "dtype", type(grad).__name__)
                raise InputError(f"gradient for '{name}' must be a numeric array, got {kind_of}")
            shapes.append(value.shape)
        return cls(kind, names, tuple(param_keys), grad_keys, tuple(shapes))

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
        if not isinstance(params, Mapping):
            return InputError(f"step {step}: params is a {type(params).__name__}, but was a dict "
                              "at the first step: pass the same kind of container every step")  # fmt: skip
        now = set(params.keys())
        added = sorted(map(str, now - self._param_key_set))
        removed = sorted(map(str, self._param_key_set - now))
        return InputError(
            f"step {step}: params changed after the first step ({_diff(added, removed)}); "
            "GradWatch watches the same tensors for the whole run: pass the same keys every "
            "step, or start a new run for another model"
        )

    def _grads_changed(self, grads: Any, step: int) -> InputError:
        if not isinstance(grads, Mapping):
            return InputError(f"step {step}: grads is a {type(grads).__name__}, but was a dict "
                              "at the first step: pass the same kind of container every step")  # fmt: skip
        now = set(grads.keys())
        added = sorted(map(str, now - self._grad_key_set))
        removed = sorted(map(str, self._grad_key_set - now))
        return InputError(
            f"step {step}: grads changed after the first step ({_diff(added, removed)}); "
            "pass one gradient per parameter, with the same keys every step"
        )

    def _bad_shape(self, key: Any, grad: Any, shape: tuple[int, ...], step: int) -> InputError:
        name = self.names[self.grad_keys.index(key)]
        return InputError(
            f"step {step}: gradient for '{name}' is {_describe(grad)} but the parameter has shape "
            f"{shape}: backprop must return one gradient entry per parameter entry"
        )


def _keys(params: Any) -> tuple[str, list[Any]]:
    if isinstance(params, Mapping):
        return "dict", list(params.keys())
    if isinstance(params, (list, tuple)):
        return "list", list(range(len(params)))
    raise InputError(
        "params must be a dict of arrays (e.g. {'W1': W1, 'b1': b1}) or a list/tuple of arrays, "
        f"got {type(params).__name__}"
    )


def _match_gradients(grads: Any, names: tuple[str, ...], kind: str) -> tuple[Any, ...]:
    """The key (or index) of each parameter's gradient: its name, or ``d`` + its name."""
    if kind == "list":
        if not isinstance(grads, (list, tuple)):
            raise InputError(
                f"params is a list of {len(names)} arrays, so grads must be a list/tuple of the "
                f"same length, got {type(grads).__name__}"
            )
        if len(grads) != len(names):
            raise InputError(
                f"params has {len(names)} arrays but grads has {len(grads)}: pass one gradient "
                "per parameter, in the same order"
            )
        return tuple(range(len(names)))
    if not isinstance(grads, Mapping):
        raise InputError(
            "params is a dict, so grads must be a dict keyed like it ('W1' or 'dW1'), "
            f"got {type(grads).__name__}"
        )
    by_text = {str(k): k for k in grads.keys()}
    keys, missing = [], []
    for name in names:
        found = [by_text[k] for k in (name, "d" + name) if k in by_text]
        if len(found) == 2:
            raise InputError(
                f"grads has both '{name}' and 'd{name}' for parameter '{name}': keep one"
            )
        if found:
            keys.append(found[0])
        else:
            missing.append(name)
    extra = sorted(set(by_text) - {str(k) for k in keys})
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing gradients for " + ", ".join(f"'{m}'" for m in missing))
        if extra:
            parts.append(
                "gradients with no matching parameter: " + ", ".join(f"'{e}'" for e in extra)
            )
        raise InputError(
            "; ".join(parts) + f". grads must have one key per parameter ({', '.join(names)}), "
            "named like the parameter or with a 'd' prefix ('dW1' for 'W1')"
        )
    return tuple(keys)


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
