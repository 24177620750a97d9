"""Camera degradations: what a poor webcam does to a face before occlufer ever sees it.

A webcam face differs from a FERPlus crop in ways the network must not care about: a lens out
of focus or a moving head (defocus and motion blur), a face far from the camera (few pixels,
then upsampled by alignment: "small"), heavy compression (JPEG blocks and ringing), sensor
noise, and a dark room (under-exposure with crushed shadows, or a blown-out window). Each is
one small function on a uint8 gray or BGR image, applied in the order a camera applies them:

    exposure (the scene)  ->  defocus / motion (the optics)  ->  small (the sampling)
    ->  noise (the sensor, amplified in the dark)  ->  jpeg (the encoder)

Two parameter ranges exist on purpose. `TRAIN_RANGES` are wide (from barely visible to
severe) so the network learns invariance rather than one look; `TEST_RANGES`, used only by
the fixed degraded test sets, sit inside them at moderate-to-heavy strength and are drawn with
other seeds. Neither was tuned on a test score; occlufer is also judged on degradations drawn
by code it never sees, so breadth matters more than matching our own test generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

#: every degradation, in the order a camera applies them
KINDS: tuple[str, ...] = ("exposure", "defocus", "motion", "small", "noise", "jpeg")


@dataclass(frozen=True)
class Ranges:
    """Strength ranges of each degradation, for a face of `reference_side` pixels (FERPlus:
    48); kernel sizes scale with the image so a 112-px face is blurred as much as a 48-px one
    relative to its size."""

    reference_side: int = 48
    defocus_radius: tuple[float, float] = (0.7, 2.6)  # disk radius in px
    motion_length: tuple[float, float] = (2.0, 9.0)  # streak length in px
    small_side: tuple[int, int] = (10, 34)  # the face is seen at this many px, then upsampled
    noise_sigma: tuple[float, float] = (2.0, 20.0)  # Gaussian read noise, of 255
    noise_shot: tuple[float, float] = (0.0, 1.2)  # signal-dependent (shot) noise gain
    noise_blur_p: float = 0.5  # share of noise softened by demosaicing
    jpeg_quality: tuple[int, int] = (6, 55)
    dark_gain: tuple[float, float] = (0.18, 0.75)  # under-exposure: scene light x gain
    dark_gamma: tuple[float, float] = (1.0, 2.2)  # crushed shadows (> 1 darkens mid-tones)
    bright_gain: tuple[float, float] = (1.25, 1.9)  # over-exposure (a window behind the user)
    p_bright: float = 0.25  # share of exposure changes that over- rather than under-expose


TRAIN_RANGES = Ranges()
#: the fixed test sets: moderate-to-heavy, strictly inside the training ranges
TEST_RANGES = Ranges(defocus_radius=(1.4, 2.4), motion_length=(4.0, 8.0), small_side=(12, 22),
                     noise_sigma=(8.0, 16.0), noise_shot=(0.3, 1.0), jpeg_quality=(8, 20),
                     dark_gain=(0.3, 0.6), dark_gamma=(1.0, 1.5), bright_gain=(1.3, 1.6),
                     p_bright=0.0)


@dataclass(frozen=True)
class DegradeConfig:
    """Training augmentation: with probability `p` a face gets between 1 and `max_ops`
    degradations, each kind equally likely; `p = 0` switches it off."""

    p: float = 0.0
    max_ops: int = 3
    kinds: tuple[str, ...] = field(default=KINDS)
    ranges: Ranges = TRAIN_RANGES


def _scale(image: np.ndarray, ranges: Ranges) -> float:
    return max(image.shape[:2]) / ranges.reference_side


def _float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32)


def _uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def exposure(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
             ) -> np.ndarray:
    """Too little light (gain < 1 and a gamma that crushes shadows) or too much (gain > 1,
    highlights clipped), applied to linear-ish intensities as a sensor would see them."""
    x = _float(image) / 255.0
    if rng.random() < ranges.p_bright:
        return _uint8(np.clip(x * rng.uniform(*ranges.bright_gain), 0, 1) * 255.0)
    gain, gamma = rng.uniform(*ranges.dark_gain), rng.uniform(*ranges.dark_gamma)
    return _uint8(np.power(x * gain, gamma) * 255.0)


def defocus(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
            ) -> np.ndarray:
    """An out-of-focus lens: convolution with a disk (a pillbox), not a Gaussian, which is
    what defocus physically is and what a Gaussian-only augmentation never shows."""
    radius = rng.uniform(*ranges.defocus_radius) * _scale(image, ranges)
    size = 2 * int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[:size, :size] - size // 2
    # anti-aliased disk: coverage falls off over one pixel at the rim
    kernel = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    kernel /= kernel.sum()
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)


def motion(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
           ) -> np.ndarray:
    """A head or camera moving during the exposure: a line kernel of random length and angle."""
    length = rng.uniform(*ranges.motion_length) * _scale(image, ranges)
    size = 2 * int(np.ceil(length / 2)) + 1
    kernel = np.zeros((size * 4, size * 4), np.float32)  # drawn at 4x, then averaged down
    angle = rng.uniform(0.0, np.pi)
    centre = size * 2.0
    dx, dy = np.cos(angle) * length * 2.0, np.sin(angle) * length * 2.0
    cv2.line(kernel, (int(round(centre - dx)), int(round(centre - dy))),
             (int(round(centre + dx)), int(round(centre + dy))), 1.0, thickness=4,
             lineType=cv2.LINE_AA)
    kernel = cv2.resize(kernel, (size, size), interpolation=cv2.INTER_AREA)
    kernel /= max(float(kernel.sum()), 1e-6)
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)


_DOWN = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_NEAREST)
_UP = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_NEAREST)


def small(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
          ) -> np.ndarray:
    """A face far from the camera: seen at `small_side` pixels (by a camera's binning or a
    cheap scaler), then brought back to the network's size as alignment does."""
    height, width = image.shape[:2]
    side = int(rng.integers(ranges.small_side[0], ranges.small_side[1] + 1))
    factor = min(1.0, side / max(height, width))
    low = (max(4, int(round(width * factor))), max(4, int(round(height * factor))))
    down = cv2.resize(image, low, interpolation=_DOWN[int(rng.integers(len(_DOWN)))])
    return cv2.resize(down, (width, height), interpolation=_UP[int(rng.integers(len(_UP)))])


