"""RAF-DB basic emotions (Li et al. 2017): aligned 100x100 faces, one label per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, FileImage, SplitIndex, layout_error
from training.data.classes import EMOTIONS7

NAME = "rafdb"
LAYOUT = """\
ROOT/                                   (RAF-DB basic/)
  EmoLabel/list_patition_label.txt      lines "train_00001.jpg 5" / "test_0001.jpg 7"
  Image/aligned/train_00001_aligned.jpg ...
labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral
splits: train | test (by the file-name prefix)"""

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
IMAGE_DIR = Path("Image") / "aligned"
# RAF-DB label number -> index into EMOTIONS7.
LABEL_TO_CLASS = {1: 2, 2: 6, 3: 5, 4: 1, 5: 3, 6: 4, 7: 0}
assert [EMOTIONS7[LABEL_TO_CLASS[k]] for k in range(1, 8)] == [
    "surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"]


def key_files(root: Path, split: str) -> list[Path]:
    if not root.is_dir():
        raise layout_error(LAYOUT, f"RAF-DB root {root} does not exist")
    if not (root / LABEL_FILE).is_file():
        raise layout_error(LAYOUT, f"RAF-DB label file {root / LABEL_FILE} is missing")
    if not (root / IMAGE_DIR).is_dir():
        raise layout_error(LAYOUT, f"RAF-DB image folder {root / IMAGE_DIR} is missing")
    return [root / LABEL_FILE]


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    label_file = root / LABEL_FILE
    names: list[str] = []
    labels: list[int] = []
    for line_no, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} fields, expected 2")
            name, number = fields[0], int(fields[1])
            if number not in LABEL_TO_CLASS:
                raise ValueError(f"label {number} outside 1..7")
            prefix = name.split("_", 1)[0]
            if prefix not in ("train", "test"):
                raise ValueError("name does not start with train_ or test_")
        except ValueError as exc:
            raise layout_error(LAYOUT, f"{label_file} line {line_no} is malformed ({exc}): "
                                       f"{line[:120]}") from exc
        if prefix == split:
            names.append(name)
            labels.append(LABEL_TO_CLASS[number])
    return SplitIndex(
        sources=[FileImage(root / IMAGE_DIR / f"{Path(n).stem}_aligned.jpg") for n in names],
        labels=np.asarray(labels, dtype=np.int64),
        soft_labels=None,
        names=names,
        classes=EMOTIONS7,
    )


READER = DatasetReader(
    name=NAME,
    layout=LAYOUT,
    splits={"train": "train", "test": "test"},
    label_modes=("majority",),
    default_size=100,
    native_color="bgr",
    key_files=key_files,
    index=index,
)
