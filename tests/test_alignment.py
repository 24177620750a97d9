"""Face alignment onto the FERPlus template, on real faces through the real detector."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.errors import BadFrameError
from app.pipeline.alignment import (
    FERPLUS_LANDMARKS5, TEMPLATE_PATH, align_face, similarity_transform, template_points,
)
from app.pipeline.detector import RetinaFaceDetector
from app.runtime.providers import create_session
from training.alignment_template import PAD, UPSCALE, upscaled_with_border


@pytest.fixture(scope="module")
def detector(retinaface_onnx: Path) -> RetinaFaceDetector:
    return RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 2))


@pytest.fixture(scope="module")
def astronaut_face(detector, astronaut_bgr):
    (face,) = detector(astronaut_bgr)
    return face


def ferplus_test_images(ferplus_root: Path, count: int) -> list[np.ndarray]:
    """The first `count` FERPlus test images (the template was derived on the train split)."""
    files = sorted((ferplus_root / "FER2013Test").glob("*.png"))[:count]
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


def test_template_is_the_derived_one_and_face_shaped():
    record = json.loads(TEMPLATE_PATH.read_text())
    np.testing.assert_array_equal(FERPLUS_LANDMARKS5, np.asarray(record["points"], np.float32))
    assert record["n_used"] >= 1000 and record["n_used"] <= record["n_tried"]
    assert record["command"].startswith("python -m training.alignment_template")
    eye_l, eye_r, nose, mouth_l, mouth_r = FERPLUS_LANDMARKS5
    assert eye_l[0] < nose[0] < eye_r[0] and mouth_l[0] < mouth_r[0]
    assert max(eye_l[1], eye_r[1]) < nose[1] < min(mouth_l[1], mouth_r[1])
    assert abs(nose[0] - 0.5) < 0.03 and abs((eye_l[0] + eye_r[0]) / 2 - 0.5) < 0.03  # centred


def test_similarity_transform_recovers_a_known_similarity(astronaut_face):
    src = astronaut_face.landmarks5.astype(np.float64)
    angle, scale, shift = np.radians(20), 0.7, np.array([13.0, -4.5])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = similarity_transform(src, src @ rotation.T + shift)
    np.testing.assert_allclose(matrix, np.hstack([rotation, shift[:, None]]), atol=1e-9)
    mirrored = similarity_transform(src, src * [-1, 1])  # a reflection is not a similarity
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_aligned_astronaut_eyes_land_on_the_template(detector, astronaut_bgr, astronaut_face):
    size = 192
    aligned = align_face(astronaut_bgr, astronaut_face, size)
    assert aligned.crop.shape == (size, size, 3) and aligned.crop.dtype == np.uint8
    target = template_points(size)
    mapped = astronaut_face.landmarks5 @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
    # least squares spreads her wide smile's mismatch with the average FERPlus face over all
    # five points; the eyes stay within 2.5 % of the crop, the rest within 6 %
    assert np.abs(mapped[:2] - target[:2]).max() < 0.025 * size
    assert np.abs(mapped - target).max() < 0.06 * size
    # independent check: the detector, run again on the crop, finds her eyes on the template
    border = 96
    padded = cv2.copyMakeBorder(aligned.crop, border, border, border, border, cv2.BORDER_CONSTANT,
                                value=(128, 128, 128))
    (again,) = detector(padded)
    np.testing.assert_allclose(again.landmarks5[:2] - border, target[:2], atol=0.03 * size)


def test_inverse_maps_crop_back_to_frame(astronaut_bgr, astronaut_face):
    aligned = align_face(astronaut_bgr, astronaut_face, 112)
    forward = np.vstack([aligned.matrix, [0, 0, 1]])
    backward = np.vstack([aligned.inverse, [0, 0, 1]])
    np.testing.assert_allclose(backward @ forward, np.eye(3), atol=1e-5)
    mapped = astronaut_face.landmarks5 @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
    np.testing.assert_allclose(aligned.to_frame(mapped), astronaut_face.landmarks5, atol=1e-3)
    # pixels: a crop pixel is the frame sampled where the inverse sends it
    gray = cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    crop = cv2.cvtColor(aligned.crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    for x, y in ((30, 40), (56, 56), (80, 90)):
        fx, fy = aligned.to_frame(np.array([[x, y]]))[0]
        assert abs(cv2.getRectSubPix(gray, (1, 1), (float(fx), float(fy)))[0, 0] - crop[y, x]) < 3


def test_gray_and_bgra_frames_give_bgr_crops_and_bad_frames_raise(astronaut_bgr, astronaut_face):
    reference = align_face(astronaut_bgr, astronaut_face, 64).crop
    np.testing.assert_array_equal(
        align_face(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2BGRA), astronaut_face, 64).crop, reference)
    gray = align_face(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY), astronaut_face, 64).crop
    assert gray.shape == (64, 64, 3)
    with pytest.raises(BadFrameError):
        align_face(astronaut_bgr.astype(np.float32), astronaut_face, 64)
    with pytest.raises(ValueError):
        align_face(astronaut_bgr, astronaut_face, 4)


def test_warp_reproduces_ferplus_pixels_exactly(detector, ferplus_root):
    """Aligned onto its own detected points, an upscaled FERPlus face comes back as the
    original 48x48 image: the warp and the pixel-centre conventions are exact."""
    for gray in ferplus_test_images(ferplus_root, 6):
        big = upscaled_with_border(gray)
        (face,) = detector(big)
        own = (face.landmarks5 - PAD + 0.5) / (48 * UPSCALE)
        crop = align_face(big, face, 48, template=own).crop[:, :, 0]
        assert correlation(crop, gray) > 0.99


def test_ferplus_faces_aligned_to_the_template_look_like_ferplus(detector, ferplus_root):
    """The template is FERPlus's average framing. One face: a typically framed FERPlus face
    aligned at 48 correlates strongly with its original. All faces: the mean aligned crop
    matches the mean FERPlus image, better than templates moved by 5 % or zoomed by 15 % do."""
    gray = cv2.imread(str(ferplus_root / "FER2013Test" / "fer0032230.png"), cv2.IMREAD_GRAYSCALE)
    big = upscaled_with_border(gray)
    crop = align_face(big, detector(big)[0], 48).crop
    assert correlation(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), gray) > 0.8

    t = FERPLUS_LANDMARKS5
    perturbed = {"down 5 %": t + [0, 0.05], "right 5 %": t + [0.05, 0],
                 "zoomed out 15 %": (t - 0.5) * 1.15 + 0.5, "zoomed in 15 %": (t - 0.5) / 1.15 + 0.5}
    originals, aligned = [], {name: [] for name in ["template", *perturbed]}
    for gray in ferplus_test_images(ferplus_root, 150):
        big = upscaled_with_border(gray)
        faces = detector(big)
        if len(faces) != 1:
            continue
        originals.append(gray.astype(np.float64))
        for name, points in [("template", t), *perturbed.items()]:
            crop = align_face(big, faces[0], 48, template=np.asarray(points, np.float32)).crop
            aligned[name].append(crop[:, :, 0].astype(np.float64))
    assert len(originals) >= 140
    mean_original = np.mean(originals, axis=0)
    scores = {name: correlation(np.mean(crops, axis=0), mean_original) for name, crops in aligned.items()}
    assert scores["template"] > 0.85, scores  # measured 0.89
    for name in perturbed:
        assert scores["template"] > scores[name] + 0.02, scores
