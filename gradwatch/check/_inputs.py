"""Turn the caller's ``params``/``grads`` into a validated list of tensors, before any evaluation.

All validation happens here, up front, so a malformed argument is reported with its key and
shape before ``loss_fn`` is called even once (scipy's habit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradwatch.errors import InputError

__all__ = ["Tensor", "is_namedtuple", "match_gradient_keys", "normalize", "param_items"]


@dataclass
class Tensor:
    """One parameter tensor as the engine sees it.

    ``array`` is the caller's own array (perturbed in place); ``work`` is the array handed to
    ``loss_fn`` — the same object, or a float64 copy for low-precision parameters.
    """

    name: str
    array: np.ndarray
    grad: np.ndarray  # float64 copy of the analytic gradient, same shape as array
    grad_dtype: np.dtype
    work: np.ndarray
    snapshot: np.ndarray | None = None  # the untouched values, set by the engine


def is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and isinstance(getattr(value, "_fields", None), tuple)


def param_items(params: Any) -> tuple[list[tuple[str, Any]], str]:
    """``([(name, array), ...], kind)``; kind is ``"dict"``, ``"namedtuple"`` or ``"list"``.

    A namedtuple's tensors are named by its fields, so its gradients may come as the same
    namedtuple, a dict keyed by the field names, or a list in field order.
    """
    if isinstance(params, Mapping):
        return [(str(k), v) for k, v in params.items()], "dict"
    if is_namedtuple(params):
        return [(str(k), v) for k, v in zip(params._fields, params)], "namedtuple"
    if isinstance(params, (list, tuple)):
        return [(str(i), v) for i, v in enumerate(params)], "list"
    raise InputError(
        f"params must be a dict of arrays (e.g. {{'W1': W1, 'b1': b1}}) or a list/tuple of arrays, "
        f"got {type(params).__name__}"
    )


def _grad_lookup(grads: Any, names: list[str], kind: str) -> dict[str, Any]:
    """Match gradients to parameter names; accepts the backprop convention ``dW1`` for ``W1``."""
    if kind == "namedtuple":
        if is_namedtuple(grads):
            grads = dict(zip(grads._fields, grads))
        elif isinstance(grads, (list, tuple)):
            kind = "list"
    if kind == "list":
        if not isinstance(grads, (list, tuple)) or isinstance(grads, Mapping):
            raise InputError(
                f"params is a {kind} of {len(names)} arrays, so grads must be a list/tuple of "
                f"the same length, got {type(grads).__name__}"
            )
        if len(grads) != len(names):
            raise InputError(
                f"params has {len(names)} arrays but grads has {len(grads)}: pass one gradient "
                "per parameter, in the same order"
            )
        return dict(zip(names, grads))
    if not isinstance(grads, Mapping):
        raise InputError(
            f"params is a {kind}, so grads must be a dict keyed like it ('W1' or 'dW1'), "
            f"got {type(grads).__name__}"
        )
    keys = {str(k): v for k, v in grads.items()}
    matched: dict[str, Any] = {}
    used: set[str] = set()
    missing = []
    for name in names:
        for key in (name, "d" + name):
            if key in keys:
                if name in matched:
                    raise InputError(
                        f"grads has both '{name}' and 'd{name}' for parameter '{name}': keep one"
                    )
                matched[name] = keys[key]
                used.add(key)
        if name not in matched:
            missing.append(name)
    extra = sorted(set(keys) - used)
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
    return matched


def same_entries(grad_shape: tuple[int, ...], param_shape: tuple[int, ...]) -> bool:
    """Shapes that differ only by length-1 axes: the same entries in the same order, as numpy
    habits produce ((3,) for a (1, 3) bias). Such a gradient is accepted, reshaped.

        same_entries((3,), (1, 3)) is True
    """
    return [d for d in grad_shape if d != 1] == [d for d in param_shape if d != 1]


def normalize(params: Any, grads: Any, upcast: bool) -> tuple[list[Tensor], Any, str]:
    """Validate and pair parameters with gradients.

    Returns ``(tensors, work_params, kind)`` where ``work_params`` is what ``loss_fn`` receives:
    the caller's own container when nothing is upcast, else a container of the same kind whose
    low-precision arrays are float64 copies.
    """
    items, kind = param_items(params)
    if not items:
        raise InputError("params is empty: there is nothing to check")
    names = [n for n, _ in items]
    grad_of = _grad_lookup(grads, names, kind)
    tensors = []
    for name, value in items:
        if not isinstance(value, np.ndarray):
            raise InputError(
                f"param '{name}' is a {type(value).__name__}, not a numpy array: the check perturbs "
                "parameters in place, so pass the arrays your model uses"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise InputError(
                f"param '{name}' has dtype {value.dtype}; gradients exist only for float "
                f"parameters: store it as float (e.g. {name}.astype(np.float64)) or leave it "
                "out of params"
            )
        if not value.flags.writeable:
            raise InputError(
                f"param '{name}' is read-only; the check perturbs parameters in place and "
                "restores them: pass a writeable array"
            )
        grad = grad_of[name]
        try:
            grad_arr = np.asarray(grad)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
            raise InputError(f"gradient for '{name}' is not array-like: {exc}") from None
        if grad_arr.shape != value.shape and same_entries(grad_arr.shape, value.shape):
            grad_arr = grad_arr.reshape(value.shape)  # e.g. a (3,) gradient for a (1, 3) bias
        if grad_arr.shape != value.shape:
            raise InputError(
                f"gradient for '{name}' has shape {grad_arr.shape} but the parameter has shape "
                f"{value.shape}: backprop must return one gradient entry per parameter entry"
            )
        if not (
            np.issubdtype(grad_arr.dtype, np.floating) or np.issubdtype(grad_arr.dtype, np.integer)
        ):
            raise InputError(f"gradient for '{name}' has non-numeric dtype {grad_arr.dtype}")
        work = value
        if upcast and value.dtype.itemsize < 8:
            work = value.astype(np.float64)
        tensors.append(
            Tensor(
                name=name,
                array=value,
                grad=grad_arr.astype(np.float64),
                grad_dtype=grad_arr.dtype
                if np.issubdtype(grad_arr.dtype, np.floating)
                else np.dtype(np.float64),
                work=work,
            )
        )
    if any(t.work is not t.array for t in tensors):
        if kind == "dict":
            work_params: Any = type(params)() if type(params) is dict else {}
            for t in tensors:
                work_params[t.name] = t.work
            # Keep any caller key order; a dict subclass is rebuilt as a plain dict.
        elif kind == "namedtuple":
            work_params = type(params)(*(t.work for t in tensors))
        else:
            work_params = type(params)(t.work for t in tensors)
    else:
        work_params = params
    return tensors, work_params, kind


def match_gradient_keys(params: Any, grads: Any) -> dict[str, Any]:
    """Validate ``params``/``grads`` like the check does and map each parameter name to the key
    (or list index) of its gradient, so callers can look gradients up cheaply every step.

        match_gradient_keys({"W1": W1}, {"dW1": dW1}) == {"W1": "dW1"}
    """
    normalize(params, grads, upcast=False)
    items, kind = param_items(params)
    if kind == "list" or (kind == "namedtuple" and not isinstance(grads, Mapping)):
        return {name: i for i, (name, _) in enumerate(items)}
    keys = {str(k): k for k in grads}
    return {name: keys[name] if name in keys else keys["d" + name] for name, _ in items}
