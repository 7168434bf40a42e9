"""Fill a :class:`RunData` from MLflow (``gradwatch report RUN_ID``) or from a run's journal
(the shipper, at the end of the run, without reading anything back from the server).

    data = from_mlflow("3f2a...", "http://127.0.0.1:5000")   # TrackingError if there is no such run
    data = from_journal(".gradwatch/journal/20250101-120000-ab12cd34ef56.jsonl")

``from_journal`` imports no MLflow: it reads the journal's lines (metrics, params, tags, the
artifact lines of ``checks.jsonl``, ``alerts.jsonl``, ``histograms.jsonl``, the end record)
and the config file the run copied next to it (``NAME.files/``).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from array import array
from pathlib import Path
from typing import Any

from gradwatch.errors import InputError, TrackingError
from gradwatch.report.data import RunData, sorted_series
from gradwatch.schema import (
    ARTIFACT_ALERTS,
    ARTIFACT_CHECKS,
    ARTIFACT_CONFIG,
    ARTIFACT_HISTOGRAMS,
    TAG_JOURNAL_ID,
    expand_settings,
    float_or_nan,
    from_mlflow_value,
    hook_keys,
)
from gradwatch.secrets import mask_uri

__all__ = ["from_journal", "from_mlflow"]

logger = logging.getLogger("gradwatch")

#: The folder the run's config file is uploaded to (it keeps its own name: ci.yaml stays ci.yaml).
CONFIG_DIR = posixpath.dirname(ARTIFACT_CONFIG)
CONFIG_SUFFIXES = (".yaml", ".yml")
#: Artifact-line files read into RunData fields.
LINE_ARTIFACTS = {
    ARTIFACT_CHECKS: "checks",
    ARTIFACT_ALERTS: "alerts",
    ARTIFACT_HISTOGRAMS: "histograms",
}


# ------------------------------------------------------------------------------ MLflow


def from_mlflow(run_id: str, tracking_uri: str | None = None) -> RunData:
    """Read run ``run_id`` back from MLflow: params, tags, every metric history, the artifacts.

        data = from_mlflow(run_id, "http://127.0.0.1:5000")

    Raises TrackingError (URI masked) when there is no such run or the server cannot be
    reached, InputError when a ``sqlite:///`` store does not exist.
    """
    from gradwatch.mlflow_access import artifact_records, get_client, get_run, mlflow_errors

    client = get_client(tracking_uri)
    uri = client.tracking_uri
    with mlflow_errors(uri, f"cannot read run {run_id}"):
        try:
            run = get_run(client, run_id)
        except InputError as err:
            raise TrackingError(str(err)) from None
        experiment = client.get_experiment(run.info.experiment_id)
        # The schema's names in either layout (a run the hook shared: gradwatch/loss -> loss).
        names = hook_keys(run.data.metrics, run.data.tags)
        raw = {name: _history(client, run_id, key) for name, key in sorted(names.items())}
        lines = {
            field: artifact_records(client, run_id, path) or []
            for path, field in LINE_ARTIFACTS.items()
        }
        config_name, config_text = _config_artifact(client, run_id)
    metrics, stamps = sorted_series(raw)
    return RunData(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.data.tags.get("mlflow.runName", "") or run_id,
        status=run.info.status,
        experiment=experiment.name if experiment is not None else str(run.info.experiment_id),
        params=expand_settings(run.data.params),
        tags=dict(run.data.tags),
        metrics=metrics,
        timestamps=stamps,
        config_text=config_text,
        config_name=config_name,
        tracking_uri=mask_uri(uri),
        source="mlflow",
        **lines,
    )


def _history(client: Any, run_id: str, key: str) -> list[tuple[int, int, float]]:
    from gradwatch.mlflow_access import metric_history

    return [
        (int(m.step), int(m.timestamp), from_mlflow_value(m.value))
        for m in metric_history(client, run_id, key)
    ]


def _artifact(client: Any, run_id: str, path: str) -> str | None:
    from gradwatch.mlflow_access import artifact_text

    return artifact_text(client, run_id, path)


def _config_artifact(client: Any, run_id: str) -> tuple[str | None, str | None]:
    """The run's uploaded config file (already masked): (artifact path, text), or Nones."""
    files = client.list_artifacts(run_id, CONFIG_DIR)  # a missing folder lists empty
    names = sorted(f.path for f in files if not f.is_dir and f.path.endswith(CONFIG_SUFFIXES))
    if ARTIFACT_CONFIG in names:  # the usual name first
        names.remove(ARTIFACT_CONFIG)
        names.insert(0, ARTIFACT_CONFIG)
    for name in names:
        text = _artifact(client, run_id, name)
        if text is not None:
            return name, text
    return None, None


# ----------------------------------------------------------------------------- journal


