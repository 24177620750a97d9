"""Face parsing: targets rasterised from the real FaceMesh teacher on real FERPlus faces, the
flip table, and the CelebAMask-HQ BiSeNet loader (class remap, sides by position, resampling
onto the aligned crop) on a small random-weight BiSeNet-shaped ONNX export."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from app.pipeline.alignment import align_face
from app.pipeline.detector import RetinaFaceDetector
from app.pipeline.landmarks import FaceMeshLandmarker
from app.pipeline.occlusion_map import (CELEBAMASK_CLASSES, CELEBAMASK_TO_OURS, PARSING_CLASSES,
                                        BiSeNetParser, assign_sides, remap_table)
from app.pipeline.records import FaceAnalysis
from app.runtime.providers import create_session
from models.perception import FLIP_PERMUTATION
from models.perception import PARSING_CLASSES as TORCH_CLASSES
from tests.app_support import install_facemesh
from training.data import load_split
from training.perception.data import FLIP_LUT
from training.perception.targets import rasterise_parsing, stamp_occluder
from training.perception.teacher import teacher_points

C = {name: i for i, name in enumerate(PARSING_CLASSES)}


def test_runtime_and_training_agree_on_the_classes():
    assert PARSING_CLASSES == TORCH_CLASSES and len(PARSING_CLASSES) == 12
    flipped = [PARSING_CLASSES[i] for i in FLIP_PERMUTATION]
    assert flipped[C["left_eye"]] == "right_eye" and flipped[C["right_brow"]] == "left_brow"
    assert flipped[C["nose"]] == "nose" and sorted(FLIP_PERMUTATION) == list(range(12))


# ------------------------------------------------------------------ teacher targets
@pytest.fixture(scope="module")
def teacher(model_store):
    if not install_facemesh(model_store):
        pytest.skip("the FaceMesh teacher needs the [convert] extra")
    return FaceMeshLandmarker(create_session(model_store.path("facemesh_468"), "cpu", 2))


@pytest.fixture(scope="module")
def ferplus_faces(ferplus_root: Path) -> np.ndarray:
    return load_split("ferplus", ferplus_root, "test", "majority", progress=False).images[:24]


def test_teacher_targets_put_each_part_where_it_belongs(teacher, ferplus_faces):
    points, presence = teacher_points(teacher, ferplus_faces)
    assert points.shape == (24, 468, 2) and (presence > 0.5).mean() >= 0.9
    good = 0
    for pts, p in zip(points, presence):
        if p < 0.5:
            continue
        labels = rasterise_parsing(pts, 64)
        present = set(np.unique(labels).tolist())
        parts = {C[c] for c in ("skin", "left_eye", "right_eye", "left_brow", "right_brow", "nose",
                                "upper_lip", "lower_lip")}
        if not parts <= present:
            continue
        ys, xs = np.indices(labels.shape)
        cx = {c: xs[labels == C[c]].mean() for c in ("left_eye", "right_eye", "left_brow", "nose")}
        cy = {c: ys[labels == C[c]].mean() for c in ("left_eye", "left_brow", "nose", "upper_lip",
                                                      "lower_lip")}
        # subject's left eye on the image right; brow above eye above nose above the lips
        good += (cx["left_eye"] > cx["nose"] > cx["right_eye"] and cx["left_brow"] > cx["nose"]
                 and cy["left_brow"] < cy["left_eye"] < cy["nose"] < cy["upper_lip"] < cy["lower_lip"])
    assert good >= 0.8 * (presence > 0.5).sum()


def test_flip_of_targets_matches_targets_of_the_flipped_face(teacher, ferplus_faces):
    faces = ferplus_faces[:8]
    points, _ = teacher_points(teacher, faces)
    points_flipped, _ = teacher_points(teacher, np.ascontiguousarray(faces[:, :, ::-1]))
    agree = [np.mean(FLIP_LUT[rasterise_parsing(a, 64)[:, ::-1]] == rasterise_parsing(b, 64))
             for a, b in zip(points, points_flipped)]
    assert np.median(agree) > 0.85  # same face, teacher run again: mostly the same labels


def test_occluder_is_stamped_on_top():
    labels = np.full((8, 8), C["skin"], np.uint8)
    mask = np.zeros((8, 8), np.float32)
    mask[:2], mask[2, :4] = 1.0, 0.49
    out = stamp_occluder(labels, mask)
    assert (out[:2] == C["occluder"]).all() and (out[2:] == C["skin"]).all()


# ------------------------------------------------------------------ BiSeNet loader
class TinyBiSeNet(nn.Module):
    """A BiSeNet-shaped net: 512 px RGB in; like zllrunning's BiSeNet it returns the main
    19-class output at input resolution first, then two auxiliary heads at 1/8 and 1/16."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 4, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(16, 19, 1)
        self.aux16 = nn.Conv2d(16, 19, 1)
        self.aux32 = nn.Conv2d(16, 19, 1)

    def forward(self, x):
        f = self.body(x)
        out = nn.functional.interpolate(self.head(f), scale_factor=8.0, mode="bilinear", align_corners=True)
        return out, self.aux16(f), self.aux32(nn.functional.max_pool2d(f, 2))


