"""The colour of each expression class, shared by the app's panels and `occlufer report`, so
a class looks the same live, in the session viewer and in a paper's figure. Plain hex strings:
no Qt, no matplotlib here."""

from __future__ import annotations

#: Colours of the usual FER classes; other names take the fallback palette by position.
CLASS_COLOURS = {
    "neutral": "#a0a4ab", "happiness": "#ffd34d", "happy": "#ffd34d", "surprise": "#ff9640",
    "sadness": "#4d8dff", "sad": "#4d8dff", "anger": "#ff4d4d", "angry": "#ff4d4d",
    "disgust": "#5fcf6a", "fear": "#b36bff", "contempt": "#c08a5a",
}
FALLBACK_COLOURS = ["#4dd0e1", "#f06292", "#aed581", "#ffb74d", "#9575cd", "#4db6ac", "#e57373", "#90a4ae"]


def class_hex(name: str, index: int) -> str:
    """`#rrggbb` of class `name`, the `index`-th of its model (the fallback picks by index)."""
    return CLASS_COLOURS.get(name.lower(), FALLBACK_COLOURS[index % len(FALLBACK_COLOURS)])
