"""Expression datasets as packed uint8 arrays: FERPlus, RAF-DB, FER2013, AffectNet, SFEW, folders.

`load_split(dataset, root, split, label_mode)` is the one entry point; every reader maps its
labels into `EMOTIONS8` order (seven-class sets use the first seven), and every layout problem
is a `DatasetError` that shows the layout the reader expected.
"""

from training.data.base import LabeledImages
from training.data.classes import EMOTIONS7, EMOTIONS8, canonical_emotion
from training.data.loading import dataset_names, get_reader, load_split

__all__ = [
    "EMOTIONS7",
    "EMOTIONS8",
    "LabeledImages",
    "canonical_emotion",
    "dataset_names",
    "get_reader",
    "load_split",
]
