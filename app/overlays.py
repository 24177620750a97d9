"""Drawing what the pipeline found onto the frame it found it in: pure functions.

`render(result, options)` returns a new BGR image and never touches `result`; each overlay is
one `draw_*` function (canvas, face, style) that paints one field of `FaceAnalysis`. The app
builds its toggles from `OVERLAYS`, so a new stage's overlay is one new entry here and no UI
change: the toggle appears, and is enabled as soon as the pipeline fills that field.

Maps predicted on the aligned crop (CAM, parsing, occlusion) are warped back to the frame with
the crop's inverse affine, so they lie exactly on the face even when it is tilted; a stage with
its own crop hands its maps' affine in `FaceAnalysis.maps_to_frame`, which is used instead.
Overlays whose field is None are simply not drawn: nothing is ever made up to fill them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.pipeline.records import FaceAnalysis, FrameResult

FONT = cv2.FONT_HERSHEY_SIMPLEX


# ---------------------------------------------------------------- style
@dataclass(frozen=True)
class OverlayOptions:
    """What to draw and how strongly; the UI holds one and passes it to `render`."""

    enabled: frozenset[str] = frozenset({"boxes", "landmarks5", "label"})
    opacity: float = 0.5  # of the maps (CAM, parsing, occlusion), 0..1
    cam_class: str | None = None  # None: the predicted class of each face
    use_smoothed: bool = True  # label from smoothed probabilities when present


#: Track colours (BGR), distinct and readable on faces; track id picks one.
TRACK_COLOURS = [(80, 200, 255), (255, 160, 60), (120, 230, 120), (200, 120, 255),
                 (90, 90, 255), (255, 230, 90), (200, 200, 200), (60, 180, 180)]

#: Parsing palette (BGR) by class index; 0 (background) is never drawn.
PARSING_COLOURS = np.array(
    [[0, 0, 0], [128, 170, 230], [255, 200, 0], [255, 120, 0], [0, 220, 255], [0, 160, 255],
     [0, 90, 255], [60, 60, 230], [120, 60, 180], [160, 0, 160], [200, 120, 200], [90, 200, 90],
     [40, 140, 40], [200, 200, 40], [140, 140, 140], [60, 100, 160], [240, 240, 240],
     [100, 40, 40], [40, 40, 100]], dtype=np.uint8)

#: 68-point groups (iBUG 300-W order): ranges drawn as polylines, True when closed.
LANDMARK68_GROUPS = ((0, 17, False), (17, 22, False), (22, 27, False), (27, 31, False),
                     (31, 36, False), (36, 42, True), (42, 48, True), (48, 60, True), (60, 68, True))


def track_colour(track_id: int) -> tuple[int, int, int]:
    return TRACK_COLOURS[track_id % len(TRACK_COLOURS)] if track_id >= 0 else (220, 220, 220)


def _scale(image: np.ndarray) -> float:
    """Line and text scale that reads the same on 480p and 1080p frames."""
    return max(image.shape[:2]) / 640.0


def _text(canvas: np.ndarray, text: str, origin: tuple[int, int], colour, scale: float,
          background: tuple[int, int, int] | None = (20, 20, 20)) -> None:
    """Text with a filled box behind it (readable on any face); origin is the box's top-left."""
    thickness = max(1, int(round(scale * 1.4)))
    (w, h), base = cv2.getTextSize(text, FONT, 0.45 * scale, thickness)
    x, y = origin
    x = int(min(max(x, 0), max(canvas.shape[1] - w - 4, 0)))
    y = int(min(max(y, 0), max(canvas.shape[0] - h - base - 4, 0)))
    if background is not None:
        cv2.rectangle(canvas, (x, y), (x + w + 4, y + h + base + 4), background, cv2.FILLED)
    cv2.putText(canvas, text, (x + 2, y + h + 2), FONT, 0.45 * scale, colour, thickness, cv2.LINE_AA)


