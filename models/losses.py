"""Losses shared by the networks and the trainer (training imports models, never the reverse)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy on class indices (N,) or on a label distribution (N, C), the
    FERPlus probability / cross-entropy label modes; label smoothing mixes in the uniform
    distribution in both cases, as `F.cross_entropy` does for indices."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    soft = target * (1.0 - label_smoothing) + label_smoothing / target.shape[1]
    return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
