"""The one definition of a session CSV row and of a session's metadata.

`occlufer run` and the app's Record button both write through `SessionSchema`, so a CSV from
either can be read by the same code. One row per face per frame; a frame without a face gets
one row with `faces = 0` and empty face columns, so empty frames and dropped frames differ.

Columns, in order:
  timestamp (ISO 8601, local time with offset), frame, source_time, faces, face, track_id,
  x1 y1 x2 y2, score, detected, lm0_x … lm4_y                  (detection and tracking;
                                                                 detected 0 = followed by landmarks)
  model, label, confidence, smoothed_label, p_<class> …        (expression)
  occlusion_ratio, visible_regions, vis_<part> …               (occlusion stages, when present)
  <stage>_ms …, frame_ms                                       (latency per stage)

The class columns are fixed when the file is opened: the union of the classes of every model
the session may switch to, so a live model switch never changes the header; a model without
a class leaves its column empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app import __version__
from app.pipeline.occlusion_map import PARTS
from app.pipeline.pipeline import STAGES
from app.pipeline.records import FaceAnalysis, FrameResult
from app.runtime.store import ModelStore, sha256_of

DETECTION_COLUMNS = (
    ["timestamp", "frame", "source_time", "faces", "face", "track_id", "x1", "y1", "x2", "y2", "score",
     "detected"]
    + [f"lm{i}_{axis}" for i in range(5) for axis in "xy"]
)
EXPRESSION_COLUMNS = ["model", "label", "confidence", "smoothed_label"]
#: `vis_<part>`: share of each facial part the occlusion stage sees uncovered (0..1).
OCCLUSION_COLUMNS = ["occlusion_ratio", "visible_regions"] + [f"vis_{part}" for part in PARTS]
#: Stages timed per frame; `frame` is the whole chain.
LATENCY_STAGES = (*STAGES, "frame")
#: A region counts as visible when at least this share of it is not occluded.
VISIBLE_AT = 0.5
#: The files of a recorded session folder (the app's Record button writes them; `occlufer
#: report` and the session viewer read them).
CSV_NAME, METADATA_NAME, VIDEO_NAME = "frames.csv", "metadata.json", "video.mp4"
#: Columns holding whole numbers and text; every other column holds a decimal number.
INTEGER_COLUMNS = frozenset({"frame", "faces", "face", "track_id", "detected"})
TEXT_COLUMNS = frozenset({"timestamp", "model", "label", "smoothed_label", "visible_regions"})


def iso_time(timestamp: float) -> str:
    """Seconds since the epoch as ISO 8601 local time with offset, to the millisecond."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="milliseconds")


def class_column(name: str) -> str:
    """`p_<class>` with the class name reduced to lowercase letters, digits and underscores."""
    return "p_" + re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def expression_classes(store: ModelStore, names: Iterable[str] | None = None) -> tuple[str, ...]:
    """The union of the classes of `names` (default: every expression model), first-seen order."""
    seen: dict[str, None] = {}
    for name in store.names(task="expression") if names is None else names:
        for cls in store.entry(name).get("classes", ()):
            seen.setdefault(cls, None)
    return tuple(seen)


@dataclass(frozen=True)
class SessionSchema:
    classes: tuple[str, ...] = ()
    stages: tuple[str, ...] = LATENCY_STAGES

    @property
    def columns(self) -> list[str]:
        return (DETECTION_COLUMNS + EXPRESSION_COLUMNS + [class_column(c) for c in self.classes]
                + OCCLUSION_COLUMNS + [f"{s}_ms" for s in self.stages])

    def rows(self, result: FrameResult, model: str | None) -> list[dict[str, Any]]:
        """The rows for one frame: one per face, or one `faces = 0` row."""
        frame = result.frame
        base: dict[str, Any] = {
            "timestamp": iso_time(frame.timestamp), "frame": frame.index,
            "source_time": "" if frame.source_time is None else f"{frame.source_time:.3f}",
            "faces": len(result.faces),
        }
        base.update({f"{stage}_ms": f"{result.latency_ms[stage]:.2f}"
                     for stage in self.stages if stage in result.latency_ms})
        if not result.faces:
            return [base]
        return [{**base, **self._face_columns(i, analysis, model)}
                for i, analysis in enumerate(result.faces)]

    def _face_columns(self, index: int, analysis: FaceAnalysis, model: str | None) -> dict[str, Any]:
        face = analysis.face
        row: dict[str, Any] = {"face": index, "track_id": face.track_id, "score": f"{face.score:.4f}",
                               "detected": int(face.detected)}
        row.update({k: f"{v:.1f}" for k, v in zip(("x1", "y1", "x2", "y2"), face.box)})
        for j, (x, y) in enumerate(face.landmarks5):
            row[f"lm{j}_x"], row[f"lm{j}_y"] = f"{x:.1f}", f"{y:.1f}"
        if analysis.probs is not None:
            best = int(analysis.probs.argmax())
            row.update(model=model or "", label=analysis.classes[best],
                       confidence=f"{analysis.probs[best]:.4f}",
                       smoothed_label=analysis.smoothed_label or "")
            known = set(self.classes)
            for cls, p in zip(analysis.classes, analysis.probs):
                if cls in known:
                    row[class_column(cls)] = f"{p:.4f}"
        if analysis.occlusion_ratio is not None:
            row["occlusion_ratio"] = f"{analysis.occlusion_ratio:.4f}"
        for part, share in (analysis.part_visibility or {}).items():
            row[f"vis_{part}"] = f"{share:.3f}"
        if analysis.regions is not None:
            row["visible_regions"] = ";".join(
                r.name for r in analysis.regions if r.visibility is None or r.visibility >= VISIBLE_AT)
        return row


def model_metadata(store: ModelStore, names: Sequence[str],
                   providers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per model: task, file, sha256 of the file as it is now (or why there is none), provider."""
    models: dict[str, dict[str, Any]] = {}
    for name in names:
        entry = store.entry(name)
        location = store.location(name)
        record: dict[str, Any] = {"task": entry.get("task"), "file": str(location),
                                  "classes": list(entry.get("classes", ())),
                                  "provider": providers.get(name)}
        if location.is_file():
            record["sha256"] = sha256_of(location)
        else:
            record["sha256"] = store.expected_sha256(name)
            record["note"] = "file missing from the store when this was written"
        models[name] = record
    return models


def session_metadata(*, store: ModelStore, models: Sequence[str], providers: dict[str, str],
                     device: str, source: dict[str, Any], started: float,
                     schema: SessionSchema, files: dict[str, str],
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `metadata.json` beside a session CSV holds: enough to reproduce and trust it."""
    import onnxruntime

    return {
        "app": "occlufer", "app_version": __version__,
        "onnxruntime": onnxruntime.__version__,
        "started": iso_time(started),
        "device": device,
        "providers": dict(providers),
        "source": source,
        "models": model_metadata(store, models, providers),
        "files": files,
        "columns": schema.columns,
        **(extra or {}),
    }
