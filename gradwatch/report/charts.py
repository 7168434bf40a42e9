"""The report's pictures, PNG bytes drawn with matplotlib on its own Agg canvas.

    png = histograms_png(data.histograms)     # gradwatch/histograms.png
    png = curves_png(data)                    # loss, lr and check errors over the steps

matplotlib is imported inside the drawing functions only (the ``plot`` extra): importing
this module costs nothing, and the process's pyplot backend and state are left alone.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gradwatch.errors import InputError
from gradwatch.runs.plot import agg_figure, require_matplotlib
from gradwatch.schema import CHECK_MAX_REL_ERROR, CHECK_PASSED, CHECK_REL_ERROR, LOSS, LR

if TYPE_CHECKING:
    from gradwatch.report.data import RunData

__all__ = [
    "BAD_REL_ERROR",
    "GOOD_REL_ERROR",
    "MAX_TENSORS",
    "SUSPICIOUS_REL_ERROR",
    "curves_png",
    "histograms_png",
]

logger = logging.getLogger("gradwatch")

#: The relative-error bands of gradwatch.check.CheckReport: below 1e-7 good (float64),
#: 1e-4 to 1e-2 suspicious, above 1e-2 almost surely a bug.
GOOD_REL_ERROR = 1e-7
SUSPICIOUS_REL_ERROR = 1e-4
BAD_REL_ERROR = 1e-2
#: Tensors drawn in histograms.png; more would make panels too small to read.
MAX_TENSORS = 12
#: The lowest share the histogram colour scale shows (one entry in 10,000).
MIN_FRACTION = 1e-4
DPI = 80
KINDS = (("grad", "|gradient|"), ("param", "|parameter|"))


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    # No "Software" entry: the file names no program version or web address.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _label(name: str, most: int = 40) -> str:
    """A user's name as literal text: "$" would start mathtext (and a bad formula raises),
    and a legend leaves out labels that start with "_" (a zero-width space keeps them)."""
    name = name if len(name) <= most else name[: most - 1] + "…"
    name = name.replace("$", r"\$")
    return "\u200b" + name if name.startswith("_") else name


# ---------------------------------------------------------------------------- curves
#
# Cheap by design: the shipper draws these when a run ends. Log scales are drawn as log10 of
# the values on linear axes with a few fixed ticks labelled "1e-3": matplotlib's log axes
# build dozens of minor ticks and typeset every label with mathtext, which cost more than
# everything else in the report together.


def _finite(points: Sequence[tuple[int, float]], positive: bool = False) -> list[tuple[int, float]]:
    return [(s, v) for s, v in points if math.isfinite(v) and (v > 0 or not positive)]


def _decade_ticks(axis: Any, lo: float, hi: float, most: int = 6) -> None:
    """Ticks at whole decades between log10 values ``lo`` and ``hi``, labelled ``1e-3``."""
    first, last = math.floor(lo), math.ceil(hi)
    stride = max(1, math.ceil((last - first + 1) / most))
    ticks = list(range(first, last + 1, stride))
    axis.set_ticks(ticks, [f"1e{k}" if k else "1" for k in ticks])


def _log10(values: Sequence[float]) -> list[float]:
    return [math.log10(v) for v in values]


def curves_png(data: RunData) -> bytes | None:
    """Loss (and a changing lr, dashed on the right axis) over the steps above the gradient checks' relative errors,
    one line per tensor, on log scales with the good/suspicious/bug bands. Failed checks are
    red vertical lines in both panels, alerts orange dotted ones. None if there is nothing
    to draw (no loss, no checks).

        png = curves_png(from_journal(path))
    """
    loss = _finite(data.series(LOSS))
    per_tensor = {
        k[len(CHECK_REL_ERROR) :]: v
        for k, v in data.metrics.items()
        if k.startswith(CHECK_REL_ERROR)
    }
    if not per_tensor and data.series(CHECK_MAX_REL_ERROR):
        per_tensor = {"worst tensor": data.series(CHECK_MAX_REL_ERROR)}
    if not loss and not per_tensor:
        return None
    require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    fig = agg_figure(10, 6.4, DPI)
    ax_loss, ax_err = fig.subplots(2, 1, sharex=True)
    fig.subplots_adjust(left=0.08, right=0.8, top=0.93, bottom=0.09, hspace=0.12)
    failed = [s for s, v in data.series(CHECK_PASSED) if not v >= 0.5]
    alerts = sorted({int(a["step"]) for a in data.alerts if isinstance(a.get("step"), int)})
    _draw_loss(ax_loss, loss, _finite(data.series(LR), positive=True))
    _draw_errors(ax_err, per_tensor)
    for ax in (ax_loss, ax_err):
        # One collection each (an axvline per check is an artist per check: slow to draw).
        if failed:
            ax.vlines(
                failed,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                color="red",
                linewidth=1.0,
                alpha=0.6,
            )
        if alerts:
            ax.vlines(
                alerts,
                0,
                1,
                transform=ax.get_xaxis_transform(),
                color="darkorange",
                linewidth=1.0,
                linestyle=":",
            )
        ax.grid(True, alpha=0.3)
    ax_err.xaxis.set_major_locator(MaxNLocator(8, integer=True))
    ax_err.set_xlabel("step")
    fig.suptitle("loss and gradient checks  (red: failed check, orange dotted: alert)", fontsize=11)
    return _png(fig)


def _draw_loss(ax: Any, loss: list[tuple[int, float]], lr: list[tuple[int, float]]) -> None:
    if not loss:
        ax.set_ylabel("loss")
        ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    else:
        xs, ys = zip(*loss)
        if min(ys) > 0 and max(ys) / min(ys) > 10:  # spans decades: log scale
            ys = _log10(ys)
            _decade_ticks(ax.yaxis, min(ys), max(ys))
            ax.set_ylabel("loss (log scale)")
        else:
            ax.set_ylabel("loss")
        ax.plot(xs, ys, color="tab:blue", linewidth=1.2)
    if lr and len({v for _, v in lr}) == 1:  # a constant lr needs no axis of its own
        ax.set_title(f"lr {lr[0][1]:g} throughout", fontsize=9, loc="right")
    elif lr:
        twin = ax.twinx()
        xs, ys = zip(*lr)
        if max(ys) / min(ys) > 100:
            ys = _log10(ys)
            _decade_ticks(twin.yaxis, min(ys), max(ys), most=4)
        else:
            twin.yaxis.set_major_locator(_max_n(4))
        twin.plot(xs, ys, color="tab:gray", linewidth=1.0, linestyle="--")
        twin.set_ylabel("lr (dashed)", color="tab:gray")


def _max_n(n: int) -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(n)


#: The errors panel spans 1e-16 to 1 (relative errors above 1 are drawn at 1).
ERR_LOG10_LO, ERR_LOG10_HI = -16.0, 0.3


def _draw_errors(ax: Any, per_tensor: Mapping[str, Sequence[tuple[int, float]]]) -> None:
    ax.set_ylabel("check: max relative error")
    drawn = False
    for name, points in sorted(per_tensor.items()):
        # NaN says nothing drawable; inf and anything above 1 sit at the top (bounded by 2).
        pts = [(s, math.log10(min(max(v, 1e-16), 1.0))) for s, v in points if v == v]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.0, label=_label(name))
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no gradient checks", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_ylim(ERR_LOG10_LO, ERR_LOG10_HI)
    _decade_ticks(ax.yaxis, ERR_LOG10_LO, 0)
    bad, warn, good = (math.log10(x) for x in (BAD_REL_ERROR, SUSPICIOUS_REL_ERROR, GOOD_REL_ERROR))
    ax.axhspan(bad, ERR_LOG10_HI, color="red", alpha=0.08)
    ax.axhspan(warn, bad, color="orange", alpha=0.08)
    ax.axhline(good, color="green", linewidth=0.8, linestyle=":")
    where = ax.get_yaxis_transform()
    ax.text(1.01, bad, "> 1e-2 bug", color="red", fontsize=8, transform=where, va="bottom")
    ax.text(
        1.01, warn, "1e-4 suspicious", color="darkorange", fontsize=8, transform=where, va="bottom"
    )
    ax.text(1.01, good, "< 1e-7 good", color="green", fontsize=8, transform=where, va="top")
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.0, 0.45),
        fontsize=8,
        frameon=False,
        title="tensor",
        title_fontsize=8,
    )


# ------------------------------------------------------------------------ histograms


def _valid(record: Any) -> bool:
    try:
        int(record["step"])
        bins = record["bins"]
        n = (int(bins["log10_hi"]) - int(bins["log10_lo"])) * int(bins["per_decade"])
        return (
            n > 0
            and isinstance(record["tensors"], dict)
            and all(len(h["counts"]) == n for t in record["tensors"].values() for h in t.values())
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def _usable(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Well-formed records on the first record's bins, in step order (one per step)."""
    good = [r for r in records if _valid(r)]
    if len(good) < len(records):
        logger.warning(
            "gradwatch: report: %d malformed histogram record(s) skipped", len(records) - len(good)
        )
    if not good:
        return []
    bins = good[0]["bins"]
    by_step = {int(r["step"]): r for r in good if r["bins"] == bins}
    return [by_step[s] for s in sorted(by_step)]


