"""Load and validate ``gradwatch.yaml``: hook options, webhooks and alert rules.

    config = gradwatch.load_config()                  # ./gradwatch.yaml if present, else defaults
    config = gradwatch.load_config("runs/gradwatch.yaml")
    engine = AlertEngine(config.rules); delivery = config.delivery()
    run.log_params(config.loggable_params())          # secrets as "***"

File shape (every key optional; see examples/alerts.yaml for all rule types and defaults)::

    hook: {every: 100, num_samples: 32, mode: auto, experiment: mlp}
    alerts:
      defaults: true                # keep check_failure, nonfinite, loss_divergence
      webhooks: {slack: {url: "${SLACK_WEBHOOK}", timeout: 5, retries: 3}}
      rules:
        - {name: grad-explosion, type: grad_norm_drift, cooldown: 200,
           actions: [log, mlflow, "webhook:slack"], z: 6}

The file is parsed with PyYAML's safe loader only (no ``!!python/...`` tags), and checked
against an explicit schema: every problem is a :class:`~gradwatch.errors.ConfigError` whose
message is one line, ``FILE:LINE: key `KEY`: problem (hint)``. ``${VAR}`` (or
``${VAR:-default}``) in a string value expands from the environment; expanded values are
secrets, like webhook URLs and headers, and never reach logs or MLflow params.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradwatch.alerts.delivery import (
    DEFAULT_QUEUE_SIZE,
    EMAIL_OPTIONS,
    Delivery,
    EmailSpec,
    WebhookSpec,
    email_spec,
)
from gradwatch.alerts.detectors import DETECTORS, Param
from gradwatch.alerts.observations import SEVERITIES
from gradwatch.alerts.rules import Rule, default_rules, validate_rule
from gradwatch.check import MODES, validate_options
from gradwatch.errors import ConfigError, InputError, did_you_mean
from gradwatch.secrets import REDACTED, mask_uri

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "HOOK_OPTIONS",
    "MAX_CONFIG_BYTES",
    "Config",
    "check_hook_option",
    "load_config",
    "parse_config",
]

#: Looked up in the working directory when no path is given.
DEFAULT_CONFIG_FILE = "gradwatch.yaml"
#: A config file larger than this is refused before it is parsed (a real one is a few kB).
MAX_CONFIG_BYTES = 1_000_000
#: At most this many YAML values are read (the pairs merge keys copy included). An alias reuses
#: its node, built once, so nested aliases cannot expand into gigabytes; real files stay far below.
MAX_CONFIG_NODES = 20_000
#: Deeper nesting is refused before Python's recursion limit is near (a real file has 5 levels).
MAX_CONFIG_DEPTH = 32

KeyPath = tuple[str | int, ...]

#: Options of the ``hook:`` section. Only keys present in the file land in ``Config.hook``; the
#: hook applies its own defaults (shown here for documentation) to the rest.
HOOK_OPTIONS: dict[str, Param] = {
    "every": Param(100, "int", "steps between checks (null: none)", minimum=1, nullable=True),
    # num_samples, mode, eps and seed are also held to gradwatch.check.validate_options (the
    # engine's own limits, declared there once): see check_hook_option.
    "num_samples": Param(32, "int", "coordinates/directions probed per check", minimum=1),
    "mode": Param("auto", "str", "check mode", choices=MODES),
    "eps": Param(
        None, "float", "finite-difference step (null: automatic)", minimum=0, exclusive=True
    ),
    "seed": Param(None, "int", "seed of the checks' sampling (null: random)", minimum=0),
    "check_timeout": Param(
        None,
        "float",
        "seconds after which a check ends INCONCLUSIVE (null: no limit)",
        minimum=0,
        exclusive=True,
    ),
    "budget": Param(
        None,
        "float",
        "fraction of the loop's time monitoring may add, shipping included (null: no limit)",
        minimum=0,
        exclusive=True,
        maximum=1.0,
    ),
    "stats_every": Param(
        "auto", "int_or_auto", "steps between norm statistics, or auto", minimum=1
    ),
    "hist_every": Param(
        1,
        "int",
        "statistics steps between histograms of |g| and |θ| (0, false or null: none)",
        minimum=0,
    ),
    "report": Param(
        True,
        "bool",
        "write gradwatch/report.html and gradwatch/histograms.png at the end of the run",
    ),
    "experiment": Param(None, "str", "MLflow experiment name"),
    "run_name": Param(None, "str", "MLflow run name"),
    "tracking_uri": Param(None, "str", "MLflow tracking URI (null: MLFLOW_TRACKING_URI)"),
    "journal_dir": Param(None, "str", "local journal directory (null: .gradwatch/journal)"),
    "keep_journal": Param(False, "bool", "keep the journal of a run that fully landed"),
    "flush_timeout": Param(10.0, "float", "seconds to wait for MLflow at the end", minimum=0),
    "rank_suffix": Param(False, "bool", "every rank logs its own run <name>-rank<N>"),
    "params": Param(None, "mapping", "extra MLflow params {name: value}"),
    "tags": Param(None, "mapping", "extra MLflow tags {name: value}"),
}
ALERTS_KEYS = ("defaults", "webhooks", "email", "rules", "queue_size")
WEBHOOK_OPTIONS: dict[str, Param] = {
    "url": Param(None, "str", "http(s) URL to POST to (secret)"),
    "timeout": Param(5.0, "float", "seconds per attempt", minimum=0, exclusive=True),
    "retries": Param(3, "int", "attempts after the first failure", minimum=0),
    "backoff": Param(0.5, "float", "seconds before the first retry, doubled each time", minimum=0),
    "min_severity": Param(
        "info", "str", "alerts below this severity are not sent", choices=SEVERITIES
    ),
    "headers": Param(None, "mapping", "extra request headers (secret, e.g. tokens)"),
}
#: Hook options that are options of the check engine too.
_CHECK_OPTIONS = ("mode", "num_samples", "eps", "seed")
#: Hook options that ``false`` or ``null`` turns off, the same as 0 (``hist_every: false``).
_OFF_AS_ZERO = ("hist_every",)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_PLACEHOLDER = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")


@dataclass(frozen=True)
class Config:
    """A validated configuration. Build it with :func:`load_config`.

    config = load_config()
    config.hook        # {"every": 100, ...}: only the keys the file sets
    config.rules       # list[Rule]: defaults (unless disabled) then the file's rules
    config.webhooks    # {name: WebhookSpec}
    config.emails      # {name: EmailSpec}
    """

    hook: dict[str, Any] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=default_rules)
    webhooks: dict[str, WebhookSpec] = field(default_factory=dict)
    emails: dict[str, EmailSpec] = field(default_factory=dict)
    path: str | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE
    defaults: bool = True
    secrets: frozenset[str] = frozenset()  # dotted keys whose values must never be shown

    def delivery(self, callbacks: Mapping[str, Callable[..., Any]] | None = None) -> Delivery:
        """A :class:`~gradwatch.alerts.Delivery` for these webhooks and e-mail targets (plus
        ``callbacks``)."""
        return Delivery(
            webhooks=self.webhooks,
            emails=self.emails,
            callbacks=callbacks,
            queue_size=self.queue_size,
        )

    def loggable_params(self) -> dict[str, str]:
        """Flat ``{"gradwatch.<key>": str}`` for MLflow params; secrets are ``"***"``.

            {"gradwatch.config": "gradwatch.yaml", "gradwatch.every": "100",
             "gradwatch.alerts.webhooks": "slack",
             "gradwatch.alerts.rule.grad-explosion": "type=grad_norm_drift cooldown=200 ..."}

        Webhook URLs and headers never appear (only webhook names); nor does any value that
        came from ``${VAR}``; a password in ``tracking_uri`` is masked.
        """
        out = {"gradwatch.config": self.path or "defaults"}
        for key, value in self.hook.items():
            if value is None:
                continue  # null means "the hook's default": nothing to record
            out[f"gradwatch.{key}"] = self._show(f"hook.{key}", value)
        out["gradwatch.alerts.defaults"] = str(self.defaults).lower()
        out["gradwatch.alerts.webhooks"] = ",".join(sorted(self.webhooks)) or "none"
        out["gradwatch.alerts.email"] = ",".join(sorted(self.emails)) or "none"
        for rule in self.rules:
            parts = [f"type={rule.type}"]
            if rule.severity:
                parts.append(f"severity={rule.severity}")
            parts += [f"cooldown={rule.cooldown}", "actions=" + ",".join(rule.actions)]
            if not rule.enabled:
                parts.append("enabled=false")
            for k, v in rule.params.items():
                shown = f"<{len(v)} metrics>" if k == "baseline" and v is not None else v
                parts.append(f"{k}={self._show(f'rule.{rule.name}.{k}', shown)}")
            out[f"gradwatch.alerts.rule.{rule.name}"] = " ".join(parts)
        return out

    def hook_metadata(self, section: str) -> dict[str, Any]:
        """``hook.params`` or ``hook.tags`` with the values that came from ``${VAR}`` masked.

        config.hook_metadata("params")   # {"api_key": "***", "width": 16}
        """
        values = self.hook.get(section) or {}
        return {
            k: REDACTED if f"hook.{section}.{k}" in self.secrets else v for k, v in values.items()
        }

    def masked_text(self) -> str | None:
        """The config file as YAML text with its secrets masked, for the run's artifacts.

            text = config.masked_text()   # None when the config came from no file

        Webhook URLs and headers and e-mail passwords are replaced by ``***`` unless they are
        exactly one ``${VAR}`` (the name of a variable, not its value); a password or token
        inside any URI is masked.
        """
        if self.path is None:
            return None
        with open(self.path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}  # a file that passed validation: small, no cycles
        hooks = (data.get("alerts") or {}).get("webhooks") or {}
        for name, spec in hooks.items():
            if isinstance(spec, str):  # short form `name: URL`
                hooks[name] = _placeholder_or_redacted(spec)
                continue
            if isinstance(spec, dict) and "url" in spec:
                spec["url"] = _placeholder_or_redacted(spec["url"])
            if isinstance(spec, dict) and isinstance(spec.get("headers"), dict):
                spec["headers"] = {
                    k: _placeholder_or_redacted(v) for k, v in spec["headers"].items()
                }
        emails = (data.get("alerts") or {}).get("email") or {}
        for spec in emails.values():
            if isinstance(spec, dict) and "password" in spec:
                spec["password"] = _placeholder_or_redacted(spec["password"])
        header = f"# {os.path.basename(self.path)} as used by this run (secrets masked)\n"
        return header + yaml.safe_dump(_mask_strings(data), sort_keys=False)

    def _show(self, dotted: str, value: Any) -> str:
        if dotted in self.secrets:
            return REDACTED
        if isinstance(value, Mapping):
            inner = ", ".join(f"{k}: {self._show(f'{dotted}.{k}', v)}" for k, v in value.items())
            return "{" + inner + "}"
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        if isinstance(value, bool):
            return str(value).lower()
        return mask_uri(value)


def check_hook_option(name: str, value: Any) -> Any:
    """``value`` of the hook option ``name`` checked against :data:`HOOK_OPTIONS` and, for the
    check's own options, :func:`gradwatch.check.validate_options` (so ``check_gradients``, the
    hook and the YAML file accept exactly the same values). Raises ValueError.

    >>> check_hook_option("hist_every", False)   # off, as 0
    0
    >>> check_hook_option("seed", 2**64)
    Traceback (most recent call last):
    ...
    ValueError: must be an integer from 0 to 2**64 - 1, or None (drawn and recorded); got ...
    """
    value = HOOK_OPTIONS[name].check(_off_as_zero(name, value))
    if name in _CHECK_OPTIONS:
        try:
            validate_options(**{name: value})
        except InputError as exc:
            problem = str(exc)
            raise ValueError(problem.removeprefix(f"{name} ")) from None
    return value


def _off_as_zero(name: str, value: Any) -> Any:
    """``false``/``null`` of an option that 0 turns off, as 0 (``true`` stays an error)."""
    return 0 if name in _OFF_AS_ZERO and (value is False or value is None) else value


def _placeholder_or_redacted(value: Any) -> Any:
    return value if isinstance(value, str) and _PLACEHOLDER.match(value) else REDACTED


def _mask_strings(value: Any) -> Any:
    """``value`` with :func:`~gradwatch.secrets.mask_uri` applied to every string in it."""
    if isinstance(value, str):
        return mask_uri(value)
    if isinstance(value, dict):
        return {k: _mask_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_strings(v) for v in value]
    return value


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a config file.

        config = gradwatch.load_config()            # ./gradwatch.yaml, or defaults if absent
        config = gradwatch.load_config("ci.yaml")   # ConfigError if missing or invalid

    Raises ConfigError (one line: file, line, key, problem and fix).
    """
    if path is None:
        if not Path(DEFAULT_CONFIG_FILE).is_file():
            return Config()
        path = DEFAULT_CONFIG_FILE
    shown = os.fspath(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file is {size} bytes, more than the {MAX_CONFIG_BYTES} a gradwatch.yaml "
                "may have; is this the right file?",
                path=shown,
            )
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found; check the path", path=shown) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", path=shown) from None
    return parse_config(text, shown)


