"""RAF-DB's manual attribute labels (gender, race, age), for DFD-Net's EIFE pre-training.

RAF-DB basic ships, beside its expression labels, `Annotation/manual/<name>_manu_attri.txt`
for every image (`train_00001_manu_attri.txt`, `test_0001_manu_attri.txt`). As the RAF-DB
README describes them: the first five lines hold the (x, y) positions of five landmarks (eye
centres, nose tip, mouth corners; tab-separated), the next three lines gender, race and age:

    gender 0 male, 1 female, 2 unsure
    race   0 Caucasian, 1 African-American, 2 Asian
    age    0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69, 4: 70+

The images themselves come from the ordinary RAF-DB reader (`load_split("rafdb", ...)`),
whose `names` ("train_00001.jpg") key these files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.errors import DatasetError

MANUAL_DIR = Path("Annotation") / "manual"
ATTRIBUTES: dict[str, int] = {"gender": 3, "race": 3, "age": 5}


def attribute_file(root: Path, name: str) -> Path:
    return Path(root) / MANUAL_DIR / f"{Path(name).stem}_manu_attri.txt"


def parse_attribute_file(path: Path) -> np.ndarray:
    """(3,) int64 gender, race, age of one `_manu_attri.txt`; DatasetError when malformed."""
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise DatasetError(f"cannot read RAF-DB attribute file {path}: "
                           f"{exc.strerror or exc}") from exc
    try:
        if len(lines) != 8:
            raise ValueError(f"{len(lines)} non-empty lines, expected 5 landmarks + 3 attributes")
        for line in lines[:5]:
            if len([float(v) for v in line.split()]) != 2:
                raise ValueError(f"landmark line {line!r} is not 'x y'")
        values = np.array([int(line) for line in lines[5:]], dtype=np.int64)
        for value, (name, classes) in zip(values, ATTRIBUTES.items()):
            if not 0 <= value < classes:
                raise ValueError(f"{name} {value} outside 0..{classes - 1}")
    except ValueError as exc:
        raise DatasetError(f"RAF-DB attribute file {path} is malformed ({exc})") from exc
    return values


def read_attributes(root: Path, names: Sequence[str]) -> np.ndarray:
    """(N, 3) int64 [gender, race, age] for the RAF-DB images `names`, in that order."""
    if not (Path(root) / MANUAL_DIR).is_dir():
        raise DatasetError(f"RAF-DB attribute folder {Path(root) / MANUAL_DIR} is missing "
                           "(unzip Annotation/manual.zip from RAF-DB basic there)")
    return np.stack([parse_attribute_file(attribute_file(root, n)) for n in names]) \
        if len(names) else np.empty((0, 3), dtype=np.int64)
