"""Per-tensor statistics of a step and the update the optimizer applies after it, plus the
one trap they reveal: parameter arrays replaced (rebound) instead of updated in place.

    stats = Statistics(layout, Histograms(every=1, recorder=run))
    result = stats.measure(step, params, grads, metrics)  # norms, quantiles, histograms
    ratios = stats.update_ratios(params)              # next step: ||after - before|| / ||before||

The hook's own arithmetic never prints numpy warnings: an overflow on a diverging run is the
``nonfinite`` rule's to report, not a ``RuntimeWarning`` on the user's terminal.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np

from gradwatch import schema
from gradwatch.hook.histograms import Histograms
from gradwatch.hook.layout import TensorLayout
from gradwatch.stats import tensor_norms, tensor_stats, tensor_stats_and_histograms, update_ratio

__all__ = ["PROBE_STEPS", "StaleParams", "Statistics", "StepStats"]

logger = logging.getLogger("gradwatch")

#: For this many steps after the first, every parameter is compared with its first-step
#: value; unchanged all along (with non-zero gradients and lr > 0) means stale arrays.
PROBE_STEPS = 3


class StepStats(NamedTuple):
    """The statistics of one step, keyed by tensor name."""

    grad_norms: dict[str, float]
    param_norms: dict[str, float]
    nonfinite: dict[str, int]
    metrics: dict[str, float]  # the other metrics logged (|g|, |θ| quantiles, zero fraction)


class Statistics:
    """Norms, quantiles and non-finite counts on statistics steps (with histograms of |g| and
    |θ| on ``histograms``' steps); update ratios on the step after."""

    def __init__(self, layout: TensorLayout, histograms: Histograms | None = None) -> None:
        self.layout = layout
        self.histograms = histograms
        self.snapshot: tuple[int, dict[str, np.ndarray]] | None = None  # (step, copies)
        self.num_metrics = 0  # metrics the last statistics step produced

    def measure(
        self, step: int, params: Any, grads: Any, metrics: dict[str, float], full: bool = True
    ) -> StepStats:
        """Add ``grad_norm/<t>``, ``param_norm/<t>`` (and ``nonfinite/<t>``), ``grad_zero_frac/<t>``
        and, when ``full``, ``grad_abs_p50/<t>``, ``grad_abs_p99/<t>`` and ``param_abs_p99/<t>``
        to ``metrics``, and keep a copy of the parameters to measure the update the optimizer
        is about to apply. On a full histogram step, also append the histograms to
        ``gradwatch/histograms.jsonl``."""
        named = self.layout.named(params)
        named_grads = self.layout.named_grads(grads)
        record = None
        with np.errstate(all="ignore"):
            if not full:
                stats = tensor_norms(named, named_grads)
            elif self.histograms is not None and self.histograms.due(step):
                stats, record = tensor_stats_and_histograms(step, named, named_grads)
            else:
                stats = tensor_stats(named, named_grads)
        if record is not None:
            self.histograms.write(record)
        out = StepStats({}, {}, {}, {})
        for name, st in stats.items():
            out.grad_norms[name] = st.grad_norm
            out.param_norms[name] = st.param_norm
            out.nonfinite[name] = st.nonfinite
            metrics[schema.GRAD_NORM + name] = st.grad_norm
            metrics[schema.PARAM_NORM + name] = st.param_norm
            if st.nonfinite:
                metrics[schema.NONFINITE + name] = float(st.nonfinite)
            out.metrics[schema.GRAD_ZERO_FRAC + name] = st.grad_zero_frac
            if full:
                out.metrics[schema.GRAD_ABS_P50 + name] = st.grad_abs_p50
                out.metrics[schema.GRAD_ABS_P99 + name] = st.grad_abs_p99
                out.metrics[schema.PARAM_ABS_P99 + name] = st.param_abs_p99
        metrics.update(out.metrics)
        self.snapshot = (step, {name: p.copy() for name, p in named.items()})
        self.num_metrics = (7 if full else 4) * len(stats)
        return out

    def update_ratios(self, params: Any) -> tuple[int, dict[str, float]]:
        """``(snapshot step, {tensor: ||after - before|| / ||before||})``; drops the snapshot."""
        step, before = self.snapshot
        self.snapshot = None
        with np.errstate(all="ignore"):
            ratios = {
                name: update_ratio(before[name], p)
                for name, p in self.layout.named(params).items()
                if name in before
            }
        return step, ratios


class StaleParams:
    """Notices parameter arrays that never change although training updates them.

    Code that updates with ``self.weights = [w - lr * dw ...]`` replaces its arrays every step;
    params handed to the hook once then stay at their first values, every later check would
    fail in every tensor, and the update ratios read 0. The signature: *every* tensor
    unchanged while its gradient is non-zero and lr > 0. Some tensors alone unchanged is a
    frozen layer: an informational note at most.
    """

    def __init__(self) -> None:
        self.stale = False  # checks on stale parameters are not run
        self.suspect = False  # unchanged at the last comparison: a check now would be wrong
        self.warned = False
        self._first: dict[str, np.ndarray] | None = None
        self._moving: dict[str, bool] = {}  # tensor had a non-zero gradient at the first step
        self._first_step = 0
        self._unchanged_steps = 0

    @property
    def probing(self) -> bool:
        """Still comparing the first steps (so each of them must look at the parameters)."""
        return self._first is not None

    def start(
        self,
        step: int,
        named: dict[str, np.ndarray],
        grad_norms: dict[str, float],
        lr: float | None,
    ) -> None:
        """The first step: remember the parameters (a copy) and which tensors should move."""
        if lr is None or not lr > 0:
            return  # no update known to be expected (no lr, warm-up from 0): nothing to compare
        self._first = {name: p.copy() for name, p in named.items()}
        self._moving = {name: grad_norms.get(name, 0.0) > 0 for name in named}
        self._first_step = step

    def probe(self, step: int, named: dict[str, np.ndarray], lr: float | None) -> None:
        """A step within the first few: compare every tensor with its first value."""
        first = self._first
        unchanged = {name: np.array_equal(first[name], p) for name, p in named.items()}
        if not all(unchanged.values()):
            self._first = None  # training updates its arrays: done
            self.suspect = False
            frozen = [n for n, same in unchanged.items() if same and self._moving.get(n)]
            if frozen:
                logger.info(
                    "gradwatch: %s did not change over the first steps although the "
                    "gradient is non-zero (a frozen layer?)",
                    ", ".join(frozen),
                )
            return
        if lr is None or not lr > 0 or not any(self._moving.values()):
            return  # nothing was expected to move yet
        self.suspect = True
        self._unchanged_steps += 1
        if self._unchanged_steps >= PROBE_STEPS:
            self._first = None
            self._mark_stale(step)

    def observe_ratios(
        self, step: int, ratios: dict[str, float], grad_norms: dict[str, float], lr: float | None
    ) -> None:
        """Later steps: the update ratios of a statistics step tell whether anything moved."""
        if self.probing or not ratios:
            return
        if any(r != 0.0 for r in ratios.values()):
            self.stale = self.suspect = False
        elif lr is not None and lr > 0 and any(grad_norms.get(n, 0.0) > 0 for n in ratios):
            self._mark_stale(step)

    def _mark_stale(self, step: int) -> None:
        self.stale = self.suspect = True
        if self.warned:
            return
        self.warned = True
        logger.warning(
            "gradwatch: at step %d no parameter array has changed since the first steps, although "
            "the gradients are non-zero and lr > 0. Your loop replaces its arrays (e.g. "
            "`self.weights = [w - lr * dw ...]`) instead of updating them in place, so the arrays "
            "GradWatch was given are stale. Pass the arrays the model holds now at every step "
            "(e.g. `watch.step(net.weights, nabla_w, ...)`, not a dict built once before the "
            "loop), or update in place (`w -= lr * dw`). Checks do not run on stale parameters.",
            step,
        )
