"""Compare gradwatch runs in MLflow: one summary per run, as a table, JSON or CSV.

    client = get_client("http://127.0.0.1:5000")
    runs = select_runs(client, experiment="mlp")
    results = summarize_runs(client, runs)          # [(RunSummary, RunCurves), ...]
    print(format_table([s for s, _ in results]))

Everything but ``select_runs``/``summarize_runs``/``fetch_*`` is a pure function of MLflow
entities, so the verdicts are tested without a server.

Verdicts (one word per problem, worst first; see :mod:`gradwatch.runs.verdicts`)
---------------------------------------------------------------------------------
The checks' words are the engine's findings as logged (``gradcheck/finding``), never judged
again here; ``checks.jsonl`` only adds the words of the first failing check (``finding``).

``BACKPROP BUG``  a check found a backprop bug (tensors named in ``finding``; a factor
                  confined to some tensors is a bug too).
``CALL ORDER``    the gradients matched the parameters before the update: step() is called
                  after it.
``grads ×r``      every tensor of a failed check is off by one factor ``r`` (analytic =
                  r × numeric): clip-by-norm, or a loss averaged differently from its gradient.
``INCONCLUSIVE``  every check was inconclusive: a non-deterministic loss_fn (dropout with
                  fresh masks) or ``check_timeout``; the finding's hint says how to fix it.
``DIVERGED``      the loss (or a tensor, per ``nonfinite/<t>``) went non-finite, or the
                  smoothed loss rose ten-fold over its best and ended above its start.
``stalled``       the smoothed loss at the end is no lower than at the start (within noise).
``clipped``       (a note) probes sat exactly on an element-wise clipping bound: the checks
                  compared clipped gradients with the true slope; check before clipping.
``no loss``       the run logged no loss.
``vanishing gradients``, ``dead units``, ... the training problems the run's alerts named
                  (:data:`gradwatch.schema.PROBLEMS`, read from its ``gradwatch.alert.*`` tags).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradwatch.check import CheckReport
from gradwatch.errors import InputError
from gradwatch.mlflow_access import (
    artifact_records,
    get_run,
    metric_history,
    mlflow_errors,
    search_all,
)
from gradwatch.mlflow_access import experiment_id as lookup_experiment
from gradwatch.runs.verdicts import check_findings, clip_bound, is_finite, loss_verdict
from gradwatch.schema import (
    ALERT_COUNT,
    ARTIFACT_CHECKS,
    CHECK_CLIPPED,
    CHECK_FINDING,
    CHECK_MAX_REL_ERROR,
    CHECK_PASSED,
    CHECK_SCALE,
    LOSS,
    NONFINITE,
    PARAM_MONITOR_CLAIM,
    PARAM_PREFIX,
    PROBLEMS,
    TAG_ALERT,
    TAG_MONITOR_ALERTED,
    TAG_PREFIX,
    TAG_SWEEP_ID,
    alert_problem,
    expand_settings,
    hook_keys,
)

__all__ = [
    "OUTPUTS",
    "RunCurves",
    "RunSummary",
    "curves_from",
    "diagnosed_problems",
    "differing_params",
    "fetch_check_records",
    "fetch_curves",
    "fetch_histories",
    "format_csv",
    "format_diff",
    "format_json",
    "format_table",
    "render",
    "select_runs",
    "summarize",
    "summarize_runs",
    "table_rows",
    "user_params",
]

#: Metric keys :func:`summarize` needs; histories of other keys are not fetched.
SUMMARY_KEYS = (LOSS, CHECK_PASSED, CHECK_FINDING, CHECK_MAX_REL_ERROR, CHECK_SCALE, ALERT_COUNT)
#: Tags that mark an alert: the ``mlflow`` action's and the monitor's memory.
ALERT_TAG_PREFIXES = (TAG_ALERT, TAG_MONITOR_ALERTED)
OUTPUTS = ("table", "json", "csv")


# ---------------------------------------------------------------------------------- I/O


def select_runs(
    client: Any,
    experiment: str | Sequence[str] | None = None,
    run_ids: Sequence[str] | None = None,
    sweep_id: str | None = None,
    statuses: Sequence[str] | None = None,
) -> list:
    """Runs to compare, oldest first: the given ids, or those of an experiment (and sweep).

    runs = select_runs(client, experiment="mlp", sweep_id="20250101-120000-ab12")
    """
    with mlflow_errors(client.tracking_uri, "cannot select runs"):
        if run_ids:
            return [get_run(client, run_id) for run_id in run_ids]
        if experiment is None:
            raise InputError("give an experiment name or run ids to compare")
        names = [experiment] if isinstance(experiment, str) else list(experiment)
        ids = [lookup_experiment(client, name) for name in names]
        where = f"tags.`{TAG_SWEEP_ID}` = '{_quote(sweep_id)}'" if sweep_id else ""
        runs = search_all(client, ids, where, order_by=["attributes.start_time ASC"])
        if statuses:
            # MLflow's filter language has no OR for status: filter here.
            runs = [r for r in runs if r.info.status in statuses]
        return runs


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def fetch_histories(client: Any, run: Any, keys: Iterable[str] | None = None) -> dict[str, list]:
    """Metric histories of ``run`` (``{key: [Metric, ...]}`` sorted by step).

    Only keys the run has are fetched: ``keys`` (default :data:`SUMMARY_KEYS`) and the
    hook's per-tensor ``nonfinite/*`` and ``gradcheck/clipped/*`` counts. Keys are the
    schema's names in either layout (``gradwatch/loss`` in a run the hook shared is ``loss``).
    """
    names = hook_keys(run.data.metrics, run.data.tags)  # a run shared with the user's logging too
    present = set(names)
    wanted = set(SUMMARY_KEYS if keys is None else keys)
    wanted |= {k for k in present if k.startswith((NONFINITE, CHECK_CLIPPED))}
    return {
        key: metric_history(client, run.info.run_id, names[key]) for key in sorted(wanted & present)
    }


def fetch_check_records(client: Any, run: Any) -> list[dict[str, Any]] | None:
    """The run's ``gradwatch/checks.jsonl`` records, or None when it has none to read."""
    return artifact_records(client, run.info.run_id, ARTIFACT_CHECKS)


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
    start_loss: float | None = None  # smoothed: median of the first tenth
    end_loss: float | None = None  # smoothed: median of the last tenth
    checks_clipped: int = 0  # checks whose probes sat on an element-wise clipping bound
    clip_bound: float | None = None
    grad_scale: float | None = None  # the factor of the engine's ``factor`` findings
    checks_explained: int = 0  # failed checks that are no bug: a factor or the call order
    checks_call_order: int = 0  # failed checks the engine traced to step() after the update
    checks_inconclusive: int = 0  # a non-deterministic loss or check_timeout
    #: The engine's finding of the first failing (else inconclusive) check, from
    #: ``checks.jsonl`` (``Finding.to_dict()`` plus its ``step``): words to show, not to judge.
    finding: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()  # training problems the alerts named ("dead units", ...)

    @property
    def bug_checks(self) -> int:
        """Failed checks the engine called a backprop bug."""
        return self.checks_failed - self.checks_explained

    def verdict_words(self) -> list[str]:
        """The worst things about the run, a few words each, worst first (the verdict column).

        Another diagnosis adds its word here, in its place in the order of severity.
        """
        parts = []
        if self.bug_checks:
            parts.append("BACKPROP BUG")
        elif self.checks_call_order:
            parts.append("CALL ORDER")
        elif self.checks_failed:
            parts.append(f"grads ×{self.grad_scale:.3g}" if self.grad_scale else "grads scaled")
        elif self.checks and self.checks_inconclusive == self.checks:
            parts.append("INCONCLUSIVE")
        if self.diverged:
            parts.append("DIVERGED")
        elif self.stalled:
            parts.append("stalled")
        if self.final_loss is None and not self.diverged:
            parts.append("no loss")
        if self.checks_clipped:
            parts.append("clipped")
        # The problems the alerts named; NaN/Inf already reads as DIVERGED.
        parts.extend(p for p in self.problems if not (self.diverged and p == PROBLEMS["nonfinite"]))
        return parts

    @property
    def verdict(self) -> str:
        """A few words for the table: :meth:`verdict_words` joined, or ``ok``."""
        return " + ".join(self.verdict_words()) or "ok"

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
            "start_loss": _json_float(self.start_loss),
            "end_loss": _json_float(self.end_loss),
            "diverged": self.diverged,
            "stalled": self.stalled,
            "checks": self.checks,
            "checks_failed": self.checks_failed,
            "checks_explained": self.checks_explained,
            "checks_call_order": self.checks_call_order,
            "checks_inconclusive": self.checks_inconclusive,
            "checks_clipped": self.checks_clipped,
            "clip_bound": _json_float(self.clip_bound),
            "grad_scale": _json_float(self.grad_scale),
            "max_rel_error": _json_float(self.max_rel_error),
            "alerts": self.alerts,
            "alert_rules": list(self.alert_rules),
            "problems": list(self.problems),
            "verdict": self.verdict,
            "finding": self.finding,
        }