def noise(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
          ) -> np.ndarray:
    """Sensor noise: Gaussian read noise plus shot noise that grows with the signal (its
    variance is proportional to intensity), per channel for colour, optionally blurred a
    little by the camera's demosaicing."""
    x = _float(image)
    sigma = rng.uniform(*ranges.noise_sigma)
    shot = rng.uniform(*ranges.noise_shot)
    std = np.sqrt(sigma ** 2 + shot * np.maximum(x, 0.0))
    grain = rng.standard_normal(x.shape).astype(np.float32) * std
    if rng.random() < ranges.noise_blur_p:
        grain = cv2.GaussianBlur(grain, (0, 0), rng.uniform(0.4, 0.9))
    return _uint8(x + grain)


def jpeg(image: np.ndarray, rng: np.random.Generator, ranges: Ranges = TRAIN_RANGES
         ) -> np.ndarray:
    """Heavy compression, as a webcam stream or a video call encodes it."""
    quality = int(rng.integers(ranges.jpeg_quality[0], ranges.jpeg_quality[1] + 1))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 gray/BGR
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    flag = cv2.IMREAD_GRAYSCALE if image.ndim == 2 else cv2.IMREAD_COLOR
    return cv2.imdecode(data, flag)


DEGRADERS = {"exposure": exposure, "defocus": defocus, "motion": motion, "small": small,
             "noise": noise, "jpeg": jpeg}


def apply(image: np.ndarray, kinds: Sequence[str], rng: np.random.Generator,
          ranges: Ranges = TRAIN_RANGES) -> np.ndarray:
    """Apply `kinds` to `image` in camera order (whatever order they are given in)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown degradations {sorted(unknown)}; known: {KINDS}")
    for kind in KINDS:
        if kind in kinds:
            image = DEGRADERS[kind](image, rng, ranges)
    return image


def random_degradation(image: np.ndarray, rng: np.random.Generator, cfg: DegradeConfig
                       ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Training augmentation: the degraded face and the kinds applied (() = left as it was)."""
    if cfg.p <= 0 or rng.random() >= cfg.p:
        return image, ()
    count = int(rng.integers(1, max(1, min(cfg.max_ops, len(cfg.kinds))) + 1))
    chosen = tuple(str(k) for k in rng.choice(np.array(cfg.kinds), size=count, replace=False))
    return apply(image, chosen, rng, cfg.ranges), chosen


#: The fixed degraded FERPlus test sets (`training.occlusion.testsets`): one per family the
#: accuracy issue names, and `degraded`, where every face gets two or three of them at once.
TEST_SETS: dict[str, tuple[str, ...]] = {
    "blur": ("defocus", "motion"),  # one of the two per image
    "small": ("small",),
    "jpeg": ("jpeg",),
    "noise": ("noise",),
    "lowlight": ("exposure",),
    "degraded": KINDS,  # two or three of all six per image
}


def degrade_for_test_set(image: np.ndarray, set_name: str, rng: np.random.Generator
                         ) -> np.ndarray:
    """One image of the fixed test set `set_name` (a key of TEST_SETS), at TEST_RANGES."""
    family = TEST_SETS[set_name]
    if set_name == "degraded":
        count = int(rng.integers(2, 4))
        kinds = tuple(str(k) for k in rng.choice(np.array(family), size=count, replace=False))
    else:
        kinds = (family[int(rng.integers(len(family)))],)
    return apply(image, kinds, rng, TEST_RANGES)
