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
``gradcheck/scale``                      analytic/numeric ratio every tensor shares (finding ``factor``)
``gradcheck/finding``                    the engine's finding, an index into ``CHECK_FINDINGS``
``alerts/count``                         running count of alerts recorded (``mlflow`` action)

In a run the hook shares with the user's own logging (it logged into their active MLflow run)
every key above carries the prefix ``gradwatch/`` (``gradwatch/loss``), so the hook never doubles
the user's ``loss`` or ``lr``; the run is tagged ``gradwatch.metric_prefix``. Readers map either
layout to these names with :func:`hook_keys`. The hook's settings are one param,
``gradwatch.settings`` (JSON), read back as ``gradwatch.<name>`` by :func:`expand_settings`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: gradwatch.alerts' detectors import this module
    from gradwatch.alerts.observations import CheckObservation, StepObservation

__all__ = [
    "PROBLEMS",
    "alert_problem",
    "ALERT_COUNT",
    "ARTIFACT_ALERTS",
    "ARTIFACT_CHECKS",
    "ARTIFACT_CONFIG",
    "ARTIFACT_HISTOGRAMS",
    "ARTIFACT_HISTOGRAMS_PNG",
    "ARTIFACT_REPORT",
    "ARTIFACT_SETTINGS",
    "CHECK_CLIPPED",
    "CHECK_DIFFERENCE",
    "CHECK_FINDING",
    "CHECK_FINDINGS",
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
    "PARAM_MONITOR_CLAIM",
    "TAG_MONITOR_RELEASED",
    "TAG_PARAM_CONFLICT",
    "TAG_PREFIX",
    "TAG_STOP_REASON",
    "TAG_SWEEP_ID",
    "TAG_VERSION",
    "PARAM_SETTINGS",
    "SHARED_PREFIX",
    "TAG_METRIC_PREFIX",
    "TAG_NOTE",
    "TAG_PARENT_RUN",
    "TAG_SWEEP_PARENT",
    "TAG_VERDICT",
    "UPDATE_RATIO",
    "check_metrics",
    "check_report_from_metrics",
    "expand_settings",
    "float_or_nan",
    "hook_keys",
    "settings_param",
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
#: The engine's finding of a check, as the index of its kind in :data:`CHECK_FINDINGS`: every
#: reader judges a check by this one value (or the same kind in ``checks.jsonl``), never again.
CHECK_FINDING = "gradcheck/finding"
#: What a check can conclude (``gradwatch.check.Finding.kind``); the metric logs the index.
#: ``passed``; ``bug`` (a backprop bug in the tensors named); ``factor`` (every tensor off by one
#: factor: the loss and its gradient follow different conventions); ``call_order`` (the
#: gradients match the parameters before the update: step() was called after it); ``stochastic``
#: and ``timeout`` (inconclusive: a non-deterministic loss, or ``check_timeout`` reached).
CHECK_FINDINGS = ("passed", "bug", "factor", "call_order", "stochastic", "timeout")

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

#: The training problems the default alert rules diagnose: rule type -> the words each alert's
#: message starts with (and ``details["problem"]`` holds), which the run report and
#: ``gradwatch compare`` show.
PROBLEMS: dict[str, str] = {
    "vanishing_gradients": "vanishing gradients",
    "exploding_gradients": "exploding gradients",
    "dead_units": "dead units",
    "saturated_units": "saturated units",
    "stuck_loss": "loss not improving",
    "slow_learning": "learning too slow",
    "nonfinite": "NaN/Inf",
}


def alert_problem(text: str) -> str | None:
    """The problem an alert names, from its message or its one-line text (the tag's value).

    >>> alert_problem("[gradwatch] WARNING dead_units at step 45: dead units in W1: ...")
    'dead units'
    >>> alert_problem("loss diverging: 3.4 is above 10x ...") is None
    True
    """
    # Rule names hold no ": ", so the message follows the first one in a text line.
    message = text.partition(": ")[2] if text.startswith("[gradwatch]") else text
    return next((p for p in PROBLEMS.values() if message.startswith(p)), None)


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
#: + rule name + "." + step + "." + generation: param whose value names the ``gradwatch
#: monitor`` process that claimed the alert (params are write-once: the first claim wins).
PARAM_MONITOR_CLAIM = "gradwatch.monitor.claim."
#: + rule name + "." + step -> the last claim generation given up undelivered (a monitor that
#: stopped before delivering hands the alert on to the next one).
TAG_MONITOR_RELEASED = "gradwatch.monitor.released."
TAG_DEMO_MODEL = "gradwatch.demo.model"
TAG_DEMO_BUG = "gradwatch.demo.bug"
#: The run's verdict as ``gradwatch compare`` words it (``ok``, ``BACKPROP BUG``, ``DIVERGED``,
#: ``stalled`` ...), set when the hook ends its part of the run.
TAG_VERDICT = "gradwatch.verdict"
#: MLflow's run description (markdown) at the top of the run page: the verdict's reason and
#: where the report is.
TAG_NOTE = "mlflow.note.content"
#: MLflow's link from a child run to its parent (the UI folds children under it).
TAG_PARENT_RUN = "mlflow.parentRunId"
#: The parent run of a ``gradwatch sweep``: the sweep's id (each child is tagged
#: ``gradwatch.sweep_id`` with it).
TAG_SWEEP_PARENT = "gradwatch.sweep_parent"
#: Set on a run the hook shares with the user's own logging (it logged into their active run):
#: the prefix of the hook's metric keys there, :data:`SHARED_PREFIX`. A run without it has the
#: hook's keys bare (its own run). Read both layouts with :func:`hook_keys`.
TAG_METRIC_PREFIX = "gradwatch.metric_prefix"
#: The hook's series in a shared run: ``gradwatch/loss``, ``gradwatch/grad_norm/W1`` ... beside
#: the user's own ``loss``; never the same key as theirs.
SHARED_PREFIX = "gradwatch/"
#: One param holding the hook's settings as a JSON object (``{"every": "100", ...}``), so the
#: user's params table gets one entry, not one per setting. Read with :func:`expand_settings`.
PARAM_SETTINGS = "gradwatch.settings"


def hook_keys(metric_keys: Iterable[str], tags: Mapping[str, str]) -> dict[str, str]:
    """``{schema name: MLflow key}`` of a run's metrics, whichever layout the run has.

        hook_keys(["loss", "gradwatch/loss"], {TAG_METRIC_PREFIX: "gradwatch/"})["loss"] == "gradwatch/loss"

    In a run the hook shared with the user (tag :data:`TAG_METRIC_PREFIX`), the hook's keys
    carry that prefix: they are read under their schema names, and a user's own key of the
    same name (their ``loss``) is left out; the user's other keys (``val_acc``) stay. In the
    hook's own run every key is its own name.
    """
    keys = list(metric_keys)
    prefix = tags.get(TAG_METRIC_PREFIX) or ""
    if not prefix:
        return {k: k for k in keys}
    out = {k: k for k in keys if not k.startswith(prefix)}
    out.update({k[len(prefix) :]: k for k in keys if k.startswith(prefix) and len(k) > len(prefix)})
    return out


def settings_param(settings: Mapping[str, Any]) -> dict[str, str]:
    """The hook's settings (``{"gradwatch.every": "100", ...}``) as the one param it logs.

    settings_param({"gradwatch.every": "100"}) == {"gradwatch.settings": '{"every": "100"}'}
    """
    plain = {
        (k[len(PARAM_PREFIX) :] if k.startswith(PARAM_PREFIX) else k): str(v)
        for k, v in settings.items()
    }
    return {PARAM_SETTINGS: json.dumps(plain, ensure_ascii=False)}


def expand_settings(params: Mapping[str, str]) -> dict[str, str]:
    """A run's params with the hook's settings as ``gradwatch.<name>`` entries, either layout.

        expand_settings({"lr": "0.1", "gradwatch.settings": '{"every": "100"}'})
        # {"lr": "0.1", "gradwatch.every": "100"}

    Runs logged before :data:`PARAM_SETTINGS` have one ``gradwatch.<name>`` param per setting
    already and come back as they are; so does a settings value that is not a JSON object.
    """
    raw = params.get(PARAM_SETTINGS)
    if raw is None:
        return dict(params)
    try:
        settings = json.loads(raw)
    except ValueError:
        return dict(params)
    if not isinstance(settings, dict):
        return dict(params)
    out = {k: v for k, v in params.items() if k != PARAM_SETTINGS}
    for key, value in settings.items():
        out.setdefault(PARAM_PREFIX + str(key), str(value))
    return out


# -- artifacts -------------------------------------------------------------------------------

ARTIFACT_CHECKS = "gradwatch/checks.jsonl"  # one CheckReport.to_dict() per check, with "step"
ARTIFACT_ALERTS = "gradwatch/alerts.jsonl"  # one Alert.to_dict() per recorded alert
ARTIFACT_CONFIG = "gradwatch/gradwatch.yaml"  # the effective config, secrets masked
#: The hook's settings, when too long for the ``gradwatch.settings`` param (JSON, as it).
ARTIFACT_SETTINGS = "gradwatch/settings.json"
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
    The engine's finding is logged as ``gradcheck/finding`` (its kind's index in
    :data:`CHECK_FINDINGS`) and, for a factor every tensor shares, the factor as
    ``gradcheck/scale``.
    """
    out: dict[str, float] = {
        CHECK_PASSED: 1.0 if report.get("passed") else 0.0,
        CHECK_MAX_REL_ERROR: float_or_nan(report.get("max_rel_error")),
        CHECK_DIFFERENCE: float_or_nan(report.get("difference")),
        CHECK_NUM_EVALS: float(report.get("num_evals") or 0),
        CHECK_SECONDS: float_or_nan(report.get("seconds")),
    }
    finding = report.get("finding")
    if isinstance(finding, Mapping) and finding.get("kind") in CHECK_FINDINGS:
        out[CHECK_FINDING] = float(CHECK_FINDINGS.index(finding["kind"]))
        if finding["kind"] == "factor" and finding.get("factor") is not None:
            out[CHECK_SCALE] = float_or_nan(finding["factor"])
    elif report.get("scale") is not None:
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
    bound). Tensors with clipped probes and no mismatch are ``clipped``. A check the engine
    logged as inconclusive (``gradcheck/finding``) is ``inconclusive`` with no mismatch.
    Coordinates are unknown (``coords`` empty); ``reconstructed`` is True.
    """
    passed = values.get(CHECK_PASSED)
    code = values.get(CHECK_FINDING)
    kind = CHECK_FINDINGS[int(code)] if code in range(len(CHECK_FINDINGS)) else None
    # An inconclusive check (the engine's finding) found no mismatch: nothing to rebuild.
    inconclusive = kind in ("stochastic", "timeout")
    failed = passed is not None and not passed >= 0.5 and not inconclusive
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
        per_param["(all tensors)"] = {
            "shape": [],
            "max_rel_error": max_rel or 0.0,
            "verdict": "mismatch",
            "num_mismatches": 1,
            "num_clipped": 0,
            "coords": [],
        }
    return {
        "passed": not failed and not inconclusive,
        **({"status": "inconclusive"} if inconclusive else {}),
        **({"finding": {"kind": kind}} if kind else {}),
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