def histograms_png(records: Sequence[Mapping[str, Any]]) -> bytes:
    """How each tensor's |gradient| and |parameter| distributions moved over the steps.

        png = histograms_png(data.histograms)   # lines of gradwatch/histograms.jsonl

    One row per tensor (at most :data:`MAX_TENSORS`), gradients left and parameters right:
    a heat map with the step across, the log-spaced bins of |x| up, and the colour the
    share of the tensor's entries in the bin (log scale). Two thin rows under each map show
    the share of exactly-zero and of NaN/Inf entries per step, on the same colours. Raises
    InputError when no record is usable.
    """
    usable = _usable(records)
    if not usable:
        raise InputError("no usable histogram records (lines of gradwatch/histograms.jsonl)")
    require_matplotlib()
    import numpy as np
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import MaxNLocator

    from gradwatch.stats import hist_edges

    names = list(usable[0]["tensors"])
    shown = names[:MAX_TENSORS]
    steps = np.array([int(r["step"]) for r in usable], dtype=float)
    x_edges = _step_edges(steps)
    y_edges = np.log10(hist_edges(usable[0]["bins"]))
    norm = LogNorm(vmin=MIN_FRACTION, vmax=1.0)
    height = 1.3 + 2.0 * len(shown)
    fig = agg_figure(11, height, DPI)
    axes = fig.subplots(len(shown), 2, squeeze=False)
    fig.subplots_adjust(
        left=0.08, right=0.86, top=1 - 0.55 / height, bottom=0.45 / height, hspace=0.32, wspace=0.16
    )
    mesh = None
    for row, name in enumerate(shown):
        for col, (kind, label) in enumerate(KINDS):
            ax = axes[row][col]
            shares = _shares(usable, name, kind, len(y_edges) - 1)
            mesh = _draw_panel(ax, x_edges, y_edges, shares, norm)
            ax.set_title(_panel_title(name, label, shares), fontsize=9)
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.set_ylabel("log-spaced bins of |x|", fontsize=8)
    for row in axes:
        for ax in row:
            ax.set_xlim(x_edges[0], x_edges[-1])
            # Every panel spans the same steps: only the bottom row gets step ticks (a tick
            # is several artists, and they are most of the drawing time).
            ax.set_xticks([])
    for ax in axes[-1]:
        ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        ax.set_xlabel("step", fontsize=8)
    cax = fig.add_axes((0.88, 0.45 / height + 0.05, 0.015, min(0.4, 2.5 / height)))
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_ticks([1e-4, 1e-3, 1e-2, 1e-1, 1], labels=["0.01%", "0.1%", "1%", "10%", "100%"])
    bar.ax.minorticks_off()
    bar.set_label("share of the tensor's entries", fontsize=8)
    title = f"|gradient| (left) and |parameter| (right) over {len(usable)} histogram step(s)"
    if len(names) > len(shown):
        title += f"; {len(names) - len(shown)} more tensor(s) not drawn"
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def _draw_panel(ax: Any, x_edges: Any, y_edges: Any, shares: Mapping[str, Any], norm: Any) -> Any:
    """The heat map over the decades the tensor occupies, and the zero / NaN-Inf rows below."""
    import numpy as np

    bins = shares["bins"]
    used = np.flatnonzero(bins.sum(axis=0) > 0)
    if used.size:  # zoom to the decades the tensor occupies (at least two)
        lo, hi = y_edges[max(used[0] - 1, 0)], y_edges[min(used[-1] + 2, len(y_edges) - 1)]
    else:
        lo, hi = -1.0, 1.0
    if hi - lo < 2:
        lo, hi = (hi + lo) / 2 - 1, (hi + lo) / 2 + 1
    row = (hi - lo) * 0.09  # height of each of the two extra rows
    mesh = ax.pcolormesh(
        x_edges,
        y_edges,
        np.ma.masked_less_equal(bins.T, 0.0),
        norm=norm,
        cmap="viridis",
        shading="flat",
    )
    extra = np.ma.masked_less_equal(np.vstack([shares["nonfinite"], shares["zero"]]), 0.0)
    ax.pcolormesh(
        x_edges, [lo - 2 * row, lo - row, lo], extra, norm=norm, cmap="viridis", shading="flat"
    )
    ax.axhline(lo, color="black", linewidth=0.6)
    ax.set_ylim(lo - 2 * row, hi)
    ax.set_facecolor("#f4f4f4")
    first, last = math.ceil(lo), math.floor(hi)
    stride = max(1, math.ceil((last - first + 1) / 3))
    decades = [k for k in range(first, last + 1, stride) if k - lo > row]  # clear of "zero"
    ax.set_yticks(
        [lo - 1.5 * row, lo - 0.5 * row, *decades],
        ["NaN/Inf", "zero", *(f"1e{k}" if k else "1" for k in decades)],
    )
    return mesh


