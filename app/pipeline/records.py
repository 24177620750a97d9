"""The plain records that travel between pipeline stages.

Each stage takes the previous record and returns the next; nothing flows back upstream.
Coordinates are float32 pixels in the frame the record names (frame or aligned crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One image from a source. `image` is BGR uint8 (H, W, 3), as OpenCV delivers it."""

    image: np.ndarray
    index: int
    timestamp: float  # seconds since the epoch (wall clock when captured / decoded)
    source_time: float | None = None  # position in a video file, seconds, when known


@dataclass
class Face:
    """A detected face in frame coordinates."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    score: float
    landmarks5: np.ndarray  # (5, 2) float32: right eye, left eye (image left->right), nose, mouth right, mouth left
    track_id: int = -1
    #: False when the face was carried from the previous frame by its landmarks instead of
    #: found by the detector on this one (`FacePipeline.detect_every` > 1).
    detected: bool = True

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])


@dataclass
class AlignedFace:
    """A face cropped to the canonical (FERPlus-like) framing.

    `matrix` is the 2x3 affine mapping frame -> crop; `inverse` maps crop -> frame, so anything
    predicted on the crop (landmarks, maps) can be drawn back on the frame.
    """

    crop: np.ndarray  # (S, S, 3) BGR uint8
    matrix: np.ndarray  # (2, 3) float32 frame -> crop
    inverse: np.ndarray  # (2, 3) float32 crop -> frame
    face: Face

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 2) crop coordinates to frame coordinates."""
        pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        return pts @ self.inverse[:, :2].T + self.inverse[:, 2]


@dataclass
class FaceRegion:
    """A named part of the face one model reads on its own (the eye and mouth crops of FS-DSN,
    a local patch of FFRA-Net), so the app can show what the model sees and what is hidden."""

    name: str
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in crop coordinates
    visibility: float | None = None  # share not occluded, 0..1, when an occlusion map exists


@dataclass
class FaceAnalysis:
    """Everything the pipeline learned about one face in one frame."""

    face: Face
    aligned: AlignedFace | None = None
    probs: np.ndarray | None = None  # (C,) float32, class order of the active model
    cam: np.ndarray | None = None  # (C, h, w) float32 in [0, 1], one map per class, crop coordinates
    classes: tuple[str, ...] = ()  # names for `probs`, from the active model
    latency_ms: dict[str, float] = field(default_factory=dict)
    # Later stages fill these; None means "this pipeline has no such stage", so sinks (overlays,
    # CSV, app panels) show or write them only when present.
    landmarks68: np.ndarray | None = None  # (68, 2) float32, frame coordinates, iBUG 300-W order
    landmarks468: np.ndarray | None = None  # (468, 2) float32, frame coordinates, MediaPipe FaceMesh order
    landmarks_presence: float | None = None  # landmark model's P(face in its ROI), 0..1
    landmarks_visibility: np.ndarray | None = None  # (68,) float32 P(point not occluded), landmark student
    parsing: np.ndarray | None = None  # (h, w) uint8 class index per pixel, crop coordinates
    parsing_classes: tuple[str, ...] = ()  # names for `parsing` values; index 0 is background
    occlusion: np.ndarray | None = None  # (h, w) float32 in [0, 1], P(pixel occluded), crop coordinates
    # (2, 3) float32 affine from the pixel grid of `parsing` / `occlusion` (their own (h, w), pixel
    # centres) to frame pixels, for a stage whose crop is not `aligned`'s. None: the maps cover
    # `aligned.crop` (resized to it), and `aligned.inverse` places them.
    maps_to_frame: np.ndarray | None = None
    regions: list[FaceRegion] | None = None  # the parts of the face the active model looks at
    # Share of each facial part that the occlusion stage sees uncovered, 0..1, keyed by
    # app.pipeline.occlusion_map.PARTS (left_eye, right_eye, brows, nose, mouth, jaw; subject's sides).
    part_visibility: dict[str, float] | None = None
    smoothed_probs: np.ndarray | None = None  # (C,) `probs` after the per-track EMA (smoothing.py)

    @property
    def label(self) -> str | None:
        """The most probable class, or None before classification."""
        return None if self.probs is None else self.classes[int(np.argmax(self.probs))]

    @property
    def smoothed_label(self) -> str | None:
        """The most probable class after smoothing (the label without per-frame flicker)."""
        if self.smoothed_probs is None:
            return self.label
        return self.classes[int(np.argmax(self.smoothed_probs))]

    @property
    def occlusion_ratio(self) -> float | None:
        """Share of the aligned crop judged occluded (P > 0.5), or None without an occlusion map."""
        return None if self.occlusion is None else float(np.mean(self.occlusion > 0.5))


@dataclass
class FrameResult:
    """The output of one pipeline step over a frame."""

    frame: Frame
    faces: list[FaceAnalysis]
    latency_ms: dict[str, float] = field(default_factory=dict)  # per stage, whole frame


@dataclass
class Detection:
    """The detector's answer for one frame, computed before the frame's other stages (by the
    pipelined executor, on another core, while the previous frame's faces are analysed).

    `detector` names the detector that ran, so a pipeline whose detector was swapped meanwhile
    (a device switch) ignores the answer and detects again rather than mixing two models.
    `error` is what the detector raised (a bad frame): it is raised when, and only when, the
    frame really goes to the detector, exactly as the sequential path raises it."""

    faces: list[Face] | None
    error: BaseException | None
    detector: object
    started: float  # time.perf_counter() when the detector began on this frame
    ms: float  # the detector's own time
