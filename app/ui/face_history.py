"""The last N seconds of class probabilities per track, for the per-face time plot.

Kept by the inference thread (which sees every analysed frame, not only those the UI had
time to draw) and handed to the UI as immutable snapshots, so the two threads never share a
mutable buffer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from app.pipeline.records import FrameResult


@dataclass(frozen=True)
class TrackTrace:
    """One track's recent probabilities: times (T,) in seconds before `now`, probs (T, C)."""

    track_id: int
    classes: tuple[str, ...]
    ages: np.ndarray  # (T,) seconds before the newest sample, >= 0, oldest first
    probs: np.ndarray  # (T, C) smoothed probabilities (raw when smoothing is off)


class ProbabilityHistory:
    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._samples: dict[int, deque[tuple[float, tuple[str, ...], np.ndarray]]] = {}

    def add(self, result: FrameResult) -> None:
        now = result.frame.timestamp
        for analysis in result.faces:
            probs = analysis.smoothed_probs if analysis.smoothed_probs is not None else analysis.probs
            if probs is None:
                continue
            samples = self._samples.setdefault(analysis.face.track_id, deque())
            samples.append((now, analysis.classes, np.asarray(probs, dtype=np.float32)))
        for track in list(self._samples):
            samples = self._samples[track]
            while samples and now - samples[0][0] > self.seconds:
                samples.popleft()
            if not samples:
                del self._samples[track]

    def trace(self, track_id: int) -> TrackTrace | None:
        """The track's samples since its classes last changed (a model switch restarts the plot)."""
        samples = self._samples.get(track_id)
        if not samples:
            return None
        classes = samples[-1][1]
        kept = [s for s in samples if s[1] == classes]
        newest = kept[-1][0]
        return TrackTrace(track_id, classes, np.array([newest - s[0] for s in kept], np.float32),
                          np.stack([s[2] for s in kept]))

    def clear(self) -> None:
        self._samples.clear()
