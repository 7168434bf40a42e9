"""Compare gradwatch runs in MLflow: one summary per run, as a table, JSON, CSV or a plot.

    client = mlflow.MlflowClient("http://127.0.0.1:5000")
    runs = select_runs(client, experiment="mlp")
    summaries = [summarize(run, fetch_histories(client, run)) for run in runs]
    print(format_table(summaries))
    plot_runs([fetch_curves(client, run) for run in runs], "runs.png")

Everything but ``select_runs``/``fetch_*`` is a pure function of MLflow entities, so the
verdicts can be tested (and reused by ``monitor``) without a server.

Verdicts
--------
``diverged``
    The run's loss (or a tensor, per the hook's ``nonfinite/<t>`` counts) went non-finite at
    any step; or, after reaching its best, the loss blew up to more than
    :data:`DIVERGENCE_FACTOR` times that best (the ``loss_divergence`` alert's default factor)
    *and* the run ended above its first loss. The second clause keeps a run that reached 1e-4
    and wobbles back to 1e-3 from counting as diverged, and catches the run that exploded
    and then collapsed to a dead network (ReLUs that never fire again) with a finite loss.
``stalled``
    Not diverged, and the best loss improved on the first by less than
    :data:`STALL_TOLERANCE` (relative): the learning rate is too small to learn.
``checks_failed``
    Gradient checks whose ``gradcheck/passed`` metric is 0: a backprop bug, almost surely when
    ``max_rel_error`` is above 1e-2.

MLflow stores ``inf`` as +-1.797e308 (the largest double); such values count as non-finite.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from gradwatch.errors import InputError, TrackingError
from gradwatch.params import TAG_SWEEP_ID

__all__ = [
    "DIVERGENCE_FACTOR",
    "STALL_TOLERANCE",
    "RunCurves",
    "RunSummary",
    "fetch_curves",
    "fetch_histories",
    "format_csv",
    "format_json",
    "format_table",
    "get_client",
    "is_finite",
    "one_line",
    "plot_runs",
    "quick_http",
    "resolve_tracking_uri",
    "select_runs",
    "render",
    "summarize",
    "summarize_runs",
]

#: Final loss above this multiple of the best (and above the first) counts as diverged.
DIVERGENCE_FACTOR = 10.0
#: Relative improvement of the best loss over the first below which a run is "stalled".
STALL_TOLERANCE = 0.01
#: Metric keys :func:`summarize` needs; histories of other keys are not fetched.
SUMMARY_KEYS = ("loss", "gradcheck/passed", "gradcheck/max_rel_error", "alerts/count")
#: Prefix of the hook's per-tensor non-finite counts.
NONFINITE_PREFIX = "nonfinite/"
#: Tags that mark an alert: the hook's ``mlflow`` action and the monitor's memory.
ALERT_TAG_PREFIXES = ("gradwatch.alert.", "gradwatch.monitor.alerted.")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
OUTPUTS = ("table", "json", "csv")
#: The plot's loss axis ends this factor above the highest first loss (diverging runs clip).
LOSS_CLIP_DECADES = 1e4

# MLflow clamps +-inf to the largest double on the way in.
_FLOAT_MAX = sys.float_info.max


def is_finite(value: float | None) -> bool:
    """True for a real, finite number that is not MLflow's stand-in for infinity."""
    return value is not None and math.isfinite(value) and abs(value) < _FLOAT_MAX


# ---------------------------------------------------------------------------------- I/O


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the embedded ``sqlite:///mlflow.db``."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def quick_http(max_retries: int = 1, timeout: int = 10):
    """Make MLflow's REST client fail fast for the duration of the block.

    MLflow retries a failing request 7 times with exponential backoff (~4 minutes) by
    default; a CLI command, or a monitor that polls again in 10 s anyway, should report
    the outage instead. MLflow reads these variables per request, so scoping them works.
    """
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries),
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout),
    }
    saved = {key: os.environ.get(key) for key in wanted}
    # A user who set them explicitly knows better than this default.
    for key, value in wanted.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def get_client(tracking_uri: str | None, must_exist: bool = True):
    """An ``MlflowClient`` on the resolved URI.

    With ``must_exist``, a ``sqlite:///`` store that is not there raises InputError instead of
    silently creating an empty database (which is what MLflow would do).
    """
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    if must_exist and uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if not os.path.exists(path):
            raise InputError(
                f"no MLflow store at {os.path.abspath(path)} (tracking URI {uri}); "
                "run `gradwatch demo` or pass --tracking-uri / set MLFLOW_TRACKING_URI"
            )
    return MlflowClient(uri)


def _experiment_ids(client, names: Sequence[str]) -> list[str]:
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = sorted(e.name for e in client.search_experiments(max_results=50))
            raise InputError(
                f"no experiment named {name!r} at {client.tracking_uri}; "
                f"known: {', '.join(known) or '(none)'}"
            )
        ids.append(exp.experiment_id)
    return ids


