"""occlufer's occlusion-robust 68-point landmarks (the student) on an onnxruntime session.

The student (`models/landmark_student.py`, trained by `occlufer train-landmarks`) reads the
aligned crop the expression models read and answers where FaceMesh would put the 68 points on
the unoccluded face, with a visibility per point. In the pipeline it runs after FaceMesh when
both are installed: FaceMesh keeps the 468 points (and the face following between
detections), the student replaces the 68 points, which are the ones that must not slide onto
a mask's edge, and adds their visibility.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.records import FaceAnalysis
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

MODEL_NAME = "landmarks68_student"
OUTPUTS = ("landmarks68", "visibility")


class StudentLandmarker:
    name = "landmarks68"

    def __init__(self, session: ort.InferenceSession, spec: InputSpec, model_name: str = MODEL_NAME) -> None:
        outputs = [o.name for o in session.get_outputs()]
        if any(o not in outputs for o in OUTPUTS):
            raise ModelIntegrityError(f"{model_name}: outputs {outputs} are not the landmark "
                                      f"student's ({', '.join(OUTPUTS)})")
        self.session, self.spec, self.model_name = session, spec, model_name
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def from_store(cls, name: str = MODEL_NAME, store: ModelStore | None = None,
                   device: Device = "auto", threads: int | None = None) -> "StudentLandmarker":
        store = store or ModelStore()
        session = create_session(store.verified_path(name), device, threads)
        spec = store.entry(name).get("input")
        if spec is None:  # the file's own metadata, as the exporter wrote it
            spec = json.loads(session.get_modelmeta().custom_metadata_map["input"])
        return cls(session, InputSpec.from_manifest(spec), name)

    @property
    def provider(self) -> str:
        return session_provider(self.session)

    def __call__(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 68, 2) points as fractions of each crop's side and (N, 68) P(visible)."""
        if not crops:
            return np.zeros((0, 68, 2), np.float32), np.zeros((0, 68), np.float32)
        points, visibility = self.session.run(list(OUTPUTS), {self.input_name: prepare_batch(crops, self.spec)})
        return np.asarray(points, np.float32), np.asarray(visibility, np.float32)

    def annotate(self, image: np.ndarray, analyses: Sequence[FaceAnalysis]) -> None:
        """Set `landmarks68` (frame pixels) and `landmarks_visibility` of each aligned face."""
        todo = [a for a in analyses if a.aligned is not None]
        points, visibility = self([a.aligned.crop for a in todo])
        for analysis, pts, vis in zip(todo, points, visibility):
            side = analysis.aligned.crop.shape[0]
            analysis.landmarks68 = analysis.aligned.to_frame(pts * side - 0.5)
            analysis.landmarks_visibility = vis


__all__ = ["StudentLandmarker", "MODEL_NAME"]
