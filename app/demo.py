"""The built-in `demo` source: a public-domain face drifting, with occluders passing over it.

A new user without a webcam should see every stage work, the occlusion-aware ones included,
so a face mask, sunglasses and a hand slide over the astronaut's face in turn. The occluder
art is the same code the training set uses (`app.occlusion.synthesize`); each appearance uses
one fixed random seed, so an occluder keeps its shape and colour while the face moves under
it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from app.sources import DemoSource

#: The five points of the face in assets/samples/astronaut.jpg (512x512), measured with the
#: shipped RetinaFace (`occlufer detect assets/samples/astronaut.jpg --json`), detector order.
ASTRONAUT_LANDMARKS5 = np.array(
    [[204.81, 100.62], [247.38, 103.31], [223.43, 129.21], [202.44, 138.01], [244.17, 140.46]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class OccluderPass:
    """One occluder crossing the face: it slides in, stays, slides out."""

    kind: str
    start: float  # seconds into the demo's cycle
    duration: float
    seed: int
    slide: float = 0.2  # share of `duration` spent sliding in from the left (and out to the right)


#: How far (in eye distances) an occluder travels while sliding in or out.
SLIDE_EYE_DISTANCES = 3.0
#: One 12-second cycle: clear, mask, clear, sunglasses, clear, hand.
CYCLE_SECONDS = 12.0
OCCLUDER_PASSES = (
    OccluderPass("masked", 1.5, 3.0, seed=11),
    OccluderPass("sunglasses", 5.5, 3.0, seed=12),
    OccluderPass("hands", 9.5, 2.5, seed=13, slide=0.45),
)


def _load_synthesize() -> tuple[Callable, str]:
    from app.occlusion import synthesize
    return synthesize, "occluders: " + ", ".join(p.kind for p in OCCLUDER_PASSES)


class OccludedDemoSource(DemoSource):
    """The demo face with the occluders of `OCCLUDER_PASSES` passing over it in turn.

    Each occluder is drawn once, on the face photo itself, and then moves with the face (one
    warp of the occluded photo and its mask per frame), so occluders cost almost nothing per
    frame and stay fixed to the face as a real mask or pair of glasses would.
    """

    def __init__(self, frames: int | None = 300, width: int = 640, height: int = 480) -> None:
        super().__init__(frames=frames, width=width, height=height)
        self._synthesize, self.note = _load_synthesize()
        self._occluded: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        self.name = "demo"

    def landmarks5(self, index: int) -> np.ndarray:
        """Where the face's five points are on the canvas at frame `index` (ground truth)."""
        matrix = self.face_matrix(index)
        return (ASTRONAUT_LANDMARKS5 @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)

    def active_pass(self, index: int) -> tuple[OccluderPass, float] | None:
        """The occluder on screen at frame `index` and where it is on its way: -1 just
        entering at the left, 0 in place over the face, +1 just leaving at the right."""
        t = (index / self.fps) % CYCLE_SECONDS
        for occluder in OCCLUDER_PASSES:
            phase = (t - occluder.start) / occluder.duration
            if 0.0 <= phase < 1.0:
                ramp = occluder.slide
                if ramp > 0 and phase < ramp:
                    return occluder, float(phase / ramp - 1.0)
                if ramp > 0 and phase > 1.0 - ramp:
                    return occluder, float((phase - (1.0 - ramp)) / ramp)
                return occluder, 0.0
        return None

    def occluded_photo(self, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The face photo with occluder `kind` drawn on it and its (H, W) float32 mask."""
        if self._synthesize is None:
            return None
        if kind not in self._occluded:
            self._occluded[kind] = None
            try:
                occluded, mask = self._synthesize(self._face.copy(), kind,
                                                  np.random.default_rng(seed), ASTRONAUT_LANDMARKS5)
                weight = np.asarray(mask, dtype=np.float32)
                if weight.ndim == 3:
                    weight = weight.max(axis=2)
                if weight.max() > 1.0:
                    weight /= 255.0
                self._occluded[kind] = (np.asarray(occluded), weight)
            except Exception as exc:  # demo art must never stop the demo
                self.note = f"occluder {kind!r} could not be drawn: {exc}"
        return self._occluded[kind]

    def render(self, index: int) -> np.ndarray:
        canvas = super().render(index)
        active = self.active_pass(index)
        if active is None:
            return canvas
        occluder, position = active
        drawn = self.occluded_photo(occluder.kind, occluder.seed)
        if drawn is None:
            return canvas
        occluded, mask = drawn
        eye_distance = float(np.linalg.norm(ASTRONAUT_LANDMARKS5[1] - ASTRONAUT_LANDMARKS5[0]))
        matrix = self.face_matrix(index).copy()
        matrix[:, 2] += matrix[:, :2] @ np.array([position * SLIDE_EYE_DISTANCES * eye_distance, 0.0])
        return composite(canvas, cv2.warpAffine(occluded, matrix, self.size),
                         cv2.warpAffine(mask, matrix, self.size) * (1.0 - abs(position)) ** 0.5)


def composite(canvas: np.ndarray, occluder: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """canvas where weight is 0, occluder where it is 1, blended between."""
    w = np.clip(weight, 0.0, 1.0)[..., None]
    return np.clip(canvas * (1.0 - w) + occluder * w, 0, 255).astype(np.uint8)


def demo_cycle_frames(fps: float = DemoSource.fps) -> int:
    """Frames in one full cycle of the demo (every occluder once)."""
    return int(math.ceil(CYCLE_SECONDS * fps))
