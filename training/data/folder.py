"""Image-per-file datasets sorted into one folder per class (a generic export, and SFEW).

The class folder names are matched case-insensitively against EMOTIONS8 and the common
synonyms (happy, sad, angry, ...). A folder that is not an emotion is an error rather than
skipped: a typo such as "suprise" would otherwise silently drop a whole class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, FileImage, SplitIndex, layout_error
from training.data.classes import EMOTIONS7, EMOTIONS8, SYNONYMS, canonical_emotion

NAME = "folder"
LAYOUT = """\
ROOT/<class>/*.png|jpg|jpeg                  (no split folders: every split reads ROOT)
or ROOT/<split>/<class>/*.png|jpg|jpeg       split folders train|training, valid|val|validation, test|testing
<class>: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt
         (case-insensitive; also happy, sad, angry, surprised, disgusted, fearful, contemptuous)
classes are EMOTIONS8 when a contempt folder exists, else EMOTIONS7"""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
SPLIT_SPELLINGS = {
    "train": ("train", "training"),
    "valid": ("valid", "val", "validation"),
    "test": ("test", "testing"),
}


def visible_dirs(path: Path) -> list[Path]:
    """Sub-folders in a stable order, skipping hidden ones (.ipynb_checkpoints, .DS_Store dirs)."""
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_dir(parent: Path, spellings: Iterable[str]) -> Path | None:
    """The sub-folder whose name is one of `spellings`, ignoring case."""
    wanted = {s.lower() for s in spellings}
    return next((d for d in visible_dirs(parent) if d.name.lower() in wanted), None)


def scan_classes(split_dir: Path, class_of: Callable[[str], int | None], accepted: str,
                 layout: str) -> tuple[list[FileImage], list[int], list[str]]:
    """Every image under split_dir/<class>/, with its class index and a `<class>/<file>` name."""
    sources: list[FileImage] = []
    labels: list[int] = []
    names: list[str] = []
    for class_dir in visible_dirs(split_dir):
        label = class_of(class_dir.name)
        if label is None:
            raise layout_error(layout, f"folder {class_dir} is not a known class; "
                                       f"class folders must be one of: {accepted}")
        for path in sorted(class_dir.iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                sources.append(FileImage(path))
                labels.append(label)
                names.append(f"{class_dir.name}/{path.name}")
    return sources, labels, names


def _split_dirs(root: Path) -> list[Path]:
    spellings = {s for names in SPLIT_SPELLINGS.values() for s in names}
    return [d for d in visible_dirs(root) if d.name.lower() in spellings]


def _split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise layout_error(LAYOUT, f"image folder root {root} does not exist")
    if not _split_dirs(root):
        return root
    found = find_dir(root, SPLIT_SPELLINGS[split])
    if found is None:
        present = ", ".join(d.name for d in _split_dirs(root))
        raise layout_error(LAYOUT, f"{root} has split folders ({present}) but none for "
                                   f"split {split!r}")
    return found


def _classes(root: Path) -> tuple[str, ...]:
    """EMOTIONS8 when any split has a contempt folder, so all splits of a root agree."""
    parents = _split_dirs(root) or [root]
    has_contempt = any(canonical_emotion(d.name) == "contempt"
                       for parent in parents for d in visible_dirs(parent))
    return EMOTIONS8 if has_contempt else EMOTIONS7


def key_files(root: Path, split: str) -> list[Path]:
    """The folders themselves: a folder's mtime changes when files are added, removed or renamed."""
    _split_dir(root, split)
    parents = _split_dirs(root) or [root]
    return [root, *parents, *(d for parent in parents for d in visible_dirs(parent))]


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    classes = _classes(root)

    def class_of(folder_name: str) -> int | None:
        name = canonical_emotion(folder_name)
        return classes.index(name) if name in classes else None

    sources, labels, names = scan_classes(_split_dir(root, split), class_of,
                                          ", ".join(sorted(SYNONYMS)), LAYOUT)
    return SplitIndex(sources=list(sources), labels=np.asarray(labels, dtype=np.int64),
                      soft_labels=None, names=names, classes=classes)


READER = DatasetReader(
    name=NAME,
    layout=LAYOUT,
    splits={spelling: split for split, spellings in SPLIT_SPELLINGS.items()
            for spelling in spellings},
    label_modes=("majority",),
    default_size=100,
    native_color="bgr",
    key_files=key_files,
    index=index,
)
