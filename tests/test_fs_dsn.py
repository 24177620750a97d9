"""FS-DSN (seed 000): the paper's shapes stage by stage, its size, the fixed region grid and
its crop boxes, the 50/50 decision fusion and the two-stream loss on real FERPlus batches,
ONNX export parity of probabilities and the fused CAM (with the regions in the metadata), and
a two-epoch run of the real trainer."""

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
from models.attention import CBAM, CoordinateAttention
from models.fs_dsn import FSDSN, REGIONS, KernelBasicBlock
from training.data import EMOTIONS8, load_split
from training.recipes import get_recipe
from training.trainer import train

FAST = {"small_input": True, "stem_stride": 2}


@pytest.fixture(scope="module")
def train_batch(ferplus_root: Path) -> dict[str, torch.Tensor]:
    """64 real FERPlus training faces at 48 px with majority labels and vote distributions."""
    split = load_split("ferplus", ferplus_root, "train", "crossentropy", progress=False)
    x = torch.from_numpy(prepare_batch(list(split.images[:64]), InputSpec(size=48)))
    return {"x": x, "labels": torch.from_numpy(split.labels[:64]),
            "soft": torch.from_numpy(split.soft_labels[:64])}


def conv_kernels(stage: nn.Module) -> set[int]:
    return {m.kernel_size[0] for m in stage.modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1 and m.in_channels > 2}


def test_paper_shapes_stage_by_stage_at_224():
    """Width is scaled down (spatial shapes do not depend on it); the paper's numbers are
    128x28x28 -> regions 14x14 / 14x14 / 14x28 -> eyes 512x7x7, mouth 512x7x14 -> stitched
    14x14; global 7x7; here with width 8 the channels are 16 and 64."""
    model = create_model("fs_dsn", num_classes=7, width=8).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        shared = model.pre_extract(x)
        assert shared.shape == (2, 16, 28, 28)
        parts = model.segment(shared)
        assert {k: tuple(v.shape[2:]) for k, v in parts.items()} == \
            {"left_eye": (14, 14), "right_eye": (14, 14), "mouth": (14, 28)}
        local = {k: model.local_streams[k](v) for k, v in parts.items()}
        assert {k: tuple(v.shape[1:]) for k, v in local.items()} == \
            {"left_eye": (64, 7, 7), "right_eye": (64, 7, 7), "mouth": (64, 7, 14)}
        global_map, local_map = model.forward_feature_maps(x)
        assert global_map.shape == (2, 64, 7, 7) and local_map.shape == (2, 64, 14, 14)
        assert torch.equal(local_map[:, :, :7, :7], local["left_eye"])
        assert torch.equal(local_map[:, :, :7, 7:], local["right_eye"])
        assert torch.equal(local_map[:, :, 7:], local["mouth"])
        assert model(x).shape == (2, 7)
        logits, evidence = model.logits_and_cam(x)
        assert evidence.shape == (2, 7, 14, 14)


def test_kernels_attention_and_strides_follow_the_paper():
    model = create_model("fs_dsn", width=8)
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert conv_kernels(model.layer1) == {9} and conv_kernels(model.layer2) == {7}
    assert conv_kernels(model.global_layer3) == {5} and conv_kernels(model.global_layer4) == {3}
    for stream in model.local_streams.values():
        assert conv_kernels(stream) == {3}
        assert stream.layer3[0].conv1.stride == (2, 2) and stream.layer4[0].conv1.stride == (1, 1)
    blocks = lambda m: [b for b in m.modules() if isinstance(b, KernelBasicBlock)]  # noqa: E731
    assert all(isinstance(b.attention, nn.Identity) for b in blocks(model.layer1) +
               blocks(model.layer2))
    assert all(isinstance(b.attention, CBAM) for b in blocks(model.global_layer3) +
               blocks(model.global_layer4))
    local_blocks = blocks(model.local_streams)
    assert len(local_blocks) == 12 and all(isinstance(b.attention, CoordinateAttention)
                                           for b in local_blocks)
    assert list(model.local_streams) == ["left_eye", "right_eye", "mouth"]  # own weights each


def test_paper_size_is_about_fifty_million_parameters():
    # spec 1.2: PE 4.15 M + global 14.16 M + local 31.46 M conv weights = 49.8 M; plus BN,
    # CBAM / CA and the two 512 -> 8 heads
    model = create_model("fs_dsn", num_classes=8)
    assert isinstance(model, FSDSN) and "fs_dsn" in list_models()
    assert sum(p.numel() for p in model.parameters()) == 50_086_384
    assert not hasattr(model, "classifier")  # the head is the fusion, not one linear layer
    assert exporter.num_classes_of(model) == 8


