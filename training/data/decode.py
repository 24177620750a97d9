"""Decode a split's images into one packed uint8 array of a single size and colour.

Decoding runs on a small thread pool: OpenCV's decoders release the GIL, and on the
100k-image datasets this is the slow part of a first load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from app.errors import DatasetError
from training.data.base import ImageSource, layout_error

_CHUNK = 256
_SHOWN_FAILURES = 5


def to_size(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to size x size: area averaging when shrinking (no aliasing), bilinear when growing."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    shrinking = height * width > size * size
    return cv2.resize(image, (size, size),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def decode_all(sources: Sequence[ImageSource], size: int, gray: bool, layout: str,
               description: str, progress: bool = True) -> np.ndarray:
    """All images as (N, size, size) gray or (N, size, size, 3) BGR uint8.

    Every unreadable image is collected first, so one error lists them all instead of
    making the user fix them one per run.
    """
    shape = (len(sources), size, size) if gray else (len(sources), size, size, 3)
    out = np.empty(shape, dtype=np.uint8)
    failures: list[str] = []

    def decode_chunk(start: int) -> int:
        for i in range(start, min(start + _CHUNK, len(sources))):
            try:
                out[i] = to_size(sources[i].read(gray), size)
            except DatasetError as exc:
                failures.append(str(exc))
        return min(_CHUNK, len(sources) - start)

    workers = max(1, min(8, os.cpu_count() or 1))
    with tqdm(total=len(sources), desc=description, unit="img", disable=not progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for done in pool.map(decode_chunk, range(0, len(sources), _CHUNK)):
            bar.update(done)
    if failures:
        shown = "\n  ".join(sorted(failures)[:_SHOWN_FAILURES])
        raise layout_error(layout, f"{len(failures)} of {len(sources)} images could not be "
                                   f"read, e.g.:\n  {shown}")
    return out