def _warp_to_frame(crop_map: np.ndarray, analysis: FaceAnalysis, frame_shape: Sequence[int],
                   nearest: bool = False, to_frame: np.ndarray | None = None,
                   ) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """A crop-space map warped into the frame, limited to the face's bounding rectangle.

    `to_frame` (2x3, map pixels -> frame pixels) places the map as it is; without it the map
    covers the aligned crop (resized to it) and the crop's inverse affine places it.
    Returns the warped map and the frame slices it covers (None when the face has no crop or
    lies outside the frame); warping only that rectangle keeps big frames cheap.
    """
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if to_frame is None:
        aligned = analysis.aligned
        if aligned is None:
            return None
        size = aligned.crop.shape[0]
        if crop_map.shape[:2] != (size, size):
            crop_map = cv2.resize(crop_map, (size, size), interpolation=interp)
        to_frame = aligned.inverse
    affine = np.asarray(to_frame, dtype=np.float64).reshape(2, 3)
    h, w = crop_map.shape[:2]
    corners = np.float64([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    corners = corners @ affine[:, :2].T + affine[:, 2]
    height, width = frame_shape[:2]
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    inverse = affine.copy()
    inverse[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(crop_map, inverse, (x1 - x0, y1 - y0), flags=interp,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return warped, (slice(y0, y1), slice(x0, x1))


def _blend(canvas: np.ndarray, where: tuple[slice, slice], colour: np.ndarray, alpha: np.ndarray) -> None:
    """canvas[where] = canvas * (1 - alpha) + colour * alpha, alpha (h, w) in 0..1."""
    region = canvas[where].astype(np.float32)
    a = alpha[..., None].astype(np.float32)
    canvas[where] = np.clip(region * (1.0 - a) + colour.astype(np.float32) * a, 0, 255).astype(np.uint8)


def _crop_mask(analysis: FaceAnalysis, frame_shape: Sequence[int]):
    """1 inside the aligned crop's footprint on the frame, 0 outside (the warp's own border)."""
    size = analysis.aligned.crop.shape[0]  # type: ignore[union-attr]
    return _warp_to_frame(np.ones((size, size), np.float32), analysis, frame_shape)


# ---------------------------------------------------------------- one overlay each
def draw_boxes(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """Face box in the track's colour, with `#id score` on its top edge."""
    face, s = analysis.face, _scale(canvas)
    colour = track_colour(face.track_id)
    x1, y1, x2, y2 = (int(round(v)) for v in face.box)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, max(1, int(round(2 * s))), cv2.LINE_AA)
    _text(canvas, f"#{face.track_id} {face.score:.2f}", (x1, y2 + 2), colour, s * 0.9)


def draw_landmarks5(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """The detector's 5 points: eyes cyan, nose yellow, mouth corners magenta."""
    s = _scale(canvas)
    colours = [(255, 255, 0), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 0, 255)]
    for (x, y), colour in zip(analysis.face.landmarks5, colours):
        centre = (int(round(x)), int(round(y)))
        cv2.circle(canvas, centre, max(2, int(round(3 * s))), (0, 0, 0), cv2.FILLED, cv2.LINE_AA)
        cv2.circle(canvas, centre, max(1, int(round(2 * s))), colour, cv2.FILLED, cv2.LINE_AA)


def draw_landmarks68(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """68 points joined by feature (jaw, brows, nose, eyes, lips); hidden points in red."""
    points = np.asarray(analysis.landmarks68, dtype=np.float32).reshape(-1, 2)
    s = _scale(canvas)
    if len(points) == 68:
        for start, stop, closed in LANDMARK68_GROUPS:
            poly = np.round(points[start:stop]).astype(np.int32)
            cv2.polylines(canvas, [poly], closed, (60, 255, 160), max(1, int(round(s))), cv2.LINE_AA)
    visible = analysis.landmarks_visibility
    for i, (x, y) in enumerate(points):  # a point the landmark student calls hidden is red
        hidden = visible is not None and i < len(visible) and visible[i] < 0.5
        cv2.circle(canvas, (int(round(x)), int(round(y))), max(1, int(round(1.5 * s))),
                   (60, 60, 255) if hidden else (255, 255, 255), cv2.FILLED, cv2.LINE_AA)


def draw_regions(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """The regions the active model reads, outlined on the frame: green when visible, red when
    occluded (by visibility), with name and visible share."""
    if analysis.aligned is None:
        return
    s = _scale(canvas)
    for region in analysis.regions or ():
        x1, y1, x2, y2 = np.asarray(region.box, dtype=np.float32)
        corners = analysis.aligned.to_frame(np.float32([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
        visible = 1.0 if region.visibility is None else float(region.visibility)
        colour = (0, int(80 + 175 * visible), int(255 * (1.0 - visible)))
        cv2.polylines(canvas, [np.round(corners).astype(np.int32)], True, colour,
                      max(1, int(round(1.5 * s))), cv2.LINE_AA)
        text = region.name if region.visibility is None else f"{region.name} {visible:.0%}"
        x, y = corners.min(axis=0)
        _text(canvas, text, (int(x), int(y) - int(16 * s)), colour, s * 0.7, background=None)


def draw_parsing(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """Face parsing as translucent class colours (background left clear)."""
    labels = np.asarray(analysis.parsing, dtype=np.uint8)
    warped = _warp_to_frame(labels, analysis, canvas.shape, nearest=True, to_frame=analysis.maps_to_frame)
    if warped is None:
        return
    classes, where = warped
    colour = PARSING_COLOURS[classes % len(PARSING_COLOURS)]
    _blend(canvas, where, colour, (classes > 0).astype(np.float32) * options.opacity)


def draw_parsing_legend(canvas: np.ndarray, faces: Sequence[FaceAnalysis], options: OverlayOptions) -> None:
    """Colour legend of the parsing classes present in this frame, bottom-left."""
    present: dict[int, str] = {}
    for analysis in faces:
        if analysis.parsing is None:
            continue
        for value in np.unique(analysis.parsing):
            if value > 0:
                names = analysis.parsing_classes
                present[int(value)] = names[value] if value < len(names) else f"class {value}"
    s = _scale(canvas)
    row = int(18 * s)
    y = canvas.shape[0] - row * len(present) - int(8 * s)
    for value, name in sorted(present.items()):
        colour = tuple(int(c) for c in PARSING_COLOURS[value % len(PARSING_COLOURS)])
        cv2.rectangle(canvas, (int(8 * s), y + 3), (int(8 * s) + row - 6, y + row - 3), colour, cv2.FILLED)
        _text(canvas, name, (int(8 * s) + row, y), (235, 235, 235), s * 0.75)
        y += row


def draw_occlusion(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """Where the face is hidden: red, as strong as the occlusion probability."""
    warped = _warp_to_frame(np.asarray(analysis.occlusion, dtype=np.float32), analysis, canvas.shape,
                            to_frame=analysis.maps_to_frame)
    if warped is None:
        return
    occlusion, where = warped
    _blend(canvas, where, np.array([40, 40, 255], np.uint8), np.clip(occlusion, 0, 1) * options.opacity)


def cam_class_index(analysis: FaceAnalysis, options: OverlayOptions) -> int | None:
    """Which class's CAM to show: the chosen class when this model has it, else the predicted."""
    if analysis.cam is None or analysis.probs is None:
        return None
    if options.cam_class is not None and options.cam_class in analysis.classes:
        return analysis.classes.index(options.cam_class)
    return int(np.argmax(analysis.probs))


def draw_cam(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """Class activation map of the chosen (or predicted) class, as a heat map on the crop area."""
    index = cam_class_index(analysis, options)
    if index is None:
        return
    cam = np.clip(np.asarray(analysis.cam[index], dtype=np.float32), 0.0, 1.0)
    heat = cv2.applyColorMap((cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    warped_heat = _warp_to_frame(heat, analysis, canvas.shape)
    warped_cam = _warp_to_frame(cam, analysis, canvas.shape)
    footprint = _crop_mask(analysis, canvas.shape)
    if warped_heat is None or warped_cam is None or footprint is None:
        return
    (colour, where), (strength, _), (inside, _) = warped_heat, warped_cam, footprint
    _blend(canvas, where, colour, inside * (0.3 + 0.7 * strength) * options.opacity)


def draw_label(canvas: np.ndarray, analysis: FaceAnalysis, options: OverlayOptions) -> None:
    """`label 87%` above the box (smoothed when smoothing is on) in the track's colour."""
    probs = analysis.probs
    if options.use_smoothed and analysis.smoothed_probs is not None:
        probs = analysis.smoothed_probs
    if probs is None or not analysis.classes:
        return
    best = int(np.argmax(probs))
    s = _scale(canvas)
    colour = track_colour(analysis.face.track_id)
    x1, y1 = int(analysis.face.box[0]), int(analysis.face.box[1])
    text = f"{analysis.classes[best]} {probs[best]:.0%}"
    (_, h), base = cv2.getTextSize(text, FONT, 0.45 * s * 1.2, max(1, int(round(s * 1.4 * 1.2))))
    _text(canvas, text, (x1, y1 - h - base - 6), (20, 20, 20), s * 1.2, background=colour)


# ---------------------------------------------------------------- the registry the UI reads
@dataclass(frozen=True)
class OverlaySpec:
    key: str
    title: str  # menu text and tooltip
    short: str  # toggle text in the side panel
    shortcut: str  # a QKeySequence string
    provided_by: str  # shown in the tooltip while the pipeline does not produce it
    present: Callable[[FaceAnalysis], bool]  # does this face carry what the overlay draws?
    draw: Callable[[np.ndarray, FaceAnalysis, OverlayOptions], None]
    is_map: bool = False  # maps are drawn first, under lines and text, and follow the opacity
    legend: Callable[[np.ndarray, Sequence[FaceAnalysis], OverlayOptions], None] | None = None


OVERLAYS: tuple[OverlaySpec, ...] = (
    OverlaySpec("boxes", "Boxes, track ids, scores", "Boxes", "B", "the face detector (retinaface_mnet025)",
                lambda a: True, draw_boxes),
    OverlaySpec("landmarks5", "5-point landmarks", "5 points", "F", "the face detector (retinaface_mnet025)",
                lambda a: a.face.landmarks5 is not None, draw_landmarks5),
    OverlaySpec("landmarks68", "68-point landmarks", "68 points", "L",
                "the FaceMesh landmark model (`occlufer models fetch facemesh_468`)",
                lambda a: a.landmarks68 is not None, draw_landmarks68),
    OverlaySpec("regions", "Facial regions the model reads", "Regions", "R",
                "a region-based expression model (FS-DSN, FFRA-Net: `regions` in its ONNX metadata)",
                lambda a: bool(a.regions), draw_regions),
    OverlaySpec("parsing", "Face parsing map", "Parsing", "P", "a face-parsing model (task `parsing`)",
                lambda a: a.parsing is not None, draw_parsing, is_map=True, legend=draw_parsing_legend),
    OverlaySpec("occlusion", "Occlusion mask", "Occlusion", "O", "an occlusion model (task `occlusion`)",
                lambda a: a.occlusion is not None, draw_occlusion, is_map=True),
    OverlaySpec("cam", "Class activation map", "CAM", "C", "an expression model with a `cam` output",
                lambda a: a.cam is not None, draw_cam, is_map=True),
    OverlaySpec("label", "Expression label and confidence", "Label", "E", "an expression model (task `expression`)",
                lambda a: a.probs is not None, draw_label),
)
OVERLAY_KEYS = tuple(spec.key for spec in OVERLAYS)


def overlay(key: str) -> OverlaySpec:
    return next(spec for spec in OVERLAYS if spec.key == key)


def overlays_present(faces: Iterable[FaceAnalysis]) -> set[str]:
    """Keys of the overlays that have something to draw on these faces."""
    faces = list(faces)
    return {spec.key for spec in OVERLAYS if any(spec.present(a) for a in faces)}


def render(result: FrameResult, options: OverlayOptions) -> np.ndarray:
    """The frame of `result` with the enabled overlays drawn on a copy (maps first, then lines
    and text so labels stay readable)."""
    canvas = result.frame.image
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    elif canvas.shape[2] == 4:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_BGRA2BGR)
    else:
        canvas = canvas.copy()
    ordered = [s for s in OVERLAYS if s.is_map] + [s for s in OVERLAYS if not s.is_map]
    for spec in ordered:
        if spec.key not in options.enabled:
            continue
        for analysis in result.faces:
            if spec.present(analysis):
                spec.draw(canvas, analysis, options)
        if spec.legend is not None:
            spec.legend(canvas, result.faces, options)
    return canvas
