"""The run report: one self-contained HTML file (no scripts, nothing from the network).

    html = render_report(data)                       # draws the pictures itself
    html = render_report(data, images)               # or takes them ready (ReportImages)

Every string that came from the user or the run (names, params, tags, alert texts, the
config) is HTML-escaped and passed through gradwatch.secrets.mask_uri; pictures are PNGs in
``data:`` URIs. A Content-Security-Policy in the page forbids scripts and every fetch, so
even a string that slipped through escaping could run nothing nor call anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from gradwatch import __version__
from gradwatch.check import VERDICTS
from gradwatch.report.data import RunData
from gradwatch.report.problems import problems_section
from gradwatch.runs.compare import RunSummary, user_params
from gradwatch.schema import (
    ARTIFACT_CHECKS,
    PARAM_PREFIX,
    TAG_ALERT,
    TAG_ERROR,
    TAG_PREFIX,
    TAG_STOP_REASON,
    float_or_nan,
)
from gradwatch.secrets import mask_uri

__all__ = ["ReportImages", "render_report"]

#: Worst probes listed per check: more for a failed check, whose coordinates are the point.
WORST_PASSED, WORST_FAILED = 5, 12
#: Passing checks listed (the latest); every failing one always is.
PASSED_SHOWN = 50
_SEVERITY = {v: i for i, v in enumerate(VERDICTS)}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:16px 24px;
color:#1d1d1f;background:#fff;font-size:14px;line-height:1.4}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}.sub{color:#555;font-size:13px}
.verdict{margin:14px 0;padding:12px 16px;border-radius:6px;border-left:8px solid}
.verdict .word{font-size:24px;font-weight:700}.verdict ul{margin:6px 0 0;padding-left:20px}
.bad{background:#fdecea;border-color:#d93025}.warn{background:#fff4e0;border-color:#f29900}
.good{background:#e8f5e9;border-color:#1e8e3e}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.facts td:first-child{color:#555}
.v-ok{color:#1e8e3e}.v-noise,.v-kink{color:#5f6368}.v-clipped{color:#b06000}
.v-mismatch,.v-failed,.v-inconclusive{color:#d93025;font-weight:600}.v-passed{color:#1e8e3e}
img{display:block;max-width:100%;height:auto;border:1px solid #eee;margin:8px 0}
pre{background:#f7f7f7;border:1px solid #e5e5e5;padding:8px;overflow:auto;font-size:12px}
details{margin:4px 0}summary{cursor:pointer}.note{color:#555;font-size:12px}
"""


@dataclass(frozen=True)
class ReportImages:
    """The report's pictures as PNG bytes (None: nothing to draw, or drawing failed)."""

    curves: bytes | None = None
    histograms: bytes | None = None
    note: str | None = None  # why there are none (matplotlib missing)


