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
from app.pipeline.face_following import RIGID_POINTS, inside_frame, move_face, similarity_between
from app.pipeline.landmarks import MODEL_NAME as LANDMARK_MODEL
from app.pipeline.landmarks import FaceMeshLandmarker
from app.pipeline.landmarks import fill as fill_landmarks
from app.pipeline.landmarks_student import MODEL_NAME as STUDENT_MODEL
from app.pipeline.landmarks_student import StudentLandmarker
from app.pipeline.occlusion_map import MODEL_NAME as OCCLUSION_MODEL
from app.pipeline.occlusion_map import BiSeNetParser, OcclusionParsingModel
from app.pipeline.records import AlignedFace, Detection, Face, FaceAnalysis, Frame, FrameResult
from app.pipeline.regions import update_visibility
from app.pipeline.tracker import IouTracker
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

STAGES = ("detect", "track", "align", "landmarks", "occlusion", "expression")


@dataclass
class Started:
    """A frame after `FacePipeline.start`: its faces tracked, aligned and with FaceMesh points,
    waiting for `finish`. `t0`: when its first stage began (time.perf_counter())."""

    frame: Frame
    faces: list[FaceAnalysis]
    latency_ms: dict[str, float]
    t0: float


@dataclass
class FacePipeline:
    detector: Callable[[np.ndarray], list[Face]]
    tracker: IouTracker = field(default_factory=IouTracker)
    align_size: int = 112
    max_faces: int = 16
    classifier: ExpressionClassifier | None = None  # swap at any time; read once per frame
    providers: dict[str, str] = field(default_factory=dict)  # model name -> provider it runs on
    landmarker: FaceMeshLandmarker | None = None  # 468 + 68 points in frame coordinates
    landmark_model: str | None = None  # the FaceMesh model asked for (build_pipeline's pick)
    student: StudentLandmarker | None = None  # occlusion-robust 68 points + visibility, after FaceMesh
    skipped: dict[str, str] = field(default_factory=dict)  # optional model -> why it is not loaded
    occlusion: OcclusionParsingModel | None = None  # occlusion map + parsing + part visibility
    parser: BiSeNetParser | None = None  # a third-party parsing model; replaces the U-Net's parsing

    #: Run the detector on every `detect_every`-th frame and follow the faces by their
    #: landmarks in between (face_following.py); 1 = detect on every frame. Needs FaceMesh.
    detect_every: int = 1
    #: A followed face whose FaceMesh presence falls below this makes the frame re-detect.
    min_presence: float = 0.5
    _previous: list[FaceAnalysis] = field(default_factory=list, init=False, repr=False)
    _followed: int = field(default=0, init=False, repr=False)  # frames since the last detection

    def reset(self) -> None:
        """Forget every face (a new source): ids restart and the next frame is detected."""
        self.tracker.reset()
        self._previous, self._followed = [], 0

    def process(self, frame: Frame, detection: Detection | None = None) -> FrameResult:
        """Run every stage on one frame; a bad frame raises BadFrameError and changes nothing.

        `detection`: this frame's detector output computed ahead (app/pipeline/executor.py).
        It is used only where the sequential path would run the detector, and only when it
        came from this pipeline's detector, so the result is the sequential one either way;
        "frame" latency then counts from the moment the detector started on the frame."""
        return self.finish(self.start(frame, detection))

    def start(self, frame: Frame, detection: Detection | None = None) -> "Started":
        """The stages the next frame depends on: follow or detect, track, align, FaceMesh.

        Why the split: everything that carries state from frame to frame (the tracker, the
        followed faces and their FaceMesh points) happens here, in frame order; `finish` (the
        landmark student, occlusion, parsing, expression) reads only its own frame, so the
        executor may finish frame t on one core while it starts frame t+1 on the other and
        the results stay those of `process`."""
        latency: dict[str, float] = {}
        t0 = time.perf_counter()
        followed = self._follow(frame.image) if self._follow_due() else None
        t1 = time.perf_counter()
        follow_ms = (t1 - t0) * 1e3  # FaceMesh on the previous boxes, kept or not
        if followed is None:
            if detection is not None and detection.detector is self.detector:
                if detection.error is not None:
                    raise detection.error
                faces = list(detection.faces or [])[: self.max_faces]
                latency["detect"] = detection.ms
                t0 = min(t0, detection.started)
            else:
                faces = self.detector(frame.image)[: self.max_faces]
                latency["detect"] = (time.perf_counter() - t1) * 1e3
            marks = None
        else:
            faces, marks = followed
        t1 = time.perf_counter()
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
        if landmarker is not None or self.student is not None:
            if marks is not None:  # the follow step already ran FaceMesh on this frame
                fill_landmarks(analyses, marks)
            elif landmarker is not None and analyses:
                landmarker.annotate(frame.image, analyses)
            latency["landmarks"] = (time.perf_counter() - t3) * 1e3 + follow_ms
        self._followed = 0 if followed is None else self._followed + 1
        self._previous = analyses if all(a.landmarks468 is not None for a in analyses) else []
        return Started(frame=frame, faces=analyses, latency_ms=latency, t0=t0)

    def finish(self, started: "Started") -> FrameResult:
        """The stages that read only this frame (see `start`), then the frame's result."""
        frame, analyses, latency = started.frame, started.faces, started.latency_ms
        t3 = time.perf_counter()
        student = self.student
        if student is not None and analyses:
            student.annotate(frame.image, analyses)
            t3b = time.perf_counter()
            latency["landmarks"] = latency.get("landmarks", 0.0) + (t3b - t3) * 1e3
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
            classifier.annotate(analyses)
        t4 = time.perf_counter()
        latency["expression"] = (t4 - t3) * 1e3
        update_visibility(analyses)  # last: regions x occlusion map, whichever stage made them
        latency["frame"] = (time.perf_counter() - started.t0) * 1e3
        return FrameResult(frame=frame, faces=analyses, latency_ms=latency)

    def detects_now(self) -> bool:
        """Whether the next frame processed goes to the detector unless a follow fails (a
        forecast for the executor, as `detects_after`)."""
        return not self._follow_due()

    def detects_after(self, detection: Detection | None) -> bool:
        """Whether the frame after the one about to be processed will most likely go to the
        detector, from the state now and (when it ran ahead) this frame's detection.

        The pipelined executor asks this to decide whether to detect the next frame ahead. It
        is a forecast, never a decision: a frame forecast to be followed whose follow fails
        (a face lost) is detected on the spot, and a detection made ahead that turns out not
        to be needed is dropped, so a wrong forecast costs time and never changes a result."""
        if self.detect_every <= 1 or self.landmarker is None:
            return True
        if self._follow_due():  # this frame follows; assume it succeeds
            return self._followed + 2 >= self.detect_every
        # this frame is detected: the next follows when it has faces (all get FaceMesh points)
        faces_now = detection.faces if detection is not None and detection.error is None else None
        return faces_now is not None and not faces_now

    def _follow_due(self) -> bool:
        return (self.detect_every > 1 and self.landmarker is not None and bool(self._previous)
                and self._followed + 1 < self.detect_every)

    def _follow(self, image: np.ndarray) -> tuple[list[Face], list] | None:
        """The previous frame's faces moved onto this one by FaceMesh, with its results; None
        when a face is lost (low presence, off the frame) and the detector must run."""
        previous = self._previous
        results = self.landmarker(image, [a.face for a in previous])
        height, width = image.shape[:2]
        faces = []
        for analysis, result in zip(previous, results):
            if result.presence < self.min_presence:
                return None
            matrix = similarity_between(analysis.landmarks468[RIGID_POINTS],
                                        result.landmarks468[RIGID_POINTS])
            face = move_face(analysis.face, matrix)
            if not inside_frame(face, width, height):
                return None
            faces.append(face)
        return faces, results


