"""Mask-aware joint learning: FOPM + EFFM + FERM (Hou & Sun, Appl. Sci. 2025, 15, 10433; seed 003).

A cascade trained end to end with three losses, `L_t = L_p + beta * L_m + gamma * L_d`
(beta 0.6, gamma 0.4 as the paper found):

- FOPM (Facial Occlusion Parsing Module, paper Fig. 2b): seven convolutions in three groups
  give P (512 x 56 x 56 at 224 px); a U-Net on P predicts the occlusion map (L_p: MSE against
  the synthetic occluder's mask) and 68 landmark heat-maps (L_m: MSE against Gaussians on
  the 68 points, moved by the same augmentation warp as the face).
- EFFM (Expression Feature Fusion Module, Fig. 2c): FDN cuts P into M = 4 regions, pools
  each with the predicted visibility (1 - occlusion), and weights it with a PGUnit; the
  landmark heat-maps are average-pooled and projected to a 128-d geometric prior; FRN passes
  each weighted region vector through a two-layer residual, concatenates the geometric
  prior, and a sigmoid gate decides how much of that region's features flows on; the gated
  region maps are summed back into one map.
- FERM (Fig. 2d): a 3-conv encoder, three ResNet blocks, three more convs + ReLU, global
  average pool -> 512-d -> linear -> classes.

Nothing external is needed at inference: the occlusion map is an output of the exported
graph (`occlusion`, for the app's overlay), the heat-maps stay internal.

Where the paper is silent or contradicts itself, the readings of seed-specs.md section 4
were taken (all marked [A] there); the main ones, as comments below:
- BatchNorm after every convolution (the paper lists conv + ReLU only; BN folds into the
  convs at inference and keeps a from-scratch cascade of ~25 convs trainable at lr 2e-3);
- U-Net widths (1x1 -> c/8, two down- and two up-levels with skips);
- regions = 2 x 2 quadrants of P; region vector = visibility-weighted average of P;
- PGUnit = the authors' repository form: attention `sigmoid(fc(relu(fc(r))))` + feature
  `relu(fc(r))`;
- "average-pooled" landmark heat-maps = pooled to a `geo_grid` x `geo_grid` grid (4) before
  the linear projection: a global average of a heat-map keeps its mass but not where it is;
- the FRN's "final output feature map" = P with each quadrant scaled channel-wise by
  alpha_k * gate_k (the gate is a C_P-wide sigmoid), which is what FERM's convolutions need;
- FERM widths: encoder c->c/4 (stride s1), c/4->c/4 (s2), c/4->c/4; 3 BasicBlocks(c/4);
  convs c/4->c/2, c/2->c (s3), c->c 1x1; `ferm_strides` = (s1, s2, s3).
The paper's multi-frame paragraphs (P1/P2, M1/M2, DVM, DNet) are ignored, as in seed-specs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import soft_cross_entropy
from models.registry import register_model
from models.resnet import BasicBlock, he_init

NUM_LANDMARKS = 68


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FOPMEncoder(nn.Module):
    """The paper's three convolution groups: I -> P (8w x S/4 x S/4)."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        w = width
        self.group1 = nn.Sequential(conv_bn_relu(in_chans, w, 3, 2), conv_bn_relu(w, w))
        self.group2 = nn.Sequential(conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w),
                                    nn.MaxPool2d(2, 2))
        self.group3 = nn.Sequential(conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w),
                                    conv_bn_relu(4 * w, 8 * w, 1))
        self.out_channels = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group3(self.group2(self.group1(x)))