def render_report(data: RunData, images: ReportImages | None = None) -> str:
    """The run report of ``data`` as one HTML document (see the module docstring).

        Path("report.html").write_text(render_report(from_mlflow(run_id)), encoding="utf-8")

    ``images``: pictures already drawn (by :func:`gradwatch.report.draw_images`); drawn here
    when not given.
    """
    if images is None:
        from gradwatch.report.artifacts import draw_images

        images = draw_images(data)
    summary = data.summary()
    title = f"gradwatch report: {data.run_name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        _header(data),
        _verdict(data, summary),
        problems_section(data),  # the training problems the alerts named: the first section
        _facts(data, summary),
        _curves(images.curves, images.note),
        _checks(data.checks),
        _alerts(data),
        _distributions(images.histograms, data.histograms, images.note),
        _settings(data),
        f'<p class="sub">Drawn by gradwatch {_e(__version__)} from the run\'s '
        f"{_e(data.source or 'data')} at {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    """Escaped, secret-free text of anything shown."""
    return escape(mask_uri(str(value)), quote=True)


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None or value == "":
        return "-"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x) or abs(x) >= 1.7e308:
        return "inf" if x > 0 else "-inf"
    return format(x, fmt)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table; cells are HTML already (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(cell: str) -> str:
    return cell if cell.startswith("<td") else f"<td>{cell}</td>"


def _numcell(value: Any, fmt: str = ".3g") -> str:
    return f'<td class="num">{_num(value, fmt)}</td>'


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<img src="{src}" alt="{_e(alt)}">'


# ---------------------------------------------------------------------------- sections


def _header(data: RunData) -> str:
    where = [f"run <code>{_e(data.run_id or '(not yet in MLflow)')}</code>"]
    if data.experiment:
        where.append(f"experiment {_e(data.experiment)}")
    if data.tracking_uri:
        where.append(f"at {_e(data.tracking_uri)}")
    where.append(f"status {_e(data.status)}")
    return f'<h1>{_e(data.run_name)}</h1><div class="sub">{", ".join(where)}</div>'


def _finding_lines(summary: RunSummary) -> list[str]:
    """The checks' verdict in words: the engine's finding of the first failing check."""
    f = summary.finding
    if summary.checks_failed or (summary.checks_inconclusive and summary.checks):
        if f is not None:
            where = f" at step {f.get('step')}" if f.get("step") is not None else ""
            failed = f"{summary.checks_failed} of {summary.checks} gradient check(s) failed"
            if not summary.checks_failed:
                failed = f"{summary.checks_inconclusive} of {summary.checks} check(s) inconclusive"
            return [f"{f.get('headline')}{where} ({failed}).", f"Likeliest cause: {f.get('hint')}"]
        return [
            f"{summary.checks_failed} of {summary.checks} gradient check(s) failed, "
            f"{summary.checks_inconclusive} inconclusive; their details (checks.jsonl) are missing."
        ]
    return []


def _verdict_lines(summary: RunSummary) -> list[str]:
    """The verdict box's lines, worst first. Another diagnosis adds its lines here."""
    lines = _finding_lines(summary)
    if summary.diverged:
        lines.append(
            "The loss (or a tensor) went non-finite, or the smoothed loss rose past "
            "10× its best and ended above its start."
        )
    elif summary.stalled:
        lines.append(
            "Stalled: the smoothed loss at the end is no lower than at the start "
            "(within the batches' noise)."
        )
    if summary.checks_clipped:
        bound = f" at ±{summary.clip_bound:g}" if summary.clip_bound is not None else ""
        lines.append(
            f"Gradients were clipped element-wise{bound}: the checks compared clipped "
            "gradients with the true slope. Not a bug; check before clipping."
        )
    if summary.final_loss is None and not summary.diverged:
        lines.append("The run logged no loss.")
    if not lines:
        lines.append("No failed gradient check, no divergence, and the loss went down.")
    return lines


def _verdict(data: RunData, summary: RunSummary) -> str:
    word = summary.verdict
    bad = "BUG" in word or "DIVERGED" in word or "CALL ORDER" in word
    tone = "bad" if bad else ("good" if word == "ok" else "warn")
    items = [_e(line) for line in _verdict_lines(summary)]
    for tag, what in ((TAG_STOP_REASON, "stopped by an alert"), (TAG_ERROR, "error")):
        if data.tags.get(tag):
            items.append(f"{what}: {_e(data.tags[tag])}")
    lis = "".join(f"<li>{i}</li>" for i in items)
    return (
        f'<div class="verdict {tone}" id="verdict"><div>verdict</div>'
        f'<div class="word">{_e(word)}</div><ul>{lis}</ul></div>'
    )


def _facts(data: RunData, s: RunSummary) -> str:
    rows = [
        ("last step", _e("-" if s.steps is None else s.steps)),
        (
            "loss: first → final (best)",
            f"{_num(s.first_loss, '.4g')} → {_num(s.final_loss, '.4g')} ({_num(s.best_loss, '.4g')})",
        ),
        (
            "gradient checks",
            f"{s.checks} run, {s.checks_failed} failed"
            + (f" ({s.checks_explained} explained)" if s.checks_explained else "")
            + (f", {s.checks_inconclusive} inconclusive" if s.checks_inconclusive else ""),
        ),
        ("worst relative error", _num(s.max_rel_error, ".2e")),
        ("alerts", _e(str(s.alerts) + (f" ({', '.join(s.alert_rules)})" if s.alert_rules else ""))),
    ]
    return _table(["", ""], rows, "facts").replace("<thead><tr><th></th><th></th></tr></thead>", "")