#: `landmark_model` that picks FaceMesh's runtime: LiteRT where it pays (`choose_landmark_model`).
LANDMARKS_AUTO = "auto"


def choose_landmark_model(store: ModelStore, on_cpu: bool) -> str:
    """FaceMesh on LiteRT when the chain runs on the CPU and LiteRT and its model are
    installed, else on onnxruntime. The same network and points (within 1.5e-4 px, top label
    identical on the demo), and LiteRT/XNNPACK halves the largest per-face stage on CPUs
    (16.5 -> 8.0 ms for one face on a 2-core AVX2 EPYC; BENCHMARKS.md); it has no GPU path."""
    import importlib.util

    from app.pipeline.landmarks_litert import MODEL_NAME as LITERT_MODEL

    if (on_cpu and LITERT_MODEL in store.models and store.state(LITERT_MODEL).status == "ok"
            and importlib.util.find_spec("ai_edge_litert") is not None):
        return LITERT_MODEL
    return LANDMARK_MODEL


def build_pipeline(store: ModelStore | None = None, device: Device = "auto",
                   threads: int | None = None, detector_model: str = "retinaface_mnet025",
                   score_threshold: float = 0.5, max_side: int = 640,
                   expression_model: str | None = None,
                   landmark_model: str | None = LANDMARKS_AUTO,
                   occlusion_model: str | None = OCCLUSION_MODEL,
                   parsing_model: str | None = None, detect_every: int = 1,
                   student_model: str | None = STUDENT_MODEL) -> FacePipeline:
    """Load every model the pipeline needs from the store (sha256 checked).

    The landmark stage is optional: it runs when `landmark_model` is listed in the manifest
    and installed intact; otherwise `pipeline.skipped` says why (and with which command to
    get it), and everything else runs as before. A missing detector or expression model
    raises, as before. `max_side` is the detector's input bound (320 runs it ~4x cheaper and
    misses faces under ~20 px); `detect_every` > 1 follows faces by FaceMesh in between.
    `landmark_model="auto"` (the default) is `choose_landmark_model`'s pick; the one loaded
    is `pipeline.landmark_model`."""
    if detect_every < 1:
        raise ValueError(f"detect_every must be at least 1, not {detect_every}")
    store = store or ModelStore()
    session = create_session(store.verified_path(detector_model), device, threads)
    detector = RetinaFaceDetector(session, score_threshold=score_threshold, max_side=max_side)
    pipeline = FacePipeline(detector=detector, providers={detector_model: session_provider(session)},
                            detect_every=detect_every)
    if expression_model:
        pipeline.classifier = ExpressionClassifier.from_store(expression_model, store, device, threads)
        pipeline.providers[expression_model] = pipeline.classifier.provider
    if landmark_model == LANDMARKS_AUTO:
        landmark_model = choose_landmark_model(store, session_provider(session) == "CPU")
    pipeline.landmark_model = landmark_model
    if landmark_model:  # FaceMesh on onnxruntime, or the same network on LiteRT (CPU)
        litert = landmark_model in store.models and \
            store.entry(landmark_model).get("runtime") == "litert"
        if litert:
            from app.pipeline.landmarks_litert import LiteRTFaceMeshLandmarker

        _attach_landmarks(pipeline, store, landmark_model, device, threads,
                          loader=LiteRTFaceMeshLandmarker.from_store if litert
                          else FaceMeshLandmarker.from_store)
    if student_model:  # optional in the same way
        _attach_landmarks(pipeline, store, student_model, device, threads,
                          attribute="student", loader=StudentLandmarker.from_store)
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


__all__ = ["FacePipeline", "build_pipeline", "choose_landmark_model", "LANDMARKS_AUTO",
           "BadFrameError", "STAGES"]
