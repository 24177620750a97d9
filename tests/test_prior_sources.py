"""Where a prior-guided model's landmarks and parsing come from, in training and in evaluation:
the FaceMesh teacher's per-face 68 points on clean FERPlus crops (template where it finds no
face), and `occlufer eval --priors runtime|oracle|template` on a real occluded FERPlus set with
the shipped landmark student and occlusion network. Real models and real faces throughout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.pipeline.preprocess import InputSpec
from app.pipeline.priors import FERPLUS_LANDMARKS68, template_landmarks68
from app.runtime.providers import create_session
from exporters.classifier import export_classifier_report
from models import create_model
from training import evaluate as ev
from training.data import EMOTIONS8, load_split
from training.perception.teacher import teacher_landmarks68
from tests.app_support import mini_ferplus

SIZE = 48
SPEC = InputSpec(size=SIZE, color="gray")
N = 40


def _nme(a: np.ndarray, b: np.ndarray) -> float:
    """Mean point error over inter-ocular distance (outer eye corners 36, 45) of `b`."""
    iod = np.linalg.norm(b[:, 36] - b[:, 45], axis=1)
    return float((np.linalg.norm(a - b, axis=2).mean(axis=1) / iod).mean())


@pytest.fixture(scope="module")
def mini_root(ferplus_root: Path, tmp_path_factory) -> Path:
    """The first N FERPlus test faces in the official layout."""
    return mini_ferplus(ferplus_root, tmp_path_factory.mktemp("mini-ferplus"), N)


def test_teacher_landmarks_are_each_faces_own_and_the_template_where_no_face(ferplus_root,
                                                                          teacher, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("OCCLUFER_CACHE", str(tmp_path / "cache"))
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    images = np.concatenate([test.images[:12], np.full((2, SIZE, SIZE), 128, np.uint8)])
    names = list(test.names[:12]) + ["blank-a.png", "blank-b.png"]
    points, found = teacher_landmarks68("ferplus", "test", names, images, teacher=teacher)
    assert points.shape == (14, 68, 2) and points.dtype == np.float32
    assert not found[12:].any() and found[:12].sum() >= 10  # real faces are found
    np.testing.assert_allclose(points[12:], np.stack([template_landmarks68(SIZE)] * 2), atol=1e-4)
    real = points[:12][found[:12]]
    template = template_landmarks68(SIZE)[None]
    # near the FERPlus mean face, but each face's own points (expressions, pose)
    assert _nme(real, np.repeat(template, len(real), 0)) < 0.35
    assert np.abs(real - template).max() > 1.0
    # cached: a second call reads the same points without running the teacher
    again, _ = teacher_landmarks68("ferplus", "test", names, images, teacher=(None, teacher[1]))
    np.testing.assert_array_equal(again, points)


def test_eval_prior_sources_on_a_masked_set(mini_root, teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCLUFER_CACHE", str(tmp_path / "cache"))
    sets = tmp_path / "sets"
    masked_root = ev.occluded_root(mini_root, "masked", "test", sets, build=True)
    occluded = load_split("ferplus", masked_root, "test", progress=False)
    clean = load_split("ferplus", mini_root, "test", progress=False)
    assert list(occluded.names) == list(clean.names)
    kw = dict(dataset="ferplus", split="test", names=list(occluded.names),
              clean_root=mini_root, teacher=teacher)
    names = ("landmarks68", "parsing")
    assert ev.evaluation_priors("template", names, SIZE, occluded.images,
                                occluded_root_dir=masked_root, **kw) is None
    oracle = ev.evaluation_priors("oracle", names, SIZE, occluded.images,
                                  occluded_root_dir=masked_root, **kw)
    runtime = ev.evaluation_priors("runtime", names, SIZE, occluded.images,
                                   occluded_root_dir=masked_root, **kw)
    with pytest.raises(Exception, match="unknown prior source"):
        ev.evaluation_priors("dlib", names, SIZE, occluded.images, occluded_root_dir=None, **kw)

    # oracle = the teacher on the clean face and the occluder's true mask
    teacher_points, _ = teacher_landmarks68("ferplus", "test", list(clean.names), clean.images,
                                            teacher=teacher)
    np.testing.assert_allclose(oracle["landmarks68"], (teacher_points + 0.5) / SIZE, atol=1e-6)
    masks = np.stack([cv2.imread(str(masked_root / "masks" / f"{Path(n).stem}.png"),
                                 cv2.IMREAD_GRAYSCALE) for n in occluded.names]) / 255.0
    assert (oracle["parsing"][masks > 0.5] == 0).all()  # hidden pixels are background
    assert (masks > 0.5).mean() > 0.1  # and the masks do hide something
    # runtime = the shipped student and occlusion network on the masked face: close to the
    # oracle (the student's masked NME is ~8 % of the inter-ocular distance), not equal
    oracle_px = oracle["landmarks68"] * SIZE
    runtime_px = runtime["landmarks68"] * SIZE
    assert 0.01 < _nme(runtime_px, oracle_px) < 0.2
    template_px = np.repeat(FERPLUS_LANDMARKS68[None] * SIZE, len(occluded), 0)
    assert _nme(runtime_px, oracle_px) < _nme(template_px, oracle_px)
    hidden_both = (runtime["parsing"] == 0) & (oracle["parsing"] == 0) & (masks > 0.5)
    assert hidden_both.sum() > 0.5 * ((oracle["parsing"] == 0) & (masks > 0.5)).sum()

    # and evaluate() scores a real ORSANet export on each, recording which it used
    torch.manual_seed(0)
    model = create_model("orsanet", num_classes=8, in_chans=3, img_size=SIZE, units=(1, 1, 1),
                         channels=(8, 16, 32), patch_merge=1, embed_dim=32, depth=1, heads=2,
                         spade_hidden=8).eval()
    onnx_path = tmp_path / "orsanet.onnx"
    export_classifier_report(model, SPEC, list(EMOTIONS8), onnx_path,
                             verify_images=list(clean.images[:8]),
                             verify_labels=clean.labels[:8])
    session = create_session(onnx_path, "cpu", 1)
    probs = {}
    for source in ev.PRIOR_SOURCES:
        report = ev.evaluate(onnx_path, "ferplus", mini_root, occlusion="masked",
                             occlusion_dir=sets, report_dir=tmp_path / source, priors=source,
                             teacher=teacher, build_occluded=False)
        assert report["priors"] == source and report["n"] == len(occluded)
        feeds = ev.evaluation_priors(source, names, SIZE, occluded.images,
                                     occluded_root_dir=masked_root, **kw)
        probs[source] = ev.predict(session, occluded.images, SPEC, priors=feeds)
    assert np.abs(probs["runtime"] - probs["template"]).max() > 1e-4
    assert np.abs(probs["runtime"] - probs["oracle"]).max() > 1e-5
