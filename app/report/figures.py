"""The report's figures, drawn by matplotlib's Agg canvas (no display, no pyplot state).

`Figure` + `FigureCanvasAgg` instead of pyplot: nothing global is touched, so the report runs
headless, inside the Qt app or in a notebook without changing anyone's backend. Long sessions
are averaged into at most `MAX_POINTS` bins per curve before drawing: a 30-minute session has
54,000 rows, far more than a figure has pixels, and drawing them all costs seconds for nothing.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from app.class_colours import class_hex
from app.errors import OccluferError
from app.pipeline.occlusion_map import PARTS
from app.report.summary import FrameClock, SessionSummary, TrackSummary
from app.session_csv import SessionTable

MAX_POINTS = 1500
DPI = 110
STAGE_COLOURS = {"detect": "#1f77b4", "track": "#8c564b", "align": "#7f7f7f",
                 "landmarks": "#2ca02c", "occlusion": "#9467bd", "expression": "#ff7f0e",
                 "frame": "#000000"}


def _matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise OccluferError("occlufer report draws its figures with matplotlib, which is not "
                            "installed here: pip install 'matplotlib>=3.8'") from None
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def binned(x: np.ndarray, ys: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(x, ys) averaged into at most `max_points` equal-count bins (NaN-aware); ys is (N, K)."""
    n = len(x)
    if n <= max_points:
        return x, ys
    edges = np.linspace(0, n, max_points + 1).astype(int)
    counts = np.diff(edges)
    xs = np.add.reduceat(x, edges[:-1]) / counts
    valid = ~np.isnan(ys)
    sums = np.add.reduceat(np.where(valid, ys, 0.0), edges[:-1], axis=0)
    have = np.add.reduceat(valid.astype(float), edges[:-1], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return xs, np.where(have > 0, sums / np.maximum(have, 1), np.nan)


def _label_runs(times: np.ndarray, ends: np.ndarray, labels: np.ndarray) -> dict[str, list]:
    """label -> [(start, width)] of consecutive rows sharing a label (for `broken_barh`)."""
    runs: dict[str, list] = {}
    if not len(labels):
        return runs
    change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    starts, stops = np.r_[0, change], np.r_[change, len(labels)]
    for a, b in zip(starts, stops):
        name = str(labels[a])
        if name:
            runs.setdefault(name, []).append((float(times[a]), float(ends[b - 1] - times[a])))
    return runs


def track_timeline(table: SessionTable, track: TrackSummary, classes: list[str],
                   durations: np.ndarray):
    """Probabilities over time, the occlusion ratio shaded under them, the smoothed label as
    a band: the one figure that shows what a face expressed and how much of it was hidden."""
    figure = new_figure(10, 3.6)
    top, band = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1]})
    rows = track.rows
    times = table.seconds()[rows]
    occ = table["occlusion_ratio"][rows]
    probs = np.stack([table[f"p_{c}"][rows] for c in classes], axis=1) if classes else \
        np.zeros((len(rows), 0))
    x, ys = binned(times, np.column_stack([occ, probs]))
    if not np.all(np.isnan(ys[:, 0])):
        top.fill_between(x, 0, np.nan_to_num(ys[:, 0]), color="#888888", alpha=0.3, lw=0,
                         label="occluded share", step="mid")
    for k, name in enumerate(classes):
        top.plot(x, ys[:, k + 1], color=class_hex(name, k), lw=1.2, label=name)
    top.set_ylim(0, 1)
    top.set_ylabel("probability")
    top.set_title(f"track {track.track_id}: expression probabilities, occlusion shaded")
    if classes or not np.all(np.isnan(occ)):
        top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    runs = _label_runs(times, times + durations[rows], table["smoothed_label"][rows])
    for name, spans in runs.items():
        index = classes.index(name) if name in classes else len(classes)
        band.broken_barh(spans, (0, 1), color=class_hex(name, index), lw=0)
    band.set_yticks([])
    band.set_ylabel("label", rotation=0, ha="right", va="center")
    band.set_xlabel("seconds")
    if len(times):
        band.set_xlim(float(times[0]), float(times[-1] + durations[rows[-1]]))
    return figure


def expression_time(summary: SessionSummary, classes: list[str]):
    """Seconds each track spent in each (smoothed) expression, one stacked bar per track."""
    tracks = summary.tracks
    figure = new_figure(8, 0.6 + 0.45 * max(len(tracks), 1))
    axes = figure.subplots()
    names = list(classes) + sorted({n for t in tracks for n in t.expression_seconds} - set(classes))
    left = np.zeros(len(tracks))
    labels = [f"track {t.track_id}" for t in tracks]
    for k, name in enumerate(names):
        widths = np.array([t.expression_seconds.get(name, 0.0) for t in tracks])
        if widths.any():
            axes.barh(labels, widths, left=left, color=class_hex(name, k), label=name)
            left += widths
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("time in each expression (smoothed label)")
    if left.any():
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return figure