def test_fast_geometry_at_48_px_and_bad_sizes_are_refused():
    model = create_model("fs_dsn", width=8, **FAST).eval()
    with torch.no_grad():
        global_map, local_map = model.forward_feature_maps(torch.randn(1, 3, 48, 48))
        assert model.pre_extract(torch.randn(1, 3, 48, 48)).shape[2:] == (12, 12)
        assert global_map.shape[2:] == (3, 3) and local_map.shape[2:] == (6, 6)
        assert model.logits_and_cam(torch.randn(1, 3, 48, 48))[1].shape == (1, 8, 6, 6)
        with pytest.raises(ValueError, match="divisible by 4"):
            model(torch.randn(1, 3, 40, 40))  # 10x10 pre-extracted map


def test_region_boxes_are_the_segmentation_grid_in_crop_fractions():
    model = create_model("fs_dsn", width=8)
    assert model.regions == REGIONS == {"left_eye": (0.0, 0.0, 0.5, 0.5),
                                        "right_eye": (0.5, 0.0, 1.0, 0.5),
                                        "mouth": (0.0, 0.5, 1.0, 1.0)}
    # a map of cell-centre coordinates in crop fractions: every cut holds exactly the cells
    # whose centres lie inside its box
    side = 12
    centres = (torch.arange(side) + 0.5) / side
    grid = torch.stack([centres[None, :].expand(side, side), centres[:, None].expand(side, side)])
    for name, part in FSDSN.segment(grid[None]).items():
        x0, y0, x1, y1 = REGIONS[name]
        xs, ys = part[0, 0], part[0, 1]
        assert float(xs.min()) > x0 and float(xs.max()) < x1
        assert float(ys.min()) > y0 and float(ys.max()) < y1
        inside = ((centres > x0) & (centres < x1)).sum() * ((centres > y0) & (centres < y1)).sum()
        assert part[0, 0].numel() == int(inside)


def test_decision_fusion_is_half_and_half_and_the_cam_decomposes_the_logits(train_batch):
    torch.manual_seed(0)
    model = create_model("fs_dsn", width=8, **FAST)
    model.train()
    model(train_batch["x"])  # BatchNorm statistics from real faces
    model.eval()
    x = train_batch["x"][:16]
    with torch.no_grad():
        global_logits, local_logits = model.forward_streams(x)
        fused = model(x)
        assert torch.allclose(fused, 0.5 * global_logits + 0.5 * local_logits, atol=1e-6)
        logits, evidence = model.logits_and_cam(x)
        assert torch.allclose(logits, fused, atol=1e-6)
        bias = 0.5 * (model.head_global.bias + model.head_local.bias)
        assert torch.allclose(evidence.mean(dim=(2, 3)) + bias, fused, atol=1e-5)
        # the global half is constant over each 2x2 block of the local grid
        global_map, local_map = model.forward_feature_maps(x)
        local_half = 0.5 * F.conv2d(local_map, model.head_local.weight[:, :, None, None])
        global_half = (evidence - local_half)[:, :, ::2, ::2]
        expected = 0.5 * F.conv2d(global_map, model.head_global.weight[:, :, None, None])
        assert torch.allclose(global_half, expected, atol=1e-5)


def test_two_stream_loss_on_a_real_ferplus_batch(train_batch):
    torch.manual_seed(0)
    model = create_model("fs_dsn", width=8, **FAST).train()
    x, labels, soft = train_batch["x"], train_batch["labels"], train_batch["soft"]
    loss, logits = model.training_loss(x, labels, 0.1)
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (64, 8)
    # the same forward pass again (train-mode BN uses batch statistics: deterministic)
    global_logits, local_logits = model.forward_streams(x)
    expected = 0.5 * F.cross_entropy(global_logits, labels, label_smoothing=0.1) \
        + 0.5 * F.cross_entropy(local_logits, labels, label_smoothing=0.1)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(logits, 0.5 * global_logits + 0.5 * local_logits, atol=1e-5)
    loss.backward()
    for name in ("conv1", "head_global", "head_local", "global_layer3.0.conv1",
                 "local_streams.left_eye.layer3.0.conv1", "local_streams.mouth.layer4.1.conv2"):
        weight = model.get_submodule(name).weight
        assert weight.grad is not None and float(weight.grad.abs().sum()) > 0, name
    # soft targets (the annotators' vote distributions); one-hot ones equal class indices
    soft_loss, _ = model.training_loss(x, soft, 0.0)
    assert torch.isfinite(soft_loss) and float(soft_loss.detach()) > 0
    one_hot = F.one_hot(labels, 8).float()
    assert torch.allclose(model.training_loss(x, one_hot, 0.1)[0],
                          model.training_loss(x, labels, 0.1)[0], atol=1e-5)


