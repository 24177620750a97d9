"""RetinaFace with a MobileNet-0.25 backbone, layer for layer as biubug6/Pytorch_Retinaface.

Written here (no torchvision, which does not import beside torch 2.13) so that the published
WIDER FACE checkpoint `mobilenet0.25_Final.pth` loads with strict=True: every module name below
reproduces a state-dict key of that checkpoint (`body.stage1.0.0.weight`, `fpn.output1.0.weight`,
`ssh1.conv3X3.0.weight`, `ClassHead.0.conv1x1.weight`, ...), including upstream's odd casing
(`conv7x7_3` beside `conv7X7_2`). Do not rename anything without a key-mapping step.

Input: (N, 3, H, W) float32, BGR minus (104, 117, 123), any H and W.
Output in eval mode: loc (N, A, 4), conf (N, A, 2) softmaxed, landmarks (N, A, 10), with
A = 2 * sum(ceil(H/s) * ceil(W/s) for s in (8, 16, 32)) anchors in row-major order.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: The `cfg_mnet` of upstream `data/config.py`, limited to what shapes the network and its priors.
CFG_MNET = {
    "in_channel": 32,
    "out_channel": 64,
    "return_layers": {"stage1": 1, "stage2": 2, "stage3": 3},
    "min_sizes": [[16, 32], [64, 128], [256, 512]],
    "steps": [8, 16, 32],
    "variance": [0.1, 0.2],
    "clip": False,
    "mean_bgr": (104.0, 117.0, 123.0),
}

ANCHORS_PER_CELL = 2


# ---------------------------------------------------------------------------- building blocks
def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, stride: int, leaky: float = 0.0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, stride, padding=0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, each with BN + LeakyReLU (indices 0..5 as upstream)."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 x0.25 as upstream `models/net.py` (the ImageNet classifier included, so the
    `mobilenetV1X0.25_pretrain.tar` checkpoint also loads into it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(
            conv_dw(64, 128, 2),
            *[conv_dw(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(conv_dw(128, 256, 2), conv_dw(256, 256, 1))
        self.avg = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(256, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(self.avg(x).flatten(1))


class IntermediateLayerGetter(nn.ModuleDict):
    """Keeps a backbone's children up to the last requested one and returns their outputs.

    Our stand-in for `torchvision.models._utils.IntermediateLayerGetter`: same semantics and the
    same state-dict layout (children registered under their own names, later ones dropped), so
    checkpoints saved through torchvision's class load here unchanged.
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, int | str]) -> None:
        names = [name for name, _ in model.named_children()]
        missing = set(return_layers) - set(names)
        if missing:
            raise ValueError(f"return_layers {sorted(missing)} are not children of the model")
        wanted = dict(return_layers)
        remaining = set(wanted)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for name, module in model.named_children():
            layers[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = wanted

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[str(self.return_layers[name])] = x
        return out


class FPN(nn.Module):
    """Three lateral 1x1 convs, top-down nearest upsampling to the lateral's exact size (so odd
    input sizes work), 3x3 merge convs."""

    def __init__(self, in_channels_list: list[int], out_channels: int) -> None:
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, stride=1, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, stride=1, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, stride=1, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, inputs: OrderedDict[str, torch.Tensor]) -> list[torch.Tensor]:
        c1, c2, c3 = list(inputs.values())
        output1 = self.output1(c1)
        output2 = self.output2(c2)
        output3 = self.output3(c3)
        up3 = F.interpolate(output3, size=[output2.size(2), output2.size(3)], mode="nearest")
        output2 = self.merge2(output2 + up3)
        up2 = F.interpolate(output2, size=[output1.size(2), output1.size(3)], mode="nearest")
        output1 = self.merge1(output1 + up2)
        return [output1, output2, output3]


class SSH(nn.Module):
    """Single Stage Headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches."""

    def __init__(self, in_channel: int, out_channel: int) -> None:
        super().__init__()
        if out_channel % 4:
            raise ValueError("SSH out_channel must be divisible by 4")
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2, stride=1)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, stride=1, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, stride=1, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv3x3 = self.conv3X3(x)
        conv5x5_1 = self.conv5X5_1(x)
        conv5x5 = self.conv5X5_2(conv5x5_1)
        conv7x7 = self.conv7x7_3(self.conv7X7_2(conv5x5_1))
        return F.relu(torch.cat([conv3x3, conv5x5, conv7x7], dim=1))


class _Head(nn.Module):
    """A 1x1 conv predicting `width` numbers per anchor, flattened to (N, H*W*anchors, width)."""

    width = 0

    def __init__(self, inchannels: int = 64, num_anchors: int = ANCHORS_PER_CELL) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(inchannels, num_anchors * self.width, kernel_size=1, stride=1,
                                 padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.width)


class ClassHead(_Head):
    width = 2


class BboxHead(_Head):
    width = 4


class LandmarkHead(_Head):
    width = 10


class RetinaFace(nn.Module):
    """The detector. `forward` returns (loc, conf, landmarks); conf is softmaxed in eval mode and
    raw logits in training mode (what upstream's `phase='train'` did)."""

    def __init__(self, cfg: dict | None = None) -> None:
        super().__init__()
        cfg = cfg or CFG_MNET
        self.cfg = cfg
        self.body = IntermediateLayerGetter(MobileNetV1(), cfg["return_layers"])
        c = cfg["in_channel"]
        out_channels = cfg["out_channel"]
        self.fpn = FPN([c * 2, c * 4, c * 8], out_channels)
        self.ssh1 = SSH(out_channels, out_channels)
        self.ssh2 = SSH(out_channels, out_channels)
        self.ssh3 = SSH(out_channels, out_channels)
        self.ClassHead = nn.ModuleList([ClassHead(out_channels) for _ in range(3)])
        self.BboxHead = nn.ModuleList([BboxHead(out_channels) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([LandmarkHead(out_channels) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.fpn(self.body(x))
        features = [self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2])]
        loc = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        conf = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        if not self.training:
            conf = F.softmax(conf, dim=-1)
        return loc, conf, landmarks


def load_retinaface(pth_path: Path | str) -> RetinaFace:
    """Build RetinaFace-MobileNet-0.25 and load a checkpoint strictly, in eval mode on CPU.

    Checkpoints saved from `nn.DataParallel` carry a `module.` prefix on every key; it is
    stripped. strict=True makes any architectural drift from upstream fail loudly here rather
    than silently degrade detections.
    """
    state = torch.load(Path(pth_path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    model = RetinaFace()
    model.load_state_dict(state, strict=True)
    return model.eval()
