"""Per-track exponential smoothing of class probabilities.

A live label that flips every frame is unreadable and a CSV of it is noisy, so each track's
probabilities are averaged over time: `s = strength * s_prev + (1 - strength) * p`. Strength 0
shows the raw per-frame output; 0.9 settles over roughly ten frames. State is keyed by track
id, so smoothing never mixes two people, and it restarts when the model's classes change
(a model switch) or a track disappears.
"""

from __future__ import annotations

import numpy as np

from app.pipeline.records import FrameResult

#: What the app and `occlufer run` use unless told otherwise.
DEFAULT_STRENGTH = 0.6


class ExpressionSmoother:
    def __init__(self, strength: float = DEFAULT_STRENGTH, forget_after: int = 30) -> None:
        self.strength = strength
        self.forget_after = forget_after  # frames a track may be unseen before its state is dropped
        self._state: dict[int, tuple[tuple[str, ...], np.ndarray, int]] = {}  # id -> classes, probs, last frame
        self._frames = 0

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = float(min(max(value, 0.0), 0.99))

    def update(self, result: FrameResult) -> FrameResult:
        """Fill `smoothed_probs` of every classified face in `result` (in place) and return it."""
        self._frames += 1
        keep = self.strength
        for analysis in result.faces:
            if analysis.probs is None:
                continue
            track = analysis.face.track_id
            previous = self._state.get(track)
            probs = np.asarray(analysis.probs, dtype=np.float32)
            if previous is None or previous[0] != analysis.classes or keep == 0.0:
                smoothed = probs.copy()
            else:
                smoothed = keep * previous[1] + (1.0 - keep) * probs
            analysis.smoothed_probs = smoothed
            self._state[track] = (analysis.classes, smoothed, self._frames)
        stale = [t for t, (_, _, seen) in self._state.items() if self._frames - seen > self.forget_after]
        for track in stale:
            del self._state[track]
        return result

    def reset(self) -> None:
        self._state.clear()
