"""FS-DSN: Feature Segmentation-based Dual-Stream Network (Guo, Xu, Mu 2025; seed 000).

Spec: `../shared/design/seed-specs.md` section 1 ([P] stated, [D] derived, [A] assumed). The
seed text lost every equation and table body, so the readings below marked [A] are ours and
belong in the model card as well.

    input (N, 3, 224, 224)
    PE  pre-extraction = ResNet-18 stem + layer1 + layer2, kernels 9x9 (layer1), 7x7 (layer2)
        -> X (N, 128, 28, 28)                                        [P]
    FS  fixed grid on X: left eye  X[:, :, :14, :14]   (128x14x14)
                         right eye X[:, :, :14, 14:]   (128x14x14)
                         mouth     X[:, :, 14:, :]     (128x14x28)   [P sizes, D grid]
    GE  global stream on X: layer3 (256, stride 2, 5x5) + layer4 (512, stride 2, 3x3), CBAM in
        every residual block -> (N, 512, 7, 7) -> GAP -> 512 -> head_global -> C logits
    LE  one local stream per region (separate weights [A], as MA-Net): layer3 (256, stride 2,
        3x3) + layer4 (512, stride 1, 3x3), Coordinate Attention in every residual block
        -> eyes 512x7x7, mouth 512x7x14; stitched [[left, right], [mouth]] -> (N, 512, 14, 14)
        -> GAP -> 512 -> head_local -> C logits                     [P]
    fusion  logits = 0.5 * global + 0.5 * local (decision level, 50/50)  [P weights, A form]

Readings taken where the paper is silent or garbled:
- [A] "Conv1 to Conv3" = stem + layer1 + layer2 and those two stages are plain BasicBlocks
  (no attention): the 9/7 kernels belong to the shared pre-extractor, CBAM to the global
  stream's blocks, CA to the local ones. Kernel padding k // 2; 1x1 projection shortcuts keep
  their 1x1 kernel.
- [A] Attention sits after the block's second conv + BN, before the residual addition
  ("two convolution operations before being fed into the CBAM module"), for CA as for CBAM.
  CBAM reduction 16 / spatial kernel 7; CA reduction 32 with at least 8 hidden channels.
- [A] Region names are image-left / image-right ("left_eye" covers the image's left half
  of the top, i.e. the subject's right eye on an unmirrored face).
- [A] The overview's "128 x 3 x 3" is a typo for 128 x 28 x 28, and its "feature-level
  fusion" contradicts the explicit 50/50 decision-level fusion, which is followed.
- [A] Loss (its equation is lost): 0.5 * CE(global) + 0.5 * CE(local), as MA-Net's
  beta * CE1 + (1 - beta) * CE2 (see `training_loss`); the reported prediction is the fused
  logits.
- [A] Weight init as MA-Net (Kaiming conv, BN 1/0); unlike the house ResNet, the last BN of a
  block is not zero-initialised, because the attention gates sit right after it.

Small inputs. `small_input=True` swaps the ImageNet stem (7x7 s2 conv + 3x3 s2 max-pool) for
the house's CIFAR-style stem (3x3 conv with `stem_stride`, no pool), as `models.resnet` does;
with stride 2 a 48 px face gives a 12x12 pre-extracted map, 6x6 regions, a 3x3 global and a
6x6 stitched local map: the paper's geometry at 12/28 of its resolution. The region split
needs the pre-extracted side divisible by 4 (224, 96, 64 px with the ImageNet stem; 48 or
64 px with the stride-2 small stem). `width` scales every stage (64 = the paper).

Class activation map (`logits_and_cam`): the stitched local map is, by construction, on the
grid of the pre-extracted map at stride 2 (each region's cells sit where the region was cut),
so it lies on a 14x14 grid over the whole crop at 224 px, and the global map (7x7) covers the
same crop at half that resolution. The evidence is
    0.5 * nearest_upsample_2x(W_g @ F_g) + 0.5 * (W_l @ F_l)       on the local grid,
and because nearest upsampling keeps the spatial mean, the spatial mean of that evidence plus
0.5 * (b_g + b_l) is exactly the fused logits: the CAM is a true decomposition of the output,
the same property a single-head CAM has.

Cost (width 64, 224 px, 8 classes): 49.8 M parameters, ~10 GMAC per image; the 9x9 layer1 at
56x56 alone is ~4.2 GMAC. The paper concedes it is heavy for real time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import soft_cross_entropy
from models.attention import CBAM, CoordinateAttention
from models.registry import register_model
from models.resnet import he_init, make_stem

#: The feature-segmentation grid as fractions of the face crop, (x0, y0, x1, y1). The split is
#: on the pre-extracted map, whose cells tile the crop, so these are also the crop regions.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "left_eye": (0.0, 0.0, 0.5, 0.5),
    "right_eye": (0.5, 0.0, 1.0, 0.5),
    "mouth": (0.0, 0.5, 1.0, 1.0),
}
GLOBAL_WEIGHT = 0.5  # decision-level fusion: 50 % global, 50 % local [P]


class KernelBasicBlock(nn.Module):
    """A ResNet BasicBlock with k x k convolutions and an optional attention module after
    the second conv + BN (before the residual addition)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_size: int = 3,
                 attention: str | None = None) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if attention is None:
            self.attention: nn.Module = nn.Identity()
        elif attention == "cbam":
            self.attention = CBAM(planes)
        elif attention == "ca":
            self.attention = CoordinateAttention(planes)
        else:
            raise ValueError(f"unknown attention {attention!r}: use None, 'cbam' or 'ca'")
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return self.relu(out + identity)


