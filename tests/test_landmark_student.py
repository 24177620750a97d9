"""The occlusion-robust landmark student: its samples (points move with the image under flip
and jitter, visibility follows the occluder), its loss on real FERPlus faces, and a tiny real
run (the real FaceMesh teacher, real occluders) through training, ONNX export, evaluation and
the live stage."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.pipeline.landmarks_student import StudentLandmarker
from app.pipeline.preprocess import InputSpec
from app.pipeline.priors import FERPLUS_LANDMARKS68, IBUG68_MIRROR
from app.pipeline.records import AlignedFace, Face, FaceAnalysis
from app.runtime.providers import create_session
from models.landmark_student import LandmarkStudent
from training.landmark_student import (StudentRecipe, evaluate_student, nme, point_visibility,
                                       student_loss, student_sample, train_student)
from training.perception.data import AugmentSpec

SIZE = 64


def _dot_image(point: np.ndarray) -> np.ndarray:
    """A 48 px black face with one bright blob at `point` (fractions)."""
    image = np.zeros((48, 48), np.uint8)
    x, y = point * 48 - 0.5
    cv2.circle(image, (int(round(x)), int(round(y))), 1, 255, cv2.FILLED)
    return image


@pytest.mark.parametrize("seed", range(6))
def test_points_move_with_the_image_under_flip_and_jitter(seed):
    spec = AugmentSpec(p_clean=1.0, contrast=(1.0, 1.0), brightness=0.0)
    k = 30  # nose tip; under a flip its index stays (it is on the midline) but x mirrors
    points = FERPLUS_LANDMARKS68.astype(np.float32).copy()
    points[k] = (0.30, 0.62)  # off the midline, so a flip moves it
    img, moved, visible = student_sample(_dot_image(points[k]), points,
                                         np.random.default_rng(seed), SIZE, spec)
    ys, xs = np.nonzero(img > img.max() * 0.6)
    blob = np.array([xs.mean(), ys.mean()])
    expected = moved[k] * SIZE - 0.5
    flipped = IBUG68_MIRROR[k] != k and np.linalg.norm(moved[IBUG68_MIRROR[k]] * SIZE - 0.5 - blob) < 2.5
    assert np.linalg.norm(expected - blob) < 2.5 or flipped, (expected, blob)
    assert visible.shape == (68,) and visible.min() >= 0


def test_visibility_follows_the_occluder():
    alpha = np.zeros((SIZE, SIZE), np.float32)
    alpha[SIZE // 2:] = 1.0  # lower half hidden
    pixels = np.array([[10, 10], [10, 50], [-3, 10], [70, 70]], np.float64)
    assert point_visibility(alpha, pixels).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert point_visibility(alpha, pixels, outside=1.0).tolist() == [1.0, 0.0, 1.0, 1.0]


def test_loss_learns_on_real_ferplus_points(ferplus_root):
    from training.data import load_split

    faces = load_split("ferplus", ferplus_root, "valid", progress=False).images[:32]
    spec = AugmentSpec()
    rng = np.random.default_rng(0)
    target = np.clip(FERPLUS_LANDMARKS68 + rng.normal(0, 0.02, (32, 68, 2)), 0, 1).astype(np.float32)
    samples = [student_sample(f, t, np.random.default_rng(i), SIZE, spec) for i, (f, t) in enumerate(zip(faces, target))]
    x = torch.from_numpy(np.stack([(s[0][None] - 127.5) / 127.5 for s in samples]).astype(np.float32))
    t = torch.from_numpy(np.stack([s[1] for s in samples]))
    v = torch.from_numpy(np.stack([s[2] for s in samples]))
    torch.manual_seed(0)
    model = LandmarkStudent()
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(30):
        points, logits = model(x)
        loss = student_loss(points, logits, t, v, 0.1)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.6 * losses[0]
    assert nme(t.numpy(), t.numpy()) == 0.0


def test_tiny_run_trains_exports_evaluates_and_runs_live(ferplus_root: Path, teacher, tmp_path):
    recipe = StudentRecipe(epochs=2, batch_size=32, limit=128, val_faces=32, width=8, hidden=32)
    out = tmp_path / "run"
    onnx_path = train_student(ferplus_root, out, recipe, progress=False, teacher=teacher)
    state = json.loads((out / "train_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert all(np.isfinite(h["valid_nme"]) for h in state["history"])
    report = evaluate_student(onnx_path, ferplus_root, out / "report", first=24, progress=False,
                              occlusion_dir=tmp_path / "no-sets", teacher=teacher)
    assert list(report["sets"]) == ["none", "masked", "sunglasses", "objects", "hands"]
    masked = report["sets"]["masked"]
    assert 0 < masked["teacher_nme"] < 1 and 0 < masked["student_nme"] < 1
    assert masked["hidden_point_share"] > 0.1 and "student_nme_hidden" in masked
    assert report["sets"]["none"]["hidden_point_share"] == 0
    assert (out / "report" / "nme.png").stat().st_size > 1000

    session = create_session(onnx_path, "cpu", 1)
    spec = InputSpec.from_manifest(json.loads(session.get_modelmeta().custom_metadata_map["input"]))
    stage = StudentLandmarker(session, spec)
    crop = cv2.cvtColor(cv2.resize(np.full((48, 48), 120, np.uint8), (112, 112)), cv2.COLOR_GRAY2BGR)
    shift = np.array([[1, 0, 40], [0, 1, 30]], np.float32)  # crop (0,0) is frame (40, 30)
    face = Face(box=np.array([40, 30, 152, 142], np.float32), score=1.0,
                landmarks5=np.zeros((5, 2), np.float32))
    to_crop = np.array([[1, 0, -40], [0, 1, -30]], np.float32)
    analysis = FaceAnalysis(face=face, aligned=AlignedFace(crop, to_crop, shift, face))
    stage.annotate(np.zeros((300, 300, 3), np.uint8), [analysis])
    raw, visibility = stage([crop])
    np.testing.assert_allclose(analysis.landmarks68, raw[0] * 112 - 0.5 + [40, 30], atol=1e-4)
    assert analysis.landmarks_visibility.shape == (68,) and ((visibility >= 0) & (visibility <= 1)).all()


# ------------------------------------------------------------------ the shipped student
@pytest.fixture(scope="module")
def shipped_student():
    from app import ASSETS_DIR
    from app.runtime.store import ModelStore

    store = ModelStore(root=ASSETS_DIR / "no-user-store", manifest=ASSETS_DIR / "manifest.json")
    return StudentLandmarker.from_store("landmarks68_student", store, "cpu", 1)


def _astronaut_analysis(retinaface_onnx, image, face=None):
    from app.pipeline.alignment import align_face
    from app.pipeline.detector import RetinaFaceDetector

    face = face or RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 1))(image)[0]
    return face, FaceAnalysis(face=face, aligned=align_face(image, face, 112))


def test_shipped_student_lands_on_the_eyes_and_mouth(shipped_student, retinaface_onnx, astronaut_bgr):
    face, analysis = _astronaut_analysis(retinaface_onnx, astronaut_bgr)
    shipped_student.annotate(astronaut_bgr, [analysis])
    points = analysis.landmarks68
    iod = float(np.linalg.norm(face.landmarks5[0] - face.landmarks5[1]))
    assert np.linalg.norm(points[36:42].mean(0) - face.landmarks5[0]) < 0.2 * iod
    assert np.linalg.norm(points[42:48].mean(0) - face.landmarks5[1]) < 0.2 * iod
    assert np.linalg.norm(points[48:68].mean(0) - face.landmarks5[3:5].mean(0)) < 0.25 * iod
    assert analysis.landmarks_visibility[36:48].mean() > 0.5  # a clean face: eyes visible


def test_shipped_student_keeps_the_eyes_under_sunglasses_and_calls_them_hidden(
        shipped_student, retinaface_onnx, astronaut_bgr):
    from app.occlusion import synthesize

    face, _ = _astronaut_analysis(retinaface_onnx, astronaut_bgr)
    occluded, mask = synthesize(astronaut_bgr, "sunglasses", np.random.default_rng(0), face.landmarks5)
    eyes = face.landmarks5[:2].astype(int)
    assert (mask[eyes[:, 1], eyes[:, 0]] >= 0.5).all()  # these glasses do cover both eyes
    _, analysis = _astronaut_analysis(retinaface_onnx, occluded, face)  # same framing as clean
    shipped_student.annotate(occluded, [analysis])
    points, visible = analysis.landmarks68, analysis.landmarks_visibility
    iod = float(np.linalg.norm(face.landmarks5[0] - face.landmarks5[1]))
    assert visible[36:48].mean() < 0.5, visible[36:48]
    assert visible[48:68].mean() > 0.5, visible[48:68]
    assert np.linalg.norm(points[36:42].mean(0) - face.landmarks5[0]) < 0.25 * iod
    assert np.linalg.norm(points[42:48].mean(0) - face.landmarks5[1]) < 0.25 * iod
