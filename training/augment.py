"""Training-time augmentation of packed uint8 faces, then the app's own preprocessing.

Each sample's randomness comes from a generator seeded by (run seed, epoch, sample index)
alone, so an epoch's batches are identical whatever the worker count, thread timing or a
kill-and-resume in between: that is what makes `--resume` continue exactly.

Order matters: the synthetic occluder is drawn first, on the face as framed by the data set
(the occlusion package places occluders from FERPlus's mean landmarks), then one affine warp
applies crop/scale/rotation/flip to face and occluder together, as a camera would see them.
Resizing and normalisation are `app.pipeline.preprocess.prepare_batch`, the function the app
and evaluation use, so train and test pixels differ only by the augmentation itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from app.pipeline.preprocess import InputSpec, prepare_batch


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all relative to the image side unless stated)."""

    flip: float = 0.5  # probability of a horizontal flip
    rotate_deg: float = 10.0  # uniform in [-rotate_deg, rotate_deg]
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range
    translate: float = 0.08  # shift up to this fraction of the side, each axis
    brightness: float = 0.2  # additive, fraction of 255
    contrast: float = 0.2  # multiplicative, 1 +- contrast
    occlusion_p_clean: float = 0.5  # with occlusion on: probability of leaving a face clean
    occlusion_kinds: tuple[str, ...] = field(default=())  # () means every kind the package has


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch; independent of everything else."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def random_affine(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One warp for scale, rotation, translation and flip; borders replicate the edge so no
    black wedges appear (a network could learn them as a cue)."""
    height, width = image.shape[:2]
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(*cfg.scale)
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * (width, height)
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, scale)
    matrix[:, 2] += shift
    if rng.random() < cfg.flip:
        # x -> (width - 1) - x applied after the warp
        matrix[0] = -matrix[0]
        matrix[0, 2] += width - 1
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def photometric(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness and contrast jitter around the image mean, on uint8."""
    if cfg.brightness <= 0 and cfg.contrast <= 0:
        return image
    alpha = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    beta = rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    mean = float(image.mean())
    out = (image.astype(np.float32) - mean) * alpha + mean + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def augment_image(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                  occlusion: bool) -> np.ndarray:
    """Occlude (with probability 1 - p_clean), then warp and jitter one uint8 face."""
    if occlusion:
        from training.occlusion import KINDS, random_occlusion

        kinds = cfg.occlusion_kinds or KINDS
        image, _, _ = random_occlusion(image, rng, kinds=kinds, p_clean=cfg.occlusion_p_clean)
    image = random_affine(image, rng, cfg)
    return photometric(image, rng, cfg)


def augment_batch(images: np.ndarray, indices: Sequence[int], epoch: int, seed: int,
                  spec: InputSpec, cfg: AugmentConfig | None, occlusion: bool) -> np.ndarray:
    """(B, C, S, S) float32 network input for `images[indices]`; `cfg=None` means no
    augmentation (evaluation), which is exactly `prepare_batch` on the stored crops."""
    crops = [images[i] for i in indices]
    if cfg is not None:
        crops = [augment_image(crop, sample_rng(seed, epoch, i), cfg, occlusion)
                 for crop, i in zip(crops, indices)]
    return prepare_batch(crops, spec)