def select_runs(
    client,
    experiment: str | Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
    sweep_id: str | None = None,
    statuses: Sequence[str] | None = None,
    max_results: int = 1000,
) -> list:
    """Runs to compare, oldest first: the given ids, or those of an experiment (and sweep).

    runs = select_runs(client, experiment="mlp", sweep_id="20250101-120000-ab12")
    """
    from mlflow.exceptions import MlflowException

    try:
        if run_ids:
            runs = []
            for run_id in run_ids:
                try:
                    runs.append(client.get_run(run_id))
                except MlflowException as err:
                    if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
                        raise InputError(
                            f"no run {run_id!r} at {client.tracking_uri}; "
                            "`gradwatch compare --experiment NAME` lists the runs"
                        ) from None
                    raise
            return runs
        if experiment is None:
            raise InputError("give an experiment name or run ids to compare")
        names = [experiment] if isinstance(experiment, str) else list(experiment)
        filters = []
        if sweep_id:
            filters.append(f"tags.`{TAG_SWEEP_ID}` = '{_quote(sweep_id)}'")
        runs = client.search_runs(
            _experiment_ids(client, names),
            filter_string=" and ".join(filters),
            max_results=max_results,
            order_by=["attributes.start_time ASC"],
        )
        if statuses:
            # MLflow's filter language has no OR for status: filter here.
            runs = [r for r in runs if r.info.status in statuses]
        return list(runs)
    except MlflowException as err:
        raise TrackingError(f"MLflow at {client.tracking_uri}: {one_line(err)}") from None


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


_UNREACHABLE = re.compile(r"Connection refused|Failed to establish|Max retries exceeded|timed out")


def one_line(err: BaseException) -> str:
    """A short, one-line account of an error (MLflow's carry urllib3's whole retry story)."""
    text = str(getattr(err, "message", None) or err).strip()
    found = _UNREACHABLE.search(text)
    if found:
        reason = "connection refused" if "refused" in text else found.group(0).lower()
        return f"server unreachable ({reason}); is it running, and is the URI right?"
    lines = text.splitlines()
    return lines[0][:300] if lines else type(err).__name__


def fetch_histories(client, run, keys: Iterable[str] | None = None) -> dict[str, list]:
    """Metric histories of ``run`` (``{key: [Metric, ...]}`` sorted by step).

    Only keys the run has are fetched: ``keys`` (default :data:`SUMMARY_KEYS`) and the
    hook's ``nonfinite/*`` counts.
    """
    present = set(run.data.metrics)
    wanted = set(SUMMARY_KEYS if keys is None else keys)
    wanted |= {k for k in present if k.startswith(NONFINITE_PREFIX)}
    out = {}
    for key in sorted(wanted & present):
        history = client.get_metric_history(run.info.run_id, key)
        out[key] = sorted(history, key=lambda m: (m.step, m.timestamp))
    return out


# ------------------------------------------------------------------------ summaries


@dataclass(frozen=True)
class RunSummary:
    """What ``gradwatch compare`` says about one run. ``to_record()`` is JSON-safe."""

    run_id: str
    run_name: str
    status: str
    params: dict[str, str]
    steps: int | None
    first_loss: float | None
    final_loss: float | None
    best_loss: float | None
    diverged: bool
    stalled: bool
    checks: int
    checks_failed: int
    max_rel_error: float | None
    alerts: int
    alert_rules: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """One word for the table: the worst thing about the run."""
        parts = []
        if self.checks_failed:
            parts.append("BACKPROP BUG")
        if self.diverged:
            parts.append("DIVERGED")
        elif self.stalled:
            parts.append("stalled")
        if self.final_loss is None and not self.diverged:
            parts.append("no loss")
        return " + ".join(parts) or "ok"

    def to_record(self) -> dict[str, Any]:
        """One JSON-serializable dict; non-finite numbers become ``None`` (JSON has no NaN)."""
        return {
            "run_id": self.run_id,
            "run_name": self.run_name,
            "status": self.status,
            "params": dict(self.params),
            "last_step": self.steps,
            "first_loss": _json_float(self.first_loss),
            "final_loss": _json_float(self.final_loss),
            "best_loss": _json_float(self.best_loss),
            "diverged": self.diverged,
            "stalled": self.stalled,
            "checks": self.checks,
            "checks_failed": self.checks_failed,
            "max_rel_error": _json_float(self.max_rel_error),
            "alerts": self.alerts,
            "alert_rules": list(self.alert_rules),
            "verdict": self.verdict,
        }


def _json_float(value: float | None) -> float | None:
    return value if is_finite(value) else None


