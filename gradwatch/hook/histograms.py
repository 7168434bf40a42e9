"""Which statistics steps also record histograms of |g| and |θ|, and where they go.

    histograms = Histograms(every=1, recorder=run)   # every statistics step
    if histograms.due():                             # counts statistics steps
        histograms.write(record)                     # one line of gradwatch/histograms.jsonl

The histograms themselves are :func:`gradwatch.stats.tensor_stats_and_histograms`'s, computed
inside the statistics step (the same sort serves the quantiles), so their time is part of the
statistics step's measured cost: the ``"auto"`` interval and ``budget`` pay for them.
"""

from __future__ import annotations

from typing import Any

from gradwatch import schema

__all__ = ["Histograms"]


class Histograms:
    """Every ``every``-th statistics step (the first included) is a histogram step; ``every``
    0 turns histograms off. ``recorder`` has ``append_artifact_line(path, record)`` (the run)."""

    def __init__(self, every: int, recorder: Any) -> None:
        self.every = every
        self.recorder = recorder
        self.statistics_steps = 0  # statistics steps seen so far
        self.written = 0  # histogram lines appended

    def due(self) -> bool:
        """Called once per statistics step: does this one record histograms?"""
        if not self.every:
            return False
        due = self.statistics_steps % self.every == 0
        self.statistics_steps += 1
        return due

    def write(self, record: dict[str, Any]) -> None:
        """Append one :func:`~gradwatch.stats.histogram_record` to the run's histograms.jsonl."""
        self.recorder.append_artifact_line(schema.ARTIFACT_HISTOGRAMS, record)
        self.written += 1
