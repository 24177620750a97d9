"""IoU tracker: ids stay with the face that moves, new faces get new ids, gaps are bridged."""

from __future__ import annotations

import numpy as np

from app.pipeline.records import Face
from app.pipeline.tracker import IouTracker, iou_matrix


def _face(x: float, y: float, size: float = 100.0) -> Face:
    return Face(box=np.array([x, y, x + size, y + size], np.float32), score=0.9,
                landmarks5=np.zeros((5, 2), np.float32))


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    assert np.allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])
    assert iou_matrix(a, np.zeros((0, 4), np.float32)).shape == (1, 0)


def test_two_faces_keep_their_ids_while_moving_and_swapping_order():
    tracker = IouTracker()
    left, right = 50.0, 400.0
    first = tracker.update([_face(left, 100), _face(right, 100)])
    ids = {round(f.box[0]): f.track_id for f in first}
    for step in range(1, 20):
        faces = [_face(right + 5 * step, 100), _face(left + 5 * step, 100)]  # order swapped
        tracker.update(faces)
        assert faces[1].track_id == ids[50] and faces[0].track_id == ids[400]


def test_short_gap_is_bridged_and_long_gap_retires_the_id():
    tracker = IouTracker(max_missed=3)
    (face,) = tracker.update([_face(100, 100)])
    original = face.track_id
    for _ in range(3):
        tracker.update([])
    assert tracker.update([_face(102, 100)])[0].track_id == original
    for _ in range(5):
        tracker.update([])
    assert tracker.update([_face(102, 100)])[0].track_id != original


def test_new_face_gets_a_new_id():
    tracker = IouTracker()
    tracker.update([_face(0, 0)])
    faces = tracker.update([_face(0, 0), _face(300, 300)])
    assert faces[0].track_id != faces[1].track_id
