"""The one place gradwatch's readers talk to MLflow: the client, experiment lookup, fail-fast
settings, and the translation of MLflow's errors into gradwatch's.

    uri = resolve_tracking_uri(None)                  # arg, else MLFLOW_TRACKING_URI, else sqlite
    client = get_client(uri)                          # InputError if the sqlite store is missing
    with mlflow_errors(client.tracking_uri):          # MlflowException -> TrackingError, masked
        exp_id = experiment_id(client, "mlp")         # InputError naming the known experiments
        run = get_run(client, run_id)                 # InputError if there is no such run

Used by ``compare``, ``monitor``, ``sweep`` and the CLI (``gradwatch.runs``), and meant for
every other module that reads runs back. MLflow is imported inside the functions only:
importing this module costs nothing.

Fail-fast: MLflow's REST client retries a failing request 7 times with exponential backoff
(minutes). A command should report an outage at once and a monitor polls again anyway, so
the ``gradwatch`` command sets :data:`FAIL_FAST_SETTINGS` for its own process with
:func:`apply_fail_fast_defaults` (a value the user set wins). Library functions never change
the environment: in your own process MLflow's settings are yours. :func:`user_environ` is
the environment without gradwatch's additions, for child processes (``gradwatch sweep``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

from gradwatch.errors import InputError, NotFoundError, TrackingError
from gradwatch.secrets import mask_uri

__all__ = [
    "DEFAULT_TRACKING_URI",
    "FAIL_FAST_SETTINGS",
    "apply_fail_fast_defaults",
    "artifact_records",
    "artifact_text",
    "experiment_id",
    "get_client",
    "get_run",
    "is_missing",
    "log_metrics",
    "log_tags",
    "metric_history",
    "mlflow_errors",
    "one_line",
    "open_client",
    "quick_http",
    "resolve_tracking_uri",
    "restore_settings",
    "search_all",
    "store_lock_path",
    "store_setup_lock",
    "user_environ",
]

#: The embedded store used when no tracking URI is given (relative to the working directory).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_SQLITE = "sqlite:///"

#: MLflow's own environment settings for a client that reports an outage instead of
#: retrying for minutes: one retry, 10 s per request. And no progress bar per artifact
#: download (compare and report read checks.jsonl): the command's output has no redraws.
FAIL_FAST_SETTINGS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# What apply_fail_fast_defaults() added to the environment (key -> value it set).
_applied: dict[str, str] = {}


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in cwd.

    >>> resolve_tracking_uri("http://127.0.0.1:5000")
    'http://127.0.0.1:5000'
    >>> resolve_tracking_uri("sqlite:///runs.db") == f"sqlite:///{os.path.abspath('runs.db')}"
    True

    A relative sqlite path is made absolute, so a command run from another directory (a
    ``gradwatch sync``, or a child process with another cwd) reaches the same database.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if (
        uri.startswith(_SQLITE)
        and not uri.startswith(_SQLITE + "/")
        and uri != _SQLITE + ":memory:"
    ):
        uri = _SQLITE + os.path.abspath(uri[len(_SQLITE) :])
    return uri


def get_client(tracking_uri: str | None = None, must_exist: bool = True) -> Any:
    """An ``MlflowClient`` on :func:`resolve_tracking_uri` of ``tracking_uri``.

        client = get_client("http://127.0.0.1:5000")

    With ``must_exist``, a ``sqlite:///`` store that is not there raises InputError instead of
    silently creating an empty database (which is what MLflow would do). A sqlite store is
    opened under :func:`store_setup_lock`, so it is never created or migrated by two of
    gradwatch's processes at once.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if must_exist and uri.startswith(_SQLITE):
        path = uri[len(_SQLITE) :]
        if path != ":memory:" and not os.path.exists(path):
            raise NotFoundError(
                f"no MLflow store at {path} (tracking URI {mask_uri(uri)}); "
                "run `gradwatch demo` or pass --tracking-uri / set MLFLOW_TRACKING_URI"
            )
    return open_client(uri)


#: Seconds a process waits for another one that is creating or migrating a sqlite store.
STORE_SETUP_WAIT = 600.0


def store_lock_path(tracking_uri: str) -> str | None:
    """The lock file beside a ``sqlite:///`` store's database, or None for other stores."""
    if not tracking_uri.startswith(_SQLITE):
        return None
    path = tracking_uri[len(_SQLITE) :].split("?")[0]
    if not path or path == ":memory:":
        return None
    return path + ".gradwatch-setup.lock"


