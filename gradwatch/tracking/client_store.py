"""``ClientStore``: the shipper's ``Store`` (see store.py) over MLflow's public ``MlflowClient``.

    store = ClientStore("sqlite:////abs/mlflow.db")

Used for every tracking URI that is not a plain http(s) server: the embedded sqlite store
(the default), database URIs, plugin schemes, and servers whose credentials only MLflow's
auth plugins know. MLflow's exceptions become ``StoreError`` here, classified by error code.
For an http(s) URI the shipper process sets MLflow's own ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` in its environment, so requests fail fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gradwatch.mlflow_access import open_client
from gradwatch.secrets import mask_uri
from gradwatch.tracking.store_error import StoreError, classify_code

__all__ = ["ClientStore"]

T = TypeVar("T", bound=Callable[..., Any])


def _as_store_error(err: BaseException) -> StoreError:
    code = getattr(err, "error_code", None)
    text = str(err).strip().splitlines()
    message = f"{type(err).__name__}: {text[0][:300] if text else ''}"
    return StoreError(mask_uri(message), classify_code(code), code)


def _translated(fn: T) -> T:
    """MLflow's and the database driver's errors -> StoreError (kind from the error code)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - MLflow, SQLAlchemy, OS errors
            raise _as_store_error(err) from None

    return wrapper  # type: ignore[return-value]


@_translated
def _open_client(tracking_uri: str) -> Any:
    return open_client(tracking_uri)


class ClientStore:
    """MlflowClient-backed ``Store``."""

    def __init__(self, tracking_uri: str, request_timeout: float = 10.0) -> None:
        self.request_timeout = request_timeout
        self.shown_uri = mask_uri(tracking_uri)
        # A sqlite store is created/migrated under the lock beside its file (mlflow_access).
        self.client = _open_client(tracking_uri)

    @_translated
    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        if not name:
            return str(experiment_id or "0")
        for attempt in range(2):
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if exp.lifecycle_stage == "deleted":
                    raise StoreError(
                        f"experiment {name!r} is deleted on {self.shown_uri}; restore it "
                        "or log to another experiment",
                        "fatal",
                        "EXPERIMENT_DELETED",
                    )
                return str(exp.experiment_id)
            try:
                return str(self.client.create_experiment(name))
            except Exception as err:
                if getattr(err, "error_code", None) != "RESOURCE_ALREADY_EXISTS" or attempt:
                    raise
        raise StoreError(f"experiment {name!r} could not be found or created", "transient")

    @_translated
    def find_run(self, experiment_id: str, tag: str, value: str) -> str | None:
        runs = self.client.search_runs([experiment_id], f"tags.`{tag}` = '{value}'", max_results=1)
        return runs[0].info.run_id if runs else None

    @_translated
    def create_run(
        self,
        experiment_id: str,
        user: str,
        start_ms: int | None,
        tags: dict[str, str],
        name: str | None,
    ) -> str:
        tags = dict(tags)
        tags.setdefault("mlflow.user", user)
        run = self.client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name)
        return run.info.run_id

    @_translated
    def log_batch(self, run_id: str, metrics: list, params: list, tags: list) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, st) for k, v, ts, st in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
            synchronous=True,
        )

    @_translated
    def run_lifecycle(self, run_id: str) -> str:
        return str(self.client.get_run(run_id).info.lifecycle_stage)

    @_translated
    def end_run(self, run_id: str, status: str, end_ms: int | None) -> None:
        self.client.set_terminated(run_id, status=status, end_time=end_ms)

    @_translated
    def upload(self, run_id: str, local_file: Path, artifact_dir: str | None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_dir or None)

    def close(self) -> None:
        pass
