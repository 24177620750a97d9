"""Facial priors that some expression networks take beside the crop: 68 landmarks and a
face-parsing label map, in the aligned crop's frame (numpy + OpenCV only, no torch).

ORSANet (seed 004) is guided by a sparse geometric prior (68 landmarks) and a dense semantic
prior (a face-parsing map); the mask-aware model (seed 003) is *trained* on 68-point heat-maps.
Training and the runtime must build these the same way, so the one definition lives here:

- `landmarks68` are iBUG 300-W points as fractions of the crop side, measured from the crop's
  outer edge (the convention of `app.pipeline.alignment` templates: pixel x = u * size - 0.5).
  At run time they are the face's `FaceAnalysis.landmarks68` (the landmark student's, else
  FaceMesh's) mapped through the alignment affine into the crop; on FERPlus training images
  the FaceMesh teacher's points on the clean crop (`training.perception.teacher`), moved by
  the augmentation's own warp; `FERPLUS_LANDMARKS68` (below) wherever no landmarks exist.
- `parsing` is a (S, S) uint8 label map in the LaPa class layout of SegFace (ORSANet's parser),
  `PARSING_CLASSES`, drawn by `render_parsing` from the 68 landmarks (face hull, brows, eyes,
  nose, lips, inner mouth; no hair: nothing here knows where hair is), with pixels an
  occluder hides labelled background, as a parser that sees the occluder would do (training:
  the synthetic occluder's mask; run time: the occlusion stage's map). `prior_feeds` builds
  both for a batch; the app and `occlufer eval` call it, so what is measured is what runs.

`FERPLUS_LANDMARKS68` was measured, not guessed: the mean 68 points of the FaceMesh teacher
(`facemesh_468` ONNX, 468 -> 68 by `app.pipeline.landmarks68`) on 2,000 FERPlus training
faces drawn with seed 0, each 48 px crop upscaled 4x (bicubic) and padded 64 px with mid-gray,
the face box being the crop and its 5 points `FERPLUS_LANDMARKS5`; 1,900 had presence > 0.5
and were averaged (mean per-point std 0.083 / 0.068 of the side in x / y). Like the 5-point
template it describes how FERPlus frames a face, so it stays valid for any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: Mean FaceMesh-teacher landmarks (iBUG 68 order) on FERPlus crops, fractions of the side.
FERPLUS_LANDMARKS68 = np.array([
    (0.0798, 0.3767), (0.0886, 0.4563), (0.0962, 0.5382), (0.1250, 0.6737),
    (0.1585, 0.7607), (0.2197, 0.8606), (0.2733, 0.9132), (0.3689, 0.9849),
    (0.5049, 1.0179), (0.6391, 0.9793), (0.7306, 0.9038), (0.7814, 0.8489),
    (0.8375, 0.7471), (0.8793, 0.6110), (0.8899, 0.5227), (0.8940, 0.4406),
    (0.8995, 0.3610), (0.1450, 0.2779), (0.1804, 0.2457), (0.2359, 0.2291),
    (0.3102, 0.2320), (0.3973, 0.2418), (0.5812, 0.2382), (0.6674, 0.2249),
    (0.7410, 0.2190), (0.7965, 0.2334), (0.8326, 0.2645), (0.4919, 0.3698),
    (0.4939, 0.4580), (0.4954, 0.5196), (0.4964, 0.5689), (0.4132, 0.6175),
    (0.4479, 0.6394), (0.4971, 0.6391), (0.5463, 0.6376), (0.5801, 0.6143),
    (0.2139, 0.3712), (0.2552, 0.3525), (0.3203, 0.3485), (0.3836, 0.3779),
    (0.3325, 0.3906), (0.2687, 0.3929), (0.6001, 0.3735), (0.6616, 0.3420),
    (0.7267, 0.3432), (0.7684, 0.3605), (0.7148, 0.3841), (0.6514, 0.3843),
    (0.3391, 0.7655), (0.4005, 0.7258), (0.4494, 0.7143), (0.4985, 0.7194),
    (0.5471, 0.7124), (0.5962, 0.7222), (0.6581, 0.7599), (0.6235, 0.8018),
    (0.5503, 0.8440), (0.5012, 0.8503), (0.4518, 0.8459), (0.3761, 0.8064),
    (0.3622, 0.7631), (0.4625, 0.7562), (0.4990, 0.7570), (0.5355, 0.7549),
    (0.6350, 0.7581), (0.5387, 0.7885), (0.5000, 0.7915), (0.4610, 0.7900),
], dtype=np.float32)

#: iBUG index of each point's mirror image under a horizontal flip (subject left <-> right).
IBUG68_MIRROR = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30]  # nose bridge
    + [35, 34, 33, 32, 31]  # nostrils
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lip
    + [64, 63, 62, 61, 60, 67, 66, 65],  # inner lip
    dtype=np.intp)

#: LaPa's 11 classes in SegFace's order ("left"/"right" as LaPa: image left/right here).
PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "left_eyebrow", "right_eyebrow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair")

assert FERPLUS_LANDMARKS68.shape == (68, 2)
assert sorted(IBUG68_MIRROR.tolist()) == list(range(68))
assert (IBUG68_MIRROR[IBUG68_MIRROR] == np.arange(68)).all()


def prior_feeds(names: Sequence[str], size: int, landmarks: Sequence[np.ndarray | None],
                occlusion: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """The extra inputs `names` (of "landmarks68", "parsing") of a prior-guided model for a
    batch of size-S crops: `landmarks` are (68, 2) fractions of each crop's side (None: the
    FERPlus template), `occlusion` maps of P(hidden) over each crop at any resolution (None:
    nothing hidden). The app's expression stage and `occlufer eval` both build feeds here, so
    what is measured is what runs."""
    points = np.stack([FERPLUS_LANDMARKS68 if p is None else np.asarray(p, np.float32)
                       for p in landmarks]).astype(np.float32)
    feeds = {"landmarks68": points}
    if "parsing" in names:
        maps = []
        for pts, hidden in zip(points, occlusion):
            if hidden is not None:
                hidden = cv2.resize(np.asarray(hidden, np.float32), (size, size),
                                    interpolation=cv2.INTER_LINEAR)
            maps.append(render_parsing(pts.astype(np.float64) * size - 0.5, size, hidden))
        feeds["parsing"] = np.stack(maps) if maps else np.zeros((0, size, size), np.uint8)
    return {k: v for k, v in feeds.items() if k in names}


def template_landmarks68(size: int) -> np.ndarray:
    """`FERPLUS_LANDMARKS68` in pixel coordinates of a size x size crop."""
    return FERPLUS_LANDMARKS68.astype(np.float64) * size - 0.5


def warp_landmarks68(points: np.ndarray, matrix: np.ndarray, flipped: bool) -> np.ndarray:
    """Pixel points (68, 2) moved by the 2x3 affine `matrix`; when the warp mirrors the image,
    the points are re-indexed so that index 36 is still the subject's right eye corner."""
    moved = np.asarray(points, np.float64) @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]
    return moved[IBUG68_MIRROR] if flipped else moved


