"""Track ids across frames by greedy IoU matching.

Faces in a webcam move little between frames, so matching each new box to the previous
frame's box with the highest IoU is enough to keep ids stable; a track survives `max_missed`
frames without a match (a blink of the detector) before its id is retired.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.pipeline.records import Face


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every box of `a` (N, 4) and `b` (M, 4), x1y1x2y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float32)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    missed: int = 0


class IouTracker:
    def __init__(self, min_iou: float = 0.3, max_missed: int = 15) -> None:
        self.min_iou, self.max_missed = min_iou, max_missed
        self._tracks: list[_Track] = []
        self._next_id = 1

    def update(self, faces: list[Face]) -> list[Face]:
        """Set `track_id` on each face (in place) and return them."""
        boxes = np.array([f.box for f in faces], dtype=np.float32).reshape(-1, 4)
        previous = np.array([t.box for t in self._tracks], dtype=np.float32).reshape(-1, 4)
        iou = iou_matrix(previous, boxes)
        matched_tracks: set[int] = set()
        matched_faces: set[int] = set()
        for flat in np.argsort(-iou, axis=None):
            ti, fi = divmod(int(flat), iou.shape[1])
            if iou[ti, fi] < self.min_iou:
                break
            if ti in matched_tracks or fi in matched_faces:
                continue
            matched_tracks.add(ti)
            matched_faces.add(fi)
            self._tracks[ti].box, self._tracks[ti].missed = boxes[fi], 0
            faces[fi].track_id = self._tracks[ti].track_id
        for ti, track in enumerate(self._tracks):
            if ti not in matched_tracks:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for fi, face in enumerate(faces):
            if fi not in matched_faces:
                face.track_id = self._next_id
                self._tracks.append(_Track(self._next_id, boxes[fi]))
                self._next_id += 1
        return faces

    def reset(self) -> None:
        self._tracks.clear()
