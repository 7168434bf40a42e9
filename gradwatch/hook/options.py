"""The hook's options: one frozen object, validated once against the schema that
``gradwatch.yaml``'s ``hook:`` section uses too (:data:`gradwatch.config.HOOK_OPTIONS`).

    options = HookOptions.resolve(given={"every": 50}, config=load_config())
    options.every          # 50
    HookOptions.resolve(given={"seed": -1})   # InputError: GradWatch(seed=-1): ... must be >= 0

Precedence: ``GRADWATCH_EXPERIMENT``/``GRADWATCH_RUN_NAME`` (set by ``gradwatch sweep``) >
arguments > the config file's ``hook:`` section > the schema's defaults. An argument equal to
its default does not override the file (``GradWatch``'s signature shows the real defaults, so
"left at its default" and "given as the default" are the same call):

    HookOptions.resolve({"every": 100}, Config(hook={"every": 50})).every   # 50
    HookOptions.resolve({"every": 90}, Config(hook={"every": 50})).every    # 90
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from gradwatch.config import HOOK_OPTIONS, Config, check_hook_option
from gradwatch.errors import ConfigError, InputError
from gradwatch.params import ENV_EXPERIMENT, ENV_RUN_NAME
from gradwatch.schema import PARAM_PREFIX

__all__ = ["DEFAULTS", "OPTION_NAMES", "HookOptions"]

#: ``params`` and ``tags`` of the ``hook:`` section are run metadata, merged with the
#: ``params=``/``tags=`` arguments; every other schema entry is an option.
_METADATA = ("params", "tags")
#: The option names, in schema order.
OPTION_NAMES: tuple[str, ...] = tuple(k for k in HOOK_OPTIONS if k not in _METADATA)
#: Hook options and their defaults, from the schema.
DEFAULTS: dict[str, Any] = {k: HOOK_OPTIONS[k].default for k in OPTION_NAMES}
#: Options shown as MLflow params ``gradwatch.<name>`` (the others are where the run goes).
LOGGED = (
    "every",
    "num_samples",
    "mode",
    "eps",
    "seed",
    "check_timeout",
    "budget",
    "stats_every",
    "hist_every",
    "report",
)


@dataclass(frozen=True)
class HookOptions:
    """Validated hook options (see :class:`~gradwatch.GradWatch` for their meaning)."""

    every: int | None
    num_samples: int
    mode: str
    eps: float | None
    seed: int | None
    check_timeout: float | None
    budget: float | None
    stats_every: int | str
    hist_every: int  # 0: no histograms
    report: bool
    experiment: str | None
    run_name: str | None
    tracking_uri: str | None
    journal_dir: str | None
    keep_journal: bool
    flush_timeout: float
    rank_suffix: bool

    @classmethod
    def resolve(
        cls,
        given: Mapping[str, Any] | None = None,
        config: Config | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> HookOptions:
        """Merge defaults, ``config.hook``, ``given`` arguments (those that differ from their
        default) and the sweep's environment, validating every value against the schema.
        Raises InputError (an argument or an environment variable) or ConfigError (the file)
        naming the option."""
        config = config or Config()
        env = os.environ if environ is None else environ
        values = dict(DEFAULTS)
        for name, value in config.hook.items():
            if name in DEFAULTS:
                values[name] = _checked(name, value, config_path=config.path or "<config>")
        for name, value in (given or {}).items():
            if name not in DEFAULTS:
                raise InputError(f"unknown GradWatch option {name!r}; known: {', '.join(DEFAULTS)}")
            value = _checked(name, value, source=f"GradWatch({name}={_short(value)})")
            if name not in config.hook or value != DEFAULTS[name]:
                values[name] = value
        for name, var in (("experiment", ENV_EXPERIMENT), ("run_name", ENV_RUN_NAME)):
            if env.get(var):
                values[name] = env[var]
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def loggable(self) -> dict[str, str]:
        """``{"gradwatch.every": "100", ...}``: the check options as MLflow params (booleans
        as ``true``/``false``, as the config file's params show them)."""
        return {PARAM_PREFIX + k: _shown(getattr(self, k)) for k in LOGGED}


def _checked(name: str, value: Any, source: str = "", config_path: str = "") -> Any:
    spec = HOOK_OPTIONS[name]
    value = _plain(value)
    try:
        if isinstance(value, (Mapping, list, tuple, set)):
            raise ValueError(
                f"expected a {spec.kind.replace('_', ' ')}, got {type(value).__name__}"
            )
        return check_hook_option(name, value)
    except ValueError as exc:
        if config_path:
            raise ConfigError(f"{exc} ({spec.doc})", path=config_path, key=f"hook.{name}") from None
        raise InputError(f"{source}: `{name}` {exc} ({spec.doc})") from None


def _plain(value: Any) -> Any:
    """numpy scalars and path objects as the plain values the schema checks."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