@pytest.fixture(scope="module")
def trained_fast(train_batch) -> nn.Module:
    """A narrow fast FS-DSN after a few SGD steps on real faces: BatchNorm statistics,
    attention gates and both heads are non-trivial."""
    torch.manual_seed(0)
    model = create_model("fs_dsn", num_classes=8, width=8, **FAST)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model.training_loss(train_batch["x"], train_batch["labels"])[0].backward()
        optimizer.step()
    return model.eval()


def test_onnx_export_matches_torch_on_probs_and_cam_and_carries_the_regions(
        trained_fast, ferplus_root, tmp_path):
    import cv2

    spec = InputSpec(size=48)
    files = sorted((ferplus_root / "FER2013Test").glob("*.png"))[:32]
    faces = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    out = tmp_path / "fs_dsn.onnx"
    report = exporter.export_classifier_report(trained_fast, spec, EMOTIONS8, out,
                                               model_name="fs_dsn", verify_images=faces)
    assert report.max_abs_diff_probs < 1e-4 and report.max_abs_diff_cam < 1e-4
    x = prepare_batch(faces, spec)
    probs, cam = create_session(out, "cpu").run(["probs", "cam"], {"input": x})
    # reference computed here from the two streams, independently of the exporter
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        global_map, local_map = trained_fast.forward_feature_maps(tensor)
        expected_probs = torch.softmax(trained_fast(tensor), dim=1).numpy()
    w_g = trained_fast.head_global.weight.detach().numpy()
    w_l = trained_fast.head_local.weight.detach().numpy()
    e_g = np.einsum("ck,nkhw->nchw", w_g, global_map.numpy()).repeat(2, 2).repeat(2, 3)
    e_l = np.einsum("ck,nkhw->nchw", w_l, local_map.numpy())
    expected_cam = np.maximum(0.5 * e_g + 0.5 * e_l, 0.0)
    expected_cam /= expected_cam.max(axis=(2, 3), keepdims=True) + 1e-6
    assert probs.shape == (32, 8) and cam.shape == (32, 8, 6, 6)
    assert np.abs(probs - expected_probs).max() < 1e-4
    assert np.abs(cam - expected_cam).max() < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["regions"]) == {k: list(v) for k, v in REGIONS.items()}
    assert meta["model_name"] == "fs_dsn" and "(N, 8, 6, 6)" in meta["outputs"]


def test_recipes():
    paper, fast = get_recipe("fs_dsn", "paper"), get_recipe("fs_dsn", "fast")
    assert (paper.size, paper.epochs, paper.batch_size, paper.optimizer, paper.lr) == \
        (224, 100, 128, "sgd", 0.01)
    assert paper.schedule == "step" and paper.milestones == (0.2, 0.4, 0.6, 0.8)
    assert paper.model_cfg["width"] == 64 and not paper.model_cfg["small_input"]
    assert fast.size == 48 and fast.model_cfg["small_input"]
    # the fast configuration builds and runs at its input size
    model = create_model("fs_dsn", **fast.model_cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, fast.size, fast.size)).shape == (1, 8)


def test_trainer_smoke_two_epochs_on_real_faces(ferplus_root, tmp_path):
    """The real trainer (training_loss path, export with the fused CAM, evaluation, card) on
    300 faces at width 8; nothing is registered."""
    recipe = replace(get_recipe("fs_dsn", "fast"), epochs=2, batch_size=32,
                     model_cfg={**FAST, "width": 8})
    out = tmp_path / "run"
    onnx_path = train("fs_dsn", "ferplus", ferplus_root, recipe, "cpu", out_dir=out,
                      limit=300, val_limit=200, test_limit=200, workers=0, progress=False,
                      seed=1, register=False, occlusion_dir=tmp_path / "no_occluded_sets")
    assert onnx_path == out / "fs_dsn_fast.onnx" and onnx_path.is_file()
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert "regions" in meta and json.loads(meta["input"])["size"] == 48
    report = json.loads((out / "reports" / "test_clean" / "report.json").read_text())
    assert report["n"] == 200 and 0.0 <= report["accuracy"] <= 100.0
    assert "fs_dsn" in (out / "fs_dsn_fast.md").read_text()