def diagnosed_problems(tags: Mapping[str, str]) -> tuple[str, ...]:
    """The training problems the run's alerts named (their ``gradwatch.alert.<rule>`` tags),
    in :data:`~gradwatch.schema.PROBLEMS` order: ``("vanishing gradients", "dead units")``."""
    found = {alert_problem(v) for k, v in tags.items() if k.startswith(TAG_ALERT)}
    return tuple(p for p in PROBLEMS.values() if p in found)


def _json_float(value: float | None) -> float | None:
    return value if is_finite(value) else None


def user_params(params: Mapping[str, str]) -> dict[str, str]:
    """The run's own params: the hook's ``gradwatch.*`` settings left out."""
    return {k: v for k, v in params.items() if not k.startswith(PARAM_PREFIX)}


@dataclass(frozen=True)
class _CheckFindings:
    failed: int = 0
    explained: int = 0
    call_order: int = 0
    inconclusive: int = 0
    clipped: int = 0
    clip_bound: float | None = None
    scale: float | None = None
    finding: dict[str, Any] | None = None


def _check_findings(
    histories: Mapping[str, Sequence], records: Sequence[Mapping[str, Any]] | None
) -> _CheckFindings:
    """Count the engine's findings (logged metrics); name the first failing one's words and
    the clipping bound from ``checks.jsonl`` when it was read."""
    kinds = check_findings(
        histories.get(CHECK_PASSED, ()),
        histories.get(CHECK_FINDING, ()),
        histories.get(CHECK_SCALE, ()),
    )
    counts = {kind: 0 for kind in ("bug", "factor", "call_order", "inconclusive")}
    for kind, _ in kinds.values():
        key = "inconclusive" if kind in ("stochastic", "timeout") else kind
        if key in counts:
            counts[key] += 1
    factors = [f for kind, f in kinds.values() if kind == "factor" and f is not None]
    scale = None
    if factors and max(factors) - min(factors) <= 0.01 * abs(min(factors)):
        scale = factors[0]
    clipped_steps = {
        m.step
        for k, h in histories.items()
        if k.startswith(CHECK_CLIPPED)
        for m in h
        if m.value > 0
    }
    bound, first, first_inconclusive = None, None, None
    for record in records or ():
        if not isinstance(record, Mapping):
            continue
        if (c := clip_bound(record)) is not None:
            clipped_steps.add(record.get("step"))
            bound = c
        report = CheckReport.from_dict(record)
        words = {"step": record.get("step"), **report.finding.to_dict()}
        if report.status == "failed" and first is None:
            first = words
        elif report.status == "inconclusive" and first_inconclusive is None:
            first_inconclusive = words
    failed = counts["bug"] + counts["factor"] + counts["call_order"]
    return _CheckFindings(
        failed=failed,
        explained=counts["factor"] + counts["call_order"],
        call_order=counts["call_order"],
        inconclusive=counts["inconclusive"],
        clipped=len(clipped_steps),
        clip_bound=bound,
        scale=scale,
        finding=first or first_inconclusive,
    )


