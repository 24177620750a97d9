"""Turning an aligned face crop into a network input, defined once.

Training evaluation imports this module, so what is scored offline is exactly what runs live.
The input spec comes from the model's manifest entry (`input`), never from code constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

ColorMode = Literal["gray", "bgr", "rgb"]


@dataclass(frozen=True)
class InputSpec:
    """How a network wants its pixels: square size, colour mode, per-channel mean/std on 0..255."""

    size: int
    color: ColorMode = "gray"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    channels: int = 3  # gray is replicated to 3 channels unless the network takes 1

    @classmethod
    def from_manifest(cls, spec: dict) -> "InputSpec":
        return cls(
            size=int(spec["size"]),
            color=spec.get("color", "gray"),
            mean=tuple(spec.get("mean", (127.5,) * 3)),
            std=tuple(spec.get("std", (127.5,) * 3)),
            channels=int(spec.get("channels", 3)),
        )

    def to_manifest(self) -> dict:
        return {"size": self.size, "color": self.color, "mean": list(self.mean),
                "std": list(self.std), "channels": self.channels, "layout": "NCHW"}


def to_color_mode(image: np.ndarray, color: ColorMode) -> np.ndarray:
    """Convert a gray (H, W), BGR (H, W, 3) or BGRA (H, W, 4) uint8 image to `color`."""
    if image.ndim == 2:
        gray = image
        if color == "gray":
            return gray
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR if color == "bgr" else cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if color == "gray":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image if color == "bgr" else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare_batch(crops: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Crops (any size, gray/BGR/BGRA uint8) -> (N, C, S, S) float32 normalised as `spec` says."""
    out = np.empty((len(crops), spec.channels, spec.size, spec.size), dtype=np.float32)
    mean = np.asarray(spec.mean[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
    inv_std = 1.0 / np.asarray(spec.std[: spec.channels], dtype=np.float32).reshape(-1, 1, 1)
    for i, crop in enumerate(crops):
        img = to_color_mode(crop, spec.color)
        if img.shape[0] != spec.size or img.shape[1] != spec.size:
            interp = cv2.INTER_AREA if img.shape[0] > spec.size else cv2.INTER_LINEAR
            img = cv2.resize(img, (spec.size, spec.size), interpolation=interp)
        chw = img[None, :, :] if img.ndim == 2 else img.transpose(2, 0, 1)
        if chw.shape[0] == 1 and spec.channels == 3:
            chw = np.repeat(chw, 3, axis=0)
        out[i] = (chw.astype(np.float32) - mean) * inv_std
    return out
