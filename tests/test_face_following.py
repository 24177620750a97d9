"""Following faces between detections (`detect_every` > 1): the similarity fit itself, then
the real pipeline (RetinaFace + FaceMesh ONNX) on the astronaut photo moving across frames:
followed frames skip the detector yet land where the detector would, ids hold, a vanished
face sends the next frame back to the detector, and `reset` forgets everything."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.pipeline.face_following import RIGID_POINTS, move_face, similarity_between
from app.pipeline.pipeline import build_pipeline
from app.pipeline.records import Face, Frame
from app.pipeline.tracker import iou_matrix
from tests.app_support import install_facemesh, make_store


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx],
                     [scale * np.sin(a), scale * np.cos(a), ty]])


def test_similarity_fit_recovers_a_known_motion_and_ignores_none():
    rng = np.random.default_rng(0)
    src = rng.uniform(100, 300, size=(18, 2))
    truth = _similarity(7.0, 1.08, 12.5, -4.0)
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(similarity_between(src, dst), truth, atol=1e-9)
    np.testing.assert_allclose(similarity_between(src, src), _similarity(0, 1, 0, 0), atol=1e-9)


def test_move_face_carries_points_exactly_and_the_box_by_centre_and_scale():
    face = Face(box=np.array([100, 80, 180, 180], np.float32), score=0.9,
                landmarks5=np.array([[120, 110], [160, 110], [140, 135], [125, 155], [155, 155]],
                                    np.float32), track_id=3)
    matrix = _similarity(0.0, 1.5, 10.0, 20.0)
    moved = move_face(face, matrix)
    assert not moved.detected and moved.track_id == 3 and moved.score == face.score
    np.testing.assert_allclose(moved.landmarks5, face.landmarks5 * 1.5 + [10, 20], atol=1e-4)
    # centre (140, 130) -> (220, 215); sides 80 x 100 -> 120 x 150
    np.testing.assert_allclose(moved.box, [160, 140, 280, 290], atol=1e-4)


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root):
    if not install_facemesh(model_store):
        pytest.skip("following faces needs the FaceMesh stage ([convert] extra)")
    return make_store(tmp_path_factory.mktemp("manifest"), model_store.root, ferplus_root,
                      with_models=False)


def _moving(image: np.ndarray, n: int) -> list[np.ndarray]:
    """`image` drifting right and down by 3 px and turning 0.5 degrees per frame."""
    h, w = image.shape[:2]
    frames = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.5 * i, 1.0)
        m[:, 2] += (3.0 * i, 2.0 * i)
        frames.append(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    return frames


def test_followed_frames_skip_the_detector_and_land_where_it_would(store, astronaut_bgr):
    frames = _moving(astronaut_bgr, 8)
    following = build_pipeline(store, device="cpu", threads=1, detect_every=4)
    every = build_pipeline(store, device="cpu", threads=1)
    ids = set()
    for i, image in enumerate(frames):
        got = following.process(Frame(image, i, float(i)))
        ref = every.process(Frame(image, i, float(i)))
        (face,), (truth,) = got.faces, ref.faces
        detected = i % 4 == 0
        assert face.face.detected is detected, i
        assert ("detect" in got.latency_ms) is detected, i
        ids.add(face.face.track_id)
        iod = float(np.linalg.norm(truth.face.landmarks5[0] - truth.face.landmarks5[1]))
        assert iou_matrix(face.face.box[None], truth.face.box[None])[0, 0] > 0.85, i
        assert np.abs(face.face.landmarks5 - truth.face.landmarks5).max() < 0.12 * iod, i
        assert np.abs(face.landmarks68 - truth.landmarks68).mean() < 0.05 * iod, i
    assert len(ids) == 1


def test_a_face_that_vanishes_sends_the_next_frame_to_the_detector(store, astronaut_bgr):
    pipeline = build_pipeline(store, device="cpu", threads=1, detect_every=10)
    pipeline.process(Frame(astronaut_bgr, 0, 0.0))
    assert pipeline.process(Frame(astronaut_bgr, 1, 0.1)).faces[0].face.detected is False
    blank = np.full_like(astronaut_bgr, 127)
    result = pipeline.process(Frame(blank, 2, 0.2))  # FaceMesh loses it -> detector -> nothing
    assert result.faces == [] and "detect" in result.latency_ms
    back = pipeline.process(Frame(astronaut_bgr, 3, 0.3))
    assert back.faces[0].face.detected is True  # nothing to follow: detected again


def test_reset_forgets_the_faces_being_followed(store, astronaut_bgr):
    pipeline = build_pipeline(store, device="cpu", threads=1, detect_every=10)
    first = pipeline.process(Frame(astronaut_bgr, 0, 0.0)).faces[0].face.track_id
    pipeline.reset()
    again = pipeline.process(Frame(astronaut_bgr, 1, 0.1)).faces[0].face
    assert again.detected is True and again.track_id != first
    with pytest.raises(ValueError, match="detect_every"):
        build_pipeline(store, device="cpu", threads=1, detect_every=0)


def test_rigid_points_are_facemesh_indices():
    assert RIGID_POINTS.min() >= 0 and RIGID_POINTS.max() < 468 and len(set(RIGID_POINTS)) == len(RIGID_POINTS)