def summarize(
    run: Any,
    histories: Mapping[str, Sequence],
    check_records: Sequence[Mapping[str, Any]] | None = None,
) -> RunSummary:
    """The :class:`RunSummary` of ``run`` from its metric histories (``fetch_histories``) and,
    for runs with failed checks, its ``checks.jsonl`` records (``fetch_check_records``)."""
    loss = loss_verdict([m.value for m in histories.get(LOSS, ())])
    diverged = loss.diverged or any(
        m.value > 0 for k, h in histories.items() if k.startswith(NONFINITE) for m in h
    )
    passed = [m.value for m in histories.get(CHECK_PASSED, ())]
    rel = [m.value for m in histories.get(CHECK_MAX_REL_ERROR, ())]
    # A check whose error is NaN is as bad as it gets; rank it above every number.
    max_rel = max((v if is_finite(v) else math.inf) for v in rel) if rel else None
    tags = run.data.tags
    rules = sorted(
        {k[len(p) :] for k in tags for p in ALERT_TAG_PREFIXES if k.startswith(p) and k[len(p) :]}
    )
    counts = [m.value for m in histories.get(ALERT_COUNT, ())]
    findings = _check_findings(histories, check_records)
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or tags.get("mlflow.runName", "") or run.info.run_id,
        status=run.info.status,
        params=expand_settings(run.data.params),
        steps=max((m.step for h in histories.values() for m in h), default=None),
        first_loss=loss.first,
        final_loss=loss.final,
        best_loss=loss.best,
        diverged=diverged,
        stalled=loss.stalled and not diverged,
        checks=len(passed),
        checks_failed=findings.failed,
        max_rel_error=max_rel,
        alerts=max(int(max(counts)) if counts else 0, len(rules)),
        alert_rules=tuple(rules),
        tags={k: v for k, v in tags.items() if k.startswith(TAG_PREFIX)},
        start_loss=loss.start,
        end_loss=loss.end,
        checks_clipped=findings.clipped,
        clip_bound=findings.clip_bound,
        grad_scale=findings.scale,
        checks_explained=findings.explained,
        checks_call_order=findings.call_order,
        checks_inconclusive=findings.inconclusive,
        finding=findings.finding,
        problems=diagnosed_problems(tags),
    )


