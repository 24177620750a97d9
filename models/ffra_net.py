"""FFRA-Net: Feature Fusion Residual Attention Network (Chen, Liu, Zhao, Ji 2023; seed 001).

Spec: `../shared/design/seed-specs.md` section 2 ([P] stated, [D] derived, [A] assumed).

    input (N, 3, 224, 224)                                   [A: the size is lost in the seed]
    pre-extractor  ResNet-18 stem + layer1..layer3 -> X (N, 256, 14, 14)       [P + A, below]
    MS   multi-scale module: X split into n = 4 channel groups X_i;
         Y_1 = P_1(X_1), Y_i = P_i(X_i + Y_{i-1}); concat along channels        [P, Eq. 1]
    LA   local attention module: S = conv3x3(X); S split spatially into m = 4 patches S_i;
         Y_1 = P_1(S_1), Y_i = P_i(S_i + Y_{i-1}), P_i = conv3x3 + Shuffle Attention (G = 8);
         patches stitched back in place                                         [P, Eq. 4]
    fusion  Y = 0.6 * Y_la + 0.4 * Y_ms + X                                    [P, Eq. 5]
    tail  ResNet-18 layer4 -> (N, 512, 7, 7) -> GAP -> classifier              [P]

Readings taken where the paper is vague:
- [A] "the first three convolutional stages of ResNet-18" = stem + layer1..layer3, so that
  "the last convolutional stage" (layer4) follows unchanged (spec reading A). `cut=2` gives
  reading B (stem + layer1 + layer2 -> 128x28x28, then layer3 + layer4), as in MA-Net.
- [A] Every P_i and the LA module's first conv are conv3x3 + BN + ReLU (the paper names only
  the convolution); the MS module's first group is convolved too (Eq. 1), unlike Res2Net,
  which passes it through.
- [A] Patch layout: 2x2 quadrants in raster order (top-left, top-right, bottom-left,
  bottom-right), as MA-Net's local branch; each patch is convolved on its own (zero padding
  at the cut), so the map side at the cut must be even.
- [A] Shuffle Attention as SA-Net's official layer (see `models.attention`).
- [A] No activation after the fusion sum (none is described; all three terms are already
  non-negative).

The trunk keeps the house ResNet's layer names (`conv1`, `bn1`, `layer1`..`layer4`,
`classifier`), so `load_resnet_trunk` can initialise it from a trained `resnet18` checkpoint
of the same width and stem; the paper's MS-Celeb-1M initialisation is not available here.
`small_input` / `stem_stride` / `width` / `drop_rate` mean what they mean for `resnet18`.

Cost (width 64, 224 px, 8 classes): 14.3 M parameters, ~2.4 GMAC.
"""

from __future__ import annotations

import torch
from torch import nn

from models.attention import ShuffleAttention
from models.registry import register_model
from models.resnet import ResNet, he_init

