"""Attention modules shared by the expression networks, written out from their papers.

- `CBAM` (Woo et al., ECCV 2018): channel attention (shared MLP over the average- and
  max-pooled descriptors) followed by spatial attention (7x7 conv over the channel-wise mean
  and max maps), each map multiplied onto the features in turn. Used by FS-DSN's global
  stream (one per residual block) and by MA-Net, FS-DSN's ancestor.
- `CoordinateAttention` (Hou et al., CVPR 2021): pools along H and along W separately, a
  shared 1x1 conv + BN + h-swish on the concatenated strips, then one sigmoid gate per axis.
  Used by FS-DSN's local streams. Works on non-square maps (FS-DSN's 14x28 mouth region).
- `ShuffleAttention` (Zhang & Yang, ICASSP 2021, "SA-Net"): channels in G groups, each group
  halved; one half gets a channel gate (GAP -> per-channel scale and shift -> sigmoid), the
  other a spatial gate (GroupNorm -> per-channel scale and shift -> sigmoid); the halves are
  concatenated and the channels shuffled between the two halves. Used by FFRA-Net's local
  attention module with G = 8.

Every module maps (N, C, H, W) -> (N, C, H, W), keeps H != W working, and exports to ONNX
(opset 17) with only standard operators. Defaults are the papers' (CBAM reduction 16 and a
7x7 spatial kernel, CA reduction 32 with at least 8 hidden channels, SA init of the gates'
scales at 0 and shifts at 1); where a paper is silent the official code's choice is taken
and noted beside it.
"""

from __future__ import annotations

import torch
from torch import nn


class ChannelGate(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool(x)) + MLP(maxpool(x))) * x.

    The MLP is the paper's shared two-layer perceptron C -> C/r -> C (written as 1x1
    convolutions with bias, which is what the official code's `nn.Linear` layers compute).
    The hidden width never drops below 1, so very narrow test networks still build.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, 1, 1) attention map M_c in (0, 1)."""
        avg = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: sigmoid(BN(conv7x7([max_c(x), mean_c(x)]))) * x.

    The paper writes the conv without a normalisation; the official code (`BasicConv` with
    `bn=True, relu=False`) has a bias-free conv followed by BatchNorm, kept here.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, 1, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 1, H, W) attention map M_s in (0, 1)."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel gate, then spatial gate, sequentially."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class CoordinateAttention(nn.Module):
    """Coordinate Attention (Hou, Zhou, Feng 2021), as in the authors' `CoordAtt`.

    x -> (avg over W: N,C,H,1) and (avg over H: N,C,W,1) -> concat along the spatial axis ->
    1x1 conv C -> mip, BN, h-swish -> split back -> 1x1 conv mip -> C per axis -> sigmoid;
    out = x * a_h * a_w, mip = max(min_hidden, C // reduction).
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The (N, C, H, 1) and (N, C, 1, W) attention maps in (0, 1)."""
        height = x.shape[2]
        pooled_h = x.mean(dim=3, keepdim=True)  # N, C, H, 1
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # N, C, W, 1
        y = self.act(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        y_h, y_w = y[:, :, :height], y[:, :, height:]
        return torch.sigmoid(self.conv_h(y_h)), torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a_h, a_w = self.gates(x)
        return x * a_h * a_w


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (g, C/g) channel layout -> (C/g, g)."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleAttention(nn.Module):
    """Shuffle Attention (SA-Net), following the authors' `sa_layer`.

    Channels are split into `groups` sub-features F_i (C/G channels); each is halved into
    F_i1 (channel branch) and F_i2 (spatial branch):
        channel: F_i1 * sigmoid(cw * GAP(F_i1) + cb)
        spatial: F_i2 * sigmoid(sw * GroupNorm(F_i2) + sb)
    with cw, cb, sw, sb per-channel (C/2G) parameters shared across the groups, then
    concatenated, the groups re-assembled, and a channel shuffle with 2 groups mixes
    information across the sub-features.

    FFRA-Net's Eq. 2 lists the spatial half first, [M_s(F) * F, M_c(F) * F]; the order only
    permutes channels that the shuffle permutes again, and the official code's order
    (channel half first) is kept. FFRA-Net calls the shuffle "randomly rearranging" the
    channels; SA-Net's shuffle is the fixed ShuffleNet permutation, used here.
    """

    def __init__(self, channels: int, groups: int = 8) -> None:
        super().__init__()
        if channels % (2 * groups):
            raise ValueError(f"ShuffleAttention needs channels divisible by 2 * groups = "
                             f"{2 * groups}; got {channels}")
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        sub = x.reshape(n * self.groups, c // self.groups, h, w)
        x_channel, x_spatial = sub.chunk(2, dim=1)
        channel_gate = torch.sigmoid(self.cweight * x_channel.mean(dim=(2, 3), keepdim=True)
                                     + self.cbias)
        spatial_gate = torch.sigmoid(self.sweight * self.gn(x_spatial) + self.sbias)
        out = torch.cat([x_channel * channel_gate, x_spatial * spatial_gate], dim=1)
        return channel_shuffle(out.reshape(n, c, h, w), 2)