class OcclusionUNet(nn.Module):
    """U-Net on P with two heads at P's resolution: occlusion logits (1) and 68 heat-maps."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        c = width  # 64 at the paper's size: 1x1 512 -> 64, then 128 (1/2), 256 (1/4)
        self.reduce = conv_bn_relu(in_channels, c, 1)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(c, 2 * c), conv_bn_relu(2 * c, 2 * c))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(2 * c, 4 * c),
                                   conv_bn_relu(4 * c, 4 * c))
        self.up2 = nn.Sequential(conv_bn_relu(6 * c, 2 * c), conv_bn_relu(2 * c, 2 * c))
        self.up1 = nn.Sequential(conv_bn_relu(3 * c, c), conv_bn_relu(c, c))
        self.occlusion_head = nn.Conv2d(c, 1, 1)
        self.landmark_head = nn.Conv2d(c, NUM_LANDMARKS, 1)

    def forward(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.reduce(p)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        u = F.interpolate(s2, size=s1.shape[2:], mode="nearest")
        u = self.up2(torch.cat([u, s1], 1))
        u = F.interpolate(u, size=s0.shape[2:], mode="nearest")
        u = self.up1(torch.cat([u, s0], 1))
        return self.occlusion_head(u)[:, 0], self.landmark_head(u)


class PGUnit(nn.Module):
    """Patch-Gated Unit (pACNN; the authors' repository form): a region vector's attention
    weight alpha in (0, 1) and its feature."""

    def __init__(self, channels: int, hidden: int, features: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, 1), nn.Sigmoid())
        self.feature = nn.Sequential(nn.Linear(channels, features), nn.ReLU(inplace=True))

    def forward(self, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention(region), self.feature(region)


class EFFM(nn.Module):
    """FDN (4 visibility-pooled regions, one PGUnit each) + geometric prior + FRN gates."""

    regions = 4  # M = 4, 2 x 2 quadrants [A]

    def __init__(self, channels: int, feature_dim: int = 128, geo_dim: int = 128,
                 geo_grid: int = 4) -> None:
        super().__init__()
        self.geo_grid = geo_grid
        self.pgunits = nn.ModuleList(PGUnit(channels, channels, feature_dim)
                                     for _ in range(self.regions))
        self.geometry = nn.Sequential(
            nn.Linear(NUM_LANDMARKS * geo_grid * geo_grid, geo_dim), nn.ReLU(inplace=True))
        # FRN: two-layer residual per branch, then a sigmoid gate from [branch, geometry]
        self.residual = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True),
                          nn.Linear(feature_dim, feature_dim)) for _ in range(self.regions))
        self.gates = nn.ModuleList(nn.Linear(feature_dim + geo_dim, channels)
                                   for _ in range(self.regions))

    def forward(self, p: torch.Tensor, occlusion: torch.Tensor, heatmaps: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """P (N, C, h, w), occlusion probabilities (N, h, w), heat-maps (N, 68, h, w) ->
        fused map (N, C, h, w) and the region weights alpha * mean(gate) (N, 4)."""
        visible = (1.0 - occlusion)[:, None]
        # visibility-weighted average of P per quadrant (h, w even)
        pooled = F.adaptive_avg_pool2d(p * visible, 2) / (F.adaptive_avg_pool2d(visible, 2) + 1e-4)
        regions = pooled.flatten(2)  # (N, C, 4): upper-left, upper-right, lower-left, lower-right
        geometry = self.geometry(F.adaptive_avg_pool2d(heatmaps, self.geo_grid).flatten(1))
        scales, weights = [], []
        for k in range(self.regions):
            alpha, feature = self.pgunits[k](regions[:, :, k])
            branch = feature * alpha
            branch = branch + self.residual[k](branch)
            gate = torch.sigmoid(self.gates[k](torch.cat([branch, geometry], 1)))
            scales.append(alpha * gate)
            weights.append(alpha[:, 0] * gate.mean(1))
        # (N, C, 2, 2) per-quadrant channel scales, spread over each quadrant of P
        grid = torch.stack(scales, 2).reshape(p.shape[0], p.shape[1], 2, 2)
        fused = p * F.interpolate(grid, size=p.shape[2:], mode="nearest")
        return fused, torch.stack(weights, 1)


class FERM(nn.Module):
    """Encoder (3 convs) -> 3 BasicBlocks -> 3 convs + ReLU; the map the CAM is taken from."""

    def __init__(self, channels: int, strides: tuple[int, int, int] = (2, 2, 2)) -> None:
        super().__init__()
        c = channels
        q, h = c // 4, c // 2
        self.encoder = nn.Sequential(conv_bn_relu(c, q, 3, strides[0]),
                                     conv_bn_relu(q, q, 3, strides[1]), conv_bn_relu(q, q))
        self.blocks = nn.Sequential(BasicBlock(q, q), BasicBlock(q, q), BasicBlock(q, q))
        self.head = nn.Sequential(conv_bn_relu(q, h), conv_bn_relu(h, c, 3, strides[2]),
                                  nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True))
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.encoder(x)))


def landmark_heatmaps(landmarks68: torch.Tensor, height: int, width: int,
                      sigma: float) -> torch.Tensor:
    """(N, 68, 2) crop fractions (pixel = u * side - 0.5) -> (N, 68, h, w) Gaussians with peak
    1 and std `sigma` map pixels, on a map covering the crop."""
    ys = (torch.arange(height, device=landmarks68.device, dtype=landmarks68.dtype) + 0.5) / height
    xs = (torch.arange(width, device=landmarks68.device, dtype=landmarks68.dtype) + 0.5) / width
    dx = (xs[None, None, None, :] - landmarks68[..., 0, None, None]) * width
    dy = (ys[None, None, :, None] - landmarks68[..., 1, None, None]) * height
    return torch.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))


class MaskAwareNet(nn.Module):
    """FOPM -> EFFM -> FERM, following the expression-network contract (`forward_features`
    = FERM's last map, `classifier` on its average pool), with `occlusion` as an extra output
    of the exported graph and a three-term `training_loss` fed by `Recipe.aux`."""

    extra_outputs = {"occlusion": "occlusion probability per map cell (1 = hidden), covering "
                                  "the crop; upsample to the crop for an overlay"}

    def __init__(self, num_classes: int = 8, in_chans: int = 3, width: int = 64,
                 unet_width: int | None = None, ferm_strides: tuple[int, int, int] = (2, 2, 2),
                 geo_grid: int = 4, heatmap_sigma: float = 1.5, beta: float = 0.6,
                 gamma: float = 0.4, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.heatmap_sigma, self.beta, self.gamma = heatmap_sigma, beta, gamma
        self.fopm = FOPMEncoder(in_chans, width)
        channels = self.fopm.out_channels
        self.unet = OcclusionUNet(channels, unet_width or width)
        self.effm = EFFM(channels, geo_grid=geo_grid)
        self.ferm = FERM(channels, tuple(ferm_strides))
        self.num_features = self.ferm.out_channels
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(self.num_features, num_classes)
        he_init(self.modules(), batchnorm=False)

    def parse(self, x: torch.Tensor, occlusion: torch.Tensor | None = None
              ) -> dict[str, torch.Tensor]:
        """Everything one pass computes: P, occlusion logits and probabilities, heat-maps,
        region weights and FERM's map. `occlusion` (N, h, w) replaces the predicted map in
        EFFM's visibility gating: the gating probe (training/gating_probe.py) feeds none
        (zeros) or the occluder's true mask to measure what the gating is worth."""
        p = self.fopm(x)
        occlusion_logits, heatmaps = self.unet(p)
        if occlusion is None:
            occlusion = torch.sigmoid(occlusion_logits)
        fused, region_weights = self.effm(p, occlusion, heatmaps)
        return {"p": p, "occlusion_logits": occlusion_logits, "occlusion": occlusion,
                "heatmaps": heatmaps, "region_weights": region_weights,
                "features": self.ferm(fused)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.parse(x)["features"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.drop(self.forward_features(x).mean(dim=(2, 3))))

    def export_outputs(self, x: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor]]:
        """Logits, raw CAM evidence and the occlusion map from one pass (exporter hook)."""
        parts = self.parse(x)
        features = parts["features"]
        logits = self.classifier(features.mean(dim=(2, 3)))
        evidence = F.conv2d(features, self.classifier.weight[:, :, None, None])
        return logits, evidence, (parts["occlusion"],)

    def losses(self, x: torch.Tensor, target: torch.Tensor, label_smoothing: float,
               occlusion: torch.Tensor, landmarks68: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """L_p (occlusion MSE), L_m (heat-map MSE), L_d (cross-entropy) and the logits.

        `occlusion` (N, S, S) is the occluder's mask at input size (area-pooled to P's
        resolution here); `landmarks68` (N, 68, 2) crop fractions."""

        parts = self.parse(x)
        logits = self.classifier(self.drop(parts["features"].mean(dim=(2, 3))))
        h, w = parts["occlusion"].shape[1:]
        occlusion_target = F.adaptive_avg_pool2d(occlusion[:, None].float(), (h, w))[:, 0]
        heat_target = landmark_heatmaps(landmarks68.float(), h, w, self.heatmap_sigma)
        terms = {"occlusion": F.mse_loss(parts["occlusion"].float(), occlusion_target),
                 "landmarks": F.mse_loss(parts["heatmaps"].float(), heat_target),
                 "expression": soft_cross_entropy(logits.float(), target, label_smoothing)}
        return terms, logits

    def training_loss(self, x: torch.Tensor, target: torch.Tensor, label_smoothing: float,
                      aux: dict[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_t = L_p + beta L_m + gamma L_d (paper Sec. 3.5). Needs `aux` with "occlusion" and
        "landmarks68" (the recipe's `aux`); without them there is nothing to supervise the
        parsing heads with, which is an error rather than a silent CE-only run."""
        if aux is None or "occlusion" not in aux or "landmarks68" not in aux:
            raise ValueError("mask_aware needs the occluder masks and landmarks as training "
                             "targets: use a recipe with aux=('occlusion', 'landmarks68')")
        terms, logits = self.losses(x, target, label_smoothing, aux["occlusion"],
                                    aux["landmarks68"])
        loss = terms["occlusion"] + self.beta * terms["landmarks"] + self.gamma * terms["expression"]
        return loss, logits


@register_model("mask_aware")
def mask_aware(num_classes: int = 8, in_chans: int = 3, width: int = 64,
               unet_width: int | None = None, ferm_strides: tuple[int, int, int] = (2, 2, 2),
               geo_grid: int = 4, heatmap_sigma: float = 1.5, beta: float = 0.6,
               gamma: float = 0.4, drop_rate: float = 0.0) -> MaskAwareNet:
    """The mask-aware joint model; width 64 at 224 px is the paper's configuration
    (P = 512 x 56 x 56)."""
    return MaskAwareNet(num_classes, in_chans, width, unet_width, ferm_strides, geo_grid,
                        heatmap_sigma, beta, gamma, drop_rate)
