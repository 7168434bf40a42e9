"""Where a run is in the MLflow UI: direct links for a server, ``mlflow ui`` for a local store.

    links = run_links("http://mlflow:5000", "1", "3f2a...")
    links.run        # "http://mlflow:5000/#/experiments/1/runs/3f2a..."
    links.report     # ".../runs/3f2a.../artifacts/gradwatch/report.html"
    links.command    # None for a server; "mlflow ui --backend-store-uri sqlite:////abs/mlflow.db"

MLflow 3's UI opens on its GenAI page; a training run is at ``#/experiments/<id>/runs/<run id>``
and an experiment's runs table at ``#/experiments/<id>/runs``. For a local store the links
point at ``mlflow ui``'s default address once the command is running. Credentials in a
tracking URI are masked. This module imports neither MLflow nor numpy.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from gradwatch.schema import ARTIFACT_REPORT
from gradwatch.secrets import mask_uri

__all__ = ["UI_ADDRESS", "RunLinks", "experiment_path", "run_links", "run_path", "ui_command"]

#: Where ``mlflow ui`` serves by default.
UI_ADDRESS = "http://127.0.0.1:5000"


def experiment_path(experiment_id: str) -> str:
    """The UI path of an experiment's runs table: ``#/experiments/1/runs``."""
    return f"#/experiments/{experiment_id}/runs"


def run_path(experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """The UI path of a run's page, or of one of its artifacts.

    run_path("1", "abc", "gradwatch/report.html") == "#/experiments/1/runs/abc/artifacts/gradwatch/report.html"
    """
    path = f"{experiment_path(experiment_id)}/{run_id}"
    return f"{path}/artifacts/{artifact}" if artifact else path


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI, or None for a server (it serves itself).

    ui_command("sqlite:///mlflow.db") == "mlflow ui --backend-store-uri sqlite:////abs/mlflow.db"
    """
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    if tracking_uri.startswith("sqlite:///"):
        store = "sqlite:///" + os.path.abspath(tracking_uri[len("sqlite:///") :])
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        store = os.path.abspath(tracking_uri.removeprefix("file://").removeprefix("file:"))
    else:
        store = mask_uri(tracking_uri)
    return f"mlflow ui --backend-store-uri {shlex.quote(store)}"


@dataclass(frozen=True)
class RunLinks:
    """A run's page, its report and its experiment's runs, and the command serving them."""

    run: str
    report: str
    experiment: str
    command: str | None  # None: a server, the links open as they are

    def lines(self, report: bool = True) -> list[str]:
        """What to print: the command first when one is needed, then the links."""
        out = [f"open it: `{self.command}`, then" if self.command else ""]
        out.append(f"run: {self.run}")
        if report:
            out.append(f"report: {self.report}")
        out.append(f"all runs of the experiment: {self.experiment}")
        return [line for line in out if line]


def run_links(tracking_uri: str, experiment_id: str, run_id: str) -> RunLinks:
    """Links to a run, its report and its experiment's runs in the MLflow UI (see the module)."""
    command = ui_command(tracking_uri)
    base = UI_ADDRESS if command else mask_uri(tracking_uri).rstrip("/")
    return RunLinks(
        run=f"{base}/{run_path(experiment_id, run_id)}",
        report=f"{base}/{run_path(experiment_id, run_id, ARTIFACT_REPORT)}",
        experiment=f"{base}/{experiment_path(experiment_id)}",
        command=command,
    )