@contextmanager
def store_setup_lock(tracking_uri: str, wait: float = STORE_SETUP_WAIT) -> Iterator[None]:
    """Hold the lock beside a sqlite store's file while the store is created or migrated.

        with store_setup_lock("sqlite:////abs/mlflow.db"):
            client = MlflowClient(uri); client.search_experiments(max_results=1)

    MLflow creates and migrates a sqlite database on first use; two processes doing it at
    once collide (``Online migration expected to match one row``, ``_alembic_tmp_* already
    exists``). Every gradwatch process that opens a sqlite store (shipper, compare, report,
    monitor, demo) does it under this ``flock``. Other stores, or a folder that cannot hold
    the lock file, go without it. Waits at most ``wait`` seconds, then goes ahead.
    """
    import fcntl
    import time

    lock_path = store_lock_path(tracking_uri)
    fd = None
    if lock_path is not None:
        try:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)  # as MLflow would
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:  # a read-only folder or a missing one: MLflow will say which
            fd = None
    if fd is not None:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def open_client(tracking_uri: str) -> Any:
    """``MlflowClient(tracking_uri)`` with its store opened now: a sqlite store is created
    and migrated under :func:`store_setup_lock`, so no two gradwatch processes race there.

        client = open_client("sqlite:////abs/mlflow.db")
    """
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
    except ImportError as err:  # a database URI whose driver is not installed
        raise TrackingError(
            f"cannot open the tracking store {mask_uri(tracking_uri)}: its database driver "
            f"'{err.name or err}' is not installed (for PostgreSQL: pip install "
            f"'gradwatch[postgres]', or name the driver in the URI, e.g. postgresql+psycopg2://...)"
        ) from None
    if store_lock_path(tracking_uri) is not None:
        with store_setup_lock(tracking_uri):
            try:  # MLflow opens (creates, migrates) the store on its first request
                client.search_experiments(max_results=1)
            except Exception:  # noqa: BLE001 - the caller's own request meets it again, in
                pass  # its own error handling (a read-only or corrupt file, say)
    return client


# ------------------------------------------------------------------------- errors


_UNREACHABLE = re.compile(
    r"Connection refused|Failed to establish|Max retries exceeded|timed out|Name or service not known"
)


def one_line(err: BaseException) -> str:
    """A short, one-line, credential-free account of an error.

    MLflow's carry urllib3's whole retry story; this keeps the cause.
    """
    text = str(getattr(err, "message", None) or err).strip()
    found = _UNREACHABLE.search(text)
    if found:
        reason = "connection refused" if "refused" in text else found.group(0).lower()
        return f"server unreachable ({reason}); is it running, and is the URI right?"
    lines = text.splitlines()
    return mask_uri(lines[0][:300] if lines else type(err).__name__)


def _library_errors() -> tuple[type[BaseException], ...]:
    """MLflow's exception class, and what its clients and stores raise beneath it."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError]  # requests' errors are OSErrors
    try:
        from sqlalchemy.exc import SQLAlchemyError  # the embedded store's database errors

        errors.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover - MLflow depends on SQLAlchemy
        pass
    return tuple(errors)


@contextmanager
def mlflow_errors(tracking_uri: str, doing: str | None = None) -> Iterator[None]:
    """Translate MLflow's errors raised in the block into one-line TrackingErrors.

        with mlflow_errors(client.tracking_uri, "cannot read runs"):
            client.search_runs(...)

    The message names the (masked) server and the cause: ``MLflow at http://bob:***@host:
    server unreachable (connection refused); ...``. gradwatch's own errors pass through.
    """
    try:
        yield
    except TrackingError:
        raise
    except InputError:
        raise
    except _library_errors() as err:
        what = f"{doing}: " if doing else ""
        raise TrackingError(f"{what}MLflow at {mask_uri(tracking_uri)}: {one_line(err)}") from None


def is_missing(err: BaseException) -> bool:
    """True when MLflow says the requested run or experiment does not exist."""
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", ""))


def _is_already_there(err: BaseException) -> bool:
    return "RESOURCE_ALREADY_EXISTS" in str(getattr(err, "error_code", ""))


# ---------------------------------------------------------------------- lookups


def experiment_id(client: Any, name: str, create: bool = False) -> str:
    """The id of experiment ``name``; created when ``create`` (a race with another creator is
    fine), else InputError listing the experiments there are.

        exp_id = experiment_id(client, "mlp")
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if create:
        from mlflow.exceptions import MlflowException

        try:
            return client.create_experiment(name)
        except MlflowException as err:
            if not _is_already_there(err):
                raise
            return client.get_experiment_by_name(name).experiment_id
    known = sorted(e.name for e in client.search_experiments(max_results=50))
    raise NotFoundError(
        f"no experiment named {name!r} at {mask_uri(client.tracking_uri)}; "
        f"known: {', '.join(known) or '(none)'}"
    )