def parse_config(text: str, path: str = "<string>") -> Config:
    """Validate YAML ``text`` as if it were the file ``path`` (used in messages).

    config = parse_config("alerts: {defaults: false}", "inline.yaml")
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config text is {len(text)} characters, more than the {MAX_CONFIG_BYTES} allowed",
            path=path,
        )
    ctx = _Ctx(path)
    data = ctx.compose(text)
    if data is None:
        raise ConfigError(
            "config file is empty; write at least `hook:` or `alerts:` (see examples/alerts.yaml)",
            path=path,
            line=1,
        )
    return _validate(ctx, data)


# --------------------------------------------------------------------------------------------
# Parsing with line numbers


class _Ctx:
    """What the loader learnt about each key path (its line, the ``${VAR}`` expanded into it),
    and error construction for the schema checks that follow."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: dict[KeyPath, int] = {}
        self.env: dict[KeyPath, str] = {}  # key path -> first ${VAR} expanded into it

    def error(self, keypath: KeyPath, message: str) -> ConfigError:
        line = None
        for i in range(len(keypath), -1, -1):  # nearest located ancestor
            if keypath[:i] in self.lines:
                line = self.lines[keypath[:i]]
                break
        return ConfigError(message, path=self.path, line=line, key=_dotted(keypath) or None)

    def compose(self, text: str) -> Any:
        """The Python value of the YAML ``text``; every problem is a one-line ConfigError."""
        loader = None
        try:
            # Built inside the try: the reader already rejects some input (a NUL byte).
            loader = _Loader(text, self)
            return loader.get_single_data()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
            raise ConfigError(f"invalid YAML: {problem}", path=self.path, line=line) from None
        except yaml.reader.ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            char = (
                f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
            )
            raise ConfigError(
                f"invalid YAML: unacceptable character {char} ({exc.reason}); "
                "the file must be plain UTF-8 text",
                path=self.path,
                line=line,
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"invalid YAML: {' '.join(str(exc).split())}", path=self.path
            ) from None
        finally:
            if loader is not None:
                loader.dispose()


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that records each key path's line and ``${VAR}`` expansions in
    ``ctx``, and refuses what would make it slow or recurse without end: more than
    :data:`MAX_CONFIG_NODES` values (aliases reuse a node, as PyYAML does, so they cost
    nothing; merge keys copy and count), nesting deeper than :data:`MAX_CONFIG_DEPTH`, and a
    node that contains itself."""

    def __init__(self, text: str, ctx: _Ctx) -> None:
        super().__init__(text)
        self.ctx = ctx
        self.keypath: KeyPath = ()  # where the node being built sits
        self.first_path: dict[yaml.Node, KeyPath] = {}  # where each collection was built
        self.flattening: set[yaml.Node] = set()
        self.nodes = 0
        self.depth = 0

    def fetch_flow_collection_start(self, token_class: type[yaml.Token]) -> None:
        # The scanner looks up to 1024 characters ahead at every level of `[[[[...` for a
        # possible key, at a cost that grows with the depth: refuse the depth while scanning.
        if self.flow_level >= MAX_CONFIG_DEPTH:
            raise self._too_deep(self.get_mark().line + 1)
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):  # an existing node: no new value, no new level
            return super().compose_node(parent, index)
        line = self.peek_event().start_mark.line + 1
        self._count(1, line)
        self.depth += 1
        try:
            if self.depth > MAX_CONFIG_DEPTH:
                raise self._too_deep(line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """YAML merge keys (``<<: *anchor``), with the merged pairs counted as values."""
        if node in self.flattening:
            raise self._recursive(node)
        before = len(node.value)
        self.flattening.add(node)
        try:
            super().flatten_mapping(node)
        finally:
            self.flattening.discard(node)
        self._count(len(node.value) - before, node.start_mark.line + 1)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        if node in self.recursive_objects:
            raise self._recursive(node)
        if node in self.constructed_objects:
            first = self.first_path.get(node)
            if first is not None:  # ${VAR} values inside a shared node are secrets here too
                for path, var in list(self.ctx.env.items()):
                    if path[: len(first)] == first:
                        self.ctx.env.setdefault((*self.keypath, *path[len(first) :]), var)
            return self.constructed_objects[node]
        self.ctx.lines.setdefault(self.keypath, node.start_mark.line + 1)
        self._check_tag(node)
        if isinstance(node, yaml.CollectionNode):
            self.first_path[node] = self.keypath
        # Depth first, so the key path is known. A node is built where its anchor stands (the
        # first place in document order) and reused at its aliases, so building recurses no
        # deeper than the composer did.
        return super().construct_object(node, deep=True)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[str, Any]:
        self.flatten_mapping(node)
        parent, out = self.keypath, {}
        for key_node, value_node in node.value:
            self.keypath = (*parent, "<key>")
            key = self.construct_object(key_node)
            self.keypath = parent
            if not isinstance(key, str):
                raise self.ctx.error(parent, f"keys must be strings, got {_short(key)}")
            if _ENV.search(key):
                # An expanded key would be shown as a param/tag name: a secret in the open.
                raise self.ctx.error(parent, "keys cannot use ${VAR}: only values can")
            self.keypath = (*parent, key)
            self.ctx.lines[self.keypath] = key_node.start_mark.line + 1
            if key in out:
                raise self.ctx.error(self.keypath, "duplicate key; each key may appear once")
            out[key] = self._expand(self.construct_object(value_node))
        self.keypath = parent
        return out

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> list[Any]:
        parent, out = self.keypath, []
        for i, child in enumerate(node.value):
            self.keypath = (*parent, i)
            out.append(self._expand(self.construct_object(child)))
        self.keypath = parent
        return out

    def _expand(self, value: Any) -> Any:
        """``${VAR}`` and ``${VAR:-default}`` in a string value, from the environment."""
        if not isinstance(value, str):
            return value
        keypath = self.keypath

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            self.ctx.env.setdefault(keypath, name)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise self.ctx.error(
                keypath,
                f"environment variable {name} is not set (export it, or write ${{{name}:-default}})",
            )

        return _ENV.sub(sub, value)

    def _check_tag(self, node: yaml.Node) -> None:
        expected = _COLLECTION_TAGS.get(type(node))
        if node.tag == expected or (expected is None and node.tag in self.yaml_constructors):
            return
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        self.ctx.lines[self.keypath] = node.start_mark.line + 1
        raise self.ctx.error(
            self.keypath,
            f"YAML tag {tag} is not allowed: the config is loaded with yaml.safe_load, "
            "write plain values",
        )

    def _count(self, values: int, line: int) -> None:
        self.nodes += values
        if self.nodes > MAX_CONFIG_NODES:
            raise ConfigError(
                f"more than {MAX_CONFIG_NODES} values (merge keys of merge keys?); "
                "a gradwatch.yaml is a few dozen lines",
                path=self.ctx.path,
                line=line,
            )

    def _too_deep(self, line: int) -> ConfigError:
        return ConfigError(
            f"nested more than {MAX_CONFIG_DEPTH} levels deep; "
            "a gradwatch.yaml is a few levels deep",
            path=self.ctx.path,
            line=line,
        )

    def _recursive(self, node: yaml.Node) -> ConfigError:
        self.ctx.lines[self.keypath] = node.start_mark.line + 1
        return self.ctx.error(
            self.keypath, "recursive alias: a node refers to itself; write the values out"
        )


_COLLECTION_TAGS = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _dotted(keypath: KeyPath) -> str:
    out = ""
    for part in keypath:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: Any) -> str:
    """``value`` for an error message: short, and never the expansion of a large structure."""
    if isinstance(value, (Mapping, list, tuple, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _unknown(ctx: _Ctx, keypath: KeyPath, allowed: list[str] | tuple[str, ...]) -> ConfigError:
    key = str(keypath[-1])
    return ctx.error(
        keypath, f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}"
    )


# --------------------------------------------------------------------------------------------
# Schema


def _convert(ctx: _Ctx, keypath: KeyPath, value: Any, kind: str | None) -> Any:
    """YAML's own quirks: numbers and booleans from ${VAR}; ``1e-2`` that YAML 1.1 reads as text."""
    if keypath in ctx.env and isinstance(value, str) and kind in ("int", "float", "bool"):
        try:
            converted = yaml.safe_load(value)
        except yaml.YAMLError:
            converted = value
        if isinstance(converted, (int, float, bool)):
            value = converted
    if kind == "float" and isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)  # PyYAML (YAML 1.1) reads `1e-2` as a string; YAML 1.2 does not
    return value


