"""The one exception hierarchy of gradwatch.

    GradwatchError                 base of everything gradwatch raises on purpose
    ├── InputError (ValueError)    bad arguments: names the key, shapes and the fix
    │   ├── LossError              loss_fn did not return a finite scalar
    │   └── NotFoundError          the store, experiment or run named is not there
    ├── ConfigError (ValueError)   bad gradwatch.yaml: names the file, line and key
    ├── TrackingError              the tracking pipeline cannot do what was asked
    └── AlertStop                  an alert rule with the ``stop`` action fired

Errors from numpy, yaml or mlflow are translated into these at the module boundary
where they arise, so users never have to read a traceback from deep inside a library.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "GradwatchError",
    "InputError",
    "LossError",
    "NotFoundError",
    "ConfigError",
    "TrackingError",
    "AlertStop",
    "did_you_mean",
]


def did_you_mean(word: object, allowed: Iterable[str]) -> str:
    """The hint an error message about an unknown ``word`` ends with, or "" when nothing is close.

    >>> did_you_mean("coldown", ["cooldown", "severity"])
    ' (did you mean `cooldown`?)'
    >>> did_you_mean("xyz", ["cooldown"])
    ''
    """
    close = difflib.get_close_matches(str(word), list(allowed), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class GradwatchError(Exception):
    """Base class of every error gradwatch raises on purpose."""


class InputError(GradwatchError, ValueError):
    """An argument is malformed: the message names the key, the shapes and the fix."""


class LossError(InputError):
    """``loss_fn`` returned something other than a finite scalar."""


class NotFoundError(InputError):
    """The tracking store has no such store file, experiment or run.

    An ``InputError`` for code that checks names; the CLI treats it as a store answer (exit 1),
    like a server that cannot be reached, not as a usage error (exit 2).
    """


class ConfigError(GradwatchError, ValueError):
    """A configuration file or value is invalid.

    ``str(err)`` is one line: ``FILE:LINE: key `KEY`: problem (hint)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path, self.line, self.key, self.problem = path, line, key, message
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        what = f"key `{key}`: " if key else ""
        super().__init__(f"{where}{what}{message}")


class TrackingError(GradwatchError):
    """The tracking pipeline (journal, shipper, MLflow) cannot do what was asked."""


class AlertStop(GradwatchError):
    """Raised by the hook when an alert rule with the ``stop`` action fired.

    It is raised only after the journal is flushed, so the run ends as FAILED with
    the reason recorded. ``alert`` holds the alert that stopped training.
    """

    def __init__(self, message: str, alert: object | None = None) -> None:
        super().__init__(message)
        self.alert = alert