def _step_edges(steps: Any) -> Any:
    import numpy as np

    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    mids = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[2 * steps[0] - mids[0]], mids, [2 * steps[-1] - mids[-1]]])


def _shares(
    records: Sequence[Mapping[str, Any]], name: str, kind: str, bins: int
) -> dict[str, Any]:
    """Per step: shares of the entries in each bin, exactly zero, NaN/Inf, outside the bins."""
    import numpy as np

    rows, zero, nonfinite, outside = [], [], [], []
    for r in records:
        h = (r["tensors"].get(name) or {}).get(kind) or {}
        counts = np.asarray(h.get("counts") or np.zeros(bins), dtype=float)
        extra = [float(h.get(k, 0) or 0) for k in ("zero", "nonfinite", "under", "over")]
        total = counts.sum() + sum(extra) or 1.0
        rows.append(counts / total)
        zero.append(extra[0] / total)
        nonfinite.append(extra[1] / total)
        outside.append((extra[2] + extra[3]) / total)
    return {
        "bins": np.array(rows),
        "zero": np.array(zero),
        "nonfinite": np.array(nonfinite),
        "outside": np.array(outside),
    }


def _panel_title(name: str, label: str, shares: Mapping[str, Any]) -> str:
    zero, bad, out = shares["zero"][-1], shares["nonfinite"].max(), shares["outside"][-1]
    text = f"{_label(name)}  {label}   last step: zero {zero:.1%}"
    if bad > 0:
        text += f", NaN/Inf up to {bad:.1%}"
    if out > 0:
        text += f", outside 1e-10..1e4 {out:.1%}"
    return text
