"""Packed `.npz` cache of decoded splits, so a second load is a file read, not 30k decodes.

The key covers everything that changes the arrays: dataset, absolute root, split, label
mode, size, colour, the stats (mtime + size) of the files that hold the labels, and a
format version. A changed label file therefore misses the cache instead of serving stale
labels. Files are written to a temporary name and renamed, so a crash or a concurrent
loader never leaves a half-written cache that a later load would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data.base import LabeledImages

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """$OCCLUFER_CACHE, else $OCCLUFER_HOME/datasets, else ~/.cache/occlufer/datasets (XDG)."""
    if os.environ.get("OCCLUFER_CACHE"):
        return Path(os.environ["OCCLUFER_CACHE"])
    if os.environ.get("OCCLUFER_HOME"):
        return Path(os.environ["OCCLUFER_HOME"]) / "datasets"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "occlufer" / "datasets"


def cache_path(cache_dir: Path, dataset: str, root: Path, split: str, label_mode: str,
               size: int, color: str, key_files: Sequence[Path]) -> Path:
    """The cache file for one load; its name is readable, its digest makes it exact."""
    stats = []
    for path in key_files:
        stat = path.stat()
        stats.append([str(path.resolve()), stat.st_mtime_ns, stat.st_size])
    key = json.dumps([CACHE_FORMAT, dataset, str(root.resolve()), split, label_mode, size,
                      color, stats])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{dataset}-{split}-{label_mode}-{size}-{color}-{digest}.npz"


def read_cache(path: Path) -> LabeledImages | None:
    """The cached split, or None when absent or unreadable (then it is simply rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as packed:
            soft = packed["soft_labels"] if "soft_labels" in packed.files else None
            return LabeledImages(
                images=packed["images"],
                labels=packed["labels"].astype(np.int64, copy=False),
                soft_labels=soft,
                names=packed["names"].tolist(),
                classes=tuple(packed["classes"].tolist()),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=3)
        return None


def write_cache(path: Path, data: LabeledImages) -> None:
    """Write atomically; a cache that cannot be written only costs speed, so it warns."""
    arrays = {
        "images": data.images,
        "labels": data.labels,
        "names": np.asarray(data.names, dtype=str),
        "classes": np.asarray(data.classes, dtype=str),
    }
    if data.soft_labels is not None:
        arrays["soft_labels"] = data.soft_labels
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as temp:
                np.savez(temp, **arrays)  # uncompressed: loading speed matters more than disk
            os.chmod(temp_name, 0o644)  # mkstemp makes it private; a cache is not a secret
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=3)
