"""ResNet-18 (He et al. 2016) written out here, because torchvision does not import beside
torch 2.13 on our machines.

Layer names follow torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ..., with the classifier
called `classifier` instead of `fc`), so a torchvision state dict maps over by renaming
`fc.` to `classifier.`.

Two stems:
- the ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool) divides the input by 4
  before `layer1`; on a 48 px face that leaves a 2x2 final map, too coarse for a CAM;
- `small_input=True`, the CIFAR-style stem for 48-64 px faces: one 3x3 conv, stride
  `stem_stride` (1 by default) and no max-pool, so a 48 px face ends as a 6x6 map (stride 1)
  or 3x3 (stride 2). It costs ~16x (stride 1) or ~4x (stride 2) the ImageNet stem's compute.

`width` scales every stage (64 -> 64/128/256/512 channels); tests use a narrow network.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from models.registry import register_model


def make_stem(in_chans: int, width: int, small_input: bool,
              stem_stride: int) -> tuple[nn.Conv2d, nn.Module]:
    """The ResNet stem's conv and pool. 224 px faces take the ImageNet 7x7/2 conv and 3x3/2
    max-pool; 48-64 px FER crops cannot afford that 4x reduction before the first block, so
    they take one 3x3 conv of stride `stem_stride` and no pool."""
    if small_input:
        return nn.Conv2d(in_chans, width, 3, stem_stride, 1, bias=False), nn.Identity()
    return nn.Conv2d(in_chans, width, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1)


def he_init(modules: Iterable[nn.Module], batchnorm: bool = True) -> None:
    """He (fan-out) initialisation of every convolution, and unit-scale / zero-shift
    BatchNorm when `batchnorm`: the torchvision ResNet convention all our networks follow."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif batchnorm and isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a identity (or 1x1-projected) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A BasicBlock ResNet following the occlufer expression-network contract
    (`forward_features` -> last map, `classifier` on its global average pool)."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 8,
                 in_chans: int = 3, width: int = 64, small_input: bool = False,
                 stem_stride: int = 1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.conv1, self.maxpool = make_stem(in_chans, width, small_input, stem_stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        planes, in_planes, stages = width, width, []
        for i, blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_planes, planes, stride)]
            stage += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes, planes = planes, planes * 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_planes
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for convs; the last BN of each block starts at zero so every residual block
        # begins as an identity (Goyal et al. 2017), which steadies early training at lr 0.1.
        he_init(self.modules())
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, S, S) -> last feature map (N, num_features, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool + classifier: the part the CAM decomposes spatially."""
        return self.classifier(self.drop(features.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("resnet18")
def resnet18(num_classes: int = 8, in_chans: int = 3, width: int = 64, small_input: bool = False,
             stem_stride: int = 1, drop_rate: float = 0.0) -> ResNet:
    """ResNet-18: four stages of two BasicBlocks (11.2 M parameters at width 64, 8 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, in_chans, width, small_input, stem_stride, drop_rate)
