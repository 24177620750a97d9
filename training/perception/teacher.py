"""FaceMesh (the landmark teacher) on FERPlus crops, computed once and cached.

FERPlus faces are 48 x 48 crops that the face fills, far below FaceMesh's 192 px input. Each
crop is upscaled 4x (bicubic, 192 px, as `exporters.facemesh.verification_inputs` does) and
the teacher runs twice, the way MediaPipe's own tracking loop does:

1. ROI from the crop itself: the whole 192 px frame taken as the detection box (a FERPlus
   face fills its frame), x1.5 margin, no rotation;
2. ROI re-derived from pass 1's 468 points (MediaPipe's `face_landmarks_to_roi`: the points'
   bounding box, x1.5, square on the long side, rotated so the line from point 33 to point
   263, the outer eye corners, is level).

Points are stored as fractions of the crop side from its outer edge (pixel x of a size-S
crop is u * S - 0.5, the convention of `app.pipeline.alignment`), float16 (1e-3 of the side
is 0.06 px at 64 px), with the teacher's face-presence probability. One cache file per split
and teacher file (keyed by the ONNX's sha256) under ~/.cache/occlufer/perception; requests
for new images extend it, so a bigger `--limit` only runs the teacher on the new faces.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from app.pipeline.landmarks import FaceMeshLandmarker, facemesh_input, roi_matrix
from app.pipeline.records import Face
from app.runtime.store import sha256_of

UPSCALE = 4
#: FaceMesh points whose line is made level in pass 2 (outer eye corners, MediaPipe's choice)
ROTATION_POINTS = (33, 263)
CACHE_VERSION = 1
BATCH = 64


def default_teacher_cache_dir() -> Path:
    """$OCCLUFER_CACHE/perception, else ~/.cache/occlufer/perception (XDG)."""
    if os.environ.get("OCCLUFER_CACHE"):
        return Path(os.environ["OCCLUFER_CACHE"]) / "perception"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "occlufer" / "perception"


def _rois_from_points(points: np.ndarray, size: int) -> list[np.ndarray]:
    """Pass-2 ROI matrices from (N, 468, 2) frame points (MediaPipe's landmarks -> ROI)."""
    matrices = []
    for pts in points:
        x1, y1 = pts.min(axis=0)
        x2, y2 = pts.max(axis=0)
        eyes = np.zeros((5, 2), np.float32)
        eyes[0], eyes[1] = pts[ROTATION_POINTS[0]], pts[ROTATION_POINTS[1]]
        face = Face(box=np.array([x1, y1, x2, y2], np.float32), score=1.0, landmarks5=eyes)
        matrices.append(roi_matrix(face, size=size, rotate=True))
    return matrices


def _run(landmarker: FaceMeshLandmarker, frames: np.ndarray,
         matrices: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 468, 2) frame points and (N,) presence for BGR frames and their ROI matrices."""
    batch = np.stack([facemesh_input(f, m, landmarker.size) for f, m in zip(frames, matrices)])
    raw, logits = landmarker.run_inputs(batch)
    points = np.empty((len(frames), raw.shape[1], 2), np.float64)
    for i, m in enumerate(matrices):
        inverse = cv2.invertAffineTransform(m)
        points[i] = (raw[i, :, :2].astype(np.float64) - 0.5) @ inverse[:, :2].T + inverse[:, 2]
    return points, 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def teacher_points(landmarker: FaceMeshLandmarker, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FaceMesh on FERPlus-framed crops (N, s, s) gray or (N, s, s, 3) BGR uint8.

    Returns (N, 468, 2) float32 points as fractions of the crop side and (N,) float32 presence.
    """
    side = crops.shape[1]
    big_side = side * UPSCALE
    frames = []
    for crop in crops:
        big = cv2.resize(crop, (big_side, big_side), interpolation=cv2.INTER_CUBIC)
        frames.append(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR) if big.ndim == 2 else big)
    frames = np.stack(frames)
    whole = Face(box=np.array([0, 0, big_side - 1, big_side - 1], np.float32), score=1.0,
                 landmarks5=np.zeros((5, 2), np.float32))
    first = roi_matrix(whole, size=landmarker.size, rotate=False)
    points, _ = _run(landmarker, frames, [first] * len(frames))
    points, presence = _run(landmarker, frames, _rois_from_points(points, landmarker.size))
    fractions = (points + 0.5) / big_side
    return fractions.astype(np.float32), presence.astype(np.float32)


