"""occlufer's own 68-point landmark network: the student that stays right under occlusion.

FaceMesh (the teacher) was trained on unoccluded faces; under a mask or a hand its points
drift to the occluder's edges. The student sees the synthetically occluded face and is taught
the teacher's points on the *clean* face, so it learns to place hidden points from the visible
ones (and says which are hidden: one visibility logit per point).

Architecture (ours, sized for a per-face realtime stage): a plain stride-2 CNN on the 64 px
gray aligned crop (64 -> 32 -> 16 -> 8 -> 4), two 3x3 conv-BN-ReLU per stage, then the 4x4
map flattened (regression needs where features are, which a global pool would throw away),
one hidden layer, and 68 x (dx, dy, visibility). Points are predicted as offsets from the
FERPlus mean shape (`app.pipeline.priors.FERPLUS_LANDMARKS68`, the teacher's mean), so an
untrained network already outputs a face-shaped answer. Coordinates are fractions of the crop
side measured from its outer edge (pixel = u * S - 0.5), the convention of the rest of the app.
"""

from __future__ import annotations

import torch
from torch import nn

from app.pipeline.priors import FERPLUS_LANDMARKS68
from models.resnet import he_init

NUM_POINTS = 68


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class LandmarkStudent(nn.Module):
    """(N, C, S, S) normalised crops -> (N, 68, 2) fractions and (N, 68) visibility logits."""

    def __init__(self, in_chans: int = 1, img_size: int = 64, width: int = 24, hidden: int = 256) -> None:
        super().__init__()
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, not {img_size}")
        widths = (width, width * 2, width * 4, width * 4)
        stages, cin = [], in_chans
        for cout in widths:
            stages.append(_stage(cin, cout))
            cin = cout
        self.features = nn.Sequential(*stages)
        cells = (img_size // 16) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * cells, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, NUM_POINTS * 3))
        self.register_buffer("mean_shape", torch.as_tensor(FERPLUS_LANDMARKS68, dtype=torch.float32))
        he_init(self.modules())
        nn.init.zeros_(self.head[-1].weight)  # start at the mean shape, every point visible-ish
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.features(x)).view(-1, NUM_POINTS, 3)
        return self.mean_shape + out[..., :2], out[..., 2]


class LandmarkStudentExport(nn.Module):
    """The exported graph: points and visibility as probabilities."""

    def __init__(self, model: LandmarkStudent) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points, logits = self.model(x)
        return points, torch.sigmoid(logits)


__all__ = ["LandmarkStudent", "LandmarkStudentExport", "NUM_POINTS"]
