"""Which statistics steps also record histograms of |g| and |θ|, and where they go.

    histograms = Histograms(every=1, recorder=run)   # every statistics step
    if histograms.due(step):                         # called once per statistics step
        histograms.write(record)                     # one line of gradwatch/histograms.jsonl

A run's histogram lines stay few enough to draw and to re-upload: two histogram steps are at
least HIST_MIN_GAP (1 %) of the run's steps so far apart, so a run has at most about 100
lines per e-fold of its length (746 lines for 100,000 steps, 975 for 1,000,000) whatever its
statistics interval; short runs, and runs whose statistics are already that far apart, are
unaffected.

The histograms themselves are :func:`gradwatch.stats.tensor_stats_and_histograms`'s, computed
inside the statistics step (the same sort serves the quantiles), so their time is part of the
statistics step's measured cost: the ``"auto"`` interval and ``budget`` pay for them.
"""

from __future__ import annotations

from typing import Any

from gradwatch import schema

__all__ = ["HIST_MIN_GAP", "Histograms"]

#: Two histogram steps are at least this fraction of the steps since the first apart. A model
#: whose statistics are cheap against its step gets statistics every few steps; at one line
#: (~400 bytes a tensor) each, histograms.jsonl would grow without bound and be re-uploaded
#: whole every 30 s, for a picture no wider than a few hundred columns.
HIST_MIN_GAP = 0.01


class Histograms:
    """Every ``every``-th statistics step (the first included) is a histogram step; ``every``
    0 turns histograms off. ``recorder`` has ``append_artifact_line(path, record)`` (the run)."""

    def __init__(self, every: int, recorder: Any) -> None:
        self.every = every
        self.recorder = recorder
        self.statistics_steps = 0  # statistics steps seen so far
        self.written = 0  # histogram lines appended
        self.first_step: int | None = None  # the run's first histogram step
        self.last_step: int | None = None

    def due(self, step: int) -> bool:
        """Called once per statistics step: does this one (``step``) record histograms?"""
        counted = self.statistics_steps
        self.statistics_steps += 1
        if not self.every or counted % self.every:
            return False
        if self.last_step is None:
            return True
        return step - self.last_step >= HIST_MIN_GAP * (step - self.first_step)

    def write(self, record: dict[str, Any]) -> None:
        """Append one :func:`~gradwatch.stats.histogram_record` to the run's histograms.jsonl."""
        self.recorder.append_artifact_line(schema.ARTIFACT_HISTOGRAMS, record)
        self.written += 1
        self.last_step = record["step"]
        if self.first_step is None:
            self.first_step = record["step"]
