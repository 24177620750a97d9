"""SFEW 2.0 (Dhall et al. 2011/2015): movie frames sorted into seven emotion folders.

Images are resized whole to the requested square (no face detection here: that belongs to
the app pipeline). The test set has no public labels, so `test` reads Val, the split every
paper reports on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, SplitIndex, layout_error
from training.data.classes import EMOTIONS7
from training.data.folder import find_dir, scan_classes, visible_dirs

NAME = "sfew"
LAYOUT = """\
ROOT/
  Train/<Emotion>/*.png
  Val/<Emotion>/*.png
<Emotion>: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise
splits: train (Train) | valid = test (Val)"""

SPLIT_FOLDERS = {"train": "Train", "valid": "Val"}
FOLDER_TO_CLASS = {"angry": 4, "disgust": 5, "fear": 6, "happy": 1, "neutral": 0, "sad": 3,
                   "surprise": 2}
assert [EMOTIONS7[FOLDER_TO_CLASS[k]] for k in ("angry", "disgust", "fear", "happy", "neutral",
                                                "sad", "surprise")] == [
    "anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]


def _split_dir(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise layout_error(LAYOUT, f"SFEW root {root} does not exist")
    found = find_dir(root, [SPLIT_FOLDERS[split]])
    if found is None:
        raise layout_error(LAYOUT, f"SFEW split folder {root / SPLIT_FOLDERS[split]} is missing")
    return found


def key_files(root: Path, split: str) -> list[Path]:
    split_dir = _split_dir(root, split)
    return [split_dir, *visible_dirs(split_dir)]


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    sources, labels, names = scan_classes(
        _split_dir(root, split), lambda name: FOLDER_TO_CLASS.get(name.lower()),
        "Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise", LAYOUT)
    return SplitIndex(sources=list(sources), labels=np.asarray(labels, dtype=np.int64),
                      soft_labels=None, names=names, classes=EMOTIONS7)


READER = DatasetReader(
    name=NAME,
    layout=LAYOUT,
    splits={"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
            "test": "valid"},
    label_modes=("majority",),
    default_size=100,
    native_color="bgr",
    key_files=key_files,
    index=index,
)