def from_journal(journal_path: str | os.PathLike, run_id: str | None = None) -> RunData:
    """Read a run from its journal (and the files beside it), as the shipper has it.

        data = from_journal(".gradwatch/journal/20250101-120000-ab12cd34ef56.jsonl")

    ``run_id``: the MLflow run's id when the caller knows it (the shipper); else the one the
    journal header or the shipper's state file records. A param keeps its first value (as
    MLflow does); a tag its last. The status is the end record's; without one, RUNNING while
    the writer still holds the journal, else FAILED (the process died). Raises InputError
    when the file is not a gradwatch journal.
    """
    from gradwatch.tracking.journal import files_dir, is_live, read_records

    path = Path(journal_path)
    reader = _JournalReader()
    try:
        for record in read_records(path):
            reader.add(record)
    except OSError as err:
        raise InputError(f"cannot read journal {path}: {err.strerror or err}") from None
    header = reader.header
    if header is None:
        raise InputError(f"{path} is not a gradwatch journal (its first line is no header)")
    status = reader.status or ("RUNNING" if is_live(path) else "FAILED")
    config_name, config_text = _copied_config(files_dir(path), reader.files)
    metrics, stamps = sorted_series(reader.raw)
    run_id = run_id or header.get("run_id") or _state_run_id(path)
    tags = {str(k): str(v) for k, v in (header.get("tags") or {}).items()}
    tags.update(reader.tags)
    if header.get("id"):
        tags.setdefault(TAG_JOURNAL_ID, str(header["id"]))  # the shipper tags the run with it
    return RunData(
        run_id=run_id,
        run_name=str(header.get("name") or run_id or header.get("id", "")),
        status=status,
        experiment=str(header.get("exp") or header.get("exp_id") or ""),
        params=expand_settings(reader.params),
        tags=tags,
        metrics=metrics,
        timestamps=stamps,
        config_text=config_text,
        config_name=config_name,
        tracking_uri=mask_uri(header.get("uri") or ""),
        source="journal",
        **reader.lines,
    )


class _JournalReader:
    """Folds journal records (see gradwatch.tracking.journal's line format) into run data."""

    def __init__(self) -> None:
        self.header: dict[str, Any] | None = None
        # Three compact columns a key (steps, stamps, values): a million-step run's loss and
        # lr are 48 MB here, where tuples would take several times that.
        self.raw: dict[str, tuple[array, array, array]] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.lines: dict[str, list[dict[str, Any]]] = {f: [] for f in LINE_ARTIFACTS.values()}
        self.files: list[tuple[str, str]] = []  # (src under NAME.files/, artifact folder)
        self.status: str | None = None

    def add(self, rec: dict[str, Any]) -> None:
        kind = rec.get("t")
        if kind == "h" and self.header is None:
            self.header = rec
        elif kind == "m":
            step, ts = int(rec.get("st") or 0), int(rec.get("ts") or 0)
            for key, value in (rec.get("m") or {}).items():
                columns = self.raw.get(key)
                if columns is None:
                    columns = self.raw[str(key)] = (array("q"), array("q"), array("d"))
                columns[0].append(step)
                columns[1].append(ts)
                columns[2].append(from_mlflow_value(float_or_nan(value)))
        elif kind == "p":
            for key, value in (rec.get("p") or {}).items():
                self.params.setdefault(str(key), str(value))  # MLflow keeps the first value
        elif kind == "g":
            self.tags.update({str(k): str(v) for k, v in (rec.get("g") or {}).items()})
        elif kind == "a":
            target = LINE_ARTIFACTS.get(posixpath.normpath(str(rec.get("path", ""))))
            if target is not None and isinstance(rec.get("r"), dict):
                self.lines[target].append(rec["r"])
        elif kind == "f":
            self.files.append((str(rec.get("src", "")), str(rec.get("path") or "")))
        elif kind == "e":
            self.status = str(rec.get("status") or "FINISHED")


def _copied_config(base: Path, files: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """The config file the run copied next to its journal (masked when copied): (name, text)."""
    root = base.resolve()
    for src, folder in files:
        local = (base / src).resolve()
        if folder.strip("/") != CONFIG_DIR or not local.name.endswith(CONFIG_SUFFIXES):
            continue
        if not local.is_relative_to(root) or not local.is_file():
            continue  # a crafted record must not make the report show ~/.ssh/...
        try:
            return f"{CONFIG_DIR}/{local.name}", local.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            logger.warning("gradwatch: report: cannot read %s: %s", local, err)
    return None, None


def _state_run_id(journal_path: Path) -> str | None:
    """The run id the shipper recorded in the journal's state file, if any."""
    from gradwatch.tracking.journal import state_path

    try:
        state = json.loads(state_path(journal_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    run_id = state.get("run_id") if isinstance(state, dict) else None
    return str(run_id) if run_id else None
