"""The facial regions a region-based expression model reads, and how much of each is visible.

A model that cuts the face into fixed parts (FS-DSN's left eye / right eye / mouth grid,
FFRA-Net's patches) says so in its ONNX metadata: key ``regions``, a JSON object
``{name: [x0, y0, x1, y1]}`` of fractions of the aligned crop it is fed (exporters write it
from the network's own table, e.g. `models/fs_dsn.REGIONS`). The runtime turns those into
`FaceRegion` boxes in aligned-crop pixels, so the app can outline them on the frame; when the
face also has an occlusion map, each region gets the share of it that is not occluded.
Nothing here invents regions: a model without the key has none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import cv2
import numpy as np

from app.errors import ModelIntegrityError
from app.pipeline.records import FaceAnalysis, FaceRegion

METADATA_KEY = "regions"
#: A pixel counts as occluded above this probability (as `FaceAnalysis.occlusion_ratio`).
OCCLUDED_ABOVE = 0.5
#: Sample points per side when measuring a region's visibility on the occlusion map.
SAMPLES = 16

Fractions = tuple[float, float, float, float]


def parse_regions(text: str | None, model: str = "model") -> dict[str, Fractions]:
    """The `regions` metadata value -> {name: (x0, y0, x1, y1)} fractions; {} when absent.

    A malformed value is an integrity error (the file says it has regions but they cannot be
    read), not something to skip silently."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
        regions = {str(name): tuple(float(v) for v in box) for name, box in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise ModelIntegrityError(f"{model}: metadata `regions` is not a JSON object of "
                                  f"[x0, y0, x1, y1] lists: {exc}") from None
    for name, box in regions.items():
        if len(box) != 4 or not (0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0):
            raise ModelIntegrityError(f"{model}: region {name!r} {list(box)} is not "
                                      "x0 < x1, y0 < y1 within [0, 1]")
    return regions  # type: ignore[return-value]


def region_visibility(analysis: FaceAnalysis, box: np.ndarray) -> float | None:
    """Share of `box` (aligned-crop pixels) that the occlusion map calls visible, or None
    without a map. The map may cover the aligned crop (any resolution) or have its own crop
    (`maps_to_frame`); the box is sampled on a regular grid and looked up in the map."""
    occlusion, aligned = analysis.occlusion, analysis.aligned
    if occlusion is None or aligned is None:
        return None
    occ = np.asarray(occlusion, dtype=np.float32)
    x0, y0, x1, y1 = (float(v) for v in box)
    steps = (np.arange(SAMPLES) + 0.5) / SAMPLES
    xs, ys = np.meshgrid(x0 - 0.5 + steps * (x1 - x0), y0 - 0.5 + steps * (y1 - y0))
    points = np.stack([xs.ravel(), ys.ravel()], axis=1)  # crop pixel centres
    if analysis.maps_to_frame is None:
        size = aligned.crop.shape[0]
        scale = np.array([occ.shape[1] / size, occ.shape[0] / size])
        in_map = (points + 0.5) * scale - 0.5
    else:
        frame = aligned.to_frame(points).astype(np.float64)
        inverse = cv2.invertAffineTransform(np.asarray(analysis.maps_to_frame, np.float64).reshape(2, 3))
        in_map = frame @ inverse[:, :2].T + inverse[:, 2]
    cols = np.clip(np.round(in_map[:, 0]).astype(int), 0, occ.shape[1] - 1)
    rows = np.clip(np.round(in_map[:, 1]).astype(int), 0, occ.shape[0] - 1)
    return float(np.mean(occ[rows, cols] <= OCCLUDED_ABOVE))


def face_regions(fractions: Mapping[str, Fractions], analysis: FaceAnalysis) -> list[FaceRegion] | None:
    """`fractions` as boxes on this face's aligned crop (None without a crop or regions)."""
    if not fractions or analysis.aligned is None:
        return None
    height, width = analysis.aligned.crop.shape[:2]
    scale = np.array([width, height, width, height], np.float32)
    return [FaceRegion(name, np.asarray(box, np.float32) * scale) for name, box in fractions.items()]


def update_visibility(analyses: list[FaceAnalysis]) -> None:
    """Fill each region's `visibility` from its face's occlusion map (when there is one)."""
    for analysis in analyses:
        for region in analysis.regions or ():
            region.visibility = region_visibility(analysis, region.box)


__all__ = ["METADATA_KEY", "parse_regions", "face_regions", "region_visibility", "update_visibility"]
