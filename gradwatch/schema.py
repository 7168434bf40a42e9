"""The run schema: every metric, tag, param prefix and artifact name gradwatch writes to MLflow,
and both directions of the mapping between metrics and the observations the alert rules see.

    metrics = step_metrics(obs)                    # StepObservation -> {"loss": .., "grad_norm/W1": ..}
    metrics.update(check_metrics(report.to_dict()))  # a check -> {"gradcheck/passed": 1.0, ...}
    obs = observations_from_metrics(histories)     # MLflow metric histories -> observations

Writers (the hook, the tracking pipeline) and readers (``compare``, ``monitor``, baselines)
take their names from here, so a renamed metric cannot silently split the two sides. The
module imports neither numpy nor MLflow.

Metrics (per step unless noted; ``<t>`` is a parameter tensor's name)
---------------------------------------------------------------------
``loss``, ``lr``                         every step the hook is given them
``grad_norm/<t>``, ``param_norm/<t>``    statistics steps: L2 norms
``nonfinite/<t>``                        statistics steps: NaN/Inf count in gradient + parameter
``update_ratio/<t>``                     ``||Δθ|| / ||θ||`` of the update after a statistics step
``grad_abs_p50/<t>``, ``grad_abs_p99/<t>``   statistics steps: median and 99th percentile of |g|
``grad_zero_frac/<t>``                   statistics steps: fraction of exactly-zero gradient entries
``param_abs_p99/<t>``                    statistics steps: 99th percentile of |θ|
``gradcheck/passed``                     1.0 / 0.0 per gradient check
``gradcheck/max_rel_error``              the check's worst (triage-resolved) relative error
``gradcheck/difference``                 ``||g − g̃|| / (||g|| + ||g̃||)`` over the probes
``gradcheck/num_evals``, ``gradcheck/seconds``   the check's cost
``gradcheck/rel_error/<t>``              per tensor worst relative error
``gradcheck/mismatches/<t>``             per tensor mismatching probes (only when > 0)
``gradcheck/clipped/<t>``                per tensor probes explained by element-wise clipping
``gradcheck/scale``                      analytic/numeric ratio every disagreeing probe shares
``alerts/count``                         running count of alerts recorded (``mlflow`` action)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: gradwatch.alerts' detectors import this module
    from gradwatch.alerts.observations import CheckObservation, StepObservation

__all__ = [
    "ALERT_COUNT",
    "ARTIFACT_ALERTS",
    "ARTIFACT_CHECKS",
    "ARTIFACT_CONFIG",
    "ARTIFACT_HISTOGRAMS",
    "ARTIFACT_HISTOGRAMS_PNG",
    "ARTIFACT_REPORT",
    "CHECK_CLIPPED",
    "CHECK_DIFFERENCE",
    "CHECK_MAX_REL_ERROR",
    "CHECK_MISMATCHES",
    "CHECK_NUM_EVALS",
    "CHECK_PASSED",
    "CHECK_PREFIX",
    "CHECK_REL_ERROR",
    "CHECK_SCALE",
    "CHECK_SECONDS",
    "GRAD_ABS_P50",
    "GRAD_ABS_P99",
    "GRAD_NORM",
    "GRAD_ZERO_FRAC",
    "LOSS",
    "LR",
    "NONFINITE",
    "PARAM_ABS_P99",
    "PARAM_NORM",
    "PARAM_PREFIX",
    "STEP_SERIES",
    "TAG_ALERT",
    "TAG_ALERTS",
    "TAG_BASELINE",
    "TAG_CHECKS",
    "TAG_CHECKS_DEFERRED",
    "TAG_CHECKS_FAILED",
    "TAG_CHECK_ERROR",
    "TAG_CHECK_NOT_RUN",
    "TAG_DEMO_BUG",
    "TAG_DEMO_MODEL",
    "TAG_ERROR",
    "TAG_INCOMPLETE",
    "TAG_JOURNAL_DROPPED",
    "TAG_JOURNAL_ID",
    "TAG_MONITOR_ALERTED",
    "TAG_MONITOR_STATE",
    "TAG_PARAM_CONFLICT",
    "TAG_PREFIX",
    "TAG_STOP_REASON",
    "TAG_SWEEP_ID",
    "TAG_VERSION",
    "UPDATE_RATIO",
    "check_metrics",
    "check_report_from_metrics",
    "float_or_nan",
    "from_mlflow_value",
    "hook_series",
    "observations_from_metrics",
    "per_tensor",
    "step_metrics",
]

# -- metrics ---------------------------------------------------------------------------------

LOSS = "loss"
LR = "lr"
GRAD_NORM = "grad_norm/"
PARAM_NORM = "param_norm/"
UPDATE_RATIO = "update_ratio/"
NONFINITE = "nonfinite/"
#: Statistics steps, per tensor: quantiles of |gradient|, the fraction of exactly-zero gradient
#: entries (dead units; the ``dead_units`` rule reads it) and the 99th percentile of |param|.
GRAD_ABS_P50 = "grad_abs_p50/"
GRAD_ABS_P99 = "grad_abs_p99/"
GRAD_ZERO_FRAC = "grad_zero_frac/"
PARAM_ABS_P99 = "param_abs_p99/"

CHECK_PREFIX = "gradcheck/"
CHECK_PASSED = "gradcheck/passed"
CHECK_MAX_REL_ERROR = "gradcheck/max_rel_error"
CHECK_DIFFERENCE = "gradcheck/difference"
CHECK_NUM_EVALS = "gradcheck/num_evals"
CHECK_SECONDS = "gradcheck/seconds"
CHECK_REL_ERROR = "gradcheck/rel_error/"
CHECK_MISMATCHES = "gradcheck/mismatches/"
CHECK_CLIPPED = "gradcheck/clipped/"
CHECK_SCALE = "gradcheck/scale"

ALERT_COUNT = "alerts/count"

#: Per-tensor step series and the :class:`StepObservation` field each one fills.
STEP_SERIES: dict[str, str] = {
    GRAD_NORM: "grad_norms",
    PARAM_NORM: "param_norms",
    UPDATE_RATIO: "update_ratios",
    NONFINITE: "nonfinite",
}


def hook_series(key: str) -> bool:
    """Whether metric ``key`` fills a field of the observations (loss, lr, per-tensor norms,
    ratios and non-finite counts, ``gradcheck/*``) rather than ``StepObservation.metrics``.

        hook_series("grad_norm/W1") is True; hook_series("loss_ema") is False
    """
    return key in (LOSS, LR) or key.startswith((CHECK_PREFIX, *STEP_SERIES))


# -- tags and params -------------------------------------------------------------------------

#: Prefix of every tag and param gradwatch itself sets (hook settings: ``gradwatch.every``).
TAG_PREFIX = "gradwatch."
PARAM_PREFIX = TAG_PREFIX
TAG_VERSION = "gradwatch.version"
#: Groups the runs of one sweep (``gradwatch compare --sweep ID``).
TAG_SWEEP_ID = "gradwatch.sweep_id"
#: + rule name: the text of the rule's latest alert (the ``mlflow`` action).
TAG_ALERT = "gradwatch.alert."
TAG_CHECK_ERROR = "gradwatch.check_error"
#: Why a due check was not run (parameters stale: replaced instead of updated in place).
TAG_CHECK_NOT_RUN = "gradwatch.check_not_run"
TAG_CHECKS = "gradwatch.checks"
TAG_CHECKS_FAILED = "gradwatch.checks_failed"
TAG_CHECKS_DEFERRED = "gradwatch.checks_deferred"
TAG_ALERTS = "gradwatch.alerts"
TAG_STOP_REASON = "gradwatch.stop_reason"
TAG_ERROR = "gradwatch.error"
TAG_JOURNAL_ID = "gradwatch.journal_id"
TAG_INCOMPLETE = "gradwatch.incomplete"
TAG_JOURNAL_DROPPED = "gradwatch.journal_dropped"  # records a full disk kept out of the journal
#: + param name: a param the journal and the server disagree on.
TAG_PARAM_CONFLICT = "gradwatch.param_conflict."
#: Marks a baseline run (any value but false/0/no).
TAG_BASELINE = "gradwatch.baseline"
#: + rule name -> step of the last alert ``gradwatch monitor`` delivered for the run.
TAG_MONITOR_ALERTED = "gradwatch.monitor.alerted."
#: "active" while ``monitor`` follows a run, "done" once it evaluated it to the end.
TAG_MONITOR_STATE = "gradwatch.monitor.state"
TAG_DEMO_MODEL = "gradwatch.demo.model"
TAG_DEMO_BUG = "gradwatch.demo.bug"

# -- artifacts -------------------------------------------------------------------------------

ARTIFACT_CHECKS = "gradwatch/checks.jsonl"  # one CheckReport.to_dict() per check, with "step"
ARTIFACT_ALERTS = "gradwatch/alerts.jsonl"  # one Alert.to_dict() per recorded alert
ARTIFACT_CONFIG = "gradwatch/gradwatch.yaml"  # the effective config, secrets masked
#: One ``gradwatch.stats.histogram_record`` per histogram step: |g| and |θ| of every tensor on
#: fixed log-spaced bins (``{"step", "bins", "tensors": {t: {"grad": .., "param": ..}}}``).
ARTIFACT_HISTOGRAMS = "gradwatch/histograms.jsonl"
#: Drawn at the end of the run from histograms.jsonl: one panel per tensor over the steps.
ARTIFACT_HISTOGRAMS_PNG = "gradwatch/histograms.png"
#: The run report, one self-contained HTML file (``gradwatch report RUN_ID`` redraws it).
ARTIFACT_REPORT = "gradwatch/report.html"

# MLflow clamps +-inf to the largest double on the way in.
_FLOAT_MAX = sys.float_info.max


# -- observation -> metrics ------------------------------------------------------------------


def step_metrics(obs: StepObservation) -> dict[str, float]:
    """The metrics the hook logs for one step observation (non-finite values kept).

    >>> from gradwatch.alerts import StepObservation
    >>> step_metrics(StepObservation(3, loss=0.5, grad_norms={"W": 2.0}))
    {'loss': 0.5, 'grad_norm/W': 2.0}

    ``nonfinite/<t>`` is written only for tensors with a count above zero (a clean run logs
    none); ``update_ratio/<t>`` belongs to the statistics step the update followed.
    """
    out: dict[str, float] = {}
    if obs.loss is not None:
        out[LOSS] = float(obs.loss)
    if obs.lr is not None:
        out[LR] = float(obs.lr)
    for prefix, field_name in STEP_SERIES.items():
        values = getattr(obs, field_name) or {}
        for name, value in values.items():
            if prefix == NONFINITE and not value:
                continue
            out[prefix + name] = float(value)
    return out


def check_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of one gradient check, from ``CheckReport.to_dict()``.

    check_metrics(report.to_dict())["gradcheck/passed"] == 1.0

    Per tensor: ``rel_error``, plus ``mismatches`` and ``clipped`` counts when above zero.
    A ``scale`` entry of the report (a ratio shared by every disagreeing probe) is logged
    as ``gradcheck/scale``.
    """
    out: dict[str, float] = {
        CHECK_PASSED: 1.0 if report.get("passed") else 0.0,
        CHECK_MAX_REL_ERROR: float_or_nan(report.get("max_rel_error")),
        CHECK_DIFFERENCE: float_or_nan(report.get("difference")),
        CHECK_NUM_EVALS: float(report.get("num_evals") or 0),
        CHECK_SECONDS: float_or_nan(report.get("seconds")),
    }
    if report.get("scale") is not None:
        out[CHECK_SCALE] = float_or_nan(report["scale"])
    for name, tensor in (report.get("per_param") or {}).items():
        out[CHECK_REL_ERROR + name] = float_or_nan(tensor.get("max_rel_error"))
        if tensor.get("num_mismatches"):
            out[CHECK_MISMATCHES + name] = float(tensor["num_mismatches"])
        clipped = sum(1 for p in tensor.get("coords") or () if p.get("verdict") == "clipped")
        if clipped:
            out[CHECK_CLIPPED + name] = float(clipped)
    return out


def float_or_nan(value: Any) -> float:
    """A number read back from a check report or an artifact, NaN when it is none.

    CheckReport.to_dict() keeps NaN/Inf as strings, which ``float()`` reads:

    >>> float_or_nan("inf"), float_or_nan(None), float_or_nan("n/a"), float_or_nan(2)
    (inf, nan, nan, 2.0)
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# -- metrics -> observations -----------------------------------------------------------------


def from_mlflow_value(value: float) -> float:
    """A metric value as logged: MLflow's stand-in for +-inf (+-1.797e308) back to +-inf."""
    value = float(value)
    return math.copysign(math.inf, value) if abs(value) >= _FLOAT_MAX else value  # NaN stays


def per_tensor(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """``{tensor: value}`` of the metrics under ``prefix``: per_tensor(m, GRAD_NORM)."""
    return {key[len(prefix) :]: v for key, v in values.items() if key.startswith(prefix)}


def check_report_from_metrics(
    values: Mapping[str, float], warning_rel_error: float = 1e-4
) -> dict[str, Any]:
    """A ``CheckReport.to_dict()``-shaped dict rebuilt from one check's metrics.

        check_report_from_metrics({"gradcheck/passed": 0.0, "gradcheck/rel_error/W2": 0.33})

    Metrics carry less than the report: per tensor only its worst relative error and counts.
    When the check failed, tensors with logged mismatches are ``mismatch`` (their count as
    ``num_mismatches``); without counts, tensors whose error is at least
    ``warning_rel_error`` (the worst one if none is) are, with ``num_mismatches`` 1 (a lower
    bound). Tensors with clipped probes and no mismatch are ``clipped``. Coordinates are
    unknown (``coords`` empty); ``reconstructed`` is True.
    """
    passed = values.get(CHECK_PASSED)
    failed = passed is not None and not passed >= 0.5
    errors = per_tensor(values, CHECK_REL_ERROR)
    counts = per_tensor(values, CHECK_MISMATCHES)
    clipped = per_tensor(values, CHECK_CLIPPED)
    if counts:
        bad = {name: int(n) for name, n in counts.items() if n > 0}
    else:
        over = {n for n, v in errors.items() if not math.isfinite(v) or v >= warning_rel_error}
        if failed and not over and errors:
            over = {max(errors, key=lambda n: errors[n])}
        bad = {name: 1 for name in over}
    per_param: dict[str, dict[str, Any]] = {}
    for name in sorted(set(errors) | set(bad) | set(clipped)):
        mismatches = bad.get(name, 0) if failed else 0
        verdict = "mismatch" if mismatches else ("clipped" if clipped.get(name) else "ok")
        per_param[name] = {
            "shape": [],
            "max_rel_error": errors.get(name, math.nan),
            "verdict": verdict,
            "num_mismatches": mismatches,
            "num_clipped": int(clipped.get(name, 0)),
            "coords": [],
        }
    max_rel = values.get(CHECK_MAX_REL_ERROR)
    if max_rel is None and errors:
        max_rel = max(errors.values())
    if failed and not any(t["num_mismatches"] for t in per_param.values()):
        # No per-tensor detail logged: the failure still has to reach check_failure.
        per_param["(all tensors)"] = {"shape": [], "max_rel_error": max_rel or 0.0,
                                      "verdict": "mismatch", "num_mismatches": 1,
                                      "num_clipped": 0, "coords": []}  # fmt: skip
    return {
        "passed": not failed,
        "max_rel_error": max_rel,
        "difference": values.get(CHECK_DIFFERENCE),
        "num_evals": int(values.get(CHECK_NUM_EVALS) or 0),
        "seconds": values.get(CHECK_SECONDS),
        "scale": values.get(CHECK_SCALE),
        "per_param": per_param,
        "reconstructed": True,
    }


def rows_by_step(histories: Mapping[str, Sequence[Any]]) -> dict[int, dict[str, Any]]:
    """``{step: {key: value, "_ts": newest timestamp in ms}}`` of MLflow metric histories.

    Within a step the newest value of a key wins (ties: the later one in the history).
    """
    steps: dict[int, dict[str, Any]] = {}
    for key, history in histories.items():
        for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
            row = steps.setdefault(int(m.step), {"_ts": 0})
            row[key] = from_mlflow_value(m.value)
            row["_ts"] = max(row["_ts"], int(m.timestamp))
    return steps


def observations_from_metrics(
    histories: Mapping[str, Sequence[Any]],
    after: int = -1,
    upto: int | None = None,
    warning_rel_error: float = 1e-4,
) -> list[StepObservation | CheckObservation]:
    """What the hook observed at steps ``after < step <= upto``, rebuilt from metric histories.

        obs = observations_from_metrics({"loss": client.get_metric_history(run_id, "loss")})

    ``histories`` maps metric keys to MLflow ``Metric`` lists (anything with ``step``,
    ``value`` and ``timestamp``). Per step: a StepObservation if the step has a training
    metric, then a CheckObservation if a check ran at it (the order the hook observes them).
    Keys that are not :func:`hook_series` (``grad_zero_frac/W1``, a user's ``val_acc``) go to
    ``StepObservation.metrics``, as the hook passes them; a step that has only such metrics
    gets a StepObservation of its own.
    """
    from gradwatch.alerts.observations import CheckObservation, StepObservation

    out: list[StepObservation | CheckObservation] = []
    rows = rows_by_step({k: h for k, h in histories.items() if hook_series(k)})
    extra = rows_by_step({k: h for k, h in histories.items() if not hook_series(k)})
    for step in sorted(set(rows) | set(extra)):
        if step <= after or (upto is not None and step > upto):
            continue
        row = rows.get(step, {"_ts": 0})
        more = extra.get(step)
        ts = row["_ts"] / 1000.0 or None
        series = {
            field_name: per_tensor(row, prefix)
            for prefix, field_name in STEP_SERIES.items()
            if any(k.startswith(prefix) for k in row)
        }
        trained = LOSS in row or LR in row or bool(series)
        if trained or more:
            nonfinite = series.pop("nonfinite", None)
            out.append(
                StepObservation(
                    step=step,
                    loss=row.get(LOSS),
                    lr=row.get(LR),
                    nonfinite={k: int(v) for k, v in nonfinite.items()} if nonfinite else None,
                    # Stamped like the training metrics of its step when it has any.
                    timestamp=ts if trained else more["_ts"] / 1000.0 or None,
                    metrics={k: v for k, v in more.items() if k != "_ts"} if more else None,
                    **series,
                )
            )
        if CHECK_PASSED in row or CHECK_MAX_REL_ERROR in row:
            check = {k: v for k, v in row.items() if k.startswith(CHECK_PREFIX)}
            report = check_report_from_metrics(check, warning_rel_error)
            out.append(CheckObservation(step=step, report=report, timestamp=ts))
    return out
