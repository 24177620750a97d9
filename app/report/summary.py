"""The numbers of a session report, computed from a `SessionTable` with numpy alone.

Kept apart from the figures so the session viewer and tests can use the same numbers without
matplotlib. Durations are in seconds of the session's own clock (`SessionTable.seconds`): a
row lasts until the next analysed frame, capped so a pause or a dropped stretch is not
counted as time spent in an expression (it is reported as a gap instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.pipeline.occlusion_map import PARTS
from app.session_csv import SessionTable
from app.session_rows import VISIBLE_AT

#: A step between analysed frames longer than this many median steps is a gap, not a frame.
GAP_STEPS = 5.0


@dataclass
class FrameClock:
    """One entry per analysed frame: its index, time, and how long it lasts."""

    frames: np.ndarray  # (F,) frame index, ascending
    times: np.ndarray  # (F,) seconds since the first row
    durations: np.ndarray  # (F,) seconds until the next frame, gaps capped to one step
    step: float  # median seconds between analysed frames
    first_row: np.ndarray  # (F,) index of each frame's first row in the table


def frame_clock(table: SessionTable) -> FrameClock:
    frame = table["frame"]
    seconds = table.seconds()
    # a frame's rows are adjacent (one per face); a new frame starts where the index changes
    starts = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]])
    times = seconds[starts]
    steps = np.diff(times)
    positive = steps[steps > 0]
    step = float(np.median(positive)) if len(positive) else 1.0 / 30.0
    durations = np.r_[steps, step] if len(times) else np.zeros(0)
    durations = np.where((durations > GAP_STEPS * step) | (durations < 0), step, durations)
    return FrameClock(frames=frame[starts], times=times, durations=durations, step=step,
                      first_row=starts)


def row_durations(table: SessionTable, clock: FrameClock) -> np.ndarray:
    """Seconds each row stands for: its frame's duration."""
    per_frame = np.repeat(np.arange(len(clock.first_row)),
                          np.diff(np.r_[clock.first_row, table.rows]))
    return clock.durations[per_frame]


@dataclass
class Gap:
    """A stretch without a face, or frames the analysis never saw (dropped or skipped)."""

    start: float  # seconds
    end: float
    kind: str  # "no face" | "dropped frames"
    frames: int


@dataclass
class TrackSummary:
    track_id: int
    rows: np.ndarray  # row indices of this track, ascending
    first: float  # seconds
    last: float
    seconds: float  # time present (sum of its rows' durations)
    detected_share: float | None  # share of its rows found by the detector (vs followed)
    segments: list[tuple[float, float]]  # stretches of continuous presence
    expression_seconds: dict[str, float]  # smoothed label -> seconds
    hidden_seconds: dict[str, float]  # face part -> seconds hidden (visibility < VISIBLE_AT)
    mean_occlusion: float | None


@dataclass
class SessionSummary:
    rows: int
    frames: int
    duration: float
    step: float
    tracks: list[TrackSummary]
    gaps: list[Gap]
    no_face_frames: int
    redetections: int  # tracks that started after the session's first frame
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> p50/p95/max
    models: list[str] = field(default_factory=list)  # expression models named in the CSV


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs of the True runs of a boolean array."""
    padded = np.r_[False, mask, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _gaps(table: SessionTable, clock: FrameClock) -> tuple[list[Gap], int]:
    gaps: list[Gap] = []
    faces = table["faces"][clock.first_row]
    empty = faces == 0
    for start, stop in _runs(empty):
        gaps.append(Gap(float(clock.times[start]),
                        float(clock.times[stop - 1] + clock.durations[stop - 1]), "no face",
                        stop - start))
    jumps = np.diff(clock.frames)
    steps = np.diff(clock.times)
    # frames whose index was skipped (the live app analyses only the newest frame; a file run
    # skips a bad frame), and clock gaps longer than GAP_STEPS steps
    for k in np.flatnonzero((jumps > 1) & (steps > GAP_STEPS * clock.step)):
        gaps.append(Gap(float(clock.times[k]), float(clock.times[k + 1]), "dropped frames",
                        int(jumps[k] - 1)))
    gaps.sort(key=lambda g: g.start)
    return gaps, int(empty.sum())


def summarize(table: SessionTable) -> SessionSummary:
    clock = frame_clock(table)
    durations = row_durations(table, clock)
    seconds = table.seconds()
    track = table["track_id"]
    frame_pos = np.searchsorted(clock.frames, table["frame"])  # row -> frame ordinal
    smoothed = table["smoothed_label"]
    tracks: list[TrackSummary] = []
    for tid in np.unique(track[~np.isnan(track)]).astype(int).tolist():
        rows = np.flatnonzero(track == tid)
        ordinal = frame_pos[rows]
        breaks = np.flatnonzero(np.diff(ordinal) > 1)
        seg_starts = np.r_[0, breaks + 1]
        seg_ends = np.r_[breaks, len(rows) - 1]
        segments = [(float(seconds[rows[a]]), float(seconds[rows[b]] + durations[rows[b]]))
                    for a, b in zip(seg_starts, seg_ends)]
        dur = durations[rows]
        labels = smoothed[rows]
        expression: dict[str, float] = {}
        for name in np.unique(labels).tolist():
            if name:
                expression[name] = float(dur[labels == name].sum())
        hidden: dict[str, float] = {}
        for part in PARTS:
            column = f"vis_{part}"
            if column in table.data:
                vis = table[column][rows]
                if not np.all(np.isnan(vis)):
                    hidden[part] = float(dur[vis < VISIBLE_AT].sum())
        detected = table["detected"][rows]
        occ = table["occlusion_ratio"][rows]
        tracks.append(TrackSummary(
            track_id=tid, rows=rows, first=float(seconds[rows[0]]),
            last=float(seconds[rows[-1]] + dur[-1]), seconds=float(dur.sum()),
            detected_share=None if np.all(np.isnan(detected)) else float(np.nanmean(detected)),
            segments=segments, expression_seconds=expression, hidden_seconds=hidden,
            mean_occlusion=None if np.all(np.isnan(occ)) else float(np.nanmean(occ))))
    gaps, no_face = _gaps(table, clock)
    first_frame = clock.frames[0] if len(clock.frames) else 0
    redetections = sum(1 for t in tracks if table["frame"][t.rows[0]] != first_frame)
    redetections += sum(len(t.segments) - 1 for t in tracks)
    latency: dict[str, dict[str, float]] = {}
    for stage in table.stages:
        values = table[f"{stage}_ms"][clock.first_row]
        values = values[~np.isnan(values)]
        if len(values):
            p50, p95 = np.percentile(values, [50, 95])
            latency[stage] = {"p50": float(p50), "p95": float(p95), "max": float(values.max())}
    models = [m for m in np.unique(table["model"]).tolist() if m]
    return SessionSummary(rows=table.rows, frames=len(clock.frames),
                          duration=float(clock.times[-1] + clock.durations[-1]) if len(clock.times) else 0.0,
                          step=clock.step, tracks=tracks, gaps=gaps, no_face_frames=no_face,
                          redetections=redetections, latency=latency, models=models)
