"""Old import path of :mod:`gradwatch.runs.sweep` (``gradwatch sweep``)."""

from __future__ import annotations

from gradwatch.runs.sweep import (
    SweepPlan,
    SweepResult,
    SweepRun,
    ensure_experiment,
    new_sweep_id,
    plan_sweep,
    run_sweep,
)

__all__ = [
    "SweepPlan",
    "SweepResult",
    "SweepRun",
    "ensure_experiment",
    "new_sweep_id",
    "plan_sweep",
    "run_sweep",
]