def hidden_parts(summary: SessionSummary):
    """Seconds each face part was hidden (visible share under 0.5), per track."""
    tracks = summary.tracks
    figure = new_figure(8, 3)
    axes = figure.subplots()
    width = 0.8 / max(len(tracks), 1)
    positions = np.arange(len(PARTS))
    for k, track in enumerate(tracks):
        values = [track.hidden_seconds.get(p, 0.0) for p in PARTS]
        axes.bar(positions + k * width, values, width, label=f"track {track.track_id}")
    axes.set_xticks(positions + width * (len(tracks) - 1) / 2,
                    [p.replace("_", " ") for p in PARTS])
    axes.set_ylabel("seconds hidden")
    axes.set_title("face parts hidden (visible share < 0.5)")
    if tracks:
        axes.legend(fontsize=8, frameon=False)
    return figure


def continuity(table: SessionTable, summary: SessionSummary, clock: FrameClock,
               durations: np.ndarray):
    """When each track was present, detected or followed, and where no face was found."""
    tracks = summary.tracks
    figure = new_figure(10, 0.9 + 0.35 * (len(tracks) + 1))
    axes = figure.subplots()
    seconds = table.seconds()
    detected = table["detected"]
    for k, track in enumerate(tracks):
        rows = track.rows
        for flag, colour in ((1.0, "#2b7bba"), (0.0, "#9ecae1")):
            mask = detected[rows] == flag
            spans = _label_runs(seconds[rows], seconds[rows] + durations[rows],
                                np.where(mask, "x", ""))
            if spans:
                axes.broken_barh(spans["x"], (k - 0.35, 0.7), color=colour, lw=0,
                                 label=("detected" if flag else "followed") if k == 0 else None)
    gap_y = len(tracks)
    for gap in summary.gaps:
        axes.broken_barh([(gap.start, max(gap.end - gap.start, clock.step))], (gap_y - 0.35, 0.7),
                         color="#d62728" if gap.kind == "no face" else "#ff9896", lw=0)
    axes.set_yticks(list(range(len(tracks) + 1)),
                    [f"track {t.track_id}" for t in tracks] + ["gaps"])
    axes.invert_yaxis()
    axes.set_xlabel("seconds")
    axes.set_title("detection and tracking continuity (red: no face, pink: dropped frames)")
    if len(clock.times):
        axes.set_xlim(0, float(clock.times[-1] + clock.durations[-1]))
    if tracks:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return figure


def latency(table: SessionTable, clock: FrameClock):
    """Milliseconds per stage over time (bin means), one line per stage, whole frame in black."""
    figure = new_figure(10, 3.2)
    axes = figure.subplots()
    stages = table.stages
    if stages:
        values = np.stack([table[f"{s}_ms"][clock.first_row] for s in stages], axis=1)
        x, ys = binned(clock.times, values)
        for k, stage in enumerate(stages):
            axes.plot(x, ys[:, k], lw=1.4 if stage == "frame" else 1.0,
                      color=STAGE_COLOURS.get(stage), label=stage)
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes.set_ylim(bottom=0)
    axes.set_xlabel("seconds")
    axes.set_ylabel("ms per frame")
    axes.set_title("per-stage latency over time")
    return figure


def comparison(recorded: SessionTable, rerun: SessionTable, track_id: int, names: tuple[str, str]):
    """One track's probabilities as recorded (solid) and from another model run on the same
    saved video (dashed), for the classes both models know; frames are matched by position
    in the video (the clean video holds exactly the analysed frames, in order)."""
    figure = new_figure(10, 3.4)
    axes = figure.subplots()
    shared = [c for c in recorded.classes if c in rerun.classes]
    for table, style, name in ((recorded, "-", names[0]), (rerun, "--", names[1])):
        clock_rows = np.flatnonzero(table["track_id"] == track_id)
        frame = table["frame"]
        starts = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]])
        ordinal = np.searchsorted(starts, clock_rows, side="right") - 1
        for k, cls in enumerate(shared):
            axes.plot(ordinal, table[f"p_{cls}"][clock_rows], style, color=class_hex(cls, k),
                      lw=1.1, label=f"{cls} ({name})")
    axes.set_ylim(0, 1)
    axes.set_xlabel("frame of the saved video")
    axes.set_ylabel("probability")
    axes.set_title(f"track {track_id}: {names[0]} (solid) vs {names[1]} (dashed)")
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False, ncol=1)
    return figure
