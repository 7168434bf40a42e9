"""``gradwatch compare --plot``: loss and gradient-check error curves of several runs in one image.

    plot_runs([curves for _, curves in summarize_runs(client, runs)], "runs.png")

matplotlib is an optional extra (``pip install gradwatch[plot]``), imported only here and
only when a plot is drawn. The figure is drawn on its own Agg canvas: the process's pyplot
backend and state are left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from gradwatch.errors import InputError
from gradwatch.runs.compare import RunCurves
from gradwatch.runs.verdicts import is_finite

__all__ = ["LOSS_CLIP_DECADES", "PLOT_SUFFIXES", "agg_figure", "plot_runs", "require_matplotlib"]

#: The plot's loss axis ends this factor above the highest first loss (diverging runs clip).
LOSS_CLIP_DECADES = 1e4
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_FLOAT_MAX = sys.float_info.max


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or InputError naming the extra that installs it."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(
            "plotting needs matplotlib, an optional extra: pip install gradwatch[plot]"
        ) from None
    return matplotlib


def agg_figure(width: float, height: float, dpi: float | None = None) -> Any:
    """A matplotlib Figure on its own Agg canvas: savefig renders with Agg, whatever pyplot
    uses, and the process's pyplot state is left alone. InputError without matplotlib.

        fig = agg_figure(10, 8); ax = fig.subplots(); ...; fig.savefig("out.png")
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    return fig


def _figure(curves_count: int) -> tuple[Any, Any, Any, Any]:
    from matplotlib import colormaps

    fig = agg_figure(10, 8)
    ax_loss, ax_err = fig.subplots(2, 1, sharex=True)
    cmap = colormaps["tab20" if curves_count > 10 else "tab10"]
    return fig, ax_loss, ax_err, cmap


def plot_runs(curves: Sequence[RunCurves], path: str, title: str | None = None) -> str:
    """Write one image: loss (top) and worst gradient-check relative error (bottom) vs step.

        plot_runs(curves, "runs.png")

    Both panels share the step axis and use a log y-scale (losses and relative errors span
    decades). Losses are clipped :data:`LOSS_CLIP_DECADES` above the highest first loss, so a
    run diverging to 1e170 does not flatten the others; non-finite points are dropped and a
    diverged run's last point is marked with an ``x``; runs with failed checks are dashed.
    The bottom panel shades the bands: < 1e-7 good, > 1e-2 a bug.
    """
    if not curves:
        raise InputError("nothing to plot: no runs selected")
    if not path.lower().endswith(PLOT_SUFFIXES):
        raise InputError(f"plot file {path!r} must end in {', '.join(PLOT_SUFFIXES)}")
    fig, ax_loss, ax_err, cmap = _figure(len(curves))
    # A diverging run reaches 1e170: clip the loss axis a few decades above where the runs
    # started, so the ones that learn stay readable; clipped runs run into the top edge.
    firsts = [v for c in curves for _, v in c.loss[:1] if is_finite(v) and v > 0]
    top = max(firsts) * LOSS_CLIP_DECADES if firsts else None
    any_loss = any_err = False
    for i, c in enumerate(curves):
        color = cmap(i % cmap.N)
        style = "--" if c.checks_failed else "-"
        loss = [(s, v) for s, v in c.loss if is_finite(v) and v > 0]
        if top is not None:
            loss = [(s, min(v, top)) for s, v in loss]
        if loss:
            any_loss = True
            xs, ys = zip(*loss, strict=True)
            ax_loss.plot(xs, ys, style, color=color, label=c.run_name, linewidth=1.4)
            if c.diverged:
                ax_loss.plot(xs[-1], ys[-1], "x", color=color, markersize=10, mew=2)
        err = [(s, v if is_finite(v) else _FLOAT_MAX) for s, v in c.rel_error if v == v and v > 0]
        err = [(s, min(v, 1.0)) for s, v in err]  # rel error is bounded by 1 (2 for opposite signs)
        if err:
            any_err = True
            xs, ys = zip(*err, strict=True)
            ax_err.plot(xs, ys, style, marker="o", markersize=3, color=color, label=c.run_name)
    _decorate(fig, ax_loss, ax_err, any_loss, any_err, top)
    fig.suptitle(title or f"gradwatch: {len(curves)} run(s)  (dashed: failed checks, x: diverged)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise InputError(f"cannot write plot {path}: {err.strerror or err}") from None
    return path


def _decorate(
    fig: Any, ax_loss: Any, ax_err: Any, any_loss: bool, any_err: bool, top: float | None
) -> None:
    ax_loss.set_ylabel("loss")
    ax_err.set_ylabel("gradient check: max relative error")
    ax_err.set_xlabel("step")
    if any_loss:
        ax_loss.set_yscale("log")
        if top is not None:
            ax_loss.set_ylim(top=top * 2)
            ax_loss.axhline(top, color="grey", linewidth=0.6, linestyle=":")
    if any_err:
        ax_err.set_yscale("log")
        ax_err.axhspan(1e-2, 1.5, color="red", alpha=0.08, label="> 1e-2: bug")
        ax_err.axhspan(1e-4, 1e-2, color="orange", alpha=0.08)
        ax_err.axhline(1e-7, color="green", linewidth=0.8, linestyle=":", label="1e-7: good")
    for ax in (ax_loss, ax_err):
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