def render_parsing(landmarks68: np.ndarray, size: int,
                   occlusion: np.ndarray | None = None) -> np.ndarray:
    """(size, size) uint8 LaPa-layout label map drawn from 68 pixel points of a size x size
    crop; pixels where `occlusion` (same size, 1 = hidden) exceeds 0.5 become background."""
    p = np.asarray(landmarks68, np.float64)
    shift = 4  # sub-pixel polygon vertices
    scale = float(1 << shift)

    def poly(indices) -> np.ndarray:
        return np.rint(p[list(indices)] * scale).astype(np.int32)

    out = np.zeros((size, size), np.uint8)
    # skin: the jaw line closed over the brows raised by the brow-to-eye distance (forehead)
    eyes_y = p[36:48, 1].mean()
    brows = p[17:27].copy()
    brows[:, 1] -= max(0.0, eyes_y - brows[:, 1].mean())
    hull = cv2.convexHull(np.rint(np.vstack([p[0:17], brows]) * scale).astype(np.int32))
    cv2.fillPoly(out, [hull], 1, cv2.LINE_8, shift)
    brow_width = max(1, int(round(size / 40)))
    for label, idx in ((2, range(17, 22)), (3, range(22, 27))):
        cv2.polylines(out, [poly(idx)], False, label, brow_width, cv2.LINE_8, shift)
    for label, idx in ((4, range(36, 42)), (5, range(42, 48))):
        cv2.fillPoly(out, [poly(idx)], label, cv2.LINE_8, shift)
    cv2.fillPoly(out, [poly([27, 31, 32, 33, 34, 35])], 6, cv2.LINE_8, shift)
    cv2.fillPoly(out, [poly([48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60])], 7, cv2.LINE_8,
                 shift)
    cv2.fillPoly(out, [poly([54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64])], 9, cv2.LINE_8,
                 shift)
    cv2.fillPoly(out, [poly(range(60, 68))], 8, cv2.LINE_8, shift)
    if occlusion is not None:
        out[np.asarray(occlusion) > 0.5] = 0
    return out


__all__ = ["FERPLUS_LANDMARKS68", "IBUG68_MIRROR", "PARSING_CLASSES", "render_parsing",
           "template_landmarks68", "warp_landmarks68"]
