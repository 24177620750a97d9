"""Training-time augmentation of packed uint8 faces, then the app's own preprocessing.

Each sample's randomness comes from a generator seeded by (run seed, epoch, sample index)
alone, so an epoch's batches are identical whatever the worker count, thread timing or a
kill-and-resume in between: that is what makes `--resume` continue exactly.

Order matters: the synthetic occluder is drawn first, on the face as framed by the data set
(the occlusion package places occluders from FERPlus's mean landmarks), then one affine warp
applies crop/scale/rotation/flip to face and occluder together, as a camera would see them.
Camera degradations (`training.degrade`: blur, small faces, noise, JPEG, exposure) come last,
after the photometric jitter, because a camera degrades the occluder together with the face.
Resizing and normalisation are `app.pipeline.preprocess.prepare_batch`, the function the app
and evaluation use, so train and test pixels differ only by the augmentation itself.

Painting an occluder (supersampled, anti-aliased) costs ~1.6 ms, ten times the rest of a
sample's augmentation, and was the wall of CPU training once the network ran in bf16. With
`occluder_bank = K` the occluders of an epoch are painted once, K of them, each for the
FERPlus mean face with its own jitter (`OccluderBank`, seeded per slot and generation), and
every occluded face composites one of them (exposure, softness and grain matched to that
face), before the per-face warp moves face and occluder together. Each occluder lives four
epochs, a quarter of the bank repainted per epoch (`BANK_LIFE`). K = 4096 gives every
occluder ~3 faces an epoch, each under a different warp, and ~45,000 distinct occluders over
a 42-epoch run; `occluder_bank = 0` paints one per face, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from app.pipeline.preprocess import InputSpec, prepare_batch
from training.degrade import DegradeConfig, random_degradation


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
    occluder_bank: int = 0  # occluders painted per epoch and shared by its faces; 0 = per face
    degrade: DegradeConfig = field(default_factory=DegradeConfig)  # camera degradations


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample of one epoch; independent of everything else."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def affine_matrix(shape: tuple[int, int], rng: np.random.Generator,
                  cfg: AugmentConfig) -> tuple[np.ndarray, bool]:
    """The 2x3 warp for scale, rotation, translation and flip, and whether it mirrors."""
    height, width = shape
    angle = rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)
    scale = rng.uniform(*cfg.scale)
    shift = rng.uniform(-cfg.translate, cfg.translate, size=2) * (width, height)
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, scale)
    matrix[:, 2] += shift
    flipped = bool(rng.random() < cfg.flip)
    if flipped:
        # x -> (width - 1) - x applied after the warp
        matrix[0] = -matrix[0]
        matrix[0, 2] += width - 1
    return matrix, flipped


def random_affine(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One warp for scale, rotation, translation and flip; borders replicate the edge so no
    black wedges appear (a network could learn them as a cue)."""
    matrix, _ = affine_matrix(image.shape[:2], rng, cfg)
    return warp(image, matrix)


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
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


#: epochs an occluder of the bank lives; slot k is repainted when (epoch + k) % BANK_LIFE == 0
BANK_LIFE = 4


class OccluderBank:
    """The occluders of one epoch (see the module docstring). Slot k holds kind
    `kinds[k % len(kinds)]`, so the kinds stay balanced, and lives BANK_LIFE epochs, the slots
    staggered so that a quarter of the bank is repainted each epoch: its generator is that of
    (seed, k, generation) alone, so a bank is the same in every process and after a resume,
    and a process that keeps its `previous` bank paints only the new quarter."""

    def __init__(self, seed: int, epoch: int, shape: tuple[int, int], kinds: Sequence[str],
                 size: int, previous: "OccluderBank | None" = None) -> None:
        from app.occlusion.synthesis import render_occluder

        self.key = (int(seed), tuple(shape), tuple(kinds), int(size))
        old = previous.slots if previous is not None and previous.key == self.key else {}
        self.slots: dict[tuple[int, int], object] = {}
        for k in range(size):
            generation = (int(epoch) + k % BANK_LIFE) // BANK_LIFE
            item = old.get((k, generation))
            if item is None:
                item = render_occluder(tuple(shape), kinds[k % len(kinds)],
                                       np.random.default_rng([int(seed), k, generation, 65537]))
            self.slots[(k, generation)] = item
        self.items = list(self.slots.values())

    def occlude(self, image: np.ndarray, rng: np.random.Generator, p_clean: float
                ) -> tuple[np.ndarray, np.ndarray]:
        """`random_occlusion` with the occluder taken from the bank: (image, mask)."""
        from app.occlusion.synthesis import composite

        if rng.random() < p_clean:
            return image.copy(), np.zeros(image.shape[:2], np.float32)
        return composite(image, self.items[int(rng.integers(len(self.items)))], rng)


_BANKS: dict[tuple, OccluderBank] = {}


def occluder_bank(seed: int, epoch: int, shape: tuple[int, int], kinds: Sequence[str],
                  size: int) -> OccluderBank:
    """The bank of (seed, epoch) for faces of `shape`, built on first use in this process
    from the newest bank it holds; only the two newest are kept."""
    key = (int(seed), int(epoch), tuple(shape), tuple(kinds), int(size))
    if key not in _BANKS:
        previous = next(reversed(_BANKS.values())) if _BANKS else None
        while len(_BANKS) >= 2:
            _BANKS.pop(next(iter(_BANKS)))
        _BANKS[key] = OccluderBank(seed, epoch, shape, kinds, size, previous)
    return _BANKS[key]


def augment_image(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                  occlusion: bool, bank: OccluderBank | None = None) -> np.ndarray:
    """Occlude (with probability 1 - p_clean), then warp, jitter and degrade one uint8 face."""
    return augment_image_aux(image, rng, cfg, occlusion, bank=bank)[0]


