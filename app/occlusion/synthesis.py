"""Occlude a face image with one synthetic occluder and say exactly which pixels it hides.

One entry point for every kind, so training augmentation, the fixed test sets and the app's
demo source all draw the same occluders. The returned mask is the occluder's alpha after
anti-aliasing: 1 where the face is hidden, fractions at edges and behind clear lenses, and 0
exactly wherever the output pixel is the input pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.occlusion.blocks import draw_block
from app.occlusion.face import FaceFrame, default_landmarks
from app.occlusion.glasses import draw_glasses
from app.occlusion.hands import draw_hand
from app.occlusion.masks import draw_mask
from app.occlusion.objects import draw_object
from app.occlusion.sketch import Sketch, supersampling

KINDS: tuple[str, ...] = ("masked", "sunglasses", "objects", "hands",
                          "block_upper", "block_lower", "block_left", "block_right")
#: the kinds with a fixed, published-style test set (FM/SG_RAF-DB-like, FED-RO-like)
TEST_SET_KINDS: tuple[str, ...] = ("masked", "sunglasses", "objects", "hands")
#: what `random_occlusion` reports when it left the image clean
CLEAN = "none"

Drawer = Callable[[FaceFrame, np.random.Generator, tuple[int, int]], tuple[Sketch, np.ndarray]]
_DRAWERS: dict[str, Drawer] = {
    "masked": lambda f, rng, shape: draw_mask(f, rng),
    "sunglasses": lambda f, rng, shape: draw_glasses(f, rng),
    "objects": draw_object,
    "hands": draw_hand,
    "block_upper": lambda f, rng, shape: draw_block(f, rng, shape, "upper"),
    "block_lower": lambda f, rng, shape: draw_block(f, rng, shape, "lower"),
    "block_left": lambda f, rng, shape: draw_block(f, rng, shape, "left"),
    "block_right": lambda f, rng, shape: draw_block(f, rng, shape, "right"),
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # for RGB


def synthesize(image: np.ndarray, kind: str, rng: np.random.Generator,
               landmarks5: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Occlude `image` ((H, W) gray or (H, W, 3) BGR uint8) with one occluder of `kind`.

    `landmarks5` are the detector's five points in image pixels (eye at image left, eye at
    image right, nose, mouth left, mouth right); without them the image is taken to be a
    FERPlus-framed crop and the mean FERPlus points are used with a little jitter.
    Returns the occluded image (same shape and dtype) and the float32 (H, W) mask in [0, 1].
    All randomness comes from `rng`, so a seeded generator reproduces the result exactly.
    """
    _check_image(image)
    occluder = render_occluder((int(image.shape[0]), int(image.shape[1])), kind, rng,
                               landmarks5)
    return composite(image, occluder, rng)


@dataclass(frozen=True)
class RenderedOccluder:
    """One occluder painted for a face frame, not yet laid over any face: the expensive half
    of `synthesize` (supersampled painting), which training renders once per epoch into a
    bank and composites over many faces (`training.augment.OccluderBank`)."""

    kind: str
    premult: np.ndarray  # (H, W, 3) float32 premultiplied RGB
    alpha: np.ndarray  # (H, W) float32 in [0, 1]
    frame: FaceFrame


def render_occluder(shape: tuple[int, int], kind: str, rng: np.random.Generator,
                    landmarks5: np.ndarray | None = None) -> RenderedOccluder:
    """Paint one occluder of `kind` for a face of `shape` framed by `landmarks5` (default: the
    FERPlus mean points with a little jitter, drawn from `rng` as `synthesize` does)."""
    if kind not in _DRAWERS:
        raise ValueError(f"unknown occlusion kind {kind!r}; expected one of {KINDS}")
    points = default_landmarks(shape, rng) if landmarks5 is None else landmarks5
    frame = FaceFrame.from_landmarks(points)
    sketch, matrix = _DRAWERS[kind](frame, rng, shape)
    premult, alpha = sketch.render(shape, matrix, supersampling(shape))
    return RenderedOccluder(kind, premult, alpha, frame)


def random_occlusion(image: np.ndarray, rng: np.random.Generator,
                     landmarks5: np.ndarray | None = None, kinds: Sequence[str] = KINDS,
                     p_clean: float = 0.0) -> tuple[np.ndarray, np.ndarray, str]:
    """Training augmentation: with probability `p_clean` the image unchanged with an all-zero
    mask and kind "none", otherwise one kind drawn uniformly from `kinds`."""
    _check_image(image)
    kinds = tuple(kinds)
    if not kinds and p_clean < 1.0:
        raise ValueError("random_occlusion needs at least one kind (or p_clean=1)")
    if not 0.0 <= p_clean <= 1.0:
        raise ValueError(f"p_clean must be in [0, 1], got {p_clean}")
    if rng.random() < p_clean:
        return image.copy(), np.zeros(image.shape[:2], np.float32), CLEAN
    kind = kinds[int(rng.integers(len(kinds)))]
    occluded, mask = synthesize(image, kind, rng, landmarks5)
    return occluded, mask, kind


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 numpy array, got "
                         f"{getattr(image, 'dtype', type(image).__name__)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must be (H, W) gray or (H, W, 3) BGR, got shape {image.shape}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"image of {image.shape[1]}x{image.shape[0]} px is too small to occlude")


def composite(image: np.ndarray, occluder: RenderedOccluder,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lay the occluder over the image the way a camera would have seen it: exposed like the
    face (dark photos get dark occluders), as soft as the photo, with sensor grain.

    Blur is applied to colour and alpha together and grain is scaled by alpha, so pixels the
    occluder does not touch keep their exact input values.
    """
    if occluder.alpha.shape != image.shape[:2]:
        raise ValueError(f"occluder painted for {occluder.alpha.shape}, image is "
                         f"{image.shape[:2]}")
    premult, alpha, frame = occluder.premult, occluder.alpha, occluder.frame
    shape = image.shape[:2]
    sigma = rng.uniform(0.2, 0.5) * max(1.0, max(shape) / 96)
    premult = cv2.GaussianBlur(premult, (0, 0), sigma)
    alpha = np.clip(cv2.GaussianBlur(alpha, (0, 0), sigma), 0.0, 1.0)
    alpha[alpha < 1e-4] = 0.0
    gray = image.ndim == 2
    face = frame.oval(shape)
    luma = image if gray else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    level = float(luma[face].mean()) if face.any() else float(luma.mean())
    exposure = float(np.clip((level / 125.0) ** 0.6, 0.55, 1.15) * np.exp(rng.normal(0, 0.05)))
    grain = rng.normal(0.0, rng.uniform(1.0, 3.5), shape).astype(np.float32)
    if gray:
        layer = premult @ _LUMA * exposure + grain * alpha
        out = image.astype(np.float32) * (1.0 - alpha) + layer
    else:
        layer = premult[..., ::-1] * exposure + (grain * alpha)[..., None]
        out = image.astype(np.float32) * (1.0 - alpha)[..., None] + layer
    out = np.where((alpha > 0) if gray else (alpha > 0)[..., None], out, image)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), alpha.astype(np.float32)
