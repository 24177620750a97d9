"""ORSANet (seed 004): module shapes, DARELoss against Eqs. 10-11, CE + DARE on a real FERPlus
batch with its landmark and parsing priors, ONNX parity with the priors left at their
defaults and fed explicitly, and a short run through the trainer."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.pipeline.preprocess import InputSpec
from exporters.classifier import export_classifier_report
from models import create_model
from models.orsanet import dare_loss
from training.augment import AugmentConfig, augment_batch
from training.data import load_split
from training.recipes import get_recipe
from training.trainer import train

SIZE = 48
SMALL = {"img_size": SIZE, "units": (1, 1, 1), "channels": (8, 16, 32), "patch_merge": 1,
         "embed_dim": 32, "depth": 1, "heads": 2, "spade_hidden": 8}
SPEC = InputSpec(size=SIZE, color="gray")
AUX = ("landmarks68", "parsing")


@pytest.fixture(scope="module")
def faces(ferplus_root: Path):
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    return test.images[:64], test.labels[:64]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("orsanet", num_classes=8, in_chans=3, **SMALL)


def test_module_shapes_and_the_paper_configuration():
    paper = create_model("orsanet", num_classes=7, **get_recipe("orsanet", "paper").model_cfg)
    total = sum(p.numel() for p in paper.parameters())
    assert 45e6 < total < 65e6  # paper: 60.2 M trainable
    assert paper.grid == 7 and paper.pos_embed.shape == (1, 49, 512)
    model = small_model().eval()
    x = torch.zeros(3, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        # priors given explicitly = the defaults broadcast over the batch
        same = model(x, model.default_landmarks68.expand(3, 68, 2),
                     model.default_parsing.expand(3, SIZE, SIZE))
    assert features.shape == (3, 32, 6, 6) and logits.shape == (3, 8)
    torch.testing.assert_close(logits, same)


def test_dare_loss_follows_equations_10_and_11():
    logits = torch.tensor([[2.0, 1.0, -0.5], [0.3, -1.0, 0.8]])
    target = torch.tensor([0, 2])
    expected = []
    for row, t in zip(logits.tolist(), target.tolist()):
        p = math.exp(row[t]) / sum(math.exp(v) for v in row)
        z_y = max(v for i, v in enumerate(row) if i != t)
        z_y2 = (1 - p) * z_y + z_y
        expected.append(-math.log(math.exp(row[t]) / (math.exp(row[t]) + math.exp(z_y2))))
    assert abs(float(dare_loss(logits, target)) - np.mean(expected)) < 1e-6
    additive = np.mean([-math.log(math.exp(r[t]) / (math.exp(r[t]) + math.exp(
        max(v for i, v in enumerate(r) if i != t) + 1 - math.exp(r[t]) / sum(map(math.exp, r)))))
        for r, t in zip(logits.tolist(), target.tolist())])
    assert abs(float(dare_loss(logits, target, additive=True)) - additive) < 1e-6
    # its gradient raises the target logit and lowers only the strongest rival
    z = logits.clone().requires_grad_(True)
    dare_loss(z, target).backward()
    assert z.grad[0, 0] < 0 and z.grad[0, 1] > 0 and z.grad[0, 2] == 0


def test_ce_plus_dare_on_a_real_batch_with_its_priors(faces):
    images, labels = faces
    x, extras = augment_batch(images, range(32), 0, 1, SPEC, AugmentConfig(), True, aux=AUX)
    x, y = torch.from_numpy(x), torch.from_numpy(labels[:32])
    aux = {k: torch.from_numpy(v) for k, v in extras.items()}
    model = small_model().train()
    loss, logits = model.training_loss(x, y, 0.1, aux=aux)
    assert torch.isfinite(loss) and logits.shape == (32, 8)
    model.zero_grad()
    loss.backward()
    # both priors reach the loss: the landmark encoder and the SPADE convs get gradients
    assert float(model.landmark_encoder[0].weight.grad.abs().sum()) > 0
    assert float(model.ssgm.spade0.shared[0].weight.grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        with_priors = model(x, aux["landmarks68"], aux["parsing"])
        template = model(x)
    assert float((with_priors - template).abs().max()) > 1e-4  # the priors change the answer


def test_export_parity_with_default_and_fed_priors(faces, tmp_path):
    images, labels = faces
    model = small_model().eval()
    out = tmp_path / "orsanet.onnx"
    report = export_classifier_report(model, SPEC, [str(i) for i in range(8)], out,
                                      verify_images=list(images[:16]), verify_labels=labels[:16])
    assert report.max_abs_diff_probs < 1e-4 and report.max_abs_diff_cam < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # the runtime's one-input path still works; the priors are optional inputs
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert {i.name for i in session.get_overridable_initializers()} == {"landmarks68", "parsing"}
    meta = json.loads(session.get_modelmeta().custom_metadata_map["extra_inputs"])
    assert meta["landmarks68"]["shape"] == ["N", 68, 2] and meta["parsing"]["dtype"] == "int64"
    x, extras = augment_batch(images, range(8), 0, 2, SPEC, AugmentConfig(), True, aux=AUX)
    probs, cam = session.run(["probs", "cam"], {"input": x, **extras})
    with torch.no_grad():
        logits, evidence, _ = model.export_outputs(
            torch.from_numpy(x), torch.from_numpy(extras["landmarks68"]),
            torch.from_numpy(extras["parsing"]))
    expected_cam = torch.relu(evidence)
    expected_cam = expected_cam / (expected_cam.amax((2, 3), keepdim=True) + 1e-6)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(cam, expected_cam.numpy(), atol=1e-4)
    assert cam.shape == (8, 8, 6, 6)


def test_training_smoke_run_through_the_trainer(ferplus_root: Path, tmp_path, teacher):
    recipe = replace(get_recipe("orsanet", "fast"), epochs=1, batch_size=32,
                     model_cfg={**get_recipe("orsanet", "fast").model_cfg, **SMALL})
    onnx_path = train("orsanet", "ferplus", ferplus_root, recipe, "cpu",
                      out_dir=tmp_path / "run", limit=256, val_limit=128, test_limit=128,
                      workers=0, progress=False, register=False,
                      occlusion_dir=tmp_path / "no-occluded-sets", teacher=teacher)
    card = (tmp_path / "run" / f"{onnx_path.stem}.md").read_text()
    assert "Landmarks: FaceMesh teacher on each clean face" in card
    report = json.loads((tmp_path / "run" / "reports" / "test_clean" / "report.json").read_text())
    assert report["priors"] == "runtime"  # scored on what the app feeds it
    assert "| oracle |" in card and "| template |" in card  # and on perfect / no priors
    oracle = tmp_path / "run" / "reports" / "test_clean_oracle_priors" / "report.json"
    assert json.loads(oracle.read_text())["priors"] == "oracle"
    assert onnx_path.suffix == ".onnx" and onnx_path.exists()
    history = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]


def test_runtime_training_priors_are_the_apps_feeds_on_the_augmented_face(faces):
    """`--train-priors runtime`: the extras a training batch carries are exactly what the
    app's student and occlusion network give on that augmented (occluded, warped) face."""
    from app.pipeline.landmarks_student import StudentLandmarker
    from app.pipeline.occlusion_map import OcclusionParsingModel
    from app.pipeline.priors import prior_feeds
    from training.augment import augment_image_aux, sample_rng
    from training.runtime_priors import RuntimePriors

    images = faces[0][:12]
    cfg = AugmentConfig(occlusion_p_clean=0.0)  # every face occluded
    idx = list(range(len(images)))
    x, fed = augment_batch(images, idx, 3, 0, SPEC, cfg, True, aux=AUX,
                           priors=RuntimePriors())
    _, perfect = augment_batch(images, idx, 3, 0, SPEC, cfg, True, aux=AUX)
    crops = [augment_image_aux(images[i], sample_rng(0, 3, i), cfg, True)[0] for i in idx]
    student, occlusion_net = StudentLandmarker.from_store(), OcclusionParsingModel.from_store()
    expected = prior_feeds(AUX, SIZE, list(student(crops)[0]),
                           list(occlusion_net.predict(crops)[0]))
    assert fed["landmarks68"].dtype == np.float32 and fed["parsing"].dtype == np.int64
    np.testing.assert_array_equal(fed["landmarks68"], expected["landmarks68"])
    np.testing.assert_array_equal(fed["parsing"], expected["parsing"])
    # the image is the one the perfect-prior path makes; only the priors differ from it
    np.testing.assert_array_equal(x, augment_batch(images, idx, 3, 0, SPEC, cfg, True))
    assert not np.array_equal(fed["parsing"], perfect["parsing"])
    assert np.abs(fed["landmarks68"] - perfect["landmarks68"]).max() > 0.01
    import pickle

    assert pickle.loads(pickle.dumps(RuntimePriors()))._models is None  # workers reopen


def test_runtime_priors_run_records_its_priors_and_refuses_a_mixed_resume(ferplus_root: Path,
                                                                          tmp_path, teacher):
    from app.errors import OccluferError

    recipe = replace(get_recipe("orsanet", "cpu"), epochs=2, batch_size=32,
                     model_cfg={**get_recipe("orsanet", "cpu").model_cfg, **SMALL})
    assert recipe.train_priors == "runtime"
    common = dict(out_dir=tmp_path / "run", limit=64, val_limit=64, workers=0, progress=False,
                  register=False, finalize=False, teacher=teacher)
    last = train("orsanet", "ferplus", ferplus_root, recipe, "cpu", stop_after=1, **common)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["identity"]["train_priors"] == "runtime"
    with pytest.raises(OccluferError, match="train_priors"):
        train("orsanet", "ferplus", ferplus_root, recipe, "cpu", resume=True,
              train_priors="teacher", **common)