def augment_image_aux(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig | None,
                      occlusion: bool, landmarks68: np.ndarray | None = None,
                      bank: OccluderBank | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`augment_image` that also returns what the warp did to the face's geometry: the
    occluder's mask (H, W) float32 (1 = hidden; zeros for a clean face) and the 68 landmarks
    (68, 2) in pixels, both moved by the same warp as the face. `landmarks68` are the face's
    own points in pixels of `image` (default: the FERPlus template, `app.pipeline.priors`).
    Draws from `rng` exactly as `augment_image` does, so both give the same image.
    `cfg=None` (evaluation) leaves the face as it is."""
    from app.pipeline.priors import template_landmarks68, warp_landmarks68

    points = (template_landmarks68(image.shape[0]) if landmarks68 is None
              else np.asarray(landmarks68, np.float64))
    mask = np.zeros(image.shape[:2], np.float32)
    if cfg is None:
        return image, mask, points
    if occlusion and bank is not None:
        image, mask = bank.occlude(image, rng, cfg.occlusion_p_clean)
    elif occlusion:
        from training.occlusion import KINDS, random_occlusion

        kinds = cfg.occlusion_kinds or KINDS
        image, mask, _ = random_occlusion(image, rng, kinds=kinds, p_clean=cfg.occlusion_p_clean)
    matrix, flipped = affine_matrix(image.shape[:2], rng, cfg)
    image, mask = warp(image, matrix), warp(mask, matrix)
    image = photometric(image, rng, cfg)
    if cfg.degrade.p > 0:
        image, _ = random_degradation(image, rng, cfg.degrade)
    return image, mask, warp_landmarks68(points, matrix, flipped)


def _bank_for(images: np.ndarray, indices: Sequence[int], epoch: int, seed: int,
              cfg: AugmentConfig | None, occlusion: bool) -> OccluderBank | None:
    if cfg is None or not occlusion or cfg.occluder_bank <= 0 or len(indices) == 0:
        return None
    from training.occlusion import KINDS

    shape = tuple(int(v) for v in images[indices[0]].shape[:2])
    return occluder_bank(seed, epoch, shape, cfg.occlusion_kinds or KINDS, cfg.occluder_bank)


#: Per-sample training extras `augment_batch(..., aux=...)` can return, for models whose
#: `training_loss` needs more than the label (recipes name them in `Recipe.aux`).
AUX_KINDS = ("occlusion", "landmarks68", "parsing")


def augment_batch(images: np.ndarray, indices: Sequence[int], epoch: int, seed: int,
                  spec: InputSpec, cfg: AugmentConfig | None, occlusion: bool,
                  aux: Sequence[str] = (), landmarks68: np.ndarray | None = None,
                  priors: Callable[[Sequence[np.ndarray], Sequence[str], int],
                                   dict[str, np.ndarray]] | None = None
                  ) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """(B, C, S, S) float32 network input for `images[indices]`; `cfg=None` means no
    augmentation (evaluation), which is exactly `prepare_batch` on the stored crops.

    With `aux` (names from AUX_KINDS) it returns `(x, extras)` as well, each extra stacked
    over the batch at the network's input size S: "occlusion" (B, S, S) float32 occluder mask
    (1 = hidden), "landmarks68" (B, 68, 2) float32 fractions of the side (pixel = u * S - 0.5),
    "parsing" (B, S, S) int64 LaPa labels drawn from those landmarks with occluded pixels as
    background (`app.pipeline.priors.render_parsing`). `landmarks68` optionally gives every
    stored image's own points (N, 68, 2) in its pixels instead of the FERPlus template.
    `priors` (`training.runtime_priors.RuntimePriors`) replaces "landmarks68" and "parsing"
    with what the app's perception networks give on each augmented crop."""
    bank = _bank_for(images, indices, epoch, seed, cfg, occlusion)
    if not aux:
        crops = [images[i] for i in indices]
        if cfg is not None:
            crops = [augment_image(crop, sample_rng(seed, epoch, i), cfg, occlusion, bank)
                     for crop, i in zip(crops, indices)]
        return prepare_batch(crops, spec)
    from app.pipeline.priors import render_parsing

    unknown = set(aux) - set(AUX_KINDS)
    if unknown:
        raise ValueError(f"unknown training extras {sorted(unknown)}; known: {AUX_KINDS}")
    crops, masks, points = [], [], []
    for i in indices:
        own = None if landmarks68 is None else landmarks68[i]
        crop, mask, pts = augment_image_aux(images[i], sample_rng(seed, epoch, i), cfg,
                                            occlusion, own, bank)
        side = crop.shape[0]
        crops.append(crop)
        masks.append(cv2.resize(mask, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR)
                     if side != spec.size else mask)
        points.append((pts + 0.5) / side)
    extras: dict[str, np.ndarray] = {}
    if "occlusion" in aux:
        extras["occlusion"] = np.stack(masks).astype(np.float32)
    if "landmarks68" in aux:
        extras["landmarks68"] = np.stack(points).astype(np.float32)
    if "parsing" in aux and priors is None:
        extras["parsing"] = np.stack([render_parsing(p * spec.size - 0.5, spec.size, m)
                                      for p, m in zip(points, masks)]).astype(np.int64)
    wanted = [k for k in ("landmarks68", "parsing") if k in aux]
    if priors is not None and wanted:
        fed = priors(crops, wanted, spec.size)
        extras.update({k: fed[k].astype(np.int64 if k == "parsing" else np.float32)
                       for k in wanted})
    return prepare_batch(crops, spec), extras