def summarize_runs(
    client: Any, runs: Sequence, progress: Callable[[Any], None] | None = None
) -> list[tuple[RunSummary, RunCurves]]:
    """Fetch each run's histories once; return its summary and plot curves.

    The ``checks.jsonl`` artifact is read only for runs with checks that failed, were
    inconclusive or clipped, for the words of the engine's finding and the clipping bound
    (the verdict itself comes from the logged findings). ``progress(run)`` is called after each run (for a progress bar).
    """
    out = []
    with mlflow_errors(client.tracking_uri, "cannot read runs"):
        for run in runs:
            histories = fetch_histories(client, run)
            records = None
            clipped = any(
                m.value > 0 for k, h in histories.items() if k.startswith(CHECK_CLIPPED) for m in h
            )
            if clipped or any(not m.value >= 0.5 for m in histories.get(CHECK_PASSED, ())):
                # For the words and the bound only: the verdict is in the metrics.
                records = fetch_check_records(client, run)
            summary = summarize(run, histories, records)
            out.append((summary, curves_from(summary, histories)))
            if progress is not None:
                progress(run)
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


def differing_params(summaries: Sequence[RunSummary]) -> dict[str, dict[str, str]]:
    """Only the params whose values differ between the runs: ``{run_name: {param: value}}``.

    A param missing from some runs differs (shown as ``-``). The hook's settings count too.
    """
    # A monitor's claims (one param per alert it delivered) are bookkeeping, not settings.
    keys = sorted({k for s in summaries for k in s.params if not k.startswith(PARAM_MONITOR_CLAIM)})
    differ = [k for k in keys if len({s.params.get(k) for s in summaries}) > 1]
    return {s.run_name: {k: s.params.get(k, "-") for k in differ} for s in summaries}


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
    header = [
        "run",
        *pcols,
        "last step",
        "final loss",
        "best loss",
        "diverged",
        "checks",
        "failed",
        "max rel err",
        "alerts",
        "verdict",
    ]
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


