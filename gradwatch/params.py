"""Sweep parameters handed to a training script through the environment.

    lr = gradwatch.param("lr", 0.1)        # GRADWATCH_PARAM_LR="0.01" -> 0.01 (a float)

``gradwatch sweep SCRIPT --lr 1 0.1`` runs ``SCRIPT`` once per value with these variables set:

    GRADWATCH_PARAM_<NAME>   the value of parameter NAME (upper-cased, non-alphanumerics -> ``_``)
    GRADWATCH_EXPERIMENT     the MLflow experiment every run of the sweep logs to
    GRADWATCH_RUN_NAME       the run's name, e.g. ``lr=0.1``
    GRADWATCH_SWEEP_ID       one id per sweep; the hook tags its run ``gradwatch.sweep_id``
    GRADWATCH_PARENT_RUN_ID  the sweep's parent run; the hook's run is a child of it

The hook reads the last four as defaults, so a script needs no sweep-specific code beyond
``gradwatch.param``. This module imports neither numpy nor MLflow: it is cheap to import.
"""

from __future__ import annotations

import os
import re
from typing import Any, TypeVar

from gradwatch.errors import InputError
from gradwatch.schema import TAG_SWEEP_ID

__all__ = [
    "ENV_EXPERIMENT",
    "ENV_PARAM_PREFIX",
    "ENV_PARENT_RUN_ID",
    "ENV_RUN_NAME",
    "ENV_SWEEP_ID",
    "TAG_SWEEP_ID",
    "param",
    "param_env_name",
    "sweep_params",
]

ENV_PARAM_PREFIX = "GRADWATCH_PARAM_"
ENV_EXPERIMENT = "GRADWATCH_EXPERIMENT"
ENV_RUN_NAME = "GRADWATCH_RUN_NAME"
ENV_SWEEP_ID = "GRADWATCH_SWEEP_ID"
ENV_PARENT_RUN_ID = "GRADWATCH_PARENT_RUN_ID"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

T = TypeVar("T")


def param_env_name(name: str) -> str:
    """The environment variable that carries parameter ``name``.

    >>> param_env_name("lr"), param_env_name("hidden-size")
    ('GRADWATCH_PARAM_LR', 'GRADWATCH_PARAM_HIDDEN_SIZE')
    """
    if not isinstance(name, str) or not re.search(r"[0-9A-Za-z]", name):
        raise InputError(f"param name must be a non-empty string of letters/digits, got {name!r}")
    return ENV_PARAM_PREFIX + re.sub(r"[^0-9A-Za-z]", "_", name).upper()


def _convert(raw: str, default: Any, env: str) -> Any:
    # bool before int: bool is a subclass of int, and int("true") would fail confusingly.
    kind = type(default)
    try:
        if default is None or kind is str:
            return raw
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw.strip(), 10)
        if kind is float:
            return float(raw)
        return kind(raw)
    except (TypeError, ValueError):
        hint = {bool: "true/false", int: "an integer like 3", float: "a number like 0.01"}
        raise InputError(
            f"{env}={raw!r} is not a valid {kind.__name__} (the default is {default!r}); "
            f"set it to {hint.get(kind, f'a {kind.__name__}')}"
        ) from None


def param(name: str, default: T) -> T:
    """Return sweep parameter ``name`` from ``GRADWATCH_PARAM_<NAME>``, or ``default``.

        lr = gradwatch.param("lr", 0.1)          # float; "0.01" in the env -> 0.01
        epochs = gradwatch.param("epochs", 3)    # int
        shuffle = gradwatch.param("shuffle", True)  # bool: 1/0, true/false, yes/no, on/off

    The value is converted to the type of ``default`` (a ``None`` default returns the
    string); a value that does not convert raises :class:`gradwatch.InputError` naming the
    variable, rather than training with a silently wrong setting.
    """
    env = param_env_name(name)
    raw = os.environ.get(env)
    if raw is None:
        return default
    return _convert(raw, default, env)


def sweep_params(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """All ``GRADWATCH_PARAM_*`` values in the environment, keyed by lower-cased name.

    >>> sweep_params({"GRADWATCH_PARAM_LR": "0.1", "HOME": "/root"})
    {'lr': '0.1'}
    """
    env = os.environ if environ is None else environ
    return {
        key[len(ENV_PARAM_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PARAM_PREFIX) and len(key) > len(ENV_PARAM_PREFIX)
    }
