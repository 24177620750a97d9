"""FER2013 (Goodfellow et al. 2013) in its Kaggle csv form: pixels stored as text, 7 classes.

Names are `fer{row:07d}.png`, the name FERPlus gives the image of the same csv row, so
results on both label sets can be compared image by image.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, PixelImage, SplitIndex, layout_error
from training.data.classes import EMOTIONS7

NAME = "fer2013"
LAYOUT = """\
ROOT/
  fer2013.csv      header "emotion,pixels,Usage"; one row per image:
                   emotion 0..6 = Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral
                   pixels  2304 space-separated gray values (48x48, row-major)
                   Usage   Training | PublicTest | PrivateTest
splits: train (Training) | valid (PublicTest) | test (PrivateTest)"""

CSV_NAME = "fer2013.csv"
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "valid", "PrivateTest": "test"}
# FER2013 emotion number -> index into EMOTIONS7.
LABEL_TO_CLASS = {0: 4, 1: 5, 2: 6, 3: 1, 4: 3, 5: 2, 6: 0}
assert [EMOTIONS7[LABEL_TO_CLASS[k]] for k in range(7)] == [
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]
REQUIRED_COLUMNS = ("emotion", "pixels", "Usage")


def key_files(root: Path, split: str) -> list[Path]:
    if not root.is_dir():
        raise layout_error(LAYOUT, f"FER2013 root {root} does not exist")
    if not (root / CSV_NAME).is_file():
        raise layout_error(LAYOUT, f"FER2013 label file {root / CSV_NAME} is missing")
    return [root / CSV_NAME]


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    csv_path = root / CSV_NAME
    sources: list[PixelImage] = []
    labels: list[int] = []
    names: list[str] = []
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise layout_error(LAYOUT, f"{csv_path} lacks columns {', '.join(missing)} "
                                       f"(header: {reader.fieldnames})")
        for row_no, row in enumerate(reader):
            line_no = row_no + 2  # header is line 1
            try:
                usage = row["Usage"]
                if usage not in USAGE_TO_SPLIT:
                    raise ValueError(f"Usage {usage!r} is not one of {', '.join(USAGE_TO_SPLIT)}")
                number = int(row["emotion"])
                if number not in LABEL_TO_CLASS:
                    raise ValueError(f"emotion {number} outside 0..6")
                if row["pixels"] is None:
                    raise ValueError("no pixels column")
            except (ValueError, TypeError) as exc:
                raise layout_error(LAYOUT, f"{csv_path} line {line_no} is malformed ({exc})") from exc
            if USAGE_TO_SPLIT[usage] != split:
                continue
            sources.append(PixelImage(row["pixels"], origin=f"{csv_path} line {line_no}"))
            labels.append(LABEL_TO_CLASS[number])
            names.append(f"fer{row_no:07d}.png")
    return SplitIndex(
        sources=sources,
        labels=np.asarray(labels, dtype=np.int64),
        soft_labels=None,
        names=names,
        classes=EMOTIONS7,
    )


READER = DatasetReader(
    name=NAME,
    layout=LAYOUT,
    splits={"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
            "publictest": "valid", "test": "test", "privatetest": "test"},
    label_modes=("majority",),
    default_size=48,
    native_color="gray",
    key_files=key_files,
    index=index,
)
