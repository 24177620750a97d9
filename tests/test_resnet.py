"""ResNet-18 written in models/: shapes for both stems, the expression-network contract that
the CAM exporter relies on, and the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import create_model, list_models, register_model
from models.resnet import BasicBlock, ResNet


def test_registry_lists_builds_and_refuses_unknown_or_duplicate_names():
    assert "resnet18" in list_models()
    model = create_model("resnet18", num_classes=7)
    assert isinstance(model, ResNet) and model.model_name == "resnet18"
    with pytest.raises(KeyError, match="resnet18"):
        create_model("resnet_that_does_not_exist")
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet18")(lambda **cfg: nn.Linear(1, 1))


def test_parameter_count_matches_torchvision_resnet18():
    # torchvision resnet18 has 11,689,512 parameters with a 1000-way fc (512*1000 + 1000);
    # with 8 classes that is 11,689,512 - 513,000 + 4,104.
    model = create_model("resnet18", num_classes=8)
    assert sum(p.numel() for p in model.parameters()) == 11_180_616
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8


@pytest.mark.parametrize("cfg, size, expected", [
    ({}, 64, (512, 2, 2)),                                  # ImageNet stem: /32
    ({"small_input": True}, 48, (512, 6, 6)),               # 3x3 stride 1, no max-pool: /8
    ({"small_input": True, "stem_stride": 2}, 48, (512, 3, 3)),
    ({"small_input": True, "width": 16}, 48, (128, 6, 6)),  # width scales every stage
])
def test_feature_map_shapes(cfg, size, expected):
    model = create_model("resnet18", num_classes=8, **cfg).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert tuple(features.shape) == (2, *expected)
    assert tuple(logits.shape) == (2, 8)
    assert model.num_features == expected[0]


def test_forward_is_classifier_on_pooled_features_and_single_channel_input_works():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7, in_chans=1, small_input=True, width=8,
                         drop_rate=0.3)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == model.num_features == 64
    x = torch.randn(4, 1, 48, 48)
    model.train()
    model(x)  # give BatchNorm real running statistics before comparing in eval mode
    model.eval()
    with torch.no_grad():
        expected = model.classifier(model.forward_features(x).mean(dim=(2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-6)


def test_gradients_reach_the_stem():
    model = create_model("resnet18", small_input=True, width=8)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 48, 48)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    # residual branches start as identities (zero-initialised last BN scale)
    assert all(float(m.bn2.weight.detach().abs().sum()) == 0.0 for m in model.modules()
               if isinstance(m, BasicBlock))
