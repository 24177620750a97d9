"""ORSANet, the Occlusion-Robust Semantic-Aware Network (Zhai et al., ACM MM 2025; seed 004),
with DARELoss. Official code: github.com/Wenyuzhy/ORSANet-master (read for ambiguities only).

    X_img = G_img(crop)                         trainable IR backbone (IR-50's first 3 stages)
    X^_img = SSGM(X_img, X_seg)                 two SPADE stages, coarse -> fine (Eq. 5)
    X_out = MCM(X^_img, X_lm)                   multi-scale landmark-query cross-fusion (Eqs. 6-9)
    logits = Linear(mean of X_out's tokens)

What replaces the paper's frozen, pre-trained parts (none of them is available here; the
recipe module `training.recipes.orsanet` says what each substitution is measured by):
- G_seg (SegFace Swin-B on LaPa) -> the `parsing` input: a LaPa-layout label map of the crop
  (N, S, S) int64, one-hot and area-pooled to the backbone map in the graph, drawn by
  `app.pipeline.priors.render_parsing` from the 68 landmarks with occluded pixels as
  background (training: the synthetic occluder's mask; run time: the occlusion network's
  map). The paper's code feeds SegFace's stage-4 *features*, not labels.
- G_lm (MobileFaceNet-68, whose 512 x 7 x 7 feature map is the code's X_lm) -> the
  `landmarks68` input, (N, 68, 2) crop fractions (training: the FaceMesh teacher on the clean
  face; run time: the landmark student), rendered as 68 Gaussian heat-maps in the graph and
  encoded by a small trainable CNN into the landmark tokens.
- IR-50 pre-trained on MS-Celeb-1M -> the same IR units trained from scratch.
Both priors are optional ONNX inputs whose default is the FERPlus template face (the
landmarks of `FERPLUS_LANDMARKS68`, parsing drawn from them, nothing occluded), which is
what the app feeds a face that has no landmarks.

Readings where paper and code are vague (see seed-specs.md section 5):
- SSGM runs on the backbone's last map (before tokenisation; the code runs one
  SPADEResnetBlock on 7 x 7 tokens): `x + conv(lrelu(SPADE(conv(lrelu(SPADE(x))))))`, SPADE
  = InstanceNorm(affine=False) * (1 + gamma) + beta from a shared conv + ReLU on the prior
  (code form; spectral norm left out);
- tokens: 2 x 2 patch merging + linear (the code's `.view(-1, 49, 1024)` is a raw memory
  reshape that mixes positions; `patch_merge=1` keeps the map as it is), learned position
  embedding on the image tokens;
- the cross-fusion block follows Eqs. 6-8 with W_q (the code has none) in the code's pre-norm
  residual form; Eq. 9's reintegration `Conv(Concat(X_fuse, s * X_lm))` is a per-token 1 x 1
  convolution (linear) over the channel concatenation, with the learnable scalar s;
- multi-scale = the code's three embedding widths D, D/2, D/4 per layer (per-token
  projections here, so every token stays at its place), merged small -> large FPN-like;
- read-out: mean of the final image tokens (the code's cls token is initialised as that
  mean) so the head is linear on a pooled map and the CAM is exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.registry import register_model

NUM_LANDMARKS = 68
NUM_PARSING_CLASSES = 11  # LaPa (SegFace) layout, app.pipeline.priors.PARSING_CLASSES


# --------------------------------------------------------------------------- image backbone
class BottleneckIR(nn.Module):
    """ArcFace's IR unit: BN -> 3x3 conv -> PReLU -> 3x3 conv (stride) -> BN, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut: nn.Module = (nn.MaxPool2d(1, stride) if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.residual = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


