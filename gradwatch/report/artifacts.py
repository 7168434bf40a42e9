"""The files a run's report consists of, written at the end of the run or on request.

    paths = write_run_artifacts(journal_path, out_dir)   # [out_dir/report.html, out_dir/histograms.png]
    images = draw_images(data)                           # the PNGs, each drawn once

``write_run_artifacts`` is what the hook calls before the run's end record; it never raises for bad
or missing data (it logs and returns what it could write), so a report can never cost the
run its upload.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from pathlib import Path

from gradwatch.report.charts import curves_png, histograms_png
from gradwatch.report.data import RunData
from gradwatch.report.html import ReportImages, render_report
from gradwatch.schema import ARTIFACT_HISTOGRAMS_PNG, ARTIFACT_REPORT

__all__ = ["REPORT_DIR", "draw_images", "write_report_files", "write_run_artifacts"]

logger = logging.getLogger("gradwatch")

#: The artifact folder both files go to (``gradwatch/report.html``, ``gradwatch/histograms.png``).
REPORT_DIR = posixpath.dirname(ARTIFACT_REPORT)
REPORT_NAME = posixpath.basename(ARTIFACT_REPORT)
HISTOGRAMS_NAME = posixpath.basename(ARTIFACT_HISTOGRAMS_PNG)
NO_MATPLOTLIB = "drawing needs matplotlib, an optional extra: pip install gradwatch[plot]"
_said_no_matplotlib: list[bool] = []


def draw_images(data: RunData) -> ReportImages:
    """The report's pictures; one that cannot be drawn is logged and left out (None).

    Without matplotlib (the ``plot`` extra) nothing is drawn and the report says how to get
    the pictures; that is logged once, at info level, not as a warning every run.
    """
    try:
        import matplotlib  # noqa: F401 - the pictures need it; its absence is no error
    except ImportError:
        if not _said_no_matplotlib:
            _said_no_matplotlib.append(True)
            logger.info("gradwatch: the run report has no pictures: %s", NO_MATPLOTLIB)
        return ReportImages(note=NO_MATPLOTLIB)
    return ReportImages(
        curves=_drawn("curves", curves_png, data),
        histograms=_drawn("histograms", histograms_png, data.histograms)
        if data.histograms
        else None,
    )


def _drawn(what: str, draw, arg) -> bytes | None:  # noqa: ANN001 - one of the two drawers
    try:
        return draw(arg)
    except Exception as err:  # noqa: BLE001 - a picture must never cost the report
        logger.warning(
            "gradwatch: report: cannot draw the %s (%s: %s)", what, type(err).__name__, err
        )
        return None


def write_report_files(data: RunData, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.html`` (and ``histograms.png`` when the run has histograms) into
    ``out_dir``; returns the paths written. Raises OSError when ``out_dir`` is not writable.

        paths = write_report_files(from_mlflow(run_id), tmp)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = draw_images(data)
    written = []
    if images.histograms:
        png = out / HISTOGRAMS_NAME
        png.write_bytes(images.histograms)
        written.append(png)
    report = out / REPORT_NAME
    report.write_text(render_report(data, images), encoding="utf-8")
    return [report, *written]


def write_run_artifacts(
    journal_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    run_id: str | None = None,
    status: str | None = None,
) -> list[Path]:
    """Write the run's ``report.html`` and ``histograms.png`` from its journal into
    ``out_dir``: the hook's last step before the run's end record (hook/run.py
    ``report_step``) logs them under ``gradwatch/``; ``status`` is the one the run is
    about to end with (the journal has no end record yet).

        for path in write_run_artifacts(journal, tmp, run_id, "FINISHED"):
            run.log_artifact_file(str(path), REPORT_DIR)

    Reads only the journal and the files beside it (no MLflow). Never raises: a journal that
    cannot be read, a picture that cannot be drawn or a full disk is logged as a warning,
    and the files that were written are returned (possibly none).
    """
    from gradwatch.report.readers import from_journal

    try:
        data = from_journal(journal_path, run_id=run_id)
        if status is not None:
            data = dataclasses.replace(data, status=status)
    except Exception as err:  # noqa: BLE001 - the shipper must finish the run regardless
        logger.warning(
            "gradwatch: no run report: cannot read %s (%s: %s)",
            journal_path,
            type(err).__name__,
            err,
        )
        return []
    try:
        return write_report_files(data, out_dir)
    except Exception as err:  # noqa: BLE001 - see the docstring
        logger.warning("gradwatch: run report incomplete: %s: %s", type(err).__name__, err)
    out = Path(out_dir)
    return [p for p in (out / REPORT_NAME, out / HISTOGRAMS_NAME) if p.is_file()]
