"""`load_split`: one entry point for every dataset format, with the packed cache in front."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.errors import DatasetError
from training.data import affectnet, fer2013, ferplus, folder, rafdb, sfew
from training.data.base import COLORS, DatasetReader, LabeledImages, layout_error
from training.data.cache import cache_path, default_cache_dir, read_cache, write_cache
from training.data.decode import decode_all

READERS: dict[str, DatasetReader] = {
    reader.name: reader
    for reader in (ferplus.READER, rafdb.READER, fer2013.READER, affectnet.READER,
                   sfew.READER, folder.READER)
}


def dataset_names() -> list[str]:
    """The dataset formats `load_split` reads."""
    return list(READERS)


def get_reader(dataset: str) -> DatasetReader:
    try:
        return READERS[dataset.lower()]
    except KeyError:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {', '.join(READERS)}") from None


def load_split(dataset: str, root: Path, split: str = "test", label_mode: str = "majority",
               cache_dir: Path | None = None, size: int | None = None, *,
               color: str = "native", use_cache: bool = True,
               progress: bool = True) -> LabeledImages:
    """Load one split as packed uint8 images and labels, from the cache when it is current.

    `size` defaults to the dataset's native size (48 for FERPlus/FER2013, else 100);
    `color` is "native" (gray for FERPlus/FER2013, BGR otherwise), "gray" or "bgr".
    Any problem with the files on disk raises DatasetError showing the expected layout.
    """
    reader = get_reader(dataset)
    root = Path(root).expanduser()
    canonical_split = reader.splits.get(split.lower())
    if canonical_split is None:
        raise layout_error(reader.layout, f"{reader.name} has no split {split!r}; "
                                          f"use one of {', '.join(sorted(set(reader.splits)))}")
    if label_mode not in reader.label_modes:
        raise DatasetError(f"{reader.name} supports label modes {', '.join(reader.label_modes)}, "
                           f"not {label_mode!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {COLORS}, not {color!r}")
    size = reader.default_size if size is None else int(size)
    if size <= 0:
        raise ValueError(f"size must be positive, not {size}")
    gray = (reader.native_color if color == "native" else color) == "gray"

    key_files = reader.key_files(root, canonical_split)  # raises DatasetError on a missing layout
    cached_at = None
    if use_cache:
        cached_at = cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), reader.name,
                               root, canonical_split, label_mode, size, color, key_files)
        cached = read_cache(cached_at)
        if cached is not None:
            return cached

    index = reader.index(root, canonical_split, label_mode)
    if not index.sources:
        raise layout_error(reader.layout,
                           f"{reader.name} split {canonical_split!r} under {root} has no images")
    images = decode_all(index.sources, size, gray, reader.layout,
                        f"decoding {reader.name} {canonical_split}", progress=progress)
    data = LabeledImages(
        images=images,
        labels=np.asarray(index.labels, dtype=np.int64),
        soft_labels=None if index.soft_labels is None
        else np.asarray(index.soft_labels, dtype=np.float32),
        names=list(index.names),
        classes=tuple(index.classes),
    )
    if cached_at is not None:
        write_cache(cached_at, data)
    return data