def _value(
    ctx: _Ctx,
    keypath: KeyPath,
    value: Any,
    spec: Param,
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """Check ``value`` against ``spec`` (with ``check``, if given, instead of ``spec.check``);
    values from ${VAR} are converted, never echoed."""
    from_env = keypath in ctx.env
    value = _convert(ctx, keypath, value, spec.kind)
    if spec.kind == "mapping":
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ctx.error(keypath, f"expected a mapping, got {type(value).__name__}")
        for k, v in value.items():
            if isinstance(v, (Mapping, list)):
                raise ctx.error((*keypath, k), "expected a plain value (string, number, bool)")
        return dict(value)
    if isinstance(value, (Mapping, list)) and spec.kind not in ("str_list", "series"):
        # Said without echoing the value: it may be a huge structure built from aliases.
        raise ctx.error(keypath, f"expected a {spec.kind.replace('_', ' ')}, got {_short(value)}")
    if spec.kind == "str_list" and isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ctx.error(keypath, "expected a list of strings")
    try:
        return (check or spec.check)(value)
    except ValueError as exc:
        if from_env:
            var = ctx.env[keypath]
            raise ctx.error(
                keypath, f"value of ${{{var}}} is not a valid {spec.kind} here"
            ) from None
        raise ctx.error(keypath, str(exc)) from None


def _mapping(ctx: _Ctx, keypath: KeyPath, value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error(keypath, f"{what} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _validate(ctx: _Ctx, data: Any) -> Config:
    if not isinstance(data, Mapping):
        raise ctx.error(
            (),
            f"the top level must be a mapping with `hook` and/or `alerts`, "
            f"got {type(data).__name__}",
        )
    for key in data:
        if key not in ("hook", "alerts"):
            raise _unknown(ctx, (key,), ("hook", "alerts"))
    hook = _validate_hook(ctx, _mapping(ctx, ("hook",), data.get("hook"), "`hook`"))
    alerts = _mapping(ctx, ("alerts",), data.get("alerts"), "`alerts`")
    for key in alerts:
        if key not in ALERTS_KEYS:
            raise _unknown(ctx, ("alerts", key), ALERTS_KEYS)
    defaults = _value(
        ctx,
        ("alerts", "defaults"),
        alerts.get("defaults", True),
        Param(True, "bool", "keep the default rules"),
    )
    queue_size = _value(
        ctx,
        ("alerts", "queue_size"),
        alerts.get("queue_size", DEFAULT_QUEUE_SIZE),
        Param(DEFAULT_QUEUE_SIZE, "int", "queue per target", minimum=1),
    )
    webhooks = _validate_webhooks(ctx, alerts.get("webhooks"))
    emails = _validate_emails(ctx, alerts.get("email"))
    rules = _validate_rules(ctx, alerts.get("rules"), webhooks, emails, defaults)
    secrets = {f"hook.{_dotted(k[1:])}" for k in ctx.env if k[:1] == ("hook",)}
    secrets |= {f"rule.{_rule_label(data, k)}" for k in ctx.env if k[:2] == ("alerts", "rules")}
    return Config(
        hook=hook,
        rules=rules,
        webhooks=webhooks,
        emails=emails,
        path=ctx.path,
        queue_size=queue_size,
        defaults=defaults,
        secrets=frozenset(secrets),
    )


def _rule_label(data: Mapping[str, Any], keypath: KeyPath) -> str:
    """``alerts.rules[2].url`` -> ``<rule name>.url`` (for loggable_params)."""
    rule = data["alerts"]["rules"][keypath[2]]
    name = rule.get("name") or rule.get("type")
    return ".".join(str(p) for p in (name, *keypath[3:4]))


def _validate_hook(ctx: _Ctx, hook: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in hook.items():
        if key not in HOOK_OPTIONS:
            raise _unknown(ctx, ("hook", key), tuple(HOOK_OPTIONS))
        check = functools.partial(check_hook_option, key)  # the hook's own rules, once
        out[key] = _value(ctx, ("hook", key), value, HOOK_OPTIONS[key], check)
    return out


def _validate_webhooks(ctx: _Ctx, raw: Any) -> dict[str, WebhookSpec]:
    webhooks = {}
    for name, spec in _mapping(ctx, ("alerts", "webhooks"), raw, "`webhooks`").items():
        keypath: KeyPath = ("alerts", "webhooks", name)
        if not _NAME.match(name):
            raise ctx.error(keypath, "webhook names are letters, digits, '_', '.', '-'")
        if isinstance(spec, str):  # shorthand: `slack: ${SLACK_WEBHOOK}`
            if keypath in ctx.env:
                ctx.env[(*keypath, "url")] = ctx.env[keypath]
            spec = {"url": spec}
        spec = _mapping(ctx, keypath, spec, f"webhook `{name}`")
        kwargs = {}
        for key, value in spec.items():
            if key not in WEBHOOK_OPTIONS:
                raise _unknown(ctx, (*keypath, key), tuple(WEBHOOK_OPTIONS))
            kwargs[key] = _value(ctx, (*keypath, key), value, WEBHOOK_OPTIONS[key])
        url = kwargs.get("url")
        if not url:
            raise ctx.error((*keypath, "url"), "webhook needs a `url` (e.g. url: ${SLACK_WEBHOOK})")
        if not re.match(r"^https?://[^/\s]+", url):
            # The value is a secret: say what is wrong without echoing it.
            raise ctx.error((*keypath, "url"), "url must start with http:// or https:// and a host")
        kwargs["headers"] = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
        webhooks[name] = WebhookSpec(**kwargs)
    return webhooks


def _validate_emails(ctx: _Ctx, raw: Any) -> dict[str, EmailSpec]:
    """``alerts.email.<name>``: the schema is gradwatch.alerts.delivery.EMAIL_OPTIONS."""
    emails = {}
    for name, spec in _mapping(ctx, ("alerts", "email"), raw, "`email`").items():
        keypath: KeyPath = ("alerts", "email", name)
        if not _NAME.match(name):
            raise ctx.error(keypath, "email target names are letters, digits, '_', '.', '-'")
        spec = _mapping(ctx, keypath, spec, f"email target `{name}`")
        for key in spec:
            if key not in EMAIL_OPTIONS:
                raise _unknown(ctx, (*keypath, key), tuple(EMAIL_OPTIONS))
        options = {k: _value(ctx, (*keypath, k), v, EMAIL_OPTIONS[k]) for k, v in spec.items()}
        try:
            emails[name] = email_spec(options)
        except InputError as exc:  # says which key is missing or wrong, never the password
            raise ctx.error(keypath, str(exc)) from None
    return emails


def _validate_rules(
    ctx: _Ctx,
    raw: Any,
    webhooks: Mapping[str, WebhookSpec],
    emails: Mapping[str, EmailSpec],
    defaults: bool,
) -> list[Rule]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ctx.error(("alerts", "rules"), f"rules must be a list, got {type(raw).__name__}")
    rules: dict[str, Rule] = {r.name: r for r in default_rules()} if defaults else {}
    seen: set[str] = set()
    for i, item in enumerate(raw):
        rule = _validate_rule(ctx, ("alerts", "rules", i), item, webhooks, emails)
        if rule.name in seen:
            raise ctx.error(("alerts", "rules", i, "name"), f"duplicate rule name {rule.name!r}")
        seen.add(rule.name)
        rules[rule.name] = rule  # same name as a default rule: replaces it
    return list(rules.values())


#: YAML kinds of the rule keys that are not detector parameters (for ``_convert``).
_RULE_KEY_KINDS = {
    "name": "str",
    "type": "str",
    "severity": "str",
    "cooldown": "int",
    "actions": "str_list",
    "enabled": "bool",
}


def _validate_rule(
    ctx: _Ctx,
    keypath: KeyPath,
    item: Any,
    webhooks: Mapping[str, WebhookSpec],
    emails: Mapping[str, EmailSpec],
) -> Rule:
    """The rule schema is :func:`gradwatch.alerts.validate_rule`'s; here only YAML's own part:
    ``${VAR}`` numbers and ``1e-2`` read as text converted, structures refused without echoing
    them (they may be alias bombs), and each problem placed at its file line."""
    item = _mapping(ctx, keypath, item, "each rule")
    if (*keypath, "name") in ctx.env:
        # The name is shown in params, tags and alerts: an expanded secret would be in the open.
        raise ctx.error((*keypath, "name"), "rule names cannot use ${VAR}; write the name itself")
    kind = item.get("type", item.get("name"))
    params = DETECTORS[kind].params if isinstance(kind, str) and kind in DETECTORS else {}
    converted = {}
    for key, value in item.items():
        spec_kind = params[key].kind if key in params else _RULE_KEY_KINDS.get(key)
        where = (*keypath, key)
        value = _convert(ctx, where, value, spec_kind)
        if isinstance(value, Mapping) or (
            isinstance(value, list) and spec_kind not in ("str_list", "series")
        ):
            raise ctx.error(
                where, f"expected a {(spec_kind or 'value').replace('_', ' ')}, got {_short(value)}"
            )
        if isinstance(value, list) and not all(isinstance(v, (str, int, float)) for v in value):
            raise ctx.error(where, "expected a list of plain values (strings or numbers)")
        converted[key] = value
    try:
        return validate_rule(converted, webhooks=webhooks, emails=emails)
    except ConfigError as exc:
        sub: KeyPath = ()
        if exc.key and exc.key != "params":
            sub = tuple(int(p) if p.isdigit() else p for p in exc.key.split("."))
        where = (*keypath, *sub)
        if where in ctx.env:  # never echo a value that came from the environment
            raise ctx.error(where, f"value of ${{{ctx.env[where]}}} is not valid here") from None
        raise ctx.error(where, exc.problem) from None
