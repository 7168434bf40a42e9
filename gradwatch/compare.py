"""Old import path of ``gradwatch.runs.compare`` (and of the MLflow client helpers).

New code imports from :mod:`gradwatch.runs.compare`, :mod:`gradwatch.runs.verdicts`,
:mod:`gradwatch.runs.plot` and :mod:`gradwatch.mlflow_access`; these names stay importable
from here for code written against the old layout.
"""

from __future__ import annotations

from gradwatch.mlflow_access import (
    DEFAULT_TRACKING_URI,
    get_client,
    one_line,
    quick_http,
    resolve_tracking_uri,
)
from gradwatch.runs.compare import (
    OUTPUTS,
    RunCurves,
    RunSummary,
    curves_from,
    differing_params,
    fetch_curves,
    fetch_histories,
    format_csv,
    format_diff,
    format_json,
    format_table,
    render,
    select_runs,
    summarize,
    summarize_runs,
    table_rows,
    user_params,
)
from gradwatch.runs.plot import LOSS_CLIP_DECADES, plot_runs
from gradwatch.runs.verdicts import (
    DIVERGENCE_FACTOR,
    STALL_TOLERANCE,
    LossVerdict,
    is_finite,
    loss_verdict,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "DIVERGENCE_FACTOR",
    "LOSS_CLIP_DECADES",
    "OUTPUTS",
    "STALL_TOLERANCE",
    "LossVerdict",
    "RunCurves",
    "RunSummary",
    "curves_from",
    "differing_params",
    "fetch_curves",
    "fetch_histories",
    "format_csv",
    "format_diff",
    "format_json",
    "format_table",
    "get_client",
    "is_finite",
    "loss_verdict",
    "one_line",
    "plot_runs",
    "quick_http",
    "render",
    "resolve_tracking_uri",
    "select_runs",
    "summarize",
    "summarize_runs",
    "table_rows",
    "user_params",
]
