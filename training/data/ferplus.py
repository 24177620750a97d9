"""FERPlus: FER2013 images relabelled by ten annotators each (Barsoum et al. 2016, arXiv 1608.01041).

The label modes follow the reference reader of microsoft/FERPlus (`src/ferplus.py`,
`_process_data` + `load_folders`), because published FERPlus numbers are measured on the
split those rules produce (test/majority = 3,137 images):

1. every vote count of 1 is zeroed (one annotator alone is treated as an outlier);
2. the mode turns the remaining ten counts into a distribution or rejects the image;
3. the image is dropped when the distribution peaks at `unknown` or `NF` (not a face);
   otherwise those two are removed and the eight emotions renormalised.

`probability` and `crossentropy` give the same distribution here: they differ only in how a
trainer uses it (sample one label per step vs. soft cross-entropy). `multi_target` gives the
distribution over the emotions with >= 30 % of the votes; its non-zero entries are the set
the paper's multi-target loss takes the best of.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from training.data.base import DatasetReader, FileImage, SplitIndex, layout_error
from training.data.classes import EMOTIONS8

NAME = "ferplus"
LAYOUT = """\
ROOT/                              (the folder the FERPlus generate_training_data.py writes)
  FER2013Train/label.csv           one row per image: name,"(x, y, w, h)",<10 vote counts>
  FER2013Train/fer0000000.png ...  48x48 grayscale PNGs
  FER2013Valid/label.csv + PNGs
  FER2013Test/label.csv  + PNGs
vote columns: neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
splits: train | valid | test"""

SPLIT_FOLDERS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")
LABEL_FILE = "label.csv"
N_VOTES = 10  # 8 emotions, unknown, not-a-face
_UNKNOWN = 8


def vote_distribution(votes: np.ndarray, mode: str) -> np.ndarray | None:
    """The 8-emotion target for one image's ten vote counts, or None when the image is dropped."""
    counts = np.where(np.asarray(votes, dtype=np.float64) <= 1.0, 0.0, votes).astype(np.float64)
    total = counts.sum()
    if mode == "majority":
        kept = _majority(counts, total)
    elif mode in ("probability", "crossentropy"):
        kept = _top_levels(counts, total)
    elif mode == "multi_target":
        kept = np.where(counts >= 0.3 * total, counts, 0.0)
        kept = kept if kept.sum() > 0.5 * total else None
    else:
        raise ValueError(f"unknown FERPlus label mode {mode!r}")
    if kept is None or int(np.argmax(kept)) >= _UNKNOWN:
        return None
    emotions = kept[:_UNKNOWN]
    return emotions / emotions.sum()


def _majority(counts: np.ndarray, total: float) -> np.ndarray | None:
    """One-hot on the class holding more than half of all (outlier-free) votes."""
    top = int(np.argmax(counts))
    if total <= 0 or counts[top] <= 0.5 * total:
        return None
    kept = np.zeros_like(counts)
    kept[top] = counts[top]
    return kept


def _top_levels(counts: np.ndarray, total: float) -> np.ndarray | None:
    """Keep the highest vote levels (ties taken together) until 75 % of votes or 3 classes.

    Reached unknown/NF stops the walk; it is kept only when it is the first class taken (the
    image is then dropped by the caller). The result is rejected unless it covers more than
    half of the votes with at most three classes. Mirrors the reference reader exactly,
    including where ties and the count are checked.
    """
    remaining = counts.copy()
    kept = np.zeros_like(counts)
    covered, taken, stop = 0.0, 0, False
    while covered < 0.75 * total and taken < 3 and not stop:
        level = remaining.max()
        for i in range(N_VOTES):
            if remaining[i] != level:
                continue
            kept[i], remaining[i] = level, 0.0
            covered += level
            taken += 1
            if i >= _UNKNOWN:
                stop = True
                if kept.sum() > level:  # emotions were taken before unknown/NF: drop unknown/NF
                    kept[i] = 0.0
                    taken -= 1
                break
    if kept.sum() <= 0.5 * total or taken > 3:
        return None
    return kept


def read_votes(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Image names and (N, 10) vote counts of one split's label.csv, validated row by row."""
    label_file = _label_file(root, split)
    names: list[str] = []
    votes: list[list[int]] = []
    with label_file.open(newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            try:
                if len(row) != 2 + N_VOTES:
                    raise ValueError(f"{len(row)} fields, expected {2 + N_VOTES}")
                counts = [int(value) for value in row[2:]]
                if min(counts) < 0:
                    raise ValueError("negative vote count")
            except ValueError as exc:
                raise layout_error(LAYOUT, f"{label_file} line {line_no} is malformed ({exc}): "
                                           f"{','.join(row)[:120]}") from exc
            names.append(row[0])
            votes.append(counts)
    if not names:
        raise layout_error(LAYOUT, f"{label_file} lists no images")
    return names, np.asarray(votes, dtype=np.int64)


def index(root: Path, split: str, label_mode: str) -> SplitIndex:
    folder = root / SPLIT_FOLDERS[split]
    names, votes = read_votes(root, split)
    kept_names: list[str] = []
    targets: list[np.ndarray] = []
    for name, row in zip(names, votes):
        target = vote_distribution(row, label_mode)
        if target is not None:
            kept_names.append(name)
            targets.append(target)
    soft = np.asarray(targets, dtype=np.float32).reshape(-1, len(EMOTIONS8))
    return SplitIndex(
        sources=[FileImage(folder / name) for name in kept_names],
        labels=np.argmax(soft, axis=1).astype(np.int64),
        soft_labels=None if label_mode == "majority" else soft,
        names=kept_names,
        classes=EMOTIONS8,
    )


def _label_file(root: Path, split: str) -> Path:
    folder = root / SPLIT_FOLDERS[split]
    if not root.is_dir():
        raise layout_error(LAYOUT, f"FERPlus root {root} does not exist")
    if not folder.is_dir():
        raise layout_error(LAYOUT, f"FERPlus split folder {folder} is missing")
    label_file = folder / LABEL_FILE
    if not label_file.is_file():
        raise layout_error(LAYOUT, f"FERPlus label file {label_file} is missing")
    return label_file


def key_files(root: Path, split: str) -> list[Path]:
    return [_label_file(root, split)]


READER = DatasetReader(
    name=NAME,
    layout=LAYOUT,
    splits={"train": "train", "valid": "valid", "val": "valid", "validation": "valid",
            "test": "test"},
    label_modes=LABEL_MODES,
    default_size=48,
    native_color="gray",
    key_files=key_files,
    index=index,
)
