"""The per-face perception network: occlusion map + face parsing from one aligned face.

One compact U-Net (Ronneberger et al. 2015) with a shared encoder-decoder and two 1x1 heads:

- `occlusion`: one logit per pixel, P(pixel hidden by something that is not the face) after
  a sigmoid (the seed-003 FOPM idea as a standalone stage);
- `parsing`:   PARSING_CLASSES logits per pixel (background ... occluder).

Why one network with two heads rather than two networks: the live pipeline pays one pass and
one latency for both maps, and the two tasks need the same evidence (where the face's parts
are and what covers them: the parsing head's `occluder` class *is* the occlusion map, coarsely).
Two heads instead of reading occlusion off the parsing softmax, because the occlusion head is
trained with BCE + Dice on the soft synthetic alpha (a calibrated probability with sharp
boundaries), while parsing is trained with cross-entropy on hard labels.

Sized for realtime CPU use (and for CPU training): 64 x 64 gray input; a full-resolution
stem (8 channels) and one stride-2 conv bring it to 32 x 32, where a four-level U-Net
(widths 16/32/64/96, 32 -> 4 px) runs; the decoder's 32 px output is upsampled and fused
with the stem features by one 3x3 conv at 64 px, so edges are drawn at full resolution while
almost all compute happens at 32 px and below (a plain U-Net at 64 px measured ~3x slower to
train here). 3x3 conv + BN + ReLU units, nearest-neighbour upsampling + concatenation
(ONNX-friendly: Resize with integer scales, no transposed convolutions whose checkerboards
show in small maps). About 0.39 M parameters and 0.055 GMAC per face.

Not an expression network: it does not follow the classifier contract of `models/__init__`
and is not registered in `models.registry` (the trainer for it is `training/perception.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Parsing classes, index = label value. Left/right are the subject's (iBUG convention, as
#: `app.pipeline.landmarks68`): the subject's left eye is on the image right.
PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair_or_other", "occluder",
)
OCCLUDER = PARSING_CLASSES.index("occluder")
#: label -> label under a horizontal flip (left and right swap)
FLIP_PERMUTATION: tuple[int, ...] = tuple(
    PARSING_CLASSES.index(c.replace("left", "§").replace("right", "left").replace("§", "right"))
    for c in PARSING_CLASSES)

DEFAULT_WIDTHS = (16, 32, 64, 96)


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BN + ReLU, the U-Net unit."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(*conv_bn_relu(cin, cout), *conv_bn_relu(cout, cout))


class PerceptionUNet(nn.Module):
    """(N, in_chans, S, S) -> occlusion logits (N, 1, S, S), parsing logits (N, C, S, S).

    S must be divisible by 2 ** len(widths) (16 for the default four levels).
    """

    def __init__(self, in_chans: int = 1, num_classes: int = len(PARSING_CLASSES),
                 widths: tuple[int, ...] = DEFAULT_WIDTHS, stem: int = 8, head: int = 16) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.widths = in_chans, num_classes, tuple(widths)
        self.stem = conv_bn_relu(in_chans, stem)
        self.down = conv_bn_relu(stem, widths[0], stride=2)
        self.encoders = nn.ModuleList()
        cin = widths[0]
        for w in widths:
            self.encoders.append(ConvBlock(cin, w))
            cin = w
        self.decoders = nn.ModuleList()
        for w_skip in reversed(widths[:-1]):
            self.decoders.append(ConvBlock(cin + w_skip, w_skip))
            cin = w_skip
        self.fuse = conv_bn_relu(cin + stem, head)
        self.occlusion_head = nn.Conv2d(head, 1, 1)
        self.parsing_head = nn.Conv2d(head, num_classes, 1)

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.stem(x)
        x = self.down(full)
        skips = []
        for i, encoder in enumerate(self.encoders):
            if i:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = decoder(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.fuse(torch.cat([x, full], dim=1))
        return self.occlusion_head(x), self.parsing_head(x)


class PerceptionExport(nn.Module):
    """The exported graph: `occlusion` (N, 1, S, S) sigmoid and `parsing` (N, C, S, S)
    softmax, so the runtime needs no activation code of its own."""

    def __init__(self, model: PerceptionUNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        occlusion, parsing = self.model(x)
        return torch.sigmoid(occlusion), F.softmax(parsing, dim=1)


def perception_unet(**cfg) -> PerceptionUNet:
    return PerceptionUNet(**cfg)


__all__ = ["PARSING_CLASSES", "OCCLUDER", "FLIP_PERMUTATION", "PerceptionUNet",
           "PerceptionExport", "perception_unet"]
