"""The mask-aware joint model (FOPM + EFFM + FERM, seed 003): module shapes, its three losses
and the augmentation extras that feed them on real FERPlus faces, ONNX parity of probs, CAM
and the occlusion map, and a short run through the trainer."""

from __future__ import annotations

import json

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app.pipeline.preprocess import InputSpec
from app.pipeline.priors import FERPLUS_LANDMARKS68, IBUG68_MIRROR
from exporters.classifier import export_classifier_report
from models import create_model
from models.mask_aware import landmark_heatmaps
from training.augment import AugmentConfig, augment_batch
from training.data import load_split
from training.recipes import get_recipe
from training.gating_probe import MODES, markdown_table, run_probe
from training.occlusion import write_test_sets
from training.trainer import train

from tests.app_support import mini_ferplus

SIZE = 48
SMALL = {"width": 8, "ferm_strides": (1, 2, 1), "heatmap_sigma": 1.0}
SPEC = InputSpec(size=SIZE, color="gray")


@pytest.fixture(scope="module")
def faces(ferplus_root: Path):
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    return test.images[:64], test.labels[:64]


@pytest.fixture(scope="module")
def batch(faces):
    """32 real faces, all occluded (p_clean 0), with the masks and warped landmarks."""
    images, labels = faces
    cfg = AugmentConfig(occlusion_p_clean=0.0)
    x, extras = augment_batch(images, range(32), 0, 5, SPEC, cfg, True,
                              aux=("occlusion", "landmarks68", "parsing"))
    return torch.from_numpy(x), torch.from_numpy(labels[:32]), {
        k: torch.from_numpy(v) for k, v in extras.items()}


def small_model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mask_aware", num_classes=8, in_chans=3, **{**SMALL, **overrides})


def test_module_shapes_follow_the_paper_at_224_and_the_fast_config_at_48():
    paper = create_model("mask_aware", num_classes=7, **get_recipe("mask_aware", "paper").model_cfg)
    # the paper's seven convolutions: 1,276,992 parameters with biases, 1,408 of them biases
    # (BN replaces the biases here)
    conv_weights = sum(m.weight.numel() for m in paper.fopm.modules()
                       if isinstance(m, torch.nn.Conv2d))
    assert conv_weights == 1_276_992 - 1_408
    total = sum(p.numel() for p in paper.parameters())
    assert 8.0e6 < total < 10.5e6  # the paper: ~9.8 M
    model = small_model().eval()
    with torch.no_grad():
        parts = model.parse(torch.zeros(3, 3, SIZE, SIZE))
        logits = model(torch.zeros(3, 3, SIZE, SIZE))
    assert parts["p"].shape == (3, 64, 12, 12)  # 8 * width channels at S / 4
    assert parts["occlusion"].shape == (3, 12, 12)
    assert parts["heatmaps"].shape == (3, 68, 12, 12)
    assert parts["region_weights"].shape == (3, 4)
    assert parts["features"].shape == (3, 64, 6, 6)
    assert logits.shape == (3, 8)
    assert float(parts["occlusion"].min()) >= 0 and float(parts["occlusion"].max()) <= 1


def test_augmentation_extras_follow_the_face_and_leave_the_plain_path_unchanged(faces):
    images, _ = faces
    cfg = AugmentConfig(occlusion_p_clean=0.0)
    plain = augment_batch(images, range(16), 3, 9, SPEC, cfg, True)
    x, extras = augment_batch(images, range(16), 3, 9, SPEC, cfg, True,
                              aux=("occlusion", "landmarks68", "parsing"))
    np.testing.assert_array_equal(plain, x)  # same random draws, same pixels
    assert extras["occlusion"].shape == (16, SIZE, SIZE)
    assert (extras["occlusion"].reshape(16, -1).max(1) > 0.5).all()  # every face occluded
    assert extras["landmarks68"].shape == (16, 68, 2)
    assert extras["parsing"].shape == (16, SIZE, SIZE) and extras["parsing"].max() <= 10
    # occluded pixels are background in the parsing map
    assert (extras["parsing"][extras["occlusion"] > 0.5] == 0).all()
    # unaugmented: the template exactly, no occlusion
    _, still = augment_batch(images, range(2), 0, 0, SPEC, None, False,
                             aux=("occlusion", "landmarks68"))
    np.testing.assert_allclose(still["landmarks68"][0], FERPLUS_LANDMARKS68, atol=1e-6)
    assert still["occlusion"].max() == 0
    # a flip-only warp mirrors the points and swaps their indices (36 stays the right eye)
    flip = AugmentConfig(flip=1.0, rotate_deg=0, scale=(1, 1), translate=0, brightness=0,
                         contrast=0)
    _, flipped = augment_batch(images, range(1), 0, 0, SPEC, flip, False, aux=("landmarks68",))
    expected = FERPLUS_LANDMARKS68[IBUG68_MIRROR].copy()
    expected[:, 0] = 1.0 - expected[:, 0]
    np.testing.assert_allclose(flipped["landmarks68"][0], expected, atol=1e-5)