def loss_verdict(losses: Sequence[float]) -> tuple[float | None, float | None, float | None, bool]:
    """``(first, final, best, diverged)`` of a loss curve (see the module docstring).

    loss_verdict([1.0, 0.5, 80.0]) == (1.0, 80.0, 0.5, True)
    """
    if not losses:
        return None, None, None, False
    finite = [v for v in losses if is_finite(v)]
    first, final = losses[0], losses[-1]
    best = min(finite) if finite else None
    if len(finite) < len(losses):
        return first, final, best, True
    assert best is not None
    peak_after_best = max(losses[losses.index(best) :])
    diverged = final > first and peak_after_best > DIVERGENCE_FACTOR * best
    return first, final, best, diverged


def is_stalled(first: float | None, best: float | None, diverged: bool) -> bool:
    """True when the best loss is within :data:`STALL_TOLERANCE` of the first one."""
    if diverged or not is_finite(first) or not is_finite(best):
        return False
    return (first - best) <= STALL_TOLERANCE * abs(first)


def user_params(params: Mapping[str, str]) -> dict[str, str]:
    """The run's own params: the hook's ``gradwatch.*`` settings left out."""
    return {k: v for k, v in params.items() if not k.startswith("gradwatch.")}


def summarize(run, histories: Mapping[str, Sequence]) -> RunSummary:
    """The :class:`RunSummary` of ``run`` from its metric histories (``fetch_histories``)."""
    losses = [m.value for m in histories.get("loss", ())]
    first, final, best, diverged = loss_verdict(losses)
    for key, history in histories.items():
        if key.startswith(NONFINITE_PREFIX) and any(m.value > 0 for m in history):
            diverged = True
    passed = [m.value for m in histories.get("gradcheck/passed", ())]
    rel = [m.value for m in histories.get("gradcheck/max_rel_error", ())]
    max_rel = None
    if rel:
        # A check whose error is NaN is as bad as it gets; rank it above every number.
        max_rel = max((v if is_finite(v) else math.inf) for v in rel)
    tags = run.data.tags
    rules = sorted(
        {k[len(p) :] for k in tags for p in ALERT_TAG_PREFIXES if k.startswith(p) and k[len(p) :]}
    )
    counts = [m.value for m in histories.get("alerts/count", ())]
    alerts = max(int(max(counts)) if counts else 0, len(rules))
    steps = max((m.step for h in histories.values() for m in h), default=None)
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or run.data.tags.get("mlflow.runName", "") or run.info.run_id,
        status=run.info.status,
        params=dict(run.data.params),
        steps=steps,
        first_loss=first,
        final_loss=final,
        best_loss=best,
        diverged=diverged,
        stalled=is_stalled(first, best, diverged),
        checks=len(passed),
        checks_failed=sum(1 for v in passed if not v >= 0.5),
        max_rel_error=max_rel,
        alerts=alerts,
        alert_rules=tuple(rules),
        tags={k: v for k, v in tags.items() if k.startswith("gradwatch.")},
    )


def summarize_runs(client, runs: Sequence, progress=None) -> list[tuple[RunSummary, RunCurves]]:
    """Fetch each run's histories once; return its summary and plot curves.

    ``progress(run)`` is called after each run (for a progress bar).
    """
    from mlflow.exceptions import MlflowException

    out = []
    try:
        for run in runs:
            histories = fetch_histories(client, run)
            summary = summarize(run, histories)
            out.append((summary, curves_from(summary, histories)))
            if progress is not None:
                progress(run)
    except MlflowException as err:
        raise TrackingError(f"MLflow at {client.tracking_uri}: {one_line(err)}") from None
    return out


# ----------------------------------------------------------------------- formatting


def _param_columns(summaries: Sequence[RunSummary]) -> tuple[list[str], dict[str, str]]:
    """Params that differ between runs (table columns), and those every run shares."""
    keys = sorted({k for s in summaries for k in user_params(s.params)})
    shared = {}
    if len(summaries) > 1:
        for k in keys:
            values = {s.params.get(k) for s in summaries}
            if len(values) == 1 and None not in values:
                shared[k] = values.pop()
    # lr is what sweeps vary: put it first.
    cols = sorted((k for k in keys if k not in shared), key=lambda k: (k != "lr", k))
    return cols, shared


def _num(value: float | None, fmt: str = ".4g") -> str:
    if value is None:
        return "-"
    if not is_finite(value):
        if math.isnan(value):
            return "nan"
        return "inf" if value > 0 else "-inf"
    return format(value, fmt)


