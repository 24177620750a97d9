"""DFD-Net: Dual-Stream Feature Disentanglement Network (Chen, Lin, Shu, Yan; seed 002).

Two branches (paper Fig. 1; seed-specs §3):

- expression branch (what is exported and runs in the app): EFE = PreAct ResNet-18 whose
  stage maps f_1..f_3 are max-pooled to f_4's size and concatenated (Eq. 3), then the
  attention block: Mask = g(δ1·f_fused + δ2·f_4) (Eq. 4), Att_out = h(Mask ⊙ f_4) (Eq. 5),
  and a linear classifier on Att_out (Eq. 6);
- expression-irrelevant branch (training only): EIFE, encoders pre-trained to predict
  expression-irrelevant attributes (Eqs. 1-2) and then frozen, and EIFP, which passes
  Att_out through a gradient reversal layer into one mutual-information predictor (MIP) per
  EIFE that regresses that EIFE's feature d_k with smooth L1 (Eqs. 7-9). The joint loss is
  L = CE + γ(p)·L_MI with γ(p) = 2/(1+exp(-10p)) - 1 (Eqs. 10-11).

Readings taken where the paper is vague (seed-specs §3.2/§3.4, [A] = assumed):
- f_j are the four *stage* outputs (L = 4); max-pooling uses kernel = stride = ceil(s_j/s_L)
  with ceil mode, which gives f_L's size exactly (23->3 at 90 px) and exports to ONNX;
- 448 fused channels cannot be added to f_4's 512 (Eq. 4): a 1x1 conv projects them [A];
- δ1, δ2 are learnable scalars starting at 1 [A];
- g = conv3x3-BN-ReLU-conv3x3-Sigmoid, h = conv3x3-BN-PReLU then global max-pool [A]
  ("a series of convolutions ... followed by a Sigmoid"; "convolution, batch normalization,
  PReLU, followed by a max-pooling" -> a vector for the FC classifier, so the pool is global);
- GRL λ = 1 [A]; each MIP is an MLP C -> C/2 -> dim(d_k) with ReLU [A]; L_reg is the mean
  smooth L1 (β = 1) over the feature elements; d_k is the EIFE trunk's global-average-pooled
  last map [A]; the EIFEs are frozen (eval mode, no gradient) in stage 2;
- γ's progress p runs over the *expression* stage only (stage-2 steps / all stage-2 steps).

EIFE pre-training (stage 1). The paper trains two EIFEs, on RAF-DB (gender, race, age) and
Multi-PIE (identity, pose, illumination). Neither is available here, so by default
(`eife="proxy"`) one EIFE is trained *inside the same run*, for the first `eife_fraction` of
the training steps, on FERPlus itself: its heads classify photometric nuisance attributes
computed from each augmented input (global brightness, contrast and left/right lighting, each
in three bins at FERPlus terciles — the illumination part of the paper's Multi-PIE EIFE) and
a *reversed* expression head (behind a GRL) strips expression from its feature, so it keeps
what is not expression. It captures no identity, gender, race, age or pose: a weaker nuisance
signal than the paper's. Then the EIFE is frozen and the expression branch trains with EIFP.
One `occlufer train --model dfd_net` command therefore reproduces the weights.

With `eife="checkpoint"` the EIFEs are instead loaded from `eife_checkpoints` (files written by
`save_eife`: `python -m training.dfd_eife` pre-trains one on RAF-DB's manual gender / race /
age labels with Eq. 2, and recipes `paper_rafdb` / `fast_rafdb` point at it) on the first
training step, and the whole run is stage 2. Until the trainer calls `set_progress`, progress
is 0, so a bare `training_loss` call on a proxy model is a stage-1 step.

Inference (and the ONNX export) is the expression branch only: `forward` and
`logits_and_cam` never touch the EIFE/EIFP modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.losses import soft_cross_entropy
from models.preact_resnet import PreActResNet, preact_resnet18
from models.registry import register_model

#: FERPlus terciles (4,000 random training faces at 48 px, normalised to [-1, 1]) of the
#: proxy's photometric attributes; lateral is made symmetric because flips mirror it.
PROXY_BINS: dict[str, tuple[float, float]] = {
    "brightness": (-0.11, 0.12),  # mean intensity
    "contrast": (0.37, 0.47),  # intensity standard deviation
    "lateral_light": (-0.105, 0.105),  # mean(left half) - mean(right half)
}
#: RAF-DB manual attribute classes (gender male/female/unsure; race Caucasian/
#: African-American/Asian; age 0-3, 4-19, 20-39, 40-69, 70+), for attribute pre-training.
RAFDB_ATTRIBUTES: dict[str, int] = {"gender": 3, "race": 3, "age": 5}


# --------------------------------------------------------------------------- GRL and schedule
class _GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by -λ backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """GRL(x) (Eq. 9): x forward, -lam * gradient backward."""
    return _GradientReversal.apply(x, lam)


class GradientReversal(nn.Module):
    def __init__(self, lam: float = 1.0) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lam)


def gamma_schedule(p: float) -> float:
    """γ(p) = 2 / (1 + exp(-10 p)) - 1 (Eq. 11): 0 at the start, -> 1 at the end."""
    p = min(max(float(p), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0




# --------------------------------------------------------------------------- expression branch
def pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Max-pool `x` to spatial `size` with kernel = stride = ceil(in / out), ceil mode: exact
    for the sizes a PreAct ResNet produces (23->3, 12->3, 24->3, ...) and plain MaxPool in
    ONNX, unlike adaptive max-pooling of non-divisible sizes."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == tuple(size):
        return x
    kernel = (math.ceil(h / size[0]), math.ceil(w / size[1]))
    out = F.max_pool2d(x, kernel, kernel, ceil_mode=True)
    if tuple(out.shape[-2:]) != tuple(size):
        raise ValueError(f"cannot max-pool a {h}x{w} map to {tuple(size)} exactly")
    return out


class AttentionBlock(nn.Module):
    """DFD-Net's attention block (paper Fig. 2, Eqs. 4-5): fused shallow maps and the deep map
    weighted by learnable δ1, δ2 generate an element-wise mask in (0, 1) over the deep map; the
    selection h turns the masked map into a map whose global max-pool is Att_out."""

    def __init__(self, channels: int, fused_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(fused_channels, channels, 1)  # 448 -> 512 so Eq. 4 can add
        self.delta1 = nn.Parameter(torch.tensor(1.0))
        self.delta2 = nn.Parameter(torch.tensor(1.0))
        self.generator = nn.Sequential(  # g(.)
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, 1, 1), nn.Sigmoid())
        self.selector = nn.Sequential(  # h(.) up to its final max-pool
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
            nn.PReLU(channels))

    def forward(self, shallow: Sequence[torch.Tensor],
                deep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (selected map h'(Mask ⊙ f_L) (N, C, h, w), Mask (N, C, h, w))."""
        size = deep.shape[-2:]
        fused = torch.cat([pool_to(f, size) for f in shallow], dim=1)  # Eq. 3
        mask = self.generator(self.delta1 * self.project(fused) + self.delta2 * deep)  # Eq. 4
        return self.selector(mask * deep), mask