def test_each_loss_on_a_real_batch_is_finite_and_reaches_its_head(batch):
    x, labels, aux = batch
    model = small_model().train()
    terms, logits = model.losses(x, labels, 0.0, aux["occlusion"], aux["landmarks68"])
    assert logits.shape == (32, 8)
    for name, value in terms.items():
        assert torch.isfinite(value) and float(value.detach()) > 0, name
    heads = {"occlusion": model.unet.occlusion_head.weight,
             "landmarks": model.unet.landmark_head.weight,
             "expression": model.classifier.weight}
    for name, value in terms.items():
        model.zero_grad()
        value.backward(retain_graph=True)
        assert float(heads[name].grad.abs().sum()) > 0, name
    # the total is L_p + 0.6 L_m + 0.4 L_d
    torch.manual_seed(1)
    model.eval()  # no BN batch statistics drift between the two passes
    terms, _ = model.losses(x, labels, 0.0, aux["occlusion"], aux["landmarks68"])
    total, _ = model.training_loss(x, labels, 0.0, aux=aux)
    expected = terms["occlusion"] + 0.6 * terms["landmarks"] + 0.4 * terms["expression"]
    assert float((total - expected).detach().abs()) < 1e-5
    with pytest.raises(ValueError, match="aux"):
        model.training_loss(x, labels, 0.0)


def test_heatmap_targets_peak_at_the_landmarks():
    points = torch.tensor([[[0.25, 0.75], [0.5, 0.5]]])
    heat = landmark_heatmaps(points, 8, 8, 1.0)
    assert heat.shape == (1, 2, 8, 8)
    assert divmod(int(heat[0, 0].argmax()), 8) in {(5, 1), (6, 1), (5, 2), (6, 2)}
    assert float(heat.max()) <= 1.0


def test_a_few_steps_teach_the_occlusion_head(batch):
    """The parsing head is not decoration: 12 steps on 16 real faces cut L_p by half."""
    x, labels, aux = batch
    x, labels = x[:16], labels[:16]
    aux = {k: v[:16] for k, v in aux.items()}
    model = small_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(12):
        terms, _ = model.losses(x, labels, 0.0, aux["occlusion"], aux["landmarks68"])
        loss = terms["occlusion"] + 0.6 * terms["landmarks"] + 0.4 * terms["expression"]
        first = float(terms["occlusion"]) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(terms["occlusion"]) < 0.5 * first


def test_export_matches_torch_on_probs_cam_and_occlusion(faces, tmp_path):
    images, labels = faces
    model = small_model().eval()
    out = tmp_path / "mask_aware.onnx"
    report = export_classifier_report(model, SPEC, [str(i) for i in range(8)], out,
                                      verify_images=list(images[:16]),
                                      verify_labels=labels[:16])
    assert report.max_abs_diff_probs < 1e-4 and report.max_abs_diff_cam < 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probs", "cam", "occlusion"]
    x = augment_batch(images, range(8), 0, 0, SPEC, AugmentConfig(occlusion_p_clean=0.0), True)
    probs, cam, occlusion = session.run(None, {"input": x})
    with torch.no_grad():
        logits, evidence, (expected_occlusion,) = model.export_outputs(torch.from_numpy(x))
    assert occlusion.shape == (8, 12, 12) and cam.shape == (8, 8, 6, 6)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(occlusion, expected_occlusion.numpy(), atol=1e-4)


