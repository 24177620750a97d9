"""AffectNet manual annotations (Mollahosseini et al. 2017): face boxes in web images, 8 classes.

Only the eight expression labels are kept; 8 = None, 9 = Uncertain and 10 = Non-face are
dropped, as in the eight-class protocol every FER paper reports. The validation csv is
AffectNet's only labelled held-out set, so it answers both `valid` and `test`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, FileImage, SplitIndex, layout_error
from training.data.classes import EMOTIONS8

NAME = "affectnet"
LAYOUT = """\
ROOT/
  training.csv, validation.csv        (also accepted under ROOT/Manually_Annotated_file_lists/)
      columns: subDirectory_filePath,face_x,face_y,face_width,face_height,
               facial_landmarks,expression,valence,arousal   (header row optional)
      expression 0..7 = Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt
      (8 None, 9 Uncertain, 10 Non-face are skipped)
  Manually_Annotated_Images/<subDirectory_filePath>   e.g. 689/737db2483489148d.jpg
splits: train (training.csv) | valid = test (validation.csv)"""

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")
CSV_NAMES = {"train": "training.csv", "valid": "validation.csv"}
LIST_DIRS = (Path("."), Path("Manually_Annotated_file_lists"))
IMAGE_DIR = "Manually_Annotated_Images"
# AffectNet expression number -> index into EMOTIONS8.
LABEL_TO_CLASS = {0: 0, 1: 1, 2: 3, 3: 2, 4: 6, 5: 5, 6: 4, 7: 7}
assert [EMOTIONS8[LABEL_TO_CLASS[k]] for k in range(8)] == [
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"]


def _csv_path(root: Path, split: str) -> Path:
    if not root.is_dir():
        raise layout_error(LAYOUT, f"AffectNet root {root} does not exist")
    for folder in LIST_DIRS:
        path = root / folder / CSV_NAMES[split]
        if path.is_file():
            return path
    raise layout_error(LAYOUT, f"AffectNet annotation file {CSV_NAMES[split]} is missing "
                               f"under {root}")


def key_files(root: Path, split: str) -> list[Path]:
    path = _csv_path(root, split)
    if not (root / IMAGE_DIR).is_dir():
        raise layout_error(LAYOUT, f"AffectNet image folder {root / IMAGE_DIR} is missing")
    return [path]


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    csv_path = _csv_path(root, split)
    sources: list[FileImage] = []
    labels: list[int] = []
    names: list[str] = []
    with csv_path.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row or (line_no == 1 and row[0].strip() == COLUMNS[0]):
                continue
            try:
                if len(row) != len(COLUMNS):
                    raise ValueError(f"{len(row)} fields, expected {len(COLUMNS)}")
                name = row[0].strip()
                x, y, w, h = (int(float(v)) for v in row[1:5])
                number = int(row[6])
            except ValueError as exc:
                raise layout_error(LAYOUT, f"{csv_path} line {line_no} is malformed ({exc}): "
                                           f"{','.join(row)[:120]}") from exc
            if number not in LABEL_TO_CLASS:
                continue  # None / Uncertain / Non-face
            sources.append(FileImage(root / IMAGE_DIR / name, box=(x, y, w, h)))
            labels.append(LABEL_TO_CLASS[number])
            names.append(name)
    return SplitIndex(
        sources=sources,
        labels=np.asarray(labels, dtype=np.int64),
        soft_labels=None,
        names=names,
        classes=EMOTIONS8,
    )


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
