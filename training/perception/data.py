"""Training and evaluation samples for the occlusion + parsing network.

A sample starts from a clean FERPlus face (48 px gray) and its parsing target (rasterised
from the FaceMesh teacher on that clean face, `targets.py`), and goes through:

1. synthetic occlusion at the data's native 48 px (`app.occlusion.random_occlusion`: all
   eight kinds, and a share of faces left clean so false positives are trained against);
   the occluder's alpha is the occlusion target;
2. upscaling of image and alpha to the network size (bilinear, as `prepare_batch` upscales);
3. training only: a horizontal flip (left/right classes swapped), a small similarity jitter
   (the live alignment is never exact) and a brightness/contrast change;
4. the parsing target with every pixel whose alpha is >= 0.5 relabelled `occluder`.

Every random choice comes from a generator seeded by (seed, epoch, image index), so any batch
can be rebuilt exactly, in any order or process (resume gives identical weights).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from app.occlusion import KINDS, random_occlusion, synthesize
from models.perception import FLIP_PERMUTATION
from training.perception.targets import stamp_occluder

FLIP_LUT = np.asarray(FLIP_PERMUTATION, np.uint8)


@dataclass(frozen=True)
class AugmentSpec:
    """Occlusion and geometry augmentation of the training samples."""

    p_clean: float = 0.3  # share of training faces left unoccluded (false-positive negatives)
    kinds: tuple[str, ...] = KINDS
    flip: bool = True
    rotate_deg: float = 8.0  # std of the jitter (normal, clipped at 2 std)
    scale: float = 0.05
    shift: float = 0.03  # fraction of the side
    contrast: tuple[float, float] = (0.75, 1.3)
    brightness: float = 18.0  # +- grey levels


@dataclass
class FaceSet:
    """Clean faces and their parsing targets, as the trainer and the evaluation use them."""

    images: np.ndarray  # (N, 48, 48) uint8 gray, FERPlus framing
    parsing: np.ndarray  # (N, S, S) uint8 clean parsing targets at the network size
    names: list[str]
    source: str
    dropped: int = 0  # faces left out because the teacher did not find a face
    presence: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.names)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index), 6151])


def named_rng(seed: int, tag: str, name: str) -> np.random.Generator:
    """A generator from (seed, tag, image name) alone (fixed validation occluders)."""
    digest = hashlib.sha256(f"{tag}/{name}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:8], "little")])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size:
        return image
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def jitter_matrix(rng: np.random.Generator, size: int, spec: AugmentSpec) -> np.ndarray:
    angle = float(np.clip(rng.normal(0, spec.rotate_deg), -2 * spec.rotate_deg, 2 * spec.rotate_deg))
    scale = float(np.exp(np.clip(rng.normal(0, spec.scale), -2 * spec.scale, 2 * spec.scale)))
    shift = np.clip(rng.normal(0, spec.shift, 2), -2 * spec.shift, 2 * spec.shift) * size
    centre = (size / 2 - 0.5, size / 2 - 0.5)
    matrix = cv2.getRotationMatrix2D(centre, angle, scale)
    matrix[:, 2] += shift
    return matrix


def photometric(img: np.ndarray, rng: np.random.Generator, spec: AugmentSpec) -> np.ndarray:
    """A random contrast change about the image mean, then a brightness shift (uint8)."""
    gain = rng.uniform(*spec.contrast)
    bias = rng.uniform(-spec.brightness, spec.brightness)
    mean = float(img.mean())
    return np.clip((img.astype(np.float32) - mean) * gain + mean + bias, 0, 255).astype(np.uint8)


def make_sample(image: np.ndarray, parsing: np.ndarray, rng: np.random.Generator,
                spec: AugmentSpec | None, size: int, occlusion_kind: str | None = None,
                augment: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One (image (S, S) uint8, alpha (S, S) float32, labels (S, S) uint8, kind) sample.

    The occluder is drawn from `spec` (kinds, p_clean), or is `occlusion_kind` when given
    ("none" for a clean face); flip/jitter/photometric changes only when `augment` and `spec`.
    """
    if occlusion_kind == "none":
        occluded, mask, kind = image, np.zeros(image.shape[:2], np.float32), "none"
    elif occlusion_kind is not None:
        occluded, mask = synthesize(image, occlusion_kind, rng)
        kind = occlusion_kind
    else:
        p_clean = spec.p_clean if spec is not None else 0.3
        kinds = spec.kinds if spec is not None else KINDS
        occluded, mask, kind = random_occlusion(image, rng, kinds=kinds, p_clean=p_clean)
    img = _resize(occluded, size)
    alpha = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR) if mask.shape[0] != size else mask
    labels = parsing
    if augment and spec is not None:
        if spec.flip and rng.random() < 0.5:
            img, alpha, labels = img[:, ::-1], alpha[:, ::-1], FLIP_LUT[labels[:, ::-1]]
        matrix = jitter_matrix(rng, size, spec)
        img = cv2.warpAffine(np.ascontiguousarray(img), matrix, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(np.ascontiguousarray(alpha), matrix, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
        labels = cv2.warpAffine(np.ascontiguousarray(labels), matrix, (size, size),
                                flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        img = photometric(img, rng, spec)
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    return np.ascontiguousarray(img), alpha, stamp_occluder(labels, alpha), kind


def make_batch(faces: FaceSet, indices: Sequence[int], epoch: int, seed: int,
               spec: AugmentSpec | None, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 1, S, S) float32 inputs ((x - 127.5) / 127.5), (B, 1, S, S) alpha, (B, S, S) int64."""
    xs = np.empty((len(indices), 1, size, size), np.float32)
    alphas = np.empty((len(indices), 1, size, size), np.float32)
    labels = np.empty((len(indices), size, size), np.int64)
    for j, i in enumerate(indices):
        img, alpha, lab, _ = make_sample(faces.images[i], faces.parsing[i], sample_rng(seed, epoch, i),
                                         spec, size)
        xs[j, 0] = (img.astype(np.float32) - 127.5) / 127.5
        alphas[j, 0], labels[j] = alpha, lab
    return xs, alphas, labels


def fixed_occluded(faces: FaceSet, seed: int, tag: str, size: int, p_clean: float = 0.3,
                   kind: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A fixed occluded copy of `faces` (validation): uint8 images (N, S, S), alpha, labels, kinds."""
    images, alphas, labels, kinds = [], [], [], []
    spec = AugmentSpec(p_clean=p_clean)
    for i, name in enumerate(faces.names):
        rng = named_rng(seed, tag, name)
        img, alpha, lab, k = make_sample(faces.images[i], faces.parsing[i], rng, spec if kind is None
                                         else None, size, kind, augment=False)
        images.append(img)
        alphas.append(alpha)
        labels.append(lab)
        kinds.append(k)
    return np.stack(images), np.stack(alphas), np.stack(labels), kinds


def read_stored_set(kind_root: Path, names: Sequence[str], split_folder: str = "FER2013Test"
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """Images (N, 48, 48) and alphas (N, 48, 48) of a fixed occluded test set written by
    `training.occlusion.write_test_sets`, or None when any file is missing."""
    images, masks = [], []
    for name in names:
        image = cv2.imread(str(kind_root / split_folder / name), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(kind_root / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None or mask is None:
            return None
        images.append(image)
        masks.append(mask.astype(np.float32) / 255.0)
    return np.stack(images), np.stack(masks)


__all__ = ["AugmentSpec", "FaceSet", "make_sample", "make_batch", "fixed_occluded",
           "read_stored_set", "sample_rng", "named_rng"]
