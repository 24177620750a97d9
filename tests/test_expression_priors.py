"""The expression stage feeding the seed networks that reach past the crop: ORSANet's
landmark and parsing priors built from a face's earlier stages (and the template when they
are missing), and the mask-aware model's own occlusion map replacing the occlusion stage's.
Real exports of small random-weight networks, real FERPlus faces, real onnxruntime sessions;
the reference is the torch model fed the same priors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from app.pipeline.expression import ExpressionClassifier
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.priors import FERPLUS_LANDMARKS68, render_parsing
from app.pipeline.records import AlignedFace, Face, FaceAnalysis
from app.runtime.providers import create_session
from exporters.classifier import export_classifier_report
from models import create_model
from training.data import load_split

SIZE = 48
SPEC = InputSpec(size=SIZE, color="gray")
CLASSES = [str(i) for i in range(8)]


@pytest.fixture(scope="module")
def faces(ferplus_root: Path):
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    return test.images[:16], test.labels[:16]


def _analysis(gray: np.ndarray, shift: float) -> FaceAnalysis:
    """A face whose aligned crop is the FERPlus image itself (identity alignment), with 68
    points = the template moved `shift` pixels right, and a hidden lower half."""
    crop = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    eye = np.eye(2, 3, dtype=np.float32)
    face = Face(box=np.array([0, 0, SIZE, SIZE], np.float32), score=1.0,
                landmarks5=np.zeros((5, 2), np.float32))
    analysis = FaceAnalysis(face=face, aligned=AlignedFace(crop, eye, eye, face))
    analysis.landmarks68 = (FERPLUS_LANDMARKS68 * SIZE - 0.5 + [shift, 0]).astype(np.float32)
    occlusion = np.zeros((24, 24), np.float32)
    occlusion[14:] = 1.0
    analysis.occlusion = occlusion
    return analysis


def test_orsanet_gets_the_faces_own_priors(faces, tmp_path):
    images, labels = faces
    torch.manual_seed(0)
    model = create_model("orsanet", num_classes=8, in_chans=3, img_size=SIZE, units=(1, 1, 1),
                         channels=(8, 16, 32), patch_merge=1, embed_dim=32, depth=1, heads=2,
                         spade_hidden=8).eval()
    out = tmp_path / "orsanet.onnx"
    export_classifier_report(model, SPEC, CLASSES, out, verify_images=list(images[:8]),
                             verify_labels=labels[:8])
    classifier = ExpressionClassifier(create_session(out, "cpu", 1), SPEC, CLASSES, "orsanet")
    assert set(classifier.extra_inputs) == {"landmarks68", "parsing"}

    analyses = [_analysis(images[i], shift=3.0) for i in range(4)]
    priors = classifier.prior_inputs(analyses)
    points = FERPLUS_LANDMARKS68 * SIZE - 0.5 + [3.0, 0]
    np.testing.assert_allclose(priors["landmarks68"][0], (points + 0.5) / SIZE, atol=1e-5)
    hidden = cv2.resize(analyses[0].occlusion, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(priors["parsing"][0], render_parsing(points, SIZE, hidden))
    assert (priors["parsing"][0][SIZE * 2 // 3:] == 0).all()  # the hidden half is background

    classifier.annotate(analyses)
    x = torch.from_numpy(prepare_batch([a.aligned.crop for a in analyses], SPEC))
    with torch.no_grad():
        fed = torch.softmax(model(x, torch.from_numpy(priors["landmarks68"]),
                                  torch.from_numpy(priors["parsing"].astype(np.int64))), 1).numpy()
        template = torch.softmax(model(x), 1).numpy()
    got = np.stack([a.probs for a in analyses])
    np.testing.assert_allclose(got, fed, atol=1e-4)
    assert np.abs(fed - template).max() > 1e-4  # so the check above could tell them apart
    # without landmarks (no FaceMesh installed) the template stands in, as in the export
    bare = FaceAnalysis(face=analyses[0].face, aligned=analyses[0].aligned)
    probs, _ = classifier([bare.aligned.crop], classifier.prior_inputs([bare]))
    np.testing.assert_allclose(probs[0], template[0], atol=1e-4)


def test_mask_aware_shows_its_own_occlusion_map(faces, tmp_path):
    images, labels = faces
    torch.manual_seed(0)
    model = create_model("mask_aware", num_classes=8, in_chans=3, width=8,
                         ferm_strides=(1, 2, 1), heatmap_sigma=1.0).eval()
    out = tmp_path / "mask_aware.onnx"
    export_classifier_report(model, SPEC, CLASSES, out, verify_images=list(images[:8]),
                             verify_labels=labels[:8])
    classifier = ExpressionClassifier(create_session(out, "cpu", 1), SPEC, CLASSES, "mask_aware")
    assert classifier.extra_inputs == {} and classifier.extra_outputs == ["occlusion"]
    analyses = [_analysis(images[i], shift=0.0) for i in range(3)]
    stage_map = analyses[0].occlusion.copy()
    classifier.annotate(analyses)
    x = torch.from_numpy(prepare_batch([a.aligned.crop for a in analyses], SPEC))
    with torch.no_grad():
        _, _, (expected,) = model.export_outputs(x)
    for analysis, want in zip(analyses, expected.numpy()):
        assert analysis.occlusion.shape == want.shape[-2:] != stage_map.shape
        np.testing.assert_allclose(analysis.occlusion, want.reshape(want.shape[-2:]), atol=1e-4)
        assert analysis.probs is not None and analysis.cam is not None


def test_shipped_mask_aware_map_marks_a_real_mask_and_leaves_clean_faces_alone(ferplus_root):
    """The trained `mask_aware_fast` as the app runs it: on FERPlus test faces with a
    synthetic mask, the occlusion map it hands the overlay covers the mask; on the same faces
    without one it stays mostly empty."""
    from app.occlusion import synthesize

    classifier = ExpressionClassifier.from_store("mask_aware_fast", device="cpu", threads=1)
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    clean = list(test.images[100:124])
    rng = np.random.default_rng(7)
    masked, masks = zip(*(synthesize(img, "masked", rng) for img in clean))

    def maps(images) -> np.ndarray:
        analyses = [_analysis(img, 0.0) for img in images]
        for a in analyses:
            a.occlusion = None
        classifier.annotate(analyses)
        return np.stack([cv2.resize(a.occlusion, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
                         for a in analyses])

    hidden, truth = maps(masked) > 0.5, np.stack(masks) >= 0.5
    iou = (hidden & truth).sum() / (hidden | truth).sum()
    assert iou > 0.5, iou  # measured on the full masked test set: see the model card
    assert (maps(clean) > 0.5).mean() < 0.05
