"""The one ordering of expression classes that every reader maps into.

FERPlus's order is used because FERPlus is the reference benchmark and its eight-way label
vector is stored in that order; seven-class datasets (RAF-DB, FER2013, SFEW) are the same
list without contempt, so a seven-class label is also a valid eight-class label.
"""

from __future__ import annotations

EMOTIONS8: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
EMOTIONS7: tuple[str, ...] = EMOTIONS8[:7]

#: Spellings people use for folder names, mapped to the canonical class name.
SYNONYMS: dict[str, str] = {
    "neutral": "neutral",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness",
    "surprise": "surprise", "surprised": "surprise",
    "sadness": "sadness", "sad": "sadness",
    "anger": "anger", "angry": "anger",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "contempt": "contempt", "contemptuous": "contempt",
}


def canonical_emotion(name: str) -> str | None:
    """The EMOTIONS8 name for a folder/label spelling (case-insensitive), or None if unknown."""
    return SYNONYMS.get(name.strip().lower())