def get_run(client: Any, run_id: str) -> Any:
    """The run ``run_id``, or InputError saying there is none (and how to list runs)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if is_missing(err):
            raise NotFoundError(
                f"no run {run_id!r} at {mask_uri(client.tracking_uri)}; "
                "`gradwatch compare --experiment NAME` lists the runs"
            ) from None
        raise


def metric_history(client: Any, run_id: str, key: str) -> list:
    """Every logged value of ``key`` in ``run_id``, sorted by (step, timestamp)."""
    history = client.get_metric_history(run_id, key)
    return sorted(history, key=lambda m: (m.step, m.timestamp))


def search_all(
    client: Any,
    experiment_ids: Sequence[str],
    filter_string: str = "",
    order_by: Sequence[str] | None = None,
    page_size: int = 1000,
) -> list:
    """Every run matching ``filter_string`` (all pages), in ``order_by`` order."""
    runs: list = []
    token = None
    while True:
        page = client.search_runs(
            list(experiment_ids),
            filter_string=filter_string,
            max_results=page_size,
            order_by=list(order_by or ()),
            page_token=token,
        )
        runs.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return runs


def artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """The text of the run's artifact ``path``, or None when the run has no such artifact."""
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="gradwatch-") as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        with open(local, encoding="utf-8", errors="replace") as fh:
            return fh.read()


def artifact_records(client: Any, run_id: str, path: str) -> list[dict[str, Any]] | None:
    """The JSON objects of the run's JSONL artifact ``path`` (``gradwatch/checks.jsonl``),
    or None when the run has no such artifact. A line that is not a JSON object (the torn
    last line of a run still writing) is skipped.

        records = artifact_records(client, run_id, "gradwatch/checks.jsonl") or []
    """
    text = artifact_text(client, run_id, path)
    if text is None:
        return None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def log_tags(client: Any, run_id: str, tags: Mapping[str, object]) -> None:
    """Set several tags of ``run_id`` in one request."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(str(k), str(v)) for k, v in tags.items()])


def log_metrics(
    client: Any,
    run_id: str,
    step: int,
    metrics: Mapping[str, float],
    timestamp_ms: int | None = None,
) -> None:
    """Log ``metrics`` at ``step`` of ``run_id`` in one request (timestamp: now by default)."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
    )


# ---------------------------------------------------------------- fail-fast settings


def apply_fail_fast_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`FAIL_FAST_SETTINGS` where the user has not; returns what was added.

    For a process gradwatch owns (the ``gradwatch`` command). Undo with
    :func:`restore_settings`.
    """
    env = os.environ if environ is None else environ
    added = {}
    for key, value in FAIL_FAST_SETTINGS.items():
        if key not in env:
            env[key] = value
            added[key] = value
    if environ is None:
        _applied.update(added)
    return added


def restore_settings(
    added: dict[str, str], environ: MutableMapping[str, str] | None = None
) -> None:
    """Remove what :func:`apply_fail_fast_defaults` added (unless changed since)."""
    env = os.environ if environ is None else environ
    for key, value in added.items():
        if env.get(key) == value:
            del env[key]
        if environ is None and _applied.get(key) == value:
            del _applied[key]


def user_environ() -> dict[str, str]:
    """``os.environ`` without the settings gradwatch added: for the user's child processes."""
    env = dict(os.environ)
    for key, value in _applied.items():
        if env.get(key) == value:
            del env[key]
    return env


@contextmanager
def quick_http(max_retries: int = 1, timeout: int = 10) -> Iterator[None]:
    """Kept for old imports; does nothing.

    It used to change the process environment for the duration of the block, which other
    threads saw too. The ``gradwatch`` command now applies :data:`FAIL_FAST_SETTINGS` once
    for its own process (:func:`apply_fail_fast_defaults`).
    """
    yield