def _curves(png: bytes | None, note: str | None) -> str:
    if not png and note:
        return f"<h2>Curves</h2><p>No pictures: {_e(note)}.</p>"
    if not png:
        return "<h2>Curves</h2><p>No loss and no gradient checks were logged.</p>"
    return (
        '<h2>Curves</h2><p class="note">Top: loss (and lr, dashed). Bottom: each tensor\'s '
        "worst relative error per gradient check; below 1e-7 is good (float64), 1e-4 to "
        "1e-2 suspicious, above 1e-2 a bug.</p>" + _img(png, "loss and gradient-check errors")
    )


def _probes(check: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    out = []
    for name, tensor in (check.get("per_param") or {}).items():
        if not isinstance(tensor, Mapping):
            continue
        for probe in list(tensor.get("coords") or ()) + list(tensor.get("directions") or ()):
            if isinstance(probe, Mapping):
                out.append((str(name), probe))

    def key(item: tuple[str, Mapping[str, Any]]) -> tuple[int, float]:
        rel = float_or_nan(item[1].get("rel_error"))
        return _SEVERITY.get(str(item[1].get("verdict")), 0), (math.inf if rel != rel else rel)

    return sorted(out, key=key, reverse=True)


def _verdict_cell(verdict: Any) -> str:
    v = str(verdict)
    return f'<td class="v-{_e(v)}">{_e(v)}</td>'


def _check_status(check: Mapping[str, Any]) -> str:
    return str(check.get("status") or ("passed" if check.get("passed") else "failed"))


def _shown_checks(checks: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Every check that did not pass, and the last :data:`PASSED_SHOWN` that did: a long run's
    thousands of passing checks would make the page too big to open (or to upload)."""
    passed = [i for i, c in enumerate(checks) if _check_status(c) == "passed"]
    hidden = set(passed[:-PASSED_SHOWN]) if len(passed) > PASSED_SHOWN else set()
    return [c for i, c in enumerate(checks) if i not in hidden]


def _checks(checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return "<h2>Gradient checks</h2><p>No gradient checks in this run.</p>"
    total, shown = len(checks), _shown_checks(checks)
    left_out = (
        f"<p>{total - len(shown)} earlier passing checks are not listed; every "
        f"check is in {_e(ARTIFACT_CHECKS)}.</p>"
        if len(shown) < total
        else ""
    )
    checks = shown
    rows = []
    for c in checks:
        tensors = "; ".join(
            f'{_e(n)}: <span class="v-{_e(t.get("verdict"))}">{_e(t.get("verdict"))}</span> '
            f"{_num(t.get('max_rel_error'), '.1e')}"
            + (f" ({_e(t.get('num_mismatches'))} mismatching)" if t.get("num_mismatches") else "")
            for n, t in (c.get("per_param") or {}).items()
            if isinstance(t, Mapping)
        )
        rows.append(
            [
                _e(c.get("step", "-")),
                _verdict_cell(_check_status(c)),
                _numcell(c.get("max_rel_error"), ".2e"),
                _numcell(c.get("difference"), ".2e"),
                _numcell(c.get("num_evals"), ".0f"),
                _numcell(c.get("seconds"), ".3f"),
                tensors,
            ]
        )
    table = _table(
        [
            "step",
            "result",
            "max rel error",
            "difference",
            "loss evals",
            "seconds",
            "tensors: verdict, worst error",
        ],
        rows,
        "checks",
    )
    details = "".join(_check_details(c) for c in checks)
    return (
        f'<h2 id="checks">Gradient checks ({total})</h2>{left_out}{table}'
        f"<h3>Worst coordinates of each check</h3>"
        f'<p class="note">Each check\'s probes, collapsed: open one to see them.</p>{details}'
    )


def _check_details(check: Mapping[str, Any]) -> str:
    status = _check_status(check)
    failed = status != "passed"
    finding = check.get("finding")
    probes = _probes(check)[: WORST_FAILED if failed else WORST_PASSED]
    rows = []
    for name, p in probes:
        index = p.get("index")
        where = (
            f"[{','.join(_e(i) for i in index)}]"
            if isinstance(index, list)
            else f"direction over {_e(p.get('size', '?'))} coords"
        )
        rows.append(
            [
                _e(name),
                where,
                _numcell(p.get("analytic"), ".6g"),
                _numcell(p.get("numeric"), ".6g"),
                _numcell(p.get("rel_error"), ".1e"),
                _numcell(p.get("resolved"), ".1e"),
                _verdict_cell(p.get("verdict")),
                _e(p.get("note", "")),
            ]
        )
    table = (
        _table(
            [
                "tensor",
                "coordinate",
                "analytic",
                "numeric",
                "rel error",
                "resolved",
                "verdict",
                "note",
            ],
            rows,
        )
        if rows
        else "<p>No probes recorded.</p>"
    )
    texts = list(check.get("notes") or ())
    if failed and isinstance(finding, Mapping) and finding.get("hint"):
        texts.insert(0, f"hint: {finding.get('hint')}")
    notes = "".join(f'<li class="note">{_e(n)}</li>' for n in texts)
    headline = ""
    if failed and isinstance(finding, Mapping) and finding.get("headline"):
        headline = f": {_e(finding.get('headline'))}"
    summary = (
        f'step {_e(check.get("step", "-"))}: <span class="v-{_e(status)}">{_e(status)}</span>'
        f"{headline}, max rel error {_num(check.get('max_rel_error'), '.2e')}"
    )
    return f"<details><summary>{summary}</summary>{table}<ul>{notes}</ul></details>"


def _alerts(data: RunData) -> str:
    if data.alerts:
        rows = [
            [
                _e(a.get("step", "-")),
                _e(a.get("severity", "")),
                _e(a.get("rule", "")),
                _e(a.get("message", "")),
            ]
            for a in data.alerts
        ]
        return f"<h2>Alerts ({len(rows)})</h2>" + _table(
            ["step", "severity", "rule", "message"], rows
        )
    tagged = {k[len(TAG_ALERT) :]: v for k, v in data.tags.items() if k.startswith(TAG_ALERT)}
    if tagged:
        rows = [[_e(rule), _e(text)] for rule, text in sorted(tagged.items())]
        return "<h2>Alerts</h2>" + _table(["rule", "latest alert"], rows)
    return "<h2>Alerts</h2><p>No alerts.</p>"


def _distributions(png: bytes | None, records: Sequence[Any], note: str | None) -> str:
    if png:
        return (
            '<h2>Distributions</h2><p class="note">|gradient| and |parameter| of each '
            "tensor over the steps: colour is the share of the tensor's entries in each "
            "log-spaced bin; the strip below shows exactly-zero and NaN/Inf entries.</p>"
            + _img(png, "gradient and parameter distributions over the steps")
        )
    if records and note:
        return f"<h2>Distributions</h2><p>No pictures: {_e(note)}.</p>"
    if records:
        return "<h2>Distributions</h2><p>The histogram records could not be drawn.</p>"
    return "<h2>Distributions</h2><p>No histograms in this run.</p>"


def _kv_table(values: Mapping[str, str]) -> str:
    if not values:
        return "<p>(none)</p>"
    return _table(["name", "value"], [[_e(k), _e(v)] for k, v in sorted(values.items())])


def _settings(data: RunData) -> str:
    hook = {k: v for k, v in data.params.items() if k.startswith(PARAM_PREFIX)}
    tags = {k: v for k, v in data.tags.items() if k.startswith(TAG_PREFIX)}
    parts = [
        "<h2>Settings</h2>",
        "<h3>Params</h3>",
        _kv_table(user_params(data.params)),
        "<h3>gradwatch settings</h3>",
        _kv_table(hook),
        "<h3>gradwatch tags</h3>",
        _kv_table(tags),
    ]
    if data.config_text is not None:
        parts.append(
            f"<h3>Config ({_e(data.config_name or 'gradwatch.yaml')})</h3>"
            f"<pre>{_e(data.config_text)}</pre>"
        )
    return "".join(parts)
