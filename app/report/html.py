"""report.html: the summary tables and the figures (embedded as PNG data URIs) in one file.

Self-contained on purpose: a report is mailed, archived with a paper's data or opened years
later, and must not depend on PNGs lying beside it (they are written too, for papers).
"""

from __future__ import annotations

import base64
import html
from typing import Any

from app import __version__
from app.report.summary import SessionSummary
from app.session_csv import Session

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;
color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:.85em;word-break:break-all} img{max-width:100%}
.note{background:#fff4d6;border-left:4px solid #e6a700;padding:.5em 1em}
"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="num">{value:,.2f}</td>'
        if isinstance(value, int):
            return f'<td class="num">{value:,}</td>'
        return f"<td>{value}</td>"  # already escaped by the caller where it is user data

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<p><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'
            f'<br><small>{html.escape(name)}.png</small></p>')


def _models(session: Session, summary: SessionSummary) -> str:
    meta = session.metadata
    if not meta:
        named = ", ".join(html.escape(m) for m in summary.models) or "none"
        return ("<p>No metadata.json beside this CSV (an <code>occlufer run</code> CSV or a "
                f"copied file): the expression model column names {named}; sha256s unknown.</p>")
    rows = []
    for name, info in (meta.get("models") or {}).items():
        rows.append([html.escape(name), html.escape(str(info.get("task", ""))),
                     html.escape(str(info.get("provider") or "")),
                     f"<code>{html.escape(str(info.get('sha256', '')))}</code>"])
    facts = [["app", html.escape(f"{meta.get('app', '')} {meta.get('app_version', '')}")],
             ["onnxruntime", html.escape(str(meta.get("onnxruntime", "")))],
             ["device", html.escape(str(meta.get("device", "")))],
             ["source", html.escape(str(meta.get("source", "")))],
             ["started", html.escape(str(meta.get("started", "")))],
             ["ended", html.escape(str(meta.get("ended", "(not recorded: the session did not "
                                                      "close normally)")))],
             ["stopped because", html.escape(str(meta.get("stopped_because", "")))]]
    timeline = meta.get("model_timeline") or []
    switches = ", ".join(f"frame {t.get('frame')}: {html.escape(str(t.get('model')))}"
                         for t in timeline)
    if switches:
        facts.append(["model timeline", switches])
    return _table(["", ""], facts) + _table(["model", "task", "provider", "sha256"], rows)


def render_html(session: Session, summary: SessionSummary, figures: dict[str, bytes]) -> str:
    name = html.escape(session.name)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>occlufer report: {name}"
             f"</title><style>{CSS}</style></head><body><h1>Session {name}</h1>"]
    parts.append(f"<p><code>{html.escape(str(session.table.path))}</code> &middot; "
                 f"report by occlufer {html.escape(__version__)}</p>")
    for note in session.notes:
        parts.append(f'<p class="note">{html.escape(note)}</p>')
    parts.append(_table(["rows", "frames", "seconds", "tracks", "frames without a face",
                         "track starts / resumes after the first frame"],
                        [[summary.rows, summary.frames, summary.duration, len(summary.tracks),
                          summary.no_face_frames, summary.redetections]]))

    parts.append("<h2>Expressions per track</h2>")
    for track in summary.tracks:
        key = f"track_{track.track_id}"
        if key in figures:
            parts.append(_image(key, figures[key], f"track {track.track_id} over time"))
    track_rows = []
    for t in summary.tracks:
        top = max(t.expression_seconds.items(), key=lambda kv: kv[1], default=("", 0.0))
        track_rows.append([t.track_id, t.first, t.last, t.seconds, len(t.segments),
                           "" if t.detected_share is None else f"{100 * t.detected_share:.0f} %",
                           html.escape(top[0]),
                           "" if t.mean_occlusion is None else f"{100 * t.mean_occlusion:.1f} %"])
    parts.append(_table(["track", "first s", "last s", "present s", "segments", "detected",
                         "most time in", "mean occluded share"], track_rows))
    parts.append(_image("expression_time", figures["expression_time"], "time per expression"))
    classes = sorted({c for t in summary.tracks for c in t.expression_seconds})
    parts.append(_table(["track"] + classes,
                        [[t.track_id] + [t.expression_seconds.get(c, 0.0) for c in classes]
                         for t in summary.tracks]))

    parts.append("<h2>Hidden face parts</h2>")
    if "hidden_parts" in figures:
        parts.append(_image("hidden_parts", figures["hidden_parts"], "hidden face parts"))
        hidden = sorted({p for t in summary.tracks for p in t.hidden_seconds})
        parts.append(_table(["track"] + [f"{p} s" for p in hidden],
                            [[t.track_id] + [t.hidden_seconds.get(p, 0.0) for p in hidden]
                             for t in summary.tracks]))
    else:
        parts.append("<p>No occlusion stage ran in this session (no vis_&lt;part&gt; values).</p>")

    parts.append("<h2>Detection and tracking continuity</h2>")
    parts.append(_image("continuity", figures["continuity"], "continuity"))
    gap_rows = [[html.escape(g.kind), g.start, g.end, g.frames] for g in summary.gaps[:200]]
    if gap_rows:
        more = len(summary.gaps) - len(gap_rows)
        parts.append(_table(["gap", "from s", "to s", "frames"], gap_rows)
                     + (f"<p>… and {more} more gaps.</p>" if more > 0 else ""))
    else:
        parts.append("<p>No gaps: a face was found on every analysed frame.</p>")

    parts.append("<h2>Latency</h2>")
    parts.append(_image("latency", figures["latency"], "latency"))
    parts.append(_table(["stage", "p50 ms", "p95 ms", "max ms"],
                        [[s, v["p50"], v["p95"], v["max"]] for s, v in summary.latency.items()]))

    parts.append("<h2>Models</h2>")
    parts.append(_models(session, summary))
    parts.append("</body></html>")
    return "\n".join(parts)