FUSION_WEIGHT = 0.6  # lambda of Eq. 5: the local attention branch's share [P]


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MultiScaleModule(nn.Module):
    """Eq. 1: hierarchical 3x3 convolutions over `groups` channel subsets, concatenated."""

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"MultiScaleModule needs channels divisible by {groups}; "
                             f"got {channels}")
        self.split = channels // groups
        self.convs = nn.ModuleList(conv_bn_relu(self.split, self.split) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, previous = [], None
        for conv, part in zip(self.convs, torch.split(x, self.split, dim=1)):
            previous = conv(part if previous is None else part + previous)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class LocalAttentionModule(nn.Module):
    """Eq. 4: S = conv(X), cut into a `grid` of patches, hierarchical conv + Shuffle Attention
    per patch (each patch adds the previous patch's output first), stitched back."""

    def __init__(self, channels: int, grid: tuple[int, int] = (2, 2),
                 attention_groups: int = 8) -> None:
        super().__init__()
        self.grid = grid
        self.conv = conv_bn_relu(channels, channels)
        self.units = nn.ModuleList(
            nn.Sequential(conv_bn_relu(channels, channels),
                          ShuffleAttention(channels, attention_groups))
            for _ in range(grid[0] * grid[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        height, width = x.shape[2], x.shape[3]
        if height % rows or width % cols:
            raise ValueError(f"LocalAttentionModule cuts a {height}x{width} map into "
                             f"{rows}x{cols} equal patches; the sides must divide evenly")
        s = self.conv(x)
        ph, pw = height // rows, width // cols
        stitched_rows, previous, index = [], None, 0
        for r in range(rows):
            row = []
            for c in range(cols):
                patch = s[:, :, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
                previous = self.units[index](patch if previous is None else patch + previous)
                row.append(previous)
                index += 1
            stitched_rows.append(torch.cat(row, dim=3))
        return torch.cat(stitched_rows, dim=2)


class FFRANet(ResNet):
    """FFRA-Net on the house ResNet-18: same stem and stages, with the MS and LA modules and
    the weighted residual fusion inserted after stage `cut` (3 by default)."""

    def __init__(self, num_classes: int = 8, in_chans: int = 3, width: int = 64,
                 small_input: bool = False, stem_stride: int = 1, drop_rate: float = 0.0,
                 cut: int = 3, fusion_weight: float = FUSION_WEIGHT, ms_groups: int = 4,
                 la_grid: tuple[int, int] = (2, 2), attention_groups: int = 8) -> None:
        super().__init__((2, 2, 2, 2), num_classes, in_chans, width, small_input, stem_stride,
                         drop_rate)
        if cut not in (2, 3):
            raise ValueError(f"cut must be 2 or 3 (stages before the modules), not {cut}")
        self.cut, self.fusion_weight = cut, float(fusion_weight)
        channels = width * 2 ** (cut - 1)
        self.multi_scale = MultiScaleModule(channels, ms_groups)
        self.local_attention = LocalAttentionModule(channels, tuple(la_grid), attention_groups)
        he_init((*self.multi_scale.modules(), *self.local_attention.modules()), batchnorm=False)

    def pre_extract(self, x: torch.Tensor) -> torch.Tensor:
        """Stem + the first `cut` stages: the intermediate map X."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3)[:self.cut]:
            x = stage(x)
        return x

    def fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 5: Y = lambda * LA(X) + (1 - lambda) * MS(X) + X."""
        return (self.fusion_weight * self.local_attention(x)
                + (1.0 - self.fusion_weight) * self.multi_scale(x) + x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, S, S) -> last feature map (N, 8 * width, h, w)."""
        y = self.fuse(self.pre_extract(x))
        for stage in (self.layer3, self.layer4)[self.cut - 2:]:
            y = stage(y)
        return y


def load_resnet_trunk(model: FFRANet, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Copy a `resnet18` state dict's stem and stages (not its classifier) into `model`;
    returns the names of the FFRA-Net tensors left at their initialisation. Shapes must
    match: same width, stem and input channels."""
    trunk = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(trunk, strict=False)
    if result.unexpected_keys:
        raise KeyError(f"not ResNet-18 trunk tensors: {result.unexpected_keys[:5]}")
    return list(result.missing_keys)


@register_model("ffra_net")
def ffra_net(num_classes: int = 8, in_chans: int = 3, width: int = 64, small_input: bool = False,
             stem_stride: int = 1, drop_rate: float = 0.0, cut: int = 3,
             fusion_weight: float = FUSION_WEIGHT, ms_groups: int = 4,
             la_grid: tuple[int, int] = (2, 2), attention_groups: int = 8) -> FFRANet:
    """FFRA-Net (14.3 M parameters at width 64 with 8 classes; ~2.4 GMAC at 224 px)."""
    return FFRANet(num_classes, in_chans, width, small_input, stem_stride, drop_rate, cut,
                   fusion_weight, ms_groups, tuple(la_grid), attention_groups)
