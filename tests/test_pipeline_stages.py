"""Optional pipeline stages on real inputs: the FaceMesh landmark stage inside `FacePipeline`
(68 + 468 points in frame pixels, its own latency, skipped with the fetch command when not
installed), and a region-based model's regions read from its ONNX metadata, with each region's
visibility measured on a ground-truth occlusion map (the occluder synthesis' own mask on the
astronaut photo) in both coordinate conventions the occlusion stage may use."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.errors import ModelIntegrityError
from app.occlusion import synthesize
from app.overlays import OverlayOptions, render
from app.pipeline.expression import ExpressionClassifier
from app.pipeline.landmarks68 import IBUG68_REGIONS
from app.pipeline.pipeline import build_pipeline
from app.pipeline.records import Frame
from app.pipeline.regions import parse_regions, region_visibility, update_visibility
from app.runtime.providers import create_session
from tests.app_support import FS_DSN_REGIONS, SEVEN_CLASSES, export_resnet18, install_facemesh, make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root):
    if not install_facemesh(model_store):
        pytest.skip("the FaceMesh stage needs the [convert] extra to be built")
    return make_store(tmp_path_factory.mktemp("manifest"), model_store.root, ferplus_root, with_models=False)


@pytest.fixture(scope="module")
def region_model(tmp_path_factory, ferplus_root):
    """A real exported ResNet-18 whose metadata carries FS-DSN's region grid, as the FS-DSN
    exporter writes it (the runtime reads only the metadata, whatever the network)."""
    path = tmp_path_factory.mktemp("regions") / "regions.onnx"
    export_resnet18(path, ferplus_root, regions=FS_DSN_REGIONS)
    return ExpressionClassifier(create_session(path, "cpu", 1), _spec(), SEVEN_CLASSES, "fsdsn_like")


def _spec():
    from app.pipeline.preprocess import InputSpec
    from tests.app_support import SEVEN_SPEC

    return InputSpec.from_manifest(SEVEN_SPEC)


def test_landmark_stage_runs_in_the_pipeline(store, astronaut_bgr):
    pipeline = build_pipeline(store, device="cpu", threads=1, landmark_model="facemesh_468")
    assert pipeline.landmarker is not None and pipeline.providers["facemesh_468"] == "CPU"
    result = pipeline.process(Frame(astronaut_bgr, 0, 0.0))
    (face,) = result.faces
    assert result.latency_ms["landmarks"] > 0
    assert face.landmarks68.shape == (68, 2) and face.landmarks468.shape == (468, 2)
    assert face.landmarks_presence > 0.9
    iod = float(np.linalg.norm(face.face.landmarks5[0] - face.face.landmarks5[1]))
    eye_left = face.landmarks68[slice(*IBUG68_REGIONS["right_eye"])].mean(axis=0)  # image left
    eye_right = face.landmarks68[slice(*IBUG68_REGIONS["left_eye"])].mean(axis=0)
    assert np.linalg.norm(eye_left - face.face.landmarks5[0]) < 0.15 * iod
    assert np.linalg.norm(eye_right - face.face.landmarks5[1]) < 0.15 * iod
    drawn = render(result, OverlayOptions(enabled=frozenset({"landmarks68"})))
    assert np.any(drawn != astronaut_bgr)


def test_without_the_landmark_model_the_stage_is_skipped_and_says_how_to_get_it(store, tmp_path,
                                                                                 astronaut_bgr):
    from tests.app_support import partial_store

    bare = partial_store(store, tmp_path / "models",
                         ("retinaface_mnet025.onnx", "retinaface_mnet025.onnx.source.json"))
    pipeline = build_pipeline(bare, device="cpu", threads=1)
    assert pipeline.landmarker is None and "facemesh_468" not in pipeline.providers
    assert "occlufer models fetch facemesh_468" in pipeline.skipped["facemesh_468"]
    result = pipeline.process(Frame(astronaut_bgr, 0, 0.0))
    assert "landmarks" not in result.latency_ms and result.faces[0].landmarks68 is None


def test_region_metadata_becomes_boxes_on_each_face(store, region_model, astronaut_bgr):
    assert region_model.regions == {k: tuple(v) for k, v in FS_DSN_REGIONS.items()}
    pipeline = build_pipeline(store, device="cpu", threads=1, landmark_model=None)
    pipeline.classifier = region_model
    result = pipeline.process(Frame(astronaut_bgr, 0, 0.0))
    (face,) = result.faces
    size = face.aligned.crop.shape[0]
    boxes = {r.name: r.box for r in face.regions}
    np.testing.assert_allclose(boxes["mouth"], [0, size / 2, size, size])
    np.testing.assert_allclose(boxes["left_eye"], [0, 0, size / 2, size / 2])
    assert all(r.visibility is None for r in face.regions)  # no occlusion map: unknown, not guessed
    drawn = render(result, OverlayOptions(enabled=frozenset({"regions"})))
    assert np.any(drawn != astronaut_bgr)


def test_region_visibility_on_a_real_occluder_mask(store, region_model, astronaut_bgr):
    """A face mask drawn by the occluder synthesis covers the mouth, not the eyes; its own
    alpha mask is the ground truth, given to the regions in aligned-crop coordinates and,
    alternatively, in frame coordinates with `maps_to_frame`: both give the same answer."""
    pipeline = build_pipeline(store, device="cpu", threads=1, landmark_model=None)
    pipeline.classifier = region_model
    clean = pipeline.process(Frame(astronaut_bgr, 0, 0.0)).faces[0]
    masked_image, mask = synthesize(astronaut_bgr, "masked", np.random.default_rng(3), clean.face.landmarks5)
    result = pipeline.process(Frame(masked_image, 1, 0.0))
    (face,) = result.faces
    size = face.aligned.crop.shape[0]

    face.occlusion = cv2.warpAffine(mask, face.aligned.matrix, (size, size))  # crop coordinates
    update_visibility([face])
    on_crop = {r.name: r.visibility for r in face.regions}
    assert on_crop["mouth"] < 0.5 < min(on_crop["left_eye"], on_crop["right_eye"])

    face.occlusion = mask  # the whole frame as the map, placed by an identity affine
    face.maps_to_frame = np.float32([[1, 0, 0], [0, 1, 0]])
    on_frame = {r.name: region_visibility(face, r.box) for r in face.regions}
    for name in on_crop:
        assert on_frame[name] == pytest.approx(on_crop[name], abs=0.05)
    drawn = render(result, OverlayOptions(enabled=frozenset({"occlusion"}), opacity=0.8))
    changed = np.any(drawn != masked_image, axis=2)
    assert changed[mask > 0.9].mean() > 0.9 and not changed[mask == 0].any()


def test_malformed_region_metadata_is_an_integrity_error():
    assert parse_regions(None) == {} and parse_regions("") == {}
    with pytest.raises(ModelIntegrityError, match="not a JSON object"):
        parse_regions("[1, 2]", "m")
    with pytest.raises(ModelIntegrityError, match="within"):
        parse_regions('{"mouth": [0, 0.5, 1.2, 1]}', "m")
