"""The run report: one self-contained HTML file per run, and the histograms picture.

    data = from_mlflow(run_id)                       # or from_journal(journal_path)
    html = render_report(data)                       # verdict, curves, checks, alerts, settings
    png = histograms_png(data.histograms)            # gradwatch/histograms.png
    write_run_artifacts(journal_path, out_dir)       # both files, at the end of a run

The verdict is the one ``gradwatch compare`` gives (gradwatch.runs.compare.summarize on the
same data). ``gradwatch report RUN_ID`` redraws both files from MLflow and uploads them.
Pictures need matplotlib (the ``plot`` extra); it is imported only when one is drawn.
"""

from __future__ import annotations

from gradwatch.report.artifacts import (
    REPORT_DIR,
    draw_images,
    write_report_files,
    write_run_artifacts,
)
from gradwatch.report.charts import curves_png, histograms_png
from gradwatch.report.data import RunData
from gradwatch.report.html import ReportImages, render_report
from gradwatch.report.readers import from_journal, from_mlflow

__all__ = [
    "REPORT_DIR",
    "ReportImages",
    "RunData",
    "curves_png",
    "draw_images",
    "from_journal",
    "from_mlflow",
    "histograms_png",
    "render_report",
    "write_report_files",
    "write_run_artifacts",
]