class ExpressionBranch(nn.Module):
    """EFE (PreAct ResNet-18) + attention block: image -> selected map (before the max-pool)."""

    def __init__(self, in_chans: int, width: int, small_input: bool, stem_stride: int) -> None:
        super().__init__()
        self.backbone: PreActResNet = preact_resnet18(in_chans, width, small_input, stem_stride)
        channels = self.backbone.stage_channels
        self.attention = AttentionBlock(channels[-1], sum(channels[:-1]))
        self.num_features = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *shallow, deep = self.backbone.stages(x)
        selected, _ = self.attention(shallow, deep)
        return selected


# --------------------------------------------------------------------------- EIFE and EIFP
def photometric_attributes(x: torch.Tensor) -> torch.Tensor:
    """(N, C, S, S) normalised faces -> (N, 3) int64 proxy attribute labels (brightness,
    contrast, lateral lighting), each 0/1/2 by `PROXY_BINS`. Computed from the augmented input
    itself, so flips and photometric jitter relabel consistently."""
    gray = x.detach().float().mean(dim=1)
    half = gray.shape[-1] // 2
    values = {
        "brightness": gray.mean(dim=(1, 2)),
        "contrast": gray.flatten(1).std(dim=1),
        "lateral_light": gray[:, :, :half].mean(dim=(1, 2)) - gray[:, :, -half:].mean(dim=(1, 2)),
    }
    labels = [torch.bucketize(values[k], torch.tensor(PROXY_BINS[k], device=x.device))
              for k in PROXY_BINS]
    return torch.stack(labels, dim=1)


