"""One recording of a live session: a folder with the CSV, `metadata.json` and optionally the
clean video (frames as captured, without overlays).

The CSV goes through `CsvRecorder` (flush + fsync at least once a second) with the columns
of `app.session_rows`, the same as `occlufer run`. `metadata.json` is written when recording
starts (so even a crash leaves it) and rewritten when it stops, with the frame count and every
model switch. Used only from the inference thread.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2

from app.errors import RecordingError
from app.pipeline.records import FrameResult
from app.recording import CsvRecorder
from app.runtime.store import ModelStore
from app.session_rows import (CSV_NAME, METADATA_NAME, VIDEO_NAME, SessionSchema, iso_time,
                               model_metadata, session_metadata)


@dataclass(frozen=True)
class RecordingRequest:
    root: Path  # the folder that receives one `session-YYYYmmdd-HHMMSS` folder per recording
    video: bool = False  # also write the clean video
    frame_limit: int = 0  # stop by itself after this many frames (0: until stopped)


@dataclass
class RecordingStatus:
    """What the UI shows about a recording (a copy; the recording itself stays in its thread)."""

    folder: Path
    frames: int = 0
    rows: int = 0
    started: float = field(default_factory=time.time)
    active: bool = True
    reason: str = ""  # why it stopped


def _unique_folder(root: Path) -> Path:
    stamp = datetime.now().strftime("session-%Y%m%d-%H%M%S")
    folder, n = root / stamp, 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    return folder


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write whole or not at all (a reader never sees half a file)."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=2, default=str))
    os.replace(part, path)


class SessionRecording:
    def __init__(self, request: RecordingRequest, *, store: ModelStore, schema: SessionSchema,
                 models: list[str], providers: dict[str, str], device: str,
                 source: dict[str, Any], fps: float | None) -> None:
        self.request, self.store, self.schema = request, store, schema
        self.folder = _unique_folder(Path(request.root))
        try:
            self.folder.mkdir(parents=True)
        except OSError as exc:
            raise RecordingError(f"Cannot create recording folder {self.folder}: {exc.strerror or exc}") from exc
        self.status = RecordingStatus(self.folder)
        self.fps = fps or 30.0
        self._video: cv2.VideoWriter | None = None
        self._video_size: tuple[int, int] | None = None
        self.models = list(models)
        self.providers = dict(providers)
        self.timeline: list[dict[str, Any]] = []  # model switches: {"frame", "model"}
        self._last_model: str | None = None
        files = {"csv": CSV_NAME}
        if request.video:
            files["video"] = VIDEO_NAME
        self._metadata = session_metadata(
            store=store, models=self.models, providers=self.providers, device=device,
            source=source, started=self.status.started, schema=schema, files=files,
            extra={"frame_limit": request.frame_limit or None})
        _write_json(self.folder / METADATA_NAME, self._metadata)
        self._csv = CsvRecorder(self.folder / CSV_NAME, schema.columns)

    def write(self, result: FrameResult, model: str | None, providers: dict[str, str]) -> bool:
        """Record one analysed frame; False once the frame limit is reached (then close it)."""
        if model != self._last_model:
            self.timeline.append({"frame": result.frame.index, "model": model})
            self._last_model = model
            if model and model not in self.models:
                self.models.append(model)
        self.providers.update(providers)
        for row in self.schema.rows(result, model):
            self._csv.write(row)
        if self.request.video:
            self._write_video(result.frame.image)
        self.status.frames += 1
        self.status.rows = self._csv.rows
        limit = self.request.frame_limit
        return not (limit and self.status.frames >= limit)

    def _write_video(self, image) -> None:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        size = (image.shape[1], image.shape[0])
        if self._video is None:
            self._video = cv2.VideoWriter(str(self.folder / VIDEO_NAME),
                                          cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            self._video_size = size
            if not self._video.isOpened():
                raise RecordingError(f"Cannot write video {self.folder / VIDEO_NAME} (mp4v codec missing?)")
        if size != self._video_size:  # a source switch changed the size: keep the video's size
            image = cv2.resize(image, self._video_size)
        self._video.write(image)

    def close(self, reason: str) -> RecordingStatus:
        """Finish every file and rewrite the metadata with what happened."""
        self.status.active, self.status.reason = False, reason
        errors = []
        try:
            self._csv.close()
        except RecordingError as exc:
            errors.append(str(exc))
        if self._video is not None:
            self._video.release()
        self._metadata.update({
            "ended": iso_time(time.time()), "stopped_because": reason,
            "frames": self.status.frames, "rows": self.status.rows,
            "model_timeline": self.timeline,
        })
        self._metadata["providers"] = dict(self.providers)
        try:
            self._metadata["models"] = model_metadata(self.store, self.models, self.providers)
            _write_json(self.folder / METADATA_NAME, self._metadata)
        except OSError as exc:
            errors.append(f"metadata: {exc}")
        if errors:
            raise RecordingError("; ".join(errors))
        return self.status