def _fixed_width(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_table(summaries: Sequence[RunSummary]) -> str:
    """A fixed-width text table, one line per run (numbers right-aligned)."""
    if not summaries:
        return "(no runs)"
    header, rows = table_rows(summaries)
    # name, alerts and verdict read left to right
    out = _fixed_width(header, rows, {0, len(header) - 1, len(header) - 2})
    shared = _param_columns(summaries)[1]
    if shared:
        out.append("same for all runs: " + ", ".join(f"{k}={v}" for k, v in shared.items()))
    notes = _notes(summaries)
    return "\n".join(out + notes)


def _notes(summaries: Sequence[RunSummary]) -> list[str]:
    """One line per run whose checks did not all pass: the engine's finding and its hint."""
    notes = []
    for s in summaries:
        if s.finding is not None:
            step = s.finding.get("step")
            at = f" (first at step {step})" if step is not None else ""
            notes.append(f"{s.run_name}: {s.finding.get('headline')}{at}: {s.finding.get('hint')}")
        elif s.checks_failed or s.checks_inconclusive:
            notes.append(
                f"{s.run_name}: the checks' details (checks.jsonl) could not be read; "
                "`gradwatch report` shows them when the artifact lands"
            )
        if s.checks_clipped:
            bound = f" at ±{s.clip_bound:g}" if s.clip_bound is not None else ""
            notes.append(
                f"{s.run_name}: gradients clipped element-wise{bound}; the checks "
                "compared clipped gradients with the true slope: check the gradients "
                "before clipping (call step() before you clip)"
            )
    return notes


def format_diff(summaries: Sequence[RunSummary]) -> str:
    """A table of only the params that differ between the runs (``compare --diff-only``)."""
    if not summaries:
        return "(no runs)"
    diff = differing_params(summaries)
    keys = sorted({k for values in diff.values() for k in values}, key=lambda k: (k != "lr", k))
    if not keys:
        return f"all {len(summaries)} run(s) have the same params"
    rows = [[s.run_name, *(diff[s.run_name][k] for k in keys)] for s in summaries]
    return "\n".join(_fixed_width(["run", *keys], rows, set(range(len(keys) + 1))))


def format_json(summaries: Sequence[RunSummary], diff_only: bool = False) -> str:
    """A JSON list, one record per run (see :meth:`RunSummary.to_record`)."""
    records = [s.to_record() for s in summaries]
    if diff_only:
        diff = differing_params(summaries)
        records = [
            {"run_id": r["run_id"], "run_name": r["run_name"], "params": diff[r["run_name"]]}
            for r in records
        ]
    return json.dumps(records, indent=2, allow_nan=False)


def format_csv(summaries: Sequence[RunSummary], diff_only: bool = False) -> str:
    """CSV with a header; params flattened to ``params.<name>`` columns (MLflow's own naming)."""
    if diff_only:
        diff = differing_params(summaries)
        pkeys = sorted({k for values in diff.values() for k in values})
        fields = ["run_id", "run_name", *(f"params.{k}" for k in pkeys)]
    else:
        pkeys = sorted({k for s in summaries for k in s.params})
        fields = [
            "run_id",
            "run_name",
            "status",
            *(f"params.{k}" for k in pkeys),
            "last_step",
            "first_loss",
            "final_loss",
            "best_loss",
            "start_loss",
            "end_loss",
            "diverged",
            "stalled",
            "checks",
            "checks_failed",
            "checks_explained",
            "checks_call_order",
            "checks_inconclusive",
            "checks_clipped",
            "max_rel_error",
            "alerts",
            "alert_rules",
            "verdict",
        ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for s in summaries:
        rec = s.to_record()
        params = rec.pop("params")
        rec.update({f"params.{k}": params.get(k, "") for k in pkeys})
        rec["alert_rules"] = ";".join(rec["alert_rules"])
        writer.writerow({k: ("" if rec.get(k) is None else rec[k]) for k in fields})
    return buf.getvalue()


def render(summaries: Sequence[RunSummary], output: str, diff_only: bool = False) -> str:
    """``format_table``/``format_json``/``format_csv`` by name (one of :data:`OUTPUTS`);
    with ``diff_only`` only the params that differ between the runs."""
    if output not in OUTPUTS:
        raise InputError(f"output format must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if output == "json":
        return format_json(summaries, diff_only)
    if output == "csv":
        return format_csv(summaries, diff_only)
    return format_diff(summaries) if diff_only else format_table(summaries)


# ---------------------------------------------------------------------------- curves


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
        loss=points(LOSS),
        rel_error=points(CHECK_MAX_REL_ERROR),
        diverged=summary.diverged,
        checks_failed=summary.bug_checks,
    )


def fetch_curves(client: Any, run: Any) -> RunCurves:
    """Fetch and build the :class:`RunCurves` of ``run``."""
    with mlflow_errors(client.tracking_uri, "cannot read runs"):
        histories = fetch_histories(client, run)
    return curves_from(summarize(run, histories), histories)
