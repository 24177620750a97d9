"""`occlufer report`: from a recorded session to figures and one self-contained report.html.

A session is a folder the app's Record wrote (frames.csv, metadata.json, maybe video.mp4) or
any CSV of `occlufer run`. The report writes one PNG per figure (to drop into a paper) and a
report.html that embeds them as data URIs, so the HTML can be mailed or archived alone.
Everything is computed from the CSV alone; nothing is re-run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.report.html import render_html
from app.report.summary import SessionSummary, frame_clock, row_durations, summarize
from app.session_csv import Session, open_session

__all__ = ["Report", "write_report"]


@dataclass
class Report:
    html: Path
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG
    summary: SessionSummary | None = None
    notes: list[str] = field(default_factory=list)


def write_report(source: Path | str | Session, out: Path | str) -> Report:
    """Write the figures and report.html of `source` (a session, folder or CSV) into `out`."""
    from app.report import figures as fig

    session = source if isinstance(source, Session) else open_session(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = session.table
    summary = summarize(table)
    clock = frame_clock(table)
    durations = row_durations(table, clock)
    classes = table.classes
    drawn: dict[str, bytes] = {}
    for track in summary.tracks:
        drawn[f"track_{track.track_id}"] = fig.png_bytes(
            fig.track_timeline(table, track, classes, durations))
    drawn["expression_time"] = fig.png_bytes(fig.expression_time(summary, classes))
    if any(t.hidden_seconds for t in summary.tracks):
        drawn["hidden_parts"] = fig.png_bytes(fig.hidden_parts(summary))
    drawn["continuity"] = fig.png_bytes(fig.continuity(table, summary, clock, durations))
    drawn["latency"] = fig.png_bytes(fig.latency(table, clock))
    report = Report(html=out / "report.html", summary=summary, notes=list(session.notes))
    for name, data in drawn.items():
        path = out / f"{name}.png"
        path.write_bytes(data)
        report.figures[name] = path
    report.html.write_text(render_html(session, summary, drawn), encoding="utf-8")
    return report
