"""What a run report is drawn from: :class:`RunData`, the same whichever reader filled it.

    data = from_journal(journal_path)            # or from_mlflow(run_id)
    data.summary().verdict                       # "BACKPROP BUG + stalled", as `compare` says

The verdict comes from :func:`gradwatch.runs.compare.summarize`, given the same metric
histories and ``checks.jsonl`` records ``gradwatch compare`` reads, so the report and the
comparison table never disagree about a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

from gradwatch.runs.compare import SUMMARY_KEYS, RunSummary, summarize
from gradwatch.schema import CHECK_CLIPPED, NONFINITE

__all__ = ["MAX_POINTS", "Point", "RunData"]

#: Points kept of each metric series: enough for a curve and for the verdict's medians.
MAX_POINTS = 10_000

#: One logged value: (step, value), value as logged (MLflow's ±1.8e308 read back as ±inf).
Point = tuple[int, float]


@dataclass
class RunData:
    """One run, reader-neutral: everything :func:`render_report` shows.

    ``metrics`` maps each key to its ``[(step, value), ...]`` in step order; ``timestamps``
    the same keys to the matching wall-clock times in ms (used only for the verdict, whose
    rules take the newest value of a step). ``checks``, ``alerts`` and ``histograms`` are the
    lines of ``gradwatch/checks.jsonl``, ``alerts.jsonl`` and ``histograms.jsonl``.
    ``tracking_uri`` is kept with credentials masked.
    """

    run_id: str | None
    run_name: str
    status: str
    experiment: str = ""
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[Point]] = field(default_factory=dict)
    timestamps: dict[str, list[int]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    histograms: list[dict[str, Any]] = field(default_factory=list)
    config_text: str | None = None
    config_name: str | None = None
    tracking_uri: str = ""
    source: str = ""  # "mlflow" or "journal": where the data was read

    def series(self, key: str) -> list[Point]:
        """``[(step, value), ...]`` of ``key``, empty when the run did not log it."""
        return self.metrics.get(key, [])

    def summary(self) -> RunSummary:
        """The run's :class:`RunSummary` (verdict included), exactly as ``compare`` builds it."""
        run = SimpleNamespace(
            info=SimpleNamespace(
                run_id=self.run_id or "", run_name=self.run_name, status=self.status
            ),
            data=SimpleNamespace(
                params=dict(self.params),
                tags=dict(self.tags),
                metrics={k: v[-1][1] for k, v in self.metrics.items() if v},
            ),
        )
        return summarize(run, self._summary_histories(), self.checks or None)

    def _summary_histories(self) -> dict[str, list[Any]]:
        # The keys compare.fetch_histories fetches, as Metric-like objects.
        wanted = [
            k for k in self.metrics if k in SUMMARY_KEYS or k.startswith((NONFINITE, CHECK_CLIPPED))
        ]
        return {key: _metric_objects(self.metrics[key], self.timestamps.get(key)) for key in wanted}


def _metric_objects(points: list[Point], stamps: list[int] | None) -> list[Any]:
    stamps = stamps if stamps is not None and len(stamps) == len(points) else [0] * len(points)
    return [SimpleNamespace(step=s, value=v, timestamp=t) for (s, v), t in zip(points, stamps)]


def sorted_series(raw: Mapping[str, Any]) -> tuple[dict, dict]:
    """``{key: rows}`` -> (metrics, timestamps), each sorted by (step, ts) and thinned to at
    most :data:`MAX_POINTS` evenly spread points (the first and last kept).

    ``rows`` is a list of ``(step, ts, value)`` or three columns ``(steps, stamps, values)``.
    Thinning bounds what a report of a million-step run costs to read, judge and draw; both
    readers thin alike, so they agree.
    """
    metrics: dict[str, list[Point]] = {}
    stamps: dict[str, list[int]] = {}
    for key, rows in raw.items():
        if isinstance(rows, tuple) and len(rows) == 3:
            steps, ts, values = (np.asarray(c) for c in rows)
        else:
            steps = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            ts = np.fromiter((r[1] for r in rows), np.int64, len(rows))
            values = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        order = np.lexsort((ts, steps))
        if order.size > MAX_POINTS:
            order = order[
                np.unique(np.linspace(0, order.size - 1, MAX_POINTS).round().astype(np.int64))
            ]
        metrics[key] = list(zip(steps[order].tolist(), values[order].tolist()))
        stamps[key] = ts[order].tolist()
    return metrics, stamps
