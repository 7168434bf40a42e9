"""The run's verdict where MLflow users look: a tag for the runs table, the run page's description.

    tags = verdict_tags(journal_path, report_link="#/experiments/1/runs/abc/artifacts/gradwatch/report.html")
    tags["gradwatch.verdict"]      # "BACKPROP BUG + stalled", the words ``gradwatch compare`` uses
    tags["mlflow.note.content"]    # markdown: the verdict, its reason, where the report is

The verdict is the report's (:meth:`RunData.summary`, i.e. ``gradwatch compare``'s summary of the
same journal): nothing here judges anew. The hook writes these tags into the journal right
before the run's end record, so they land with the run, exactly once, whatever the outage.
"""

from __future__ import annotations

import os

from gradwatch.report.data import RunData
from gradwatch.report.html import _verdict_lines as verdict_lines
from gradwatch.report.readers import from_journal
from gradwatch.schema import ARTIFACT_REPORT, TAG_ERROR, TAG_NOTE, TAG_STOP_REASON, TAG_VERDICT

__all__ = ["run_description", "tags_of", "verdict_tags"]

#: MLflow keeps tag values up to 8000 characters; the description stays well below.
MAX_NOTE = 4000


def verdict_tags(
    journal_path: str | os.PathLike,
    report_link: str | None = None,
    report: bool = True,
    run_id: str | None = None,
    user_note: bool = False,
) -> dict[str, str]:
    """``{"gradwatch.verdict": word, "mlflow.note.content": markdown}`` of the journal's run.

    ``report_link``: where the report artifact opens (a UI link); ``report``: whether one is
    drawn at the end of the run. ``user_note``: the run already has a description of the
    user's (a run the hook shares): it is left alone and only the verdict tag is returned.
    """
    data = from_journal(journal_path, run_id=run_id)
    return tags_of(data, report_link, report, user_note)


def tags_of(
    data: RunData, report_link: str | None = None, report: bool = True, user_note: bool = False
) -> dict[str, str]:
    """:func:`verdict_tags` of a run already read (one read of the journal can serve the
    report's drawing and these tags)."""
    word = data.summary().verdict
    tags = {TAG_VERDICT: word}
    if not user_note:
        tags[TAG_NOTE] = run_description(data, word, report_link, report)
    return tags


def run_description(data: RunData, word: str, report_link: str | None, report: bool) -> str:
    """The run page's description (markdown): the verdict, its reasons, the report."""
    lines = [f"**gradwatch verdict: {word}**", ""]
    lines += [f"- {line}" for line in verdict_lines(data.summary())]
    for tag, what in ((TAG_STOP_REASON, "Stopped by an alert"), (TAG_ERROR, "Training failed")):
        if data.tags.get(tag):
            lines.append(f"- {what}: {_plain(data.tags[tag])[:500]}")
    lines.append("")
    redraw = f"`gradwatch report {data.run_id}`" if data.run_id else "`gradwatch report RUN_ID`"
    if not report:
        lines.append(f"No report was drawn (report=False); {redraw} draws one.")
    elif report_link:
        lines.append(
            f"Report: [{ARTIFACT_REPORT}]({report_link}) (Artifacts tab); {redraw} draws it again."
        )
    else:
        lines.append(
            f"Report: the artifact `{ARTIFACT_REPORT}` (Artifacts tab); {redraw} draws it again."
        )
    text = "\n".join(lines)
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 3] + "..."


def _plain(text: str) -> str:
    """One line of ``text`` that markdown shows as written (no links, emphasis or HTML)."""
    line = " ".join(str(text).split())
    for ch in "\\`*_[]<>#|":
        line = line.replace(ch, "\\" + ch)
    return line