class AttributeEncoder(nn.Module):
    """One EIFE: a shared trunk θ and one linear head θ_j per expression-irrelevant attribute
    (Eqs. 1-2). `features(x)` is d, the globally average-pooled last map. With
    `expression_classes > 0` it also carries a reversed expression head (the FERPlus proxy)."""

    def __init__(self, attributes: dict[str, int], in_chans: int = 3, width: int = 64,
                 small_input: bool = False, stem_stride: int = 1, expression_classes: int = 0,
                 grl_lambda: float = 1.0) -> None:
        super().__init__()
        self.attributes = dict(attributes)
        self.config = dict(attributes=self.attributes, in_chans=in_chans, width=width,
                           small_input=small_input, stem_stride=stem_stride,
                           expression_classes=expression_classes)
        self.trunk = preact_resnet18(in_chans, width, small_input, stem_stride)
        self.dim = self.trunk.num_features
        self.heads = nn.ModuleDict({k: nn.Linear(self.dim, n) for k, n in attributes.items()})
        self.expression_head = (nn.Linear(self.dim, expression_classes)
                                if expression_classes > 0 else None)
        self.grl = GradientReversal(grl_lambda)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).mean(dim=(2, 3))

    def attribute_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Σ_j L_cls^j (Eq. 2) for labels z (N, M) in `attributes` order; -1 = unlabelled."""
        f = self.features(x)
        return sum(F.cross_entropy(head(f), z[:, j], ignore_index=-1)
                   for j, head in enumerate(self.heads.values()))

    def proxy_loss(self, x: torch.Tensor, target: torch.Tensor,
                   smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """FERPlus proxy objective: photometric attribute CE (Eq. 2 with proxy labels) + the
        expression CE of a head behind a GRL, which the head minimises and the trunk, through
        the reversed gradient, maximises. -> (loss, expression-head logits)."""
        if self.expression_head is None:
            raise RuntimeError("proxy_loss needs an AttributeEncoder with expression_classes")
        f = self.features(x)
        z = photometric_attributes(x)
        loss = sum(F.cross_entropy(head(f), z[:, j]) for j, head in enumerate(self.heads.values()))
        logits = self.expression_head(self.grl(f))
        return loss + soft_cross_entropy(logits, target, smoothing), logits


def save_eife(encoder: AttributeEncoder, path: Path) -> Path:
    """Write an EIFE checkpoint that `DFDNet(eife="checkpoint", eife_checkpoints=[path])` loads."""
    torch.save({"kind": "dfd_eife", "config": encoder.config, "state": encoder.state_dict()},
               path)
    return Path(path)


class MutualInformationPredictor(nn.Module):
    """MI_k (Eq. 7): regresses the EIFE feature d_k from GRL(Att_out)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- the network
