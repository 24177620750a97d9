"""Real recorded sessions for the report and viewer tests.

`record_session` records the way the app's Record button does (app/ui/session_recorder.py
behind app/ui/inference.py): the real pipeline analyses every frame of a real source, the
per-track smoother runs, and `SessionRecording` writes frames.csv, metadata.json and the clean
video.mp4. Nothing is mocked; only the Qt threads around it are left out.
"""

from __future__ import annotations

from pathlib import Path

from app.pipeline.pipeline import build_pipeline
from app.pipeline.smoothing import ExpressionSmoother
from app.runtime.store import ModelStore
from app.session_rows import SessionSchema, expression_classes
from app.sources import open_source
from app.ui.session_recorder import RecordingRequest, SessionRecording


def record_session(root: Path, source: str, store: ModelStore, model: str, frames: int,
                   video: bool = True) -> Path:
    """Record `frames` frames of `source` analysed with `model`; returns the session folder."""
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=model)
    smoother = ExpressionSmoother()
    opened = open_source(source)
    recording = SessionRecording(
        RecordingRequest(root=root, video=video, frame_limit=frames), store=store,
        schema=SessionSchema(expression_classes(store)), models=list(pipeline.providers),
        providers=pipeline.providers, device="cpu",
        source={"kind": "file", "spec": source}, fps=opened.fps)
    with opened:
        for frame in opened:
            result = smoother.update(pipeline.process(frame))
            if not recording.write(result, model, pipeline.providers):
                break
    recording.close("frame limit reached")
    return recording.folder