class IRBackbone(nn.Module):
    """IR-50's input layer and first three stages (3/4/14 units, 64/128/256 channels)."""

    def __init__(self, in_chans: int, units: tuple[int, ...], channels: tuple[int, ...]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.PReLU(channels[0]))
        layers, cin = [], channels[0]
        for n, cout in zip(units, channels):
            layers += [BottleneckIR(cin, cout, 2)] + [BottleneckIR(cout, cout, 1)
                                                       for _ in range(n - 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


# --------------------------------------------------------------------------- SSGM
class SPADE(nn.Module):
    """Spatially-adaptive normalisation (Park et al. 2019) as in Eq. 5."""

    def __init__(self, channels: int, prior_channels: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(prior_channels, hidden, 3, 1, 1), nn.ReLU(inplace=True))
        self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        h = self.shared(prior)
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SSGM(nn.Module):
    """Two SPADE stages (coarse -> fine) in a residual block (the code's SPADEResnetBlock)."""

    def __init__(self, channels: int, prior_channels: int, hidden: int) -> None:
        super().__init__()
        self.spade0 = SPADE(channels, prior_channels, hidden)
        self.conv0 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.spade1 = SPADE(channels, prior_channels, hidden)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        dx = self.conv0(F.leaky_relu(self.spade0(x, prior), 0.2))
        dx = self.conv1(F.leaky_relu(self.spade1(dx, prior), 0.2))
        return x + dx


# --------------------------------------------------------------------------- MCM
class CrossFusionBlock(nn.Module):
    """One CFB (Fig. 3c): landmark-query cross-attention (Eqs. 6-7), MLP (Eq. 8), landmark
    reintegration with learnable s and a 1x1 conv (Eq. 9)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_img = nn.LayerNorm(dim)
        self.norm_lm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.s = nn.Parameter(torch.ones(1))
        self.reintegrate = nn.Linear(2 * dim, dim)

    def forward(self, img: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        n, t, d = img.shape
        hd = d // self.heads
        q = self.q(self.norm_lm(lm)).reshape(n, t, self.heads, hd).transpose(1, 2)
        k, v = self.kv(self.norm_img(img)).reshape(n, t, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * hd ** -0.5, dim=-1)
        fused = img + self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))
        fused = fused + self.mlp(self.norm_mlp(fused))
        return self.reintegrate(torch.cat([fused, self.s * lm], dim=-1))


class MCMLayer(nn.Module):
    """One pyramid layer: a CFB at embedding widths D, D/2, D/4, merged small -> large."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, scales: int = 3) -> None:
        super().__init__()
        widths = [dim // (2 ** i) for i in range(scales)]
        self.down_img = nn.ModuleList(nn.Identity() if w == dim else nn.Linear(dim, w)
                                      for w in widths)
        self.down_lm = nn.ModuleList(nn.Identity() if w == dim else nn.Linear(dim, w)
                                     for w in widths)
        self.blocks = nn.ModuleList(CrossFusionBlock(w, max(1, heads // (2 ** i)), mlp_ratio)
                                    for i, w in enumerate(widths))
        self.up = nn.ModuleList(nn.Linear(widths[i + 1], widths[i]) for i in range(scales - 1))

    def forward(self, img: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        outs = [block(di(img), dl(lm)) for block, di, dl
                in zip(self.blocks, self.down_img, self.down_lm)]
        merged = outs[-1]
        for i in range(len(outs) - 2, -1, -1):
            merged = outs[i] + self.up[i](merged)
        return merged


# --------------------------------------------------------------------------- network
def landmark_heatmaps(landmarks68: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(N, 68, 2) crop fractions -> (N, 68, size, size) unit-peak Gaussians (sigma in cells)."""
    grid = (torch.arange(size, device=landmarks68.device, dtype=landmarks68.dtype) + 0.5) / size
    dx = (grid[None, None, None, :] - landmarks68[..., 0, None, None]) * size
    dy = (grid[None, None, :, None] - landmarks68[..., 1, None, None]) * size
    return torch.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))


def default_priors(img_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The FERPlus template face: landmarks (1, 68, 2) fractions and parsing (1, S, S) int64."""
    from app.pipeline.priors import FERPLUS_LANDMARKS68, render_parsing, template_landmarks68

    parsing = render_parsing(template_landmarks68(img_size), img_size).astype(np.int64)
    return FERPLUS_LANDMARKS68[None].astype(np.float32), parsing[None]


class ORSANet(nn.Module):
    """Image backbone + SSGM (parsing prior) + MCM (landmark prior) + linear head."""

    extra_inputs = {
        "landmarks68": "(N, 68, 2) float32 iBUG-68 points of the aligned crop as fractions of "
                       "its side (pixel = u * S - 0.5); default: the FERPlus template",
        "parsing": "(N, S, S) int64 LaPa-layout face-parsing labels of the crop (0 background "
                   "incl. occluders, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 upper lip, 8 inner "
                   "mouth, 9 lower lip, 10 hair); default: drawn from the FERPlus template",
    }

    def __init__(self, num_classes: int = 8, in_chans: int = 3, img_size: int = 112,
                 units: tuple[int, ...] = (3, 4, 14), channels: tuple[int, ...] = (64, 128, 256),
                 patch_merge: int = 2, embed_dim: int = 512, depth: int = 8, heads: int = 8,
                 mlp_ratio: float = 2.0, spade_hidden: int = 128, heatmap_sigma: float = 1.0,
                 lambda_ce: float = 1.0, lambda_dare: float = 0.1, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.lambda_ce, self.lambda_dare = lambda_ce, lambda_dare
        self.heatmap_sigma = heatmap_sigma
        self.backbone = IRBackbone(in_chans, tuple(units), tuple(channels))
        c = self.backbone.out_channels
        self.map_size = img_size // (2 ** len(units))
        self.grid = self.map_size // patch_merge
        if self.map_size % patch_merge or img_size % self.map_size:
            raise ValueError(f"img_size {img_size} does not divide into the token grid")
        self.ssgm = SSGM(c, NUM_PARSING_CLASSES, spade_hidden)
        self.patch_merge = patch_merge
        self.tokens = nn.Linear(c * patch_merge * patch_merge, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # landmark encoder: 68 heat-maps at the backbone map's resolution -> landmark tokens
        self.landmark_encoder = nn.Sequential(
            nn.Conv2d(NUM_LANDMARKS, embed_dim // 2, 3, 1, 1, bias=False),
            nn.BatchNorm2d(embed_dim // 2), nn.ReLU(inplace=True),
            nn.Conv2d(embed_dim // 2, embed_dim, patch_merge, patch_merge, bias=False),
            nn.BatchNorm2d(embed_dim), nn.ReLU(inplace=True))
        self.mcm = nn.ModuleList(MCMLayer(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.num_features = embed_dim
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.classifier = nn.Linear(embed_dim, num_classes)
        landmarks, parsing = default_priors(img_size)
        self.register_buffer("default_landmarks68", torch.from_numpy(landmarks), persistent=False)
        self.register_buffer("default_parsing", torch.from_numpy(parsing), persistent=False)

    def default_extra_inputs(self) -> dict[str, torch.Tensor]:
        return {"landmarks68": self.default_landmarks68, "parsing": self.default_parsing}

    def forward_features(self, x: torch.Tensor, landmarks68: torch.Tensor | None = None,
                         parsing: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D, g, g): final image tokens after LayerNorm, laid out on the token grid."""
        n = x.shape[0]
        landmarks68 = self.default_landmarks68 if landmarks68 is None else landmarks68
        parsing = self.default_parsing if parsing is None else parsing
        landmarks68 = landmarks68.to(x.dtype).expand(n, NUM_LANDMARKS, 2)
        parsing = parsing.expand(n, self.img_size, self.img_size)
        classes = torch.arange(NUM_PARSING_CLASSES, device=x.device)
        onehot = (parsing[:, None] == classes[None, :, None, None]).to(x.dtype)
        cell = self.img_size // self.map_size
        seg = F.avg_pool2d(onehot, cell, cell)  # class fractions per backbone-map cell
        feat = self.ssgm(self.backbone(x), seg)
        img = F.pixel_unshuffle(feat, self.patch_merge) if self.patch_merge > 1 else feat
        img = self.tokens(img.flatten(2).transpose(1, 2)) + self.pos_embed
        heat = landmark_heatmaps(landmarks68, self.map_size, self.heatmap_sigma)
        lm = self.landmark_encoder(heat).flatten(2).transpose(1, 2)
        for layer in self.mcm:
            img = layer(img, lm)
        img = self.norm(img)
        return img.transpose(1, 2).reshape(n, self.num_features, self.grid, self.grid)

    def forward(self, x: torch.Tensor, landmarks68: torch.Tensor | None = None,
                parsing: torch.Tensor | None = None) -> torch.Tensor:
        features = self.forward_features(x, landmarks68, parsing)
        return self.classifier(self.drop(features.mean(dim=(2, 3))))

    def export_outputs(self, x: torch.Tensor, landmarks68: torch.Tensor | None = None,
                       parsing: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, tuple[()]]:
        """Logits and raw CAM evidence for the exporter (priors optional)."""
        features = self.forward_features(x, landmarks68, parsing)
        logits = self.classifier(features.mean(dim=(2, 3)))
        return logits, F.conv2d(features, self.classifier.weight[:, :, None, None]), ()

    def training_loss(self, x: torch.Tensor, target: torch.Tensor, label_smoothing: float,
                      aux: dict[str, torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """lambda1 CE + lambda2 DARE (Eq. 12) on the priors of `aux` (template without)."""
        from training.trainer import loss_fn

        aux = aux or {}
        logits = self.classifier(self.drop(self.forward_features(
            x, aux.get("landmarks68"), aux.get("parsing")).mean(dim=(2, 3))))
        hard = target if target.ndim == 1 else target.argmax(1)
        loss = (self.lambda_ce * loss_fn(logits.float(), target, label_smoothing)
                + self.lambda_dare * dare_loss(logits.float(), hard))
        return loss, logits


def dare_loss(logits: torch.Tensor, target: torch.Tensor, additive: bool = False) -> torch.Tensor:
    """Dynamic Adversarial Repulsion Enhancement loss (Eqs. 10-11), mean over the batch.

    z_x = target logit, z_y = the largest non-target logit, alpha = 1 - P(x) (softmax
    probability of the target, detached as in the official code), z'_y = alpha z_y + z_y, and
    L = -log(e^{z_x} / (e^{z_x} + e^{z'_y})). `additive=True` is the official code's variant
    z'_y = z_y + alpha (the paper's Eq. 11 is the default).
    """
    target = target.long()
    alpha = 1.0 - torch.softmax(logits, dim=1).gather(1, target[:, None])[:, 0].detach()
    z_x = logits.gather(1, target[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf"))
    z_y = others.amax(dim=1)
    z_y = z_y + alpha if additive else alpha * z_y + z_y
    pair = torch.stack([z_x, z_y], dim=1)
    return -(z_x - torch.logsumexp(pair, dim=1)).mean()


@register_model("orsanet")
def orsanet(num_classes: int = 8, in_chans: int = 3, img_size: int = 112,
            units: tuple[int, ...] = (3, 4, 14), channels: tuple[int, ...] = (64, 128, 256),
            patch_merge: int = 2, embed_dim: int = 512, depth: int = 8, heads: int = 8,
            mlp_ratio: float = 2.0, spade_hidden: int = 128, heatmap_sigma: float = 1.0,
            lambda_ce: float = 1.0, lambda_dare: float = 0.1, drop_rate: float = 0.0) -> ORSANet:
    """ORSANet; the defaults are the official code's "large" configuration at 112 px."""
    return ORSANet(num_classes, in_chans, img_size, units, channels, patch_merge, embed_dim,
                   depth, heads, mlp_ratio, spade_hidden, heatmap_sigma, lambda_ce, lambda_dare,
                   drop_rate)