class DFDNet(nn.Module):
    """DFD-Net. Inference: expression branch + classifier on the global max-pool of the
    selected map. Training (`training_loss`): stage 1 (proxy EIFE, first `eife_fraction` of the
    steps) then stage 2 (CE + γ(p)·L_MI through the GRL). The trainer reports progress through
    `set_progress` (see models/__init__.py)."""

    def __init__(self, num_classes: int = 8, in_chans: int = 3, width: int = 64,
                 small_input: bool = False, stem_stride: int = 1, eifp: bool = True,
                 eife: str = "proxy", eife_fraction: float = 0.1,
                 eife_checkpoints: Sequence[str] = (),
                 eife_attributes: Sequence[dict[str, int]] | None = None,
                 eife_width: int | None = None, grl_lambda: float = 1.0) -> None:
        super().__init__()
        if eife not in ("proxy", "checkpoint"):
            raise ValueError(f"eife must be 'proxy' or 'checkpoint', not {eife!r}")
        self.num_classes, self.in_chans = num_classes, in_chans
        self.branch = ExpressionBranch(in_chans, width, small_input, stem_stride)
        self.num_features = self.branch.num_features
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.eifp, self.eife_mode, self.grl_lambda = eifp, eife, grl_lambda
        self.eife_fraction = float(eife_fraction) if eife == "proxy" and eifp else 0.0
        self.eife_checkpoints = [str(p) for p in eife_checkpoints]
        if eife == "proxy":
            eife_attributes = [{k: 3 for k in PROXY_BINS}]
        elif eife_attributes is None or len(eife_attributes) != len(self.eife_checkpoints):
            raise ValueError("eife='checkpoint' needs one eife_attributes dict per checkpoint")
        encoder_cfg = dict(in_chans=in_chans, width=eife_width or width,
                           small_input=small_input, stem_stride=stem_stride)
        self.eifes = nn.ModuleList()
        self.mips = nn.ModuleList()
        if eifp:
            for attributes in eife_attributes:
                encoder = AttributeEncoder(
                    attributes, **encoder_cfg,
                    expression_classes=num_classes if eife == "proxy" else 0,
                    grl_lambda=grl_lambda)
                self.eifes.append(encoder)
                self.mips.append(MutualInformationPredictor(
                    self.num_features, encoder.dim, max(1, self.num_features // 2)))
        self.grl = GradientReversal(grl_lambda)
        # 1 once checkpoint EIFEs are loaded; saved with the weights, so a resumed run or a
        # rebuilt checkpoint never reads the EIFE files again (and export never needs them)
        self.register_buffer("eife_ready", torch.zeros((), dtype=torch.uint8))
        self.progress = 0.0
        self.last_terms: dict[str, float] = {}

    # ---- inference (exported)
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial map: h's output before its global max-pool (N, C, h, w)."""
        return self.branch(x)

    def logits_and_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits from the global max-pool of the selected map; evidence = classifier weights
        applied at every location of that map (the CAM for a max-pooled head)."""
        features = self.forward_features(x)
        logits = self.classifier(features.amax(dim=(2, 3)))
        return logits, F.conv2d(features, self.classifier.weight[:, :, None, None])

    def attention_out(self, x: torch.Tensor) -> torch.Tensor:
        """Att_out (N, C): the vector the classifier and the EIFP both read."""
        return self.forward_features(x).amax(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.attention_out(x))

    # ---- training
    def set_progress(self, progress: float) -> None:
        """Fraction of the run's optimisation steps done, set by the trainer before each step."""
        self.progress = float(progress)

    @property
    def in_eife_stage(self) -> bool:
        return self.eifp and self.eife_mode == "proxy" and self.progress < self.eife_fraction

    def expression_progress(self) -> float:
        """p of Eq. 11, over the expression stage only."""
        if self.eife_fraction >= 1.0:
            return 1.0
        return min(1.0, max(0.0, (self.progress - self.eife_fraction)
                            / (1.0 - self.eife_fraction)))

    def load_eifes(self) -> None:
        """Load the checkpoint EIFEs (once; the flag travels with the weights)."""
        for encoder, path in zip(self.eifes, self.eife_checkpoints):
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if saved.get("kind") != "dfd_eife" or saved["config"]["attributes"] != \
                    encoder.attributes:
                raise ValueError(f"{path} is not an EIFE checkpoint for attributes "
                                 f"{encoder.attributes}")
            encoder.load_state_dict(saved["state"])
        self.eife_ready.fill_(1)

    def mi_loss(self, att: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """L_MI (Eq. 8): Σ_k SmoothL1(MI_k(GRL(Att_out)), d_k), d_k from the frozen EIFEs."""
        reversed_att = self.grl(att)
        total = att.new_zeros(())
        for encoder, mip in zip(self.eifes, self.mips):
            encoder.eval()
            with torch.no_grad():
                d = encoder.features(x)
            total = total + F.smooth_l1_loss(mip(reversed_att).float(), d.float())
        return total

    def training_loss(self, x: torch.Tensor, target: torch.Tensor,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainer's hook. Stage 1: the proxy EIFE's loss (the logits returned are its
        reversed expression head's, so the progress bar shows how much expression it still
        leaks). Stage 2: L = L_cls + γ(p)·L_MI (Eq. 10)."""
        if self.in_eife_stage:
            encoder = self.eifes[0]
            encoder.train()
            loss, logits = encoder.proxy_loss(x, target, label_smoothing)
            self.last_terms = {"stage": 1.0, "eife": float(loss.detach())}
            return loss, logits.detach()
        if self.eifp and self.eife_mode == "checkpoint" and not bool(self.eife_ready):
            self.load_eifes()
        att = self.attention_out(x)
        logits = self.classifier(att)
        loss = soft_cross_entropy(logits.float(), target, label_smoothing)
        self.last_terms = {"stage": 2.0, "cls": float(loss.detach())}
        if self.eifp and len(self.eifes):
            gamma = gamma_schedule(self.expression_progress())
            mi = self.mi_loss(att, x)
            self.last_terms.update(mi=float(mi.detach()), gamma=gamma)
            loss = loss + gamma * mi
        return loss, logits


@register_model("dfd_net")
def dfd_net(num_classes: int = 8, in_chans: int = 3, width: int = 64, small_input: bool = False,
            stem_stride: int = 1, eifp: bool = True, eife: str = "proxy",
            eife_fraction: float = 0.1, eife_checkpoints: Sequence[str] = (),
            eife_attributes: Sequence[dict[str, int]] | None = None,
            eife_width: int | None = None, grl_lambda: float = 1.0) -> DFDNet:
    """DFD-Net (seed 002): PreAct ResNet-18 + multi-level fusion + attention block, trained with
    a frozen EIFE and the GRL/MIP predictor EIFP (about 18.6 M parameters in the exported
    expression branch at width 64, 8 classes)."""
    return DFDNet(num_classes, in_chans, width, small_input, stem_stride, eifp, eife,
                  eife_fraction, eife_checkpoints, eife_attributes, eife_width, grl_lambda)