def make_stage(in_planes: int, planes: int, blocks: int, stride: int, kernel_size: int,
               attention: str | None) -> nn.Sequential:
    layers = [KernelBasicBlock(in_planes, planes, stride, kernel_size, attention)]
    layers += [KernelBasicBlock(planes, planes, 1, kernel_size, attention)
               for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class LocalStream(nn.Module):
    """One region's sub-branch: layer3 (stride 2) + layer4 (stride 1), 3x3, CA per block."""

    def __init__(self, in_planes: int, width: int, blocks: tuple[int, int] = (2, 2)) -> None:
        super().__init__()
        self.layer3 = make_stage(in_planes, width * 4, blocks[0], 2, 3, "ca")
        self.layer4 = make_stage(width * 4, width * 8, blocks[1], 1, 3, "ca")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(x))


class FSDSN(nn.Module):
    """FS-DSN. `forward` returns the fused logits; `forward_streams` both streams' logits;
    `logits_and_cam` the fused logits and the per-class spatial evidence for the exporter."""

    def __init__(self, num_classes: int = 8, in_chans: int = 3, width: int = 64,
                 small_input: bool = False, stem_stride: int = 2,
                 kernels: tuple[int, int, int, int] = (9, 7, 5, 3),
                 global_weight: float = GLOBAL_WEIGHT) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.width = num_classes, in_chans, width
        self.global_weight = float(global_weight)
        k1, k2, k3, k4 = kernels
        # -- PE: ResNet-18 conv1..conv3 (stem, layer1, layer2) with 9x9 / 7x7 kernels
        self.conv1, self.maxpool = make_stem(in_chans, width, small_input, stem_stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(width, width, 2, 1, k1, None)
        self.layer2 = make_stage(width, width * 2, 2, 2, k2, None)
        # -- GE: global stream, 5x5 then 3x3, CBAM in every block
        self.global_layer3 = make_stage(width * 2, width * 4, 2, 2, k3, "cbam")
        self.global_layer4 = make_stage(width * 4, width * 8, 2, 2, k4, "cbam")
        # -- LE: one local stream per region, 3x3, CA in every block
        self.local_streams = nn.ModuleDict({name: LocalStream(width * 2, width)
                                            for name in REGIONS})
        self.num_features = width * 8
        self.head_global = nn.Linear(self.num_features, num_classes)
        self.head_local = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        he_init(self.modules())

    # ------------------------------------------------------------------ regions
    @property
    def regions(self) -> dict[str, tuple[float, float, float, float]]:
        """The feature-segmentation regions as fractions of the face crop, (x0, y0, x1, y1);
        the exporter writes them into the ONNX metadata (`regions`) for the app to draw."""
        return dict(REGIONS)

    # ------------------------------------------------------------------ stages
    def pre_extract(self, x: torch.Tensor) -> torch.Tensor:
        """PE: (N, in_chans, S, S) -> (N, 2 * width, S/8, S/8) (ImageNet stem)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    @staticmethod
    def segment(x: torch.Tensor) -> dict[str, torch.Tensor]:
        """FS: cut the pre-extracted map on the fixed grid of `REGIONS`."""
        height, width = x.shape[2], x.shape[3]
        if height % 4 or width % 4:
            raise ValueError(f"FS-DSN needs a pre-extracted map with sides divisible by 4 "
                             f"(got {height}x{width}); use 224/96/64 px with the ImageNet "
                             f"stem or 48/64 px with the stride-2 small stem")
        mid_h, mid_w = height // 2, width // 2
        return {"left_eye": x[:, :, :mid_h, :mid_w], "right_eye": x[:, :, :mid_h, mid_w:],
                "mouth": x[:, :, mid_h:, :]}

    def forward_global(self, x: torch.Tensor) -> torch.Tensor:
        """GE: pre-extracted map -> global map (N, 8 * width, S/32, S/32)."""
        return self.global_layer4(self.global_layer3(x))

    def forward_local(self, x: torch.Tensor) -> torch.Tensor:
        """FS + LE: pre-extracted map -> stitched local map (N, 8 * width, S/16, S/16)."""
        parts = {name: self.local_streams[name](part) for name, part in self.segment(x).items()}
        eyes = torch.cat([parts["left_eye"], parts["right_eye"]], dim=3)
        return torch.cat([eyes, parts["mouth"]], dim=2)

    def forward_feature_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global map, stitched local map): the last spatial maps of both streams."""
        shared = self.pre_extract(x)
        return self.forward_global(shared), self.forward_local(shared)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map on the CAM grid: the stitched local map (N, 8w, S/16, S/16).
        Use `forward_feature_maps` for both streams; the fused head is not one linear layer,
        so the exporter goes through `logits_and_cam`."""
        return self.forward_feature_maps(x)[1]

    def forward_streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global logits, local logits), each (N, num_classes)."""
        global_map, local_map = self.forward_feature_maps(x)
        return (self.head_global(global_map.mean(dim=(2, 3))),
                self.head_local(local_map.mean(dim=(2, 3))))

    def fuse(self, global_logits: torch.Tensor, local_logits: torch.Tensor) -> torch.Tensor:
        return self.global_weight * global_logits + (1.0 - self.global_weight) * local_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(*self.forward_streams(x))

    # ------------------------------------------------------------------ CAM + loss
    def logits_and_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused logits and per-class evidence (N, C, S/16, S/16): the fusion of the global
        CAM (upsampled 2x, nearest) and the stitched local CAM; see the module docstring."""
        global_map, local_map = self.forward_feature_maps(x)
        logits = self.fuse(self.head_global(global_map.mean(dim=(2, 3))),
                           self.head_local(local_map.mean(dim=(2, 3))))
        evidence_global = F.conv2d(global_map, self.head_global.weight[:, :, None, None])
        evidence_local = F.conv2d(local_map, self.head_local.weight[:, :, None, None])
        evidence_global = F.interpolate(evidence_global, size=evidence_local.shape[2:],
                                        mode="nearest")
        return logits, self.fuse(evidence_global, evidence_local)

    def training_loss(self, x: torch.Tensor, target: torch.Tensor,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """0.5 * CE(global) + 0.5 * CE(local) [A: the paper's loss equation is lost; this is
        MA-Net's two-stream loss with FS-DSN's 50/50 weights]; returns (loss, fused logits).
        `target` is class indices (N,) or a distribution (N, C)."""
        global_logits, local_logits = self.forward_streams(x)
        loss = self.fuse(soft_cross_entropy(global_logits.float(), target, label_smoothing),
                         soft_cross_entropy(local_logits.float(), target, label_smoothing))
        return loss, self.fuse(global_logits, local_logits)


@register_model("fs_dsn")
def fs_dsn(num_classes: int = 8, in_chans: int = 3, width: int = 64, small_input: bool = False,
           stem_stride: int = 2, kernels: tuple[int, int, int, int] = (9, 7, 5, 3),
           global_weight: float = GLOBAL_WEIGHT) -> FSDSN:
    """FS-DSN (49.8 M parameters at width 64 with 8 classes; ~10 GMAC at 224 px)."""
    return FSDSN(num_classes, in_chans, width, small_input, stem_stride, tuple(kernels),
                 global_weight)
