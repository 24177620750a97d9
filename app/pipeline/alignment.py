"""Similarity alignment of a detected face to FERPlus framing.

The expression networks are trained on FERPlus crops, so live faces must be framed the way
FERPlus frames them. `FERPLUS_LANDMARKS5` is that framing measured, not guessed: the mean of
the detector's 5 points on upscaled FERPlus training images (`training/alignment_template.py`
writes `assets/alignment/ferplus_template.json`, which records how it was made).

Coordinate conventions: frame and crop points are OpenCV pixel coordinates (pixel (x, y) has
its centre at integer x, y), as `Face.landmarks5` and cv2 drawing use. Template points are
fractions of the crop side measured from the crop's outer edge, so one template serves every
crop size: point u lands at pixel u * size - 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from app import ASSETS_DIR
from app.errors import OccluferError
from app.pipeline.detector import as_bgr
from app.pipeline.records import AlignedFace, Face

TEMPLATE_PATH = ASSETS_DIR / "alignment" / "ferplus_template.json"


def load_template(path: Path = TEMPLATE_PATH) -> np.ndarray:
    """The (5, 2) float32 template from its JSON; fails with the command that rebuilds it."""
    try:
        points = np.asarray(json.loads(Path(path).read_text())["points"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise OccluferError(
            f"Alignment template {path} is missing or unreadable ({exc}). Restore it from the "
            "repository, or rebuild it: python -m training.alignment_template --data-root "
            "../shared/data/ferplus --n 2000 --out assets/alignment/ferplus_template.json"
        ) from exc
    if points.shape != (5, 2):
        raise OccluferError(f"Alignment template {path} has shape {points.shape}, expected (5, 2).")
    points.setflags(write=False)
    return points


#: Mean 5-point positions of FERPlus faces as fractions of the crop side, in the detector's
#: point order (eye at image left, eye at image right, nose, mouth corner at image left, at
#: image right).
FERPLUS_LANDMARKS5 = load_template()


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    src (N, 2) onto dst (N, 2), as a 2x3 float64 matrix (Umeyama 1991).

    Closed form rather than cv2.estimateAffinePartial2D, whose RANSAC would drop a point the
    detector placed badly instead of spreading the error over all five.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = float((s * d).sum() / var_src)
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_dst - scale * rotation @ mean_src
    return matrix


def template_points(size: int, template: np.ndarray = FERPLUS_LANDMARKS5) -> np.ndarray:
    """The template in pixel coordinates of a size x size crop."""
    return np.asarray(template, dtype=np.float64) * size - 0.5


def align_face(
    image: np.ndarray, face: Face, size: int, template: np.ndarray = FERPLUS_LANDMARKS5
) -> AlignedFace:
    """Warp `face` out of `image` (gray, BGR or BGRA uint8) into a size x size BGR crop whose
    5 points sit on `template` (FERPlus framing unless a network was trained on another);
    borders replicate so no black wedges reach the network."""
    if size < 8:
        raise ValueError("crop size must be at least 8 pixels")
    bgr = as_bgr(image)
    matrix = similarity_transform(face.landmarks5, template_points(size, template))
    crop = cv2.warpAffine(bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    inverse = cv2.invertAffineTransform(matrix)
    return AlignedFace(crop=crop, matrix=matrix.astype(np.float32),
                       inverse=inverse.astype(np.float32), face=face)