def table_rows(summaries: Sequence[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table, as strings."""
    pcols, _shared = _param_columns(summaries)
    header = ["run", *pcols, "last step", "final loss", "best loss", "diverged", "checks", "failed",
              "max rel err", "alerts", "verdict"]  # fmt: skip
    rows = []
    for s in summaries:
        alerts = str(s.alerts)
        if s.alert_rules:
            alerts += f" ({','.join(s.alert_rules)})"
        rows.append(
            [
                s.run_name,
                *(s.params.get(k, "-") for k in pcols),
                "-" if s.steps is None else str(s.steps),
                _num(s.final_loss),
                _num(s.best_loss),
                "yes" if s.diverged else "no",
                str(s.checks),
                str(s.checks_failed),
                _num(s.max_rel_error, ".1e"),
                alerts,
                s.verdict,
            ]
        )
    return header, rows


def format_table(summaries: Sequence[RunSummary]) -> str:
    """A fixed-width text table, one line per run (numbers right-aligned)."""
    if not summaries:
        return "(no runs)"
    header, rows = table_rows(summaries)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, len(header) - 1, len(header) - 2}  # name, alerts and verdict read left to right

    def line(cells: list[str]) -> str:
        out = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    out = [line(header), sep, *(line(r) for r in rows)]
    shared = _param_columns(summaries)[1]
    if shared:
        out.append("same for all runs: " + ", ".join(f"{k}={v}" for k, v in shared.items()))
    return "\n".join(out)


def format_json(summaries: Sequence[RunSummary]) -> str:
    """A JSON list, one record per run (see :meth:`RunSummary.to_record`)."""
    return json.dumps([s.to_record() for s in summaries], indent=2, allow_nan=False)


def format_csv(summaries: Sequence[RunSummary]) -> str:
    """CSV with a header; params flattened to ``params.<name>`` columns (MLflow's own naming)."""
    pkeys = sorted({k for s in summaries for k in s.params})
    fields = ["run_id", "run_name", "status", *(f"params.{k}" for k in pkeys), "last_step",
              "first_loss", "final_loss", "best_loss", "diverged", "stalled", "checks",
              "checks_failed", "max_rel_error", "alerts", "alert_rules", "verdict"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        rec = s.to_record()
        params = rec.pop("params")
        rec.update({f"params.{k}": params.get(k, "") for k in pkeys})
        rec["alert_rules"] = ";".join(rec["alert_rules"])
        writer.writerow({k: ("" if rec.get(k) is None else rec[k]) for k in fields})
    return buf.getvalue()


def render(summaries: Sequence[RunSummary], output: str) -> str:
    """``format_table``/``format_json``/``format_csv`` by name (one of :data:`OUTPUTS`)."""
    if output not in OUTPUTS:
        raise InputError(f"output format must be one of {', '.join(OUTPUTS)}, got {output!r}")
    return {"table": format_table, "json": format_json, "csv": format_csv}[output](summaries)


# ---------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class RunCurves:
    """Points to plot for one run: ``[(step, value), ...]`` per curve."""

    run_name: str
    loss: list[tuple[int, float]]
    rel_error: list[tuple[int, float]]
    diverged: bool = False
    checks_failed: int = 0


def curves_from(summary: RunSummary, histories: Mapping[str, Sequence]) -> RunCurves:
    """The :class:`RunCurves` of a run from the histories ``summarize`` used."""

    def points(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in histories.get(key, ())]

    return RunCurves(
        run_name=summary.run_name,
        loss=points("loss"),
        rel_error=points("gradcheck/max_rel_error"),
        diverged=summary.diverged,
        checks_failed=summary.checks_failed,
    )


def fetch_curves(client, run) -> RunCurves:
    """Fetch and build the :class:`RunCurves` of ``run``."""
    histories = fetch_histories(client, run)
    return curves_from(summarize(run, histories), histories)


def plot_runs(curves: Sequence[RunCurves], path: str, title: str | None = None) -> str:
    """Write one PNG: loss (top) and worst gradient-check relative error (bottom) vs step.

    Both panels share the step axis and use a log y-scale (losses and relative errors span
    decades). Losses are clipped :data:`LOSS_CLIP_DECADES` above the highest first loss, so a
    run diverging to 1e170 does not flatten the others; non-finite points are dropped and a
    diverged run's last point is marked with an ``x``; runs with failed checks are dashed. The bottom panel shades the bands: < 1e-7 good, > 1e-2 a bug.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    if not curves:
        raise InputError("nothing to plot: no runs selected")
    fig, (ax_loss, ax_err) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    any_loss = any_err = False
    # A diverging run reaches 1e170: clip the loss axis a few decades above where the runs
    # started, so the ones that learn stay readable; clipped runs run into the top edge.
    firsts = [v for c in curves for _, v in c.loss[:1] if is_finite(v) and v > 0]
    top = max(firsts) * LOSS_CLIP_DECADES if firsts else None
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
    fig.suptitle(title or f"gradwatch: {len(curves)} run(s)  (dashed: failed checks, x: diverged)")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise InputError(f"cannot write plot {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return path
