"""The per-frame chain as one object: detect -> track -> align (-> later stages).

Stages are plain callables; the pipeline only times them and threads the records through, so
swapping a model is swapping an object.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.errors import BadFrameError
from app.pipeline.alignment import align_face
from app.pipeline.detector import RetinaFaceDetector
from app.pipeline.expression import ExpressionClassifier
from app.pipeline.records import AlignedFace, Face, FaceAnalysis, Frame, FrameResult
from app.pipeline.tracker import IouTracker
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

STAGES = ("detect", "track", "align", "expression")


@dataclass
class FacePipeline:
    detector: Callable[[np.ndarray], list[Face]]
    tracker: IouTracker = field(default_factory=IouTracker)
    align_size: int = 112
    max_faces: int = 16
    classifier: ExpressionClassifier | None = None  # swap at any time; read once per frame
    providers: dict[str, str] = field(default_factory=dict)  # model name -> provider it runs on

    def process(self, frame: Frame) -> FrameResult:
        """Run every stage on one frame; a bad frame raises BadFrameError and changes nothing."""
        latency: dict[str, float] = {}
        t0 = time.perf_counter()
        faces = self.detector(frame.image)[: self.max_faces]
        t1 = time.perf_counter()
        latency["detect"] = (t1 - t0) * 1e3
        self.tracker.update(faces)
        t2 = time.perf_counter()
        latency["track"] = (t2 - t1) * 1e3
        analyses = []
        for face in faces:
            aligned: AlignedFace = align_face(frame.image, face, self.align_size)
            analyses.append(FaceAnalysis(face=face, aligned=aligned))
        t3 = time.perf_counter()
        latency["align"] = (t3 - t2) * 1e3
        classifier = self.classifier  # one model for the whole frame, even if swapped meanwhile
        if classifier is not None and analyses:
            probs, cam = classifier([a.aligned.crop for a in analyses])
            for i, analysis in enumerate(analyses):
                analysis.probs, analysis.classes = probs[i], classifier.classes
                analysis.cam = None if cam is None else cam[i]
        t4 = time.perf_counter()
        latency["expression"] = (t4 - t3) * 1e3
        latency["frame"] = (t4 - t0) * 1e3
        return FrameResult(frame=frame, faces=analyses, latency_ms=latency)


def build_pipeline(store: ModelStore | None = None, device: Device = "auto",
                   threads: int | None = None, detector_model: str = "retinaface_mnet025",
                   score_threshold: float = 0.5, max_side: int = 640,
                   expression_model: str | None = None) -> FacePipeline:
    """Load every model the pipeline needs from the store (sha256 checked)."""
    store = store or ModelStore()
    session = create_session(store.verified_path(detector_model), device, threads)
    detector = RetinaFaceDetector(session, score_threshold=score_threshold, max_side=max_side)
    pipeline = FacePipeline(detector=detector, providers={detector_model: session_provider(session)})
    if expression_model:
        pipeline.classifier = ExpressionClassifier.from_store(expression_model, store, device, threads)
        pipeline.providers[expression_model] = pipeline.classifier.provider
    return pipeline


__all__ = ["FacePipeline", "build_pipeline", "BadFrameError", "STAGES"]
