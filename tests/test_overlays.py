"""Overlay drawing on a real face: each overlay paints its own field where the face is, never
touches the input frame, and follows the options (opacity, CAM class, toggles)."""

from __future__ import annotations

import numpy as np
import pytest

from app.demo import ASTRONAUT_LANDMARKS5
from app.overlays import OVERLAYS, OverlayOptions, cam_class_index, overlays_present, render
from app.pipeline.alignment import align_face
from app.pipeline.records import Face, FaceAnalysis, FaceRegion, Frame, FrameResult

CLASSES = ("neutral", "happiness", "surprise")
ALL = frozenset(spec.key for spec in OVERLAYS)


@pytest.fixture(scope="module")
def face_result(astronaut_bgr) -> FrameResult:
    """The astronaut with every field a full pipeline would fill, on the real aligned crop."""
    face = Face(box=np.array([178, 57, 273, 177], np.float32), score=0.99,
                landmarks5=ASTRONAUT_LANDMARKS5.copy(), track_id=3)
    aligned = align_face(astronaut_bgr, face, 112)
    yy, xx = np.mgrid[0:112, 0:112] / 111.0
    cam = np.stack([xx, yy, 1 - xx]).astype(np.float32)  # a different map per class
    parsing = np.zeros((112, 112), np.uint8)
    parsing[30:50, 20:92] = 2  # "eyes" band
    parsing[75:95, 35:77] = 3  # "mouth"
    occlusion = np.zeros((112, 112), np.float32)
    occlusion[70:112] = 1.0  # lower face hidden (a mask)
    jaw = np.stack([np.linspace(180, 270, 68), 120 + 30 * np.sin(np.linspace(0, np.pi, 68))], 1)
    analysis = FaceAnalysis(
        face=face, aligned=aligned, probs=np.array([0.2, 0.7, 0.1], np.float32), cam=cam,
        classes=CLASSES, smoothed_probs=np.array([0.3, 0.6, 0.1], np.float32),
        landmarks68=jaw.astype(np.float32), parsing=parsing,
        parsing_classes=("background", "skin", "eyes", "mouth"), occlusion=occlusion,
        regions=[FaceRegion("eyes", np.array([15, 25, 97, 55], np.float32), 1.0),
                 FaceRegion("mouth", np.array([30, 70, 82, 100], np.float32), 0.1)])
    return FrameResult(frame=Frame(astronaut_bgr, 7, 0.0), faces=[analysis])


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


def test_nothing_enabled_is_the_frame_itself_and_the_input_is_never_touched(face_result):
    original = face_result.frame.image.copy()
    plain = render(face_result, OverlayOptions(enabled=frozenset()))
    assert np.array_equal(plain, original)
    render(face_result, OverlayOptions(enabled=ALL, opacity=1.0))
    assert np.array_equal(face_result.frame.image, original)


@pytest.mark.parametrize("key", [spec.key for spec in OVERLAYS])
def test_each_overlay_draws_near_the_face(face_result, key):
    plain = face_result.frame.image
    drawn = render(face_result, OverlayOptions(enabled=frozenset({key}), opacity=0.8))
    changed = _changed(drawn, plain)
    assert changed.sum() > 30, f"{key} drew nothing"
    ys, xs = np.nonzero(changed)
    if key != "parsing":  # the legend sits in the corner
        assert 120 < xs.mean() < 330 and 20 < ys.mean() < 240, f"{key} drew away from the face"


def test_maps_follow_the_opacity_and_vanish_at_zero(face_result):
    plain = face_result.frame.image
    for key in ("cam", "occlusion"):
        weak = render(face_result, OverlayOptions(enabled=frozenset({key}), opacity=0.2))
        strong = render(face_result, OverlayOptions(enabled=frozenset({key}), opacity=0.9))
        none = render(face_result, OverlayOptions(enabled=frozenset({key}), opacity=0.0))
        assert np.array_equal(none, plain)
        assert np.abs(strong.astype(int) - plain).sum() > 2 * np.abs(weak.astype(int) - plain).sum()


def test_occlusion_is_drawn_only_where_the_face_is_hidden(face_result):
    drawn = render(face_result, OverlayOptions(enabled=frozenset({"occlusion"}), opacity=0.8))
    changed = _changed(drawn, face_result.frame.image)
    aligned = face_result.faces[0].aligned
    top = aligned.to_frame(np.float32([[56, 20]]))[0].round().astype(int)  # upper crop: visible
    low = aligned.to_frame(np.float32([[56, 95]]))[0].round().astype(int)  # lower crop: occluded
    assert not changed[top[1], top[0]] and changed[low[1], low[0]]


def test_cam_of_a_chosen_class_differs_from_the_predicted_one(face_result):
    analysis = face_result.faces[0]
    predicted = OverlayOptions(enabled=frozenset({"cam"}))
    chosen = OverlayOptions(enabled=frozenset({"cam"}), cam_class="surprise")
    assert cam_class_index(analysis, predicted) == 1 and cam_class_index(analysis, chosen) == 2
    assert not np.array_equal(render(face_result, predicted), render(face_result, chosen))
    unknown = OverlayOptions(enabled=frozenset({"cam"}), cam_class="not-a-class")
    assert cam_class_index(analysis, unknown) == 1  # another model's class: fall back to predicted


def test_label_uses_smoothed_probabilities_when_asked(face_result):
    smoothed = render(face_result, OverlayOptions(enabled=frozenset({"label"})))
    raw = render(face_result, OverlayOptions(enabled=frozenset({"label"}), use_smoothed=False))
    assert not np.array_equal(smoothed, raw)  # "happiness 60%" vs "happiness 70%"


def test_overlays_present_reads_the_fields(face_result):
    assert overlays_present(face_result.faces) == ALL
    bare = FaceAnalysis(face=face_result.faces[0].face)
    assert overlays_present([bare]) == {"boxes", "landmarks5"}


def test_overlays_survive_a_face_half_outside_the_frame(face_result):
    analysis = face_result.faces[0]
    shifted = np.ascontiguousarray(face_result.frame.image[:, 200:])  # cut through the face
    result = FrameResult(frame=Frame(shifted, 0, 0.0), faces=[analysis])
    drawn = render(result, OverlayOptions(enabled=ALL, opacity=0.7))
    assert drawn.shape == shifted.shape