def test_training_smoke_run_through_the_trainer(ferplus_root: Path, tmp_path, teacher):
    recipe = replace(get_recipe("mask_aware", "fast"), epochs=1, batch_size=32,
                     model_cfg={**get_recipe("mask_aware", "fast").model_cfg, "width": 8})
    onnx_path = train("mask_aware", "ferplus", ferplus_root, recipe, "cpu",
                      out_dir=tmp_path / "run", limit=256, val_limit=128, test_limit=128,
                      workers=0, progress=False, register=False,
                      occlusion_dir=tmp_path / "no-occluded-sets", teacher=teacher)
    assert onnx_path.suffix == ".onnx" and onnx_path.exists()
    history = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert "occlusion" in [o.name for o in session.get_outputs()]
    card = (tmp_path / "run" / f"{onnx_path.stem}.md").read_text()
    assert "Landmarks: FaceMesh teacher on each clean face" in card
    assert "Its own occlusion map" in card and "(no occluder) | false-positive pixels" in card
    report = json.loads((tmp_path / "run" / "reports" / "test_clean" / "report.json").read_text())
    assert 0.0 <= report["occlusion_map"]["pixel_false_positive_rate"] <= 1.0

    # the gating probe on the trained weights: 40 real test faces, clean and a masked copy
    mini = mini_ferplus(ferplus_root, tmp_path / "mini", 40)
    write_test_sets(mini, tmp_path / "sets", ["masked"], progress=False)
    results = run_probe(tmp_path / "run" / "best.pt", mini, tmp_path / "sets",
                        kinds=("clean", "masked"))
    # (faces without a majority label are left out, as in every evaluation)
    assert results["clean"]["n"] == results["masked"]["n"] >= 30
    # on clean faces the oracle map is "nothing hidden", the same map as gating off
    assert results["clean"]["oracle"] == results["clean"]["off"]
    assert all(0.0 <= results[k][m] <= 100.0 for k in results for m in MODES)
    assert "| masked |" in markdown_table(results)


def test_an_occlusion_map_given_to_parse_replaces_the_predicted_one_in_the_gating(batch):
    x, _, _ = batch
    model = small_model().eval()
    with torch.no_grad():
        own = model.parse(x)
        hidden = torch.full_like(own["occlusion"], 0.95)
        given = model.parse(x, occlusion=hidden)
        again = model.parse(x, occlusion=own["occlusion"])
    assert torch.allclose(again["features"], own["features"])
    assert not torch.allclose(given["features"], own["features"])
    assert torch.equal(given["occlusion"], hidden)


def test_gating_probe_on_a_shipped_file_rewires_only_the_visibility(ferplus_root, tmp_path):
    """`--model mask_aware_cpu`: the ONNX rewired so EFFM reads the map from an input; fed the
    model's own map it must give the shipped probabilities (the probe checks every batch)."""
    from app.errors import OccluferError
    from training.gating_probe import gated_onnx

    shipped = Path(__file__).resolve().parents[1] / "assets" / "models" / "mask_aware_cpu.onnx"
    mini = mini_ferplus(ferplus_root, tmp_path / "mini", 60)
    write_test_sets(mini, tmp_path / "sets", ["masked"], progress=False)
    results = run_probe(shipped, mini, tmp_path / "sets", kinds=("clean", "masked"))
    assert results["clean"]["oracle"] == results["clean"]["off"]
    assert results["masked"]["n"] >= 40
    # a map hiding the lower face really reaches the classifier through the new input (a
    # uniform map would not: the visibility-weighted average is scale-free)
    session = ort.InferenceSession(gated_onnx(shipped), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 48, 48)).astype(np.float32)
    lower = np.zeros((4, 12, 12), np.float32)
    lower[:, 3:, :] = 0.99
    seen = session.run(["probs"], {"input": x, "gate_occlusion": np.zeros((4, 12, 12), np.float32)})
    hidden = session.run(["probs"], {"input": x, "gate_occlusion": lower})
    assert not np.allclose(seen[0], hidden[0], atol=1e-4)
    with pytest.raises(OccluferError, match="1 - occlusion"):
        gated_onnx(shipped.with_name("resnet18_fast.onnx"))