def _cache_file(cache_dir: Path, split: str, teacher_sha: str, dataset: str = "ferplus") -> Path:
    return cache_dir / f"facemesh468-{dataset}-{split}-v{CACHE_VERSION}-{teacher_sha[:12]}.npz"


def _read(path: Path) -> dict[str, tuple[np.ndarray, float]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as packed:
            return {str(n): (p, float(q)) for n, p, q in
                    zip(packed["names"], packed["points"], packed["presence"])}
    except (OSError, ValueError, KeyError):
        return {}  # an unreadable cache only costs time


def _write(path: Path, table: dict[str, tuple[np.ndarray, float]]) -> None:
    names = sorted(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, names=np.asarray(names, dtype=str),
                     points=np.stack([table[n][0] for n in names]).astype(np.float16),
                     presence=np.asarray([table[n][1] for n in names], np.float32))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_teacher_points(landmarker: FaceMeshLandmarker, teacher_path: Path, split: str,
                          names: Sequence[str], images: np.ndarray,
                          cache_dir: Path | None = None, progress: bool = True,
                          dataset: str = "ferplus") -> tuple[np.ndarray, np.ndarray]:
    """Teacher points (N, 468, 2) fractions and presence (N,) for the images `names` of
    `dataset`'s `split` (pixels in `images`), from the cache where present, computing the rest."""
    path = _cache_file(Path(cache_dir) if cache_dir else default_teacher_cache_dir(), split,
                       sha256_of(Path(teacher_path)), dataset)
    table = _read(path)
    missing = [i for i, n in enumerate(names) if n not in table]
    if missing:
        bar = tqdm(total=len(missing), desc=f"FaceMesh teacher ({split})", unit="img",
                   disable=not progress, file=sys.stderr, mininterval=2.0)
        for start in range(0, len(missing), BATCH):
            chunk = missing[start:start + BATCH]
            points, presence = teacher_points(landmarker, images[chunk])
            for j, i in enumerate(chunk):
                table[names[i]] = (points[j].astype(np.float16), float(presence[j]))
            bar.update(len(chunk))
            if (start // BATCH) % 40 == 39:  # keep what is done if the run is killed
                _write(path, table)
        bar.close()
        _write(path, table)
    points = np.stack([table[n][0] for n in names]).astype(np.float32)
    presence = np.asarray([table[n][1] for n in names], np.float32)
    return points, presence


def teacher_landmarks68(dataset: str, split: str, names: Sequence[str], images: np.ndarray,
                        min_presence: float = 0.5, progress: bool = True,
                        teacher=None) -> tuple[np.ndarray, np.ndarray]:
    """(N, 68, 2) iBUG-68 points in pixels of the stored crops and a (N,) bool "the teacher
    found the face" mask: FaceMesh on each clean crop (cached), mapped 468 -> 68; where its
    presence is below `min_presence` the FERPlus template stands in, which is also what a
    model is fed at run time when no landmarks exist.

    Why per image: the networks that learn from or are guided by landmarks (mask-aware's L_m
    target, ORSANet's sparse prior) see the landmark student's per-face points in the app,
    so training on the template alone would teach pose only and leave a train/run mismatch."""
    from app.pipeline.landmarks68 import facemesh_to_ibug68
    from app.pipeline.priors import template_landmarks68
    from training.perception.train import teacher_landmarker

    landmarker, teacher_path = teacher or teacher_landmarker()
    points, presence = cached_teacher_points(landmarker, teacher_path, split, names, images,
                                             progress=progress, dataset=dataset)
    side = images.shape[1]
    ibug = facemesh_to_ibug68(points).astype(np.float64) * side - 0.5
    found = presence >= min_presence
    ibug[~found] = template_landmarks68(side)
    return ibug.astype(np.float32), found


__all__ = ["teacher_points", "cached_teacher_points", "default_teacher_cache_dir",
           "teacher_landmarks68"]
