"""The run report's first section: the training problems the alerts diagnosed, with the steps
and a picture of the evidence (each tensor's gradient norm and zero-gradient fraction).

    problems = diagnosed(data.alerts)       # [Problem("dead units", first_step=245, ...)]
    html = problems_section(data)           # "<h2>Diagnosed problems (1)</h2>..."

The problems are those of :data:`gradwatch.schema.PROBLEMS`, read from the alerts' own words
(``details["problem"]``, else the message's first words), so the report says what the alerts
said and judges nothing again.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from gradwatch.schema import GRAD_NORM, GRAD_ZERO_FRAC, PROBLEMS, alert_problem

if TYPE_CHECKING:
    from gradwatch.report.data import RunData

__all__ = ["Problem", "diagnosed", "problems_png", "problems_section"]

logger = logging.getLogger("gradwatch")

#: Tensors drawn in the picture (the ones the alerts named first, then the others).
MAX_CURVES = 10


class Problem(NamedTuple):
    """One diagnosed problem: its words, when its alerts came, and the first alert's text."""

    problem: str  # "vanishing gradients", ...
    first_step: int
    alerts: int
    message: str  # the first alert's message: the evidence (figures) and the usual fix
    tensors: tuple[str, ...]  # tensors the alerts named


def _problem_of(alert: Mapping[str, Any]) -> str | None:
    details = alert.get("details")
    named = details.get("problem") if isinstance(details, Mapping) else None
    if named in PROBLEMS.values():
        return named
    message = alert.get("message")
    return alert_problem(message) if isinstance(message, str) else None


def _tensors(details: Any) -> list[str]:
    if not isinstance(details, Mapping):
        return []
    names = [details["tensor"]] if isinstance(details.get("tensor"), str) else []
    listed = details.get("tensors")
    if isinstance(listed, Mapping):
        names += [n for n in listed if isinstance(n, str)]
    elif isinstance(listed, list):
        names += [n for n in listed if isinstance(n, str)]
    return names


def diagnosed(alerts: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """The problems named by ``alerts`` (lines of ``gradwatch/alerts.jsonl``), in the order
    they first appeared.

        diagnosed([{"step": 45, "message": "dead units in W1: ...", "details": {...}}])
    """
    found: dict[str, dict[str, Any]] = {}
    for alert in alerts:
        if not isinstance(alert, Mapping) or not isinstance(alert.get("step"), int):
            continue
        problem = _problem_of(alert)
        if problem is None:
            continue
        entry = found.setdefault(
            problem,
            {
                "step": alert["step"],
                "alerts": 0,
                "message": str(alert.get("message", "")),
                "tensors": [],
            },
        )
        if alert["step"] < entry["step"]:
            entry.update(step=alert["step"], message=str(alert.get("message", "")))
        entry["alerts"] += 1
        entry["tensors"] += [t for t in _tensors(alert.get("details")) if t not in entry["tensors"]]
    problems = [
        Problem(p, e["step"], e["alerts"], e["message"], tuple(e["tensors"]))
        for p, e in found.items()
    ]
    return sorted(problems, key=lambda p: p.first_step)


def _per_tensor(data: RunData, prefix: str) -> dict[str, list[tuple[int, float]]]:
    return {k[len(prefix) :]: v for k, v in data.metrics.items() if k.startswith(prefix) and v}


def problems_png(data: RunData, problems: Sequence[Problem]) -> bytes | None:
    """Each tensor's gradient norm (log scale, top) and zero-gradient fraction (bottom) over
    the steps, a vertical line where each problem was first named. None without statistics.

        png = problems_png(data, diagnosed(data.alerts))
    """
    from gradwatch.report.charts import DPI, _decade_ticks, _label, _png

    norms = _per_tensor(data, GRAD_NORM)
    zeros = _per_tensor(data, GRAD_ZERO_FRAC)
    if not norms:
        return None
    from gradwatch.runs.plot import agg_figure

    named = [t for p in problems for t in p.tensors]
    order = sorted(norms, key=lambda t: (t not in named, list(norms).index(t)))[:MAX_CURVES]
    fig = agg_figure(10, 5.6, DPI)
    ax_norm, ax_zero = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.08, right=0.8, top=0.92, bottom=0.1, hspace=0.12)
    lows, highs = [], []
    for name in order:
        points = [(s, math.log10(v)) for s, v in norms[name] if math.isfinite(v) and v > 0]
        if points:
            ax_norm.plot(*zip(*points, strict=True), linewidth=1.0, label=_label(name))
            lows.append(min(v for _, v in points))
            highs.append(max(v for _, v in points))
        if name in zeros:
            finite = [(s, v) for s, v in zeros[name] if math.isfinite(v)]
            if finite:
                ax_zero.plot(*zip(*finite, strict=True), linewidth=1.0)
    if lows:
        _decade_ticks(ax_norm.yaxis, min(lows), max(highs))
    ax_norm.set_ylabel("gradient norm")
    ax_zero.set_ylabel("zero fraction")
    ax_zero.set_ylim(-0.02, 1.02)
    ax_zero.set_xlabel("step")
    for problem in problems:
        for ax in (ax_norm, ax_zero):
            ax.axvline(problem.first_step, color="darkorange", linestyle=":", linewidth=1.2)
        ax_norm.annotate(
            problem.problem,
            (problem.first_step, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            color="darkorange",
            rotation=90,
            va="top",
            ha="right",
        )
    for ax in (ax_norm, ax_zero):
        ax.grid(True, alpha=0.3)
    ax_norm.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(
        "per-tensor gradient norm and zero fraction (orange: problem first named)", fontsize=11
    )
    return _png(fig)


def problems_section(data: RunData) -> str:
    """The report's "Diagnosed problems" section (HTML), with its picture when matplotlib is
    there; a one-line all-clear when no alert named a problem."""
    problems = diagnosed(data.alerts)
    if not problems:
        known = ", ".join(PROBLEMS.values())
        return (
            "<h2>Diagnosed problems</h2><p>None of the known training problems was "
            f"diagnosed ({html.escape(known)}).</p>"
        )
    items = "".join(
        f"<li><b>{html.escape(p.problem)}</b> from step {p.first_step}"
        f"{f' ({p.alerts} alerts)' if p.alerts > 1 else ''}"
        f"{': ' + html.escape(', '.join(p.tensors[:6])) if p.tensors else ''}"
        f'<br><span class="note">{html.escape(p.message)}</span></li>'
        for p in problems
    )
    picture = ""
    try:
        png = problems_png(data, problems)
    except Exception as err:  # noqa: BLE001 - a picture (or matplotlib missing) never costs the report
        logger.info(
            "gradwatch: report: no picture of the problems (%s: %s)", type(err).__name__, err
        )
        png = None
    if png:
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        picture = f'<img src="{src}" alt="gradient norms and zero fractions per tensor">'
    return f'<h2 id="problems">Diagnosed problems ({len(problems)})</h2><ul>{items}</ul>{picture}'