def _export(net: nn.Module, path: Path) -> Path:
    torch.onnx.export(net.eval(), (torch.zeros(1, 3, 512, 512),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["out", "out16", "out32"])
    return path


@pytest.fixture(scope="module")
def bisenet_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _export(TinyBiSeNet(), tmp_path_factory.mktemp("bisenet") / "bisenet_random.onnx")


@pytest.fixture(scope="module")
def constant_eye_onnx(tmp_path_factory) -> Path:
    """The same shape with the head forced to say `l_eye` everywhere."""
    net = TinyBiSeNet()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        net.head.bias[CELEBAMASK_CLASSES.index("l_eye")] = 5.0
    return _export(net, tmp_path_factory.mktemp("bisenet") / "bisenet_eye.onnx")


@pytest.fixture(scope="module")
def astronaut_analysis(retinaface_onnx, astronaut_bgr) -> FaceAnalysis:
    faces = RetinaFaceDetector(create_session(retinaface_onnx, "cpu"))(astronaut_bgr)
    assert len(faces) == 1
    return FaceAnalysis(face=faces[0], aligned=align_face(astronaut_bgr, faces[0], 112))


def test_remap_covers_all_19_classes_into_ours():
    table = remap_table()
    assert table.shape == (19,) and set(CELEBAMASK_TO_OURS) == set(CELEBAMASK_CLASSES)
    assert PARSING_CLASSES[table[CELEBAMASK_CLASSES.index("eye_g")]] == "occluder"
    assert PARSING_CLASSES[table[CELEBAMASK_CLASSES.index("mouth")]] == "inner_mouth"
    assert PARSING_CLASSES[table[CELEBAMASK_CLASSES.index("hair")]] == "hair_or_other"
    assert PARSING_CLASSES[table[0]] == "background"


def test_sides_are_decided_by_position():
    labels = np.full((4, 10), C["right_eye"], np.uint8)
    out = assign_sides(labels, midline_x=4.5)
    assert (out[:, :5] == C["right_eye"]).all() and (out[:, 5:] == C["left_eye"]).all()


def test_bisenet_loader_picks_the_19_class_output_and_remaps_it(bisenet_onnx, astronaut_analysis,
                                                                astronaut_bgr):
    session = create_session(bisenet_onnx, "cpu")
    parser = BiSeNetParser(session)
    assert parser.output_name == "out" and parser.size == 512 and parser.fixed_batch
    # the loader's labels are exactly the remapped argmax of the raw session output
    crop = cv2.cvtColor(cv2.warpAffine(astronaut_bgr, parser.crop_matrix(astronaut_analysis), (512, 512)),
                        cv2.COLOR_BGR2RGB)
    raw = ort.InferenceSession(str(bisenet_onnx)).run(["out"], {"input": parser.prepare([crop])})[0]
    expected = remap_table()[raw[0].argmax(0)]
    midline = parser.template[:, 0].mean() * 512 - 0.5
    np.testing.assert_array_equal(parser.labels([crop])[0], assign_sides(expected, midline))
    parser.annotate(astronaut_bgr, [astronaut_analysis])
    assert astronaut_analysis.parsing.shape == (112, 112)
    assert set(np.unique(astronaut_analysis.parsing)) <= set(range(len(PARSING_CLASSES)))
    assert astronaut_analysis.parsing_classes == PARSING_CLASSES


def test_bisenet_eye_everywhere_splits_into_the_subjects_right_and_left(constant_eye_onnx):
    parser = BiSeNetParser(create_session(constant_eye_onnx, "cpu"))
    crop = np.full((512, 512, 3), 128, np.uint8)
    labels = parser.labels([crop])[0]
    assert set(np.unique(labels)) == {C["left_eye"], C["right_eye"]}
    assert (labels[:, :200] == C["right_eye"]).all() and (labels[:, 320:] == C["left_eye"]).all()


def test_bisenet_rejects_a_net_without_19_class_output(tmp_path):
    path = tmp_path / "wrong.onnx"
    torch.onnx.export(nn.Conv2d(3, 5, 1).eval(), (torch.zeros(1, 3, 64, 64),), str(path),
                      dynamo=False, opset_version=17, input_names=["input"], output_names=["out"])
    from app.errors import ModelIntegrityError

    with pytest.raises(ModelIntegrityError, match="19 class channels"):
        BiSeNetParser(create_session(path, "cpu"))


def test_bisenet_plugs_into_the_pipeline_by_name(bisenet_onnx, model_store, retinaface_onnx,
                                                 astronaut_bgr, tmp_path):
    import json
    import time

    from app import ASSETS_DIR
    from app.pipeline.pipeline import build_pipeline
    from app.pipeline.records import Frame
    from app.runtime.store import ModelStore, sha256_of

    folder = tmp_path / "assets"
    folder.mkdir()
    (folder / "bisenet_random.onnx").write_bytes(bisenet_onnx.read_bytes())
    retinaface = json.loads((ASSETS_DIR / "manifest.json").read_text())["models"]["retinaface_mnet025"]
    entry = {"task": "parsing", "file": "bisenet_random.onnx", "sources": [{"kind": "asset"}],
             "sha256": sha256_of(folder / "bisenet_random.onnx"), "classes": list(CELEBAMASK_CLASSES),
             "input": {"size": 512, "color": "rgb", "layout": "NCHW"}}
    (folder / "manifest.json").write_text(json.dumps({"models": {
        "retinaface_mnet025": retinaface, "bisenet_random": entry}}))
    store = ModelStore(root=model_store.root, manifest=folder / "manifest.json")
    pipeline = build_pipeline(store, device="cpu", threads=2, landmark_model=None,
                              occlusion_model=None, parsing_model="bisenet_random")
    result = pipeline.process(Frame(image=astronaut_bgr, index=0, timestamp=time.time()))
    analysis = result.faces[0]
    assert analysis.parsing.shape == analysis.aligned.crop.shape[:2]
    assert analysis.parsing_classes == PARSING_CLASSES and result.latency_ms["occlusion"] > 0
    assert analysis.occlusion is None  # BiSeNet has no occlusion head
