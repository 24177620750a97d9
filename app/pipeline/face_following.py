"""Follow faces between detections with the landmarks the pipeline computes anyway.

Detection is the most expensive stage of a frame (RetinaFace over the whole frame), yet a
webcam face moves a few pixels between frames. MediaPipe's own face-mesh graph therefore runs
its detector only when it has lost the face and otherwise feeds the landmark model the region
of interest from the previous frame. occlufer does the same: on a followed frame FaceMesh runs
on each face's previous box, and the similarity that carries the previous frame's landmarks
onto the new ones (fitted on points that expressions barely move: eye corners, nose bridge,
forehead, cheek edges) carries the previous box and five points along. The detector runs again
every `detect_every` frames, whenever a face's FaceMesh presence drops (occluded past
recognition, or gone), and whenever a followed box leaves the frame, so new faces wait at most
`detect_every - 1` frames.

Propagating the detector's own box and five points (rather than rebuilding them from the 468
points) keeps the aligned crop - and so the expression model's input - framed exactly as on a
detected frame: the only error is the motion estimate's, which each re-detection resets.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.pipeline.records import Face

#: FaceMesh indices that expressions move least: eye corners (33, 133, 362, 263), nose bridge
#: and tip (168, 6, 197, 195, 5, 4, 1), forehead (10, 151, 9), cheek and temple edges
#: (234, 454, 127, 356). Brows, lips and chin are left out: a smile must not read as motion.
RIGID_POINTS = np.array([33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 10, 151, 9,
                         234, 454, 127, 356])


def similarity_between(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, shift; no reflection)
    taking points `src` (N, 2) onto `dst` (N, 2): Umeyama's closed form, written with
    complex numbers where it is one line."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    zs = (src[:, 0] - mu_s[0]) + 1j * (src[:, 1] - mu_s[1])
    zd = (dst[:, 0] - mu_d[0]) + 1j * (dst[:, 1] - mu_d[1])
    norm = np.vdot(zs, zs).real
    c = np.vdot(zs, zd) / norm if norm > 1e-12 else 1.0 + 0j
    a, b = c.real, c.imag
    rotation = np.array([[a, -b], [b, a]])
    shift = mu_d - rotation @ mu_s
    return np.hstack([rotation, shift[:, None]])


def move_face(face: Face, matrix: np.ndarray) -> Face:
    """`face` carried by the similarity `matrix`: five points exactly, the box by its centre
    and its side lengths times the scale (boxes stay axis-aligned, as the detector's are)."""
    m = np.asarray(matrix, np.float64)
    points = np.asarray(face.landmarks5, np.float64) @ m[:, :2].T + m[:, 2]
    x1, y1, x2, y2 = (float(v) for v in face.box)
    centre = m[:, :2] @ np.array([(x1 + x2) / 2, (y1 + y2) / 2]) + m[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    half = np.array([(x2 - x1), (y2 - y1)]) * scale / 2
    box = np.concatenate([centre - half, centre + half]).astype(np.float32)
    return replace(face, box=box, landmarks5=points.astype(np.float32), detected=False)


def inside_frame(face: Face, width: int, height: int) -> bool:
    """Whether the box centre is still on the frame (a face leaving it needs the detector)."""
    cx = (face.box[0] + face.box[2]) / 2
    cy = (face.box[1] + face.box[3]) / 2
    return bool(0 <= cx < width and 0 <= cy < height)


__all__ = ["RIGID_POINTS", "similarity_between", "move_face", "inside_frame"]
