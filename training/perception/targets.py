"""Parsing targets rasterised from FaceMesh points, with the occluder stamped on top.

The regions are MediaPipe FaceMesh's own contours (`face_mesh_connections.py` of MediaPipe:
FACEMESH_FACE_OVAL, _LEFT/_RIGHT_EYE, _LEFT/_RIGHT_EYEBROW, _LIPS), written out as closed
polygons; the nose, which MediaPipe only gives as a line set, is the convex hull of its
bridge, tip, alae and side points. Classes are painted back to front so that small parts win
where polygons touch: head envelope, face, nose, brows, eyes, lips, inner mouth, occluder.

`hair_or_other` is a stated convention, not something landmarks can see: FaceMesh only
bounds the face, so pixels outside its silhouette but inside the silhouette scaled by
HEAD_ENVELOPE about its centre (where hair, ears and neck are in a face-filling crop) are
`hair_or_other`, and everything further out is `background`. A real parser (BiSeNet on
CelebAMask-HQ) maps its hair/ear/neck/cloth/hat classes to `hair_or_other` the same way.

"Left"/"right" are the subject's: FaceMesh's RIGHT_EYE (points 33..133) is on the image left.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.perception import OCCLUDER, PARSING_CLASSES

C = {name: i for i, name in enumerate(PARSING_CLASSES)}
HEAD_ENVELOPE = 1.25
#: occluder alpha at or above which a pixel's parsing label becomes `occluder`
OCCLUDER_AT = 0.5

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
NOSE_POINTS = (168, 6, 197, 195, 5, 4, 1, 19, 94, 2, 98, 97, 326, 327, 64, 294, 48, 278,
               115, 344, 220, 440, 45, 275, 129, 358)
SHIFT = 4  # fixed-point bits for cv2.fillPoly: sub-pixel polygon vertices


def _poly(points: np.ndarray, indices, size: int) -> np.ndarray:
    """Polygon vertices in fixed point (cv2 shift), pixel-centre convention u * S - 0.5."""
    xy = points[list(indices)] * size - 0.5
    return np.round(xy * (1 << SHIFT)).astype(np.int32)


def _fill(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
    cv2.fillPoly(canvas, [polygon], int(value), lineType=cv2.LINE_8, shift=SHIFT)


def rasterise_parsing(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size) uint8 labels from (468, 2) FaceMesh points given as fractions of the side."""
    points = np.asarray(points, np.float64)
    labels = np.full((size, size), C["background"], np.uint8)
    oval = points[list(FACE_OVAL)]
    centre = oval.mean(axis=0)
    envelope = (oval - centre) * HEAD_ENVELOPE + centre
    _fill(labels, np.round((envelope * size - 0.5) * (1 << SHIFT)).astype(np.int32), C["hair_or_other"])
    _fill(labels, _poly(points, FACE_OVAL, size), C["skin"])
    hull = cv2.convexHull(_poly(points, NOSE_POINTS, size))
    _fill(labels, hull.reshape(-1, 2), C["nose"])
    _fill(labels, _poly(points, RIGHT_BROW, size), C["right_brow"])
    _fill(labels, _poly(points, LEFT_BROW, size), C["left_brow"])
    _fill(labels, _poly(points, RIGHT_EYE, size), C["right_eye"])
    _fill(labels, _poly(points, LEFT_EYE, size), C["left_eye"])
    _fill(labels, _poly(points, OUTER_UPPER_LIP + INNER_UPPER_LIP[::-1], size), C["upper_lip"])
    _fill(labels, _poly(points, OUTER_LOWER_LIP + INNER_LOWER_LIP[::-1], size), C["lower_lip"])
    _fill(labels, _poly(points, INNER_UPPER_LIP + INNER_LOWER_LIP[::-1][1:-1], size), C["inner_mouth"])
    return labels


def stamp_occluder(labels: np.ndarray, mask: np.ndarray, at: float = OCCLUDER_AT) -> np.ndarray:
    """A copy of `labels` with every pixel whose occluder alpha is >= `at` set to `occluder`."""
    out = labels.copy()
    out[np.asarray(mask) >= at] = OCCLUDER
    return out


__all__ = ["rasterise_parsing", "stamp_occluder", "HEAD_ENVELOPE", "OCCLUDER_AT"]
