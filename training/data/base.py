"""Plain records shared by the readers.

A reader only *indexes* a split (parses labels, lists where each image comes from); the
shared loader decodes, resizes and caches. Keeping decoding out of the readers means every
dataset gets the same resize, colour handling, progress bar and cache for free, and a
reader can be tested on its label logic without touching pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from app.errors import DatasetError

COLORS = ("native", "gray", "bgr")


@dataclass
class LabeledImages:
    """One split of one dataset, decoded and packed: what training and evaluation consume."""

    images: np.ndarray  # (N, H, W) uint8 gray or (N, H, W, 3) uint8 BGR, all one size
    labels: np.ndarray  # (N,) int64 index into `classes` (the hard label; majority for FERPlus)
    soft_labels: np.ndarray | None  # (N, C) float32 target distribution, or None
    names: list[str]  # file names / ids, for reports
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)


class ImageSource(Protocol):
    """Where one image comes from; `read` returns uint8 gray (H, W) or BGR (H, W, 3) at any size."""

    def read(self, gray: bool) -> np.ndarray: ...

    def describe(self) -> str: ...


@dataclass(frozen=True)
class FileImage:
    """An image file, optionally cropped to a face box (x, y, w, h) in its own pixels."""

    path: Path
    box: tuple[int, int, int, int] | None = None

    def read(self, gray: bool) -> np.ndarray:
        # np.fromfile + imdecode instead of imread: imread fails silently on non-ASCII paths.
        try:
            data = np.fromfile(self.path, dtype=np.uint8)
        except OSError as exc:
            raise DatasetError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot decode {self.path} (not an image or truncated)")
        return crop_box(image, self.box) if self.box is not None else image

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PixelImage:
    """A square gray image stored as space-separated pixel values (the fer2013.csv format)."""

    pixels: str
    origin: str  # e.g. "fer2013.csv row 17", for error messages
    side: int = 48

    def read(self, gray: bool) -> np.ndarray:
        values = np.array(self.pixels.split(), dtype=np.int64) if self.pixels.strip() else np.empty(0)
        if values.size != self.side * self.side or values.min() < 0 or values.max() > 255:
            raise DatasetError(
                f"{self.origin}: expected {self.side * self.side} pixel values in 0..255, "
                f"got {values.size}"
            )
        image = values.astype(np.uint8).reshape(self.side, self.side)
        return image if gray else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)

    def describe(self) -> str:
        return self.origin


def crop_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Crop (x, y, w, h) clamped to the image; a box that leaves nothing keeps the whole image.

    Annotated boxes sometimes reach past the border (AffectNet does); clamping keeps the
    visible part of the face rather than dropping a labelled sample.
    """
    x, y, w, h = box
    height, width = image.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        return image
    return image[y0:y1, x0:x1]


@dataclass
class SplitIndex:
    """A split before decoding: image sources and their labels, in the order they are returned."""

    sources: list[ImageSource]
    labels: np.ndarray  # (N,) int64
    soft_labels: np.ndarray | None  # (N, C) float32
    names: list[str]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class DatasetReader:
    """What the loader needs to know about one dataset format."""

    name: str
    layout: str  # shown in every DatasetError for this dataset, and in the docs
    splits: Mapping[str, str]  # accepted spelling -> canonical split name
    label_modes: tuple[str, ...]
    default_size: int
    native_color: str  # "gray" or "bgr"
    # Files whose (mtime, size) key the cache; raises DatasetError when the layout is missing.
    key_files: Callable[[Path, str], Sequence[Path]]
    # Parses the labels of one split (canonical split name, label mode) without decoding pixels.
    index: Callable[[Path, str, str], SplitIndex]


def layout_error(layout: str, problem: str) -> DatasetError:
    """A DatasetError whose message states the problem, then the layout that was expected."""
    return DatasetError(f"{problem}\nExpected layout:\n{layout}")
