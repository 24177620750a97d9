"""The per-frame chain as one object: detect -> track -> align -> landmarks -> occlusion ->
expression.

Stages are plain callables; the pipeline only times them and threads the records through, so
swapping a model is swapping an object. Optional stages (the FaceMesh landmarks, the expression
model) are None when their model is not installed: the frame goes on without them and the
records keep those fields None, which sinks read as "this pipeline has no such stage".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.errors import BadFrameError, OccluferError
from app.pipeline.alignment import align_face
from app.pipeline.detector import RetinaFaceDetector
from app.pipeline.expression import ExpressionClassifier
from app.pipeline.landmarks import MODEL_NAME as LANDMARK_MODEL
from app.pipeline.landmarks import FaceMeshLandmarker
from app.pipeline.occlusion_map import MODEL_NAME as OCCLUSION_MODEL
from app.pipeline.occlusion_map import BiSeNetParser, OcclusionParsingModel
from app.pipeline.records import AlignedFace, Face, FaceAnalysis, Frame, FrameResult
from app.pipeline.regions import face_regions, update_visibility
from app.pipeline.tracker import IouTracker
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

STAGES = ("detect", "track", "align", "landmarks", "occlusion", "expression")


@dataclass
class FacePipeline:
    detector: Callable[[np.ndarray], list[Face]]
    tracker: IouTracker = field(default_factory=IouTracker)
    align_size: int = 112
    max_faces: int = 16
    classifier: ExpressionClassifier | None = None  # swap at any time; read once per frame
    providers: dict[str, str] = field(default_factory=dict)  # model name -> provider it runs on
    landmarker: FaceMeshLandmarker | None = None  # 468 + 68 points in frame coordinates
    skipped: dict[str, str] = field(default_factory=dict)  # optional model -> why it is not loaded
    occlusion: OcclusionParsingModel | None = None  # occlusion map + parsing + part visibility
    parser: BiSeNetParser | None = None  # a third-party parsing model; replaces the U-Net's parsing

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
        landmarker = self.landmarker
        if landmarker is not None:
            if analyses:
                landmarker.annotate(frame.image, analyses)
            t3b = time.perf_counter()
            latency["landmarks"] = (t3b - t3) * 1e3
            t3 = t3b
        occlusion, parser = self.occlusion, self.parser
        if occlusion is not None or parser is not None:  # timed together as "occlusion"
            for stage in (occlusion, parser):
                if stage is not None and analyses:
                    stage.annotate(frame.image, analyses)
            t3c = time.perf_counter()
            latency["occlusion"] = (t3c - t3) * 1e3
            t3 = t3c
        classifier = self.classifier  # one model for the whole frame, even if swapped meanwhile
        if classifier is not None and analyses:
            probs, cam = classifier([a.aligned.crop for a in analyses])
            for i, analysis in enumerate(analyses):
                analysis.probs, analysis.classes = probs[i], classifier.classes
                analysis.cam = None if cam is None else cam[i]
                analysis.regions = face_regions(classifier.regions, analysis)
        t4 = time.perf_counter()
        latency["expression"] = (t4 - t3) * 1e3
        update_visibility(analyses)  # last: regions x occlusion map, whichever stage made them
        latency["frame"] = (time.perf_counter() - t0) * 1e3
        return FrameResult(frame=frame, faces=analyses, latency_ms=latency)


def build_pipeline(store: ModelStore | None = None, device: Device = "auto",
                   threads: int | None = None, detector_model: str = "retinaface_mnet025",
                   score_threshold: float = 0.5, max_side: int = 640,
                   expression_model: str | None = None,
                   landmark_model: str | None = LANDMARK_MODEL,
                   occlusion_model: str | None = OCCLUSION_MODEL,
                   parsing_model: str | None = None) -> FacePipeline:
    """Load every model the pipeline needs from the store (sha256 checked).

    The landmark stage is optional: it runs when `landmark_model` is listed in the manifest
    and installed intact; otherwise `pipeline.skipped` says why (and with which command to
    get it), and everything else runs as before. A missing detector or expression model
    raises, as before."""
    store = store or ModelStore()
    session = create_session(store.verified_path(detector_model), device, threads)
    detector = RetinaFaceDetector(session, score_threshold=score_threshold, max_side=max_side)
    pipeline = FacePipeline(detector=detector, providers={detector_model: session_provider(session)})
    if expression_model:
        pipeline.classifier = ExpressionClassifier.from_store(expression_model, store, device, threads)
        pipeline.providers[expression_model] = pipeline.classifier.provider
    if landmark_model:
        _attach_landmarks(pipeline, store, landmark_model, device, threads)
    if occlusion_model:  # optional in the same way as the landmarks
        _attach_landmarks(pipeline, store, occlusion_model, device, threads,
                          attribute="occlusion", loader=OcclusionParsingModel.from_store)
    if parsing_model:  # asked for by name (e.g. a CelebAMask-HQ BiSeNet): must load
        pipeline.parser = BiSeNetParser.from_store(parsing_model, store, device, threads)
        pipeline.providers[parsing_model] = pipeline.parser.provider
    return pipeline


def _attach_landmarks(pipeline: FacePipeline, store: ModelStore, name: str, device: Device,
                      threads: int | None, attribute: str = "landmarker",
                      loader=FaceMeshLandmarker.from_store) -> None:
    """Load an optional stage (FaceMesh by default; the occlusion/parsing model with
    `attribute="occlusion"`) when its model is installed; else record why not."""
    if name not in store.models:
        pipeline.skipped[name] = f"{name} is not in the model manifest"
        return
    state = store.state(name)
    if state.status != "ok":
        pipeline.skipped[name] = f"{name} is {state.status}: {state.detail}"
        return
    try:
        setattr(pipeline, attribute, loader(name, store, device, threads))
    except OccluferError as exc:
        pipeline.skipped[name] = f"{name} could not be loaded: {exc}"
        return
    pipeline.providers[name] = getattr(pipeline, attribute).provider


__all__ = ["FacePipeline", "build_pipeline", "BadFrameError", "STAGES"]
