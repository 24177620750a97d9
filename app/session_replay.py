"""Recorded rows turned back into the records the app draws, with no re-inference.

The session viewer draws a recorded frame with the app's own overlays (`app.overlays.render`)
and per-face cards, which read `FaceAnalysis`. Here each row becomes one: box, score, 5
landmarks, track id, detected flag, and the recorded class probabilities (so the drawn label
is the recorded `label` with its `confidence`). Only what the CSV holds is filled; every other
field stays None, so overlays of stages the CSV does not keep (maps, 68 points) are not drawn.
"""

from __future__ import annotations

import numpy as np

from app.pipeline.records import Face, FaceAnalysis
from app.pipeline.occlusion_map import PARTS
from app.session_csv import SessionTable


class RecordedFrames:
    """Frame ordinal (0 = the session's first analysed frame, as the clean video numbers
    its frames) -> that frame's rows, and the faces rebuilt from them."""

    def __init__(self, table: SessionTable) -> None:
        self.table = table
        frame = table["frame"]
        self.starts = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]])
        self.stops = np.r_[self.starts[1:], table.rows]
        self.frame_index = frame[self.starts].astype(int)
        self.times = table.seconds()[self.starts]
        self.classes = table.classes

    def __len__(self) -> int:
        return len(self.starts)

    def rows(self, ordinal: int) -> range:
        return range(int(self.starts[ordinal]), int(self.stops[ordinal]))

    def faces(self, ordinal: int) -> list[FaceAnalysis]:
        return [face for face in (self.face(r) for r in self.rows(ordinal)) if face is not None]

    def face(self, row: int) -> FaceAnalysis | None:
        """The face of one row; None for a `faces = 0` row."""
        t = self.table
        if np.isnan(t["track_id"][row]):
            return None
        box = np.array([t[c][row] for c in ("x1", "y1", "x2", "y2")], np.float32)
        marks = np.array([[t[f"lm{i}_x"][row], t[f"lm{i}_y"][row]] for i in range(5)], np.float32)
        face = Face(box=box, score=float(t["score"][row]), landmarks5=marks,
                    track_id=int(t["track_id"][row]), detected=bool(t["detected"][row] == 1))
        analysis = FaceAnalysis(face=face)
        present = [c for c in self.classes if not np.isnan(t[f"p_{c}"][row])]
        if present:  # the classes of the model that ran on this row
            analysis.classes = tuple(present)
            analysis.probs = np.array([t[f"p_{c}"][row] for c in present], np.float32)
        visibility = {p: float(t[f"vis_{p}"][row]) for p in PARTS
                      if f"vis_{p}" in t.data and not np.isnan(t[f"vis_{p}"][row])}
        analysis.part_visibility = visibility or None
        return analysis

    def recorded_labels(self, ordinal: int) -> dict[int, str]:
        """track id -> the `label` column of this frame's rows (what the viewer must draw)."""
        t = self.table
        return {int(t["track_id"][r]): str(t["label"][r]) for r in self.rows(ordinal)
                if not np.isnan(t["track_id"][r])}

    def ordinal_at(self, seconds: float) -> int:
        return int(np.clip(np.searchsorted(self.times, seconds, side="right") - 1, 0, len(self) - 1))
