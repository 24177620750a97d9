"""FFRA-Net (seed 001): the modules' equations and shapes, the weighted residual fusion, the
expression-network contract, the cross-entropy loss on a real FERPlus batch, ONNX export
parity of probabilities and CAM, trunk initialisation from a resnet18, and a two-epoch run of
the real trainer."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.providers import create_session
from exporters import classifier as exporter
from models import create_model, list_models
from models.attention import ShuffleAttention
from models.ffra_net import (FFRANet, LocalAttentionModule, MultiScaleModule,
                             load_resnet_trunk)
from training.data import EMOTIONS8, load_split
from training.recipes import get_recipe
from training.trainer import loss_fn, train

FAST = {"small_input": True, "stem_stride": 2}


@pytest.fixture(scope="module")
def train_batch(ferplus_root: Path) -> dict[str, torch.Tensor]:
    """64 real FERPlus training faces at 48 px with majority labels and vote distributions."""
    split = load_split("ferplus", ferplus_root, "train", "crossentropy", progress=False)
    x = torch.from_numpy(prepare_batch(list(split.images[:64]), InputSpec(size=48)))
    return {"x": x, "labels": torch.from_numpy(split.labels[:64]),
            "soft": torch.from_numpy(split.soft_labels[:64])}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_multi_scale_module_is_equation_one():
    module = MultiScaleModule(32, groups=4).eval()
    x = torch.randn(2, 32, 6, 10)
    with torch.no_grad():
        out = module(x)
        parts = torch.split(x, 8, dim=1)
        y, expected = None, []
        for conv, part in zip(module.convs, parts):  # Y_1 = P_1(X_1), Y_i = P_i(X_i + Y_i-1)
            y = conv(part if y is None else part + y)
            expected.append(y)
    assert out.shape == x.shape
    assert torch.allclose(out, torch.cat(expected, dim=1))
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleModule(30)


def test_local_attention_module_is_equation_four_on_2x2_patches():
    module = LocalAttentionModule(32, grid=(2, 2), attention_groups=8).eval()
    assert len(module.units) == 4
    assert all(isinstance(unit[-1], ShuffleAttention) and unit[-1].groups == 8
               for unit in module.units)
    x = torch.randn(2, 32, 6, 8)
    with torch.no_grad():
        out = module(x)
        s = module.conv(x)
        patches = [s[:, :, :3, :4], s[:, :, :3, 4:], s[:, :, 3:, :4], s[:, :, 3:, 4:]]
        y, outs = None, []
        for unit, patch in zip(module.units, patches):
            y = unit(patch if y is None else patch + y)
            outs.append(y)
    assert out.shape == x.shape
    assert torch.allclose(out[:, :, :3, :4], outs[0]) and torch.allclose(out[:, :, :3, 4:], outs[1])
    assert torch.allclose(out[:, :, 3:, :4], outs[2]) and torch.allclose(out[:, :, 3:, 4:], outs[3])
    with pytest.raises(ValueError, match="divide evenly"):
        module(torch.randn(1, 32, 5, 8))


def test_paper_shapes_and_size_at_224():
    model = create_model("ffra_net", num_classes=8)
    assert isinstance(model, FFRANet) and "ffra_net" in list_models()
    # ResNet-18 (11,180,616 with 8 classes) + MS 4 x (64*64*9 + BN) + LA 5 x (256*256*9 + BN)
    # + SA 4 x (4 x 16 + GN 2 x 16)
    assert sum(p.numel() for p in model.parameters()) == 14_280_648
    narrow = create_model("ffra_net", num_classes=7, width=16).eval()  # same spatial shapes
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        intermediate = narrow.pre_extract(x)
        assert intermediate.shape == (2, 64, 14, 14)  # 256x14x14 at width 64
        assert narrow.multi_scale(intermediate).shape == intermediate.shape
        assert narrow.local_attention(intermediate).shape == intermediate.shape
        assert narrow.forward_features(x).shape == (2, 128, 7, 7)  # 512x7x7 at width 64
        assert narrow(x).shape == (2, 7)
    reading_b = create_model("ffra_net", width=16, cut=2).eval()
    with torch.no_grad():
        assert reading_b.pre_extract(x).shape == (2, 32, 28, 28)
        assert reading_b.forward_features(x).shape == (2, 128, 7, 7)


def test_fusion_is_weighted_local_plus_multi_scale_plus_residual(train_batch):
    model = create_model("ffra_net", width=8, **FAST)
    model.train()
    model(train_batch["x"])
    model.eval()
    assert model.fusion_weight == 0.6
    x = train_batch["x"][:8]
    with torch.no_grad():
        inter = model.pre_extract(x)
        expected = 0.6 * model.local_attention(inter) + 0.4 * model.multi_scale(inter) + inter
        assert torch.allclose(model.fuse(inter), expected, atol=1e-6)
        assert torch.allclose(model.forward_features(x), model.layer4(expected), atol=1e-5)
        # the expression-network contract the CAM exporter relies on
        assert isinstance(model.classifier, nn.Linear)
        assert torch.allclose(model(x), model.classifier(model.forward_features(x).mean((2, 3))),
                              atol=1e-5)


def test_fast_geometry_at_48_px():
    model = create_model("ffra_net", **get_recipe("ffra_net", "fast").model_cfg).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert model.pre_extract(x).shape == (1, 128, 6, 6)  # four 3x3 patches
        assert model.forward_features(x).shape == (1, 256, 3, 3)


def test_cross_entropy_on_a_real_ferplus_batch_reaches_both_modules(train_batch):
    model = create_model("ffra_net", width=8, **FAST).train()
    assert not hasattr(model, "training_loss")  # the trainer's plain cross-entropy path
    x, labels, soft = train_batch["x"], train_batch["labels"], train_batch["soft"]
    logits = model(x)
    loss = loss_fn(logits, labels, 0.1)
    assert torch.isfinite(loss) and logits.shape == (64, 8)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, label_smoothing=0.1))
    loss.backward()
    for module in (model.conv1, model.multi_scale.convs[0][0], model.multi_scale.convs[3][0],
                   model.local_attention.conv[0], model.local_attention.units[0][0][0],
                   model.local_attention.units[3][0][0], model.classifier):
        assert module.weight.grad is not None and float(module.weight.grad.abs().sum()) > 0
    shuffle = model.local_attention.units[2][-1]
    for gate_scale in (shuffle.cweight, shuffle.sweight):
        assert float(gate_scale.grad.abs().sum()) > 0
    soft_loss = loss_fn(model(x), soft, 0.0)  # vote distributions as targets
    assert torch.isfinite(soft_loss) and float(soft_loss.detach()) > 0


def test_trunk_initialises_from_a_resnet18_of_the_same_shape():
    resnet = create_model("resnet18", width=8, **FAST)
    for p in resnet.parameters():
        nn.init.normal_(p)
    model = create_model("ffra_net", width=8, **FAST)
    missing = load_resnet_trunk(model, resnet.state_dict())
    assert all(k.startswith(("multi_scale.", "local_attention.", "classifier.")) for k in missing)
    assert torch.equal(model.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(model.conv1.weight, resnet.conv1.weight)
    assert not torch.equal(model.classifier.weight, resnet.classifier.weight)


@pytest.fixture(scope="module")
def trained_fast(train_batch) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("ffra_net", num_classes=8, width=8, **FAST)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(train_batch["x"]), train_batch["labels"]).backward()
        optimizer.step()
    return model.eval()


def test_onnx_export_matches_torch_on_probs_and_cam(trained_fast, ferplus_root, tmp_path):
    import cv2

    spec = InputSpec(size=48)
    files = sorted((ferplus_root / "FER2013Test").glob("*.png"))[:32]
    faces = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    out = tmp_path / "ffra_net.onnx"
    report = exporter.export_classifier_report(trained_fast, spec, EMOTIONS8, out,
                                               model_name="ffra_net", verify_images=faces)
    assert report.max_abs_diff_probs < 1e-4 and report.max_abs_diff_cam < 1e-4
    x = prepare_batch(faces, spec)
    probs, cam = create_session(out, "cpu").run(["probs", "cam"], {"input": x})
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        expected_probs = torch.softmax(trained_fast(tensor), dim=1).numpy()
        features = trained_fast.forward_features(tensor).numpy()
    weight = trained_fast.classifier.weight.detach().numpy()
    expected_cam = np.maximum(np.einsum("ck,nkhw->nchw", weight, features), 0.0)
    expected_cam /= expected_cam.max(axis=(2, 3), keepdims=True) + 1e-6
    assert probs.shape == (32, 8) and cam.shape == (32, 8, 3, 3)
    assert np.abs(probs - expected_probs).max() < 1e-4
    assert np.abs(cam - expected_cam).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["model_name"] == "ffra_net" and "regions" not in meta


def test_recipes():
    paper, fast = get_recipe("ffra_net", "paper"), get_recipe("ffra_net", "fast")
    assert (paper.size, paper.epochs, paper.batch_size, paper.lr) == (224, 200, 128, 1e-4)
    assert paper.optimizer == "adamw" and paper.weight_decay == 0.0  # = Adam
    assert paper.schedule == "step" and paper.milestones == ()  # constant lr
    assert fast.size == 48 and fast.model_cfg == {"width": 32, "small_input": True,
                                                  "stem_stride": 2}


def test_trainer_smoke_two_epochs_on_real_faces(ferplus_root, tmp_path):
    recipe = replace(get_recipe("ffra_net", "fast"), epochs=2, batch_size=32,
                     model_cfg={**FAST, "width": 8})
    out = tmp_path / "run"
    onnx_path = train("ffra_net", "ferplus", ferplus_root, recipe, "cpu", out_dir=out,
                      limit=300, val_limit=200, test_limit=200, workers=0, progress=False,
                      seed=1, register=False, occlusion_dir=tmp_path / "no_occluded_sets")
    assert onnx_path == out / "ffra_net_fast.onnx" and onnx_path.is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["model_name"] == "ffra_net" and json.loads(meta["input"])["size"] == 48
    report = json.loads((out / "reports" / "test_clean" / "report.json").read_text())
    assert report["n"] == 200 and 0.0 <= report["accuracy"] <= 100.0
