"""Pre-activation ResNet-18 (He, Zhang, Ren, Sun 2016, "Identity mappings in deep residual
networks"), the expression backbone of DFD-Net (seed 002).

A pre-activation block runs BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3 and adds the
*un-normalised* input (or, when the shape changes, a 1x1 projection of the pre-activated
input, as in the authors' code and the widely used CIFAR reimplementation). Because every
block ends on a convolution, the trunk finishes with one BN + ReLU (`final_bn`), so the last
map is activated like a plain ResNet's.

`stages(x)` returns the four stage outputs: DFD-Net's multi-level fusion (Eq. 3 of the paper)
needs the shallow maps as well as the last one. The last map is the one after `final_bn`.

Stems (the paper does not state one; seed-specs §3.2 [A]):
- ImageNet stem (7x7 stride-2 conv + 3x3 stride-2 max-pool): 90 px -> 23/12/6/3 maps, the
  reading for the paper's 90x90 input and its AffectNet-pretrained backbone;
- `small_input=True`: one 3x3 conv of stride `stem_stride` and no max-pool, for 48-64 px
  FERPlus faces (48 px, stride 2 -> 24/12/6/3), as `models/resnet.py` does.

Not registered as an expression network on its own: it is a trunk for `models/dfd_net.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from models.resnet import he_init, make_stem


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity (or projected) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        # the projection sees the pre-activated input (He et al. 2016, Fig. 4e / their code)
        identity = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + identity


class PreActResNet(nn.Module):
    """A pre-activation BasicBlock ResNet trunk; `stages(x)` gives every stage's output."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), in_chans: int = 3,
                 width: int = 64, small_input: bool = False, stem_stride: int = 1) -> None:
        super().__init__()
        # Stem conv -> BN -> ReLU (-> max-pool), as in the authors' ImageNet pre-act ResNet
        # (fb.resnet.torch `preresnet`); the small stem keeps the same BN-ReLU for symmetry.
        self.conv1, self.maxpool = make_stem(in_chans, width, small_input, stem_stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        planes, in_planes, stages = width, width, []
        for i, blocks in enumerate(layers):
            stride = 1 if i == 0 else 2
            stage = [PreActBlock(in_planes, planes, stride)]
            stage += [PreActBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_planes, planes = planes, planes * 2
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage_channels = tuple(width * 2 ** i for i in range(len(layers)))
        self.num_features = in_planes
        self.final_bn = nn.BatchNorm2d(in_planes)
        he_init(self.modules())

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_chans, S, S) -> [f_1, f_2, f_3, f_4]; f_4 after the final BN + ReLU."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.relu(self.final_bn(self.layer4(f3)))
        return [f1, f2, f3, f4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, num_features, h, w)."""
        return self.stages(x)[-1]


def preact_resnet18(in_chans: int = 3, width: int = 64, small_input: bool = False,
                    stem_stride: int = 1) -> PreActResNet:
    """PreAct ResNet-18 trunk: four stages of two pre-activation BasicBlocks."""
    return PreActResNet((2, 2, 2, 2), in_chans, width, small_input, stem_stride)
