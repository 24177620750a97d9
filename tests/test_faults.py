"""Fault cases of issue 8 that the other suites do not cover: a crowd (more faces than
`max_faces`), faces cut by the frame edge, and following faces (`detect_every`) through the
same. Real RetinaFace, FaceMesh (when the [convert] extra is installed) and the shipped
expression model on the public-domain astronaut photo."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.pipeline.pipeline import build_pipeline
from app.pipeline.records import Frame
from tests.app_support import SHIPPED_MODEL, install_facemesh, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root):
    install_facemesh(model_store)  # optional: the landmark stage runs when it could be built
    return make_store(tmp_path_factory.mktemp("faults"), model_store.root, ferplus_root)


def _crowd(astronaut: np.ndarray, rows: int, cols: int, cell: int = 256) -> np.ndarray:
    small = cv2.resize(astronaut, (cell, cell), interpolation=cv2.INTER_AREA)
    return np.tile(small, (rows, cols, 1))


def _check(result, frame_shape) -> None:
    for face in result.faces:
        assert face.aligned.crop.shape == (112, 112, 3)
        assert np.isfinite(face.face.box).all() and np.isfinite(face.face.landmarks5).all()
        assert face.probs is not None and abs(float(face.probs.sum()) - 1.0) < 1e-3
        if face.landmarks68 is not None:
            assert np.isfinite(face.landmarks68).all()


def test_twelve_faces_are_all_found_tracked_and_classified(store, astronaut_bgr):
    frame = _crowd(astronaut_bgr, 3, 4)  # 768 x 1024, every face ~48 px wide, 4 on the edges
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=SHIPPED_MODEL,
                              max_side=1024, detect_every=3)
    ids = None
    for i in range(4):  # detect, follow, follow, detect
        result = pipeline.process(Frame(frame, i, float(i)))
        assert len(result.faces) == 12, i
        _check(result, frame.shape)
        now = sorted(a.face.track_id for a in result.faces)
        assert len(set(now)) == 12 and (ids is None or now == ids), i
        ids = now


def test_more_faces_than_max_faces_keeps_the_best_and_goes_on(store, astronaut_bgr):
    frame = _crowd(astronaut_bgr, 4, 5)  # 20 faces
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=SHIPPED_MODEL,
                              max_side=1280)
    assert pipeline.max_faces == 16
    result = pipeline.process(Frame(frame, 0, 0.0))
    assert len(result.faces) == 16
    scores = [a.face.score for a in result.faces]
    assert scores == sorted(scores, reverse=True)
    _check(result, frame.shape)


@pytest.mark.parametrize("shift", [-200, 270, -150])
def test_a_face_cut_by_the_frame_edge_is_analysed_without_error(store, astronaut_bgr, shift):
    """The astronaut's face (x 178..273) moved until part of it lies outside the frame."""
    m = np.float32([[1, 0, shift], [0, 1, 0]])
    frame = cv2.warpAffine(astronaut_bgr, m, astronaut_bgr.shape[1::-1])
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=SHIPPED_MODEL,
                              detect_every=2)
    for i in range(3):
        result = pipeline.process(Frame(frame, i, float(i)))
        assert len(result.faces) == 1, (shift, i)
        box = result.faces[0].face.box
        assert box[0] < 2 or box[2] > frame.shape[1] - 2 or shift == -150, box  # at the edge
        _check(result, frame.shape)
