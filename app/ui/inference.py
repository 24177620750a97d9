"""The inference thread: takes the newest frame, runs the pipeline, keeps the session's state.

All pipeline state lives here and only here: the models (loaded, swapped, moved between
devices), the tracker, the smoother, the probability history and the open recording. The UI
asks for changes by queueing commands, which run between two frames, so a model switch never
races a frame in flight and the UI thread never waits for a model to load.

Results go to the UI through a one-update mailbox: if the UI is still drawing the previous
update, the newer one replaces it, so a slow screen never builds a backlog.

Frames go through the live form of `occlufer run`'s pipelined executor
(app/pipeline/live_executor.py): a worker takes the newest frame from the slot the moment one
arrives and runs the detector on it, this thread runs the stages the next frame depends on
(tracking, following, FaceMesh), and a finisher thread the last stages of the frame before
(student, occlusion, expression), each result handed on the moment it is finished. One frame
is held ahead at most, so the newest-frame-only policy stays: the slot goes on replacing (and
counting) the frames nobody took. `pipeline_options={"pipelined": False}` analyses one stage
after another instead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import QThread, Signal

from app.errors import BadFrameError, OccluferError, RecordingError
from app.overlays import overlays_present
from app.pipeline.live_executor import LiveExecutor, Outcome
from app.pipeline.expression import ExpressionClassifier
from app.pipeline.pipeline import FacePipeline, build_pipeline
from app.pipeline.records import FrameResult
from app.pipeline.smoothing import DEFAULT_STRENGTH, ExpressionSmoother
from app.runtime.providers import Device, create_session, cuda_status
from app.runtime.store import ModelStore
from app.session_rows import SessionSchema, expression_classes
from app.ui.face_history import ProbabilityHistory, TrackTrace
from app.ui.frame_slot import LatestFrameSlot
from app.ui.notices import Notice
from app.ui.session_recorder import RecordingRequest, RecordingStatus, SessionRecording

#: Consecutive frames without a face before "no face" is said (half a second at 30 fps).
NO_FACE_AFTER = 15
#: How often the files of the loaded models are checked (a deleted model file is reported).
MODEL_FILE_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class ModelsInfo:
    """Which models run and where they really run (from each session, not from a wish)."""

    detector: str | None
    expression: str | None
    classes: tuple[str, ...]
    has_cam: bool
    providers: dict[str, str]
    device: str
    skipped: dict[str, str] = field(default_factory=dict)  # optional model -> why it is not running


@dataclass(frozen=True)
class LiveUpdate:
    """Everything the window draws for one analysed frame."""

    result: FrameResult
    traces: dict[int, TrackTrace]
    available: frozenset[str]  # overlay keys this pipeline can draw
    inference_fps: float
    dropped: int  # frames the capture delivered that inference never saw (latest-frame slot)
    model: str | None
    recording: RecordingStatus | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def _fetch_actions(text: str) -> tuple[tuple[str, str], ...]:
    """A "Copy command" button for every message that names an `occlufer models fetch` command."""
    for line in text.splitlines():
        if "occlufer models fetch" in line:
            command = line[line.index("occlufer models fetch"):].split("`")[0].split("  (")[0].strip()
            return (("Copy command", f"copy:{command}"),)
    return ()


class InferenceThread(QThread):
    updated = Signal()  # a new LiveUpdate waits in `take_update()`
    notice = Signal(object)  # Notice
    notice_cleared = Signal(str)  # key
    models_changed = Signal(object)  # ModelsInfo
    recording_changed = Signal(object)  # RecordingStatus (active or just stopped)
    cuda_checked = Signal()  # cuda_status() now knows whether CUDA really loads

    def __init__(self, slot: LatestFrameSlot, store: ModelStore, device: Device = "auto",
                 threads: int | None = None, detector_model: str = "retinaface_mnet025",
                 expression_model: str | None = None, smoothing: float = DEFAULT_STRENGTH,
                 history_seconds: float = 10.0, pipeline_options: dict | None = None) -> None:
        super().__init__()
        self.slot, self.store, self.threads = slot, store, threads
        self.device: Device = device
        self.detector_model = detector_model
        #: further `build_pipeline` arguments (max_side, detect_every), kept across rebuilds
        self.pipeline_options = dict(pipeline_options or {})
        #: the pipelined executor (live_executor.py), not a `build_pipeline` argument
        self.pipelined = bool(self.pipeline_options.pop("pipelined", True))
        self._executor: LiveExecutor | None = None
        self.wanted_expression = expression_model
        self.pipeline: FacePipeline | None = None
        self.expression_name: str | None = None
        self.smoother = ExpressionSmoother(smoothing)
        self.history = ProbabilityHistory(history_seconds)
        self.recording: SessionRecording | None = None
        self.source_info: dict[str, Any] = {}
        self.frames_analysed = 0
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._stopping = threading.Event()
        self._update: LiveUpdate | None = None
        self._update_lock = threading.Lock()
        self._seen_overlays: set[str] = set()
        self._faceless = 0
        self._fps = 0.0
        self._last_frame_time: float | None = None
        self._deleted: set[str] = set()
        self._next_file_check = 0.0
        self._bad_frames = 0
        self.cuda_probe: threading.Thread | None = None

    # ---------------------------------------------------------------- requests (UI thread)
    def request(self, command: Callable[[], None]) -> None:
        self._commands.put(command)

    def set_model(self, name: str) -> None:
        self.request(lambda: self._load_expression(name))

    def set_device(self, device: Device) -> None:
        self.request(lambda: self._build(device))

    def set_smoothing(self, strength: float) -> None:
        self.smoother.strength = strength  # one float: safe to set from any thread

    def new_source(self, info: dict[str, Any]) -> None:
        """A different source starts: forget tracks, smoothing and history."""
        self.request(lambda: self._new_source(info))

    def describe_source(self, info: dict[str, Any]) -> None:
        """What the source turned out to be once opened (for the recording's metadata)."""
        self.request(lambda: self.source_info.update(info))

    def start_recording(self, request: RecordingRequest) -> None:
        self.request(lambda: self._start_recording(request))

    def stop_recording(self, reason: str = "stopped by the user") -> None:
        self.request(lambda: self._stop_recording(reason))

    def stop(self) -> None:
        self._stopping.set()

    def take_update(self) -> LiveUpdate | None:
        with self._update_lock:
            update, self._update = self._update, None
            return update

    # ---------------------------------------------------------------- the thread
    def run(self) -> None:
        self._build(self.device)
        if cuda_status().usable is None and self.pipeline is not None:
            self.cuda_probe = threading.Thread(target=self._probe_cuda, name="cuda-probe", daemon=True)
            self.cuda_probe.start()
        self._executor = executor = LiveExecutor(lambda timeout: self.slot.take(timeout=timeout),
                                                 self.pipelined)
        try:
            while not self._stopping.is_set():
                self._run_commands()
                self._check_model_files()
                for outcome in executor.step(self.pipeline):
                    self._publish(outcome)
        finally:
            for outcome in executor.close():
                self._publish(outcome)
            self._run_commands()  # a stop-recording asked for just before closing still happens
            self._stop_recording("the app closed")

    def _drain(self) -> None:
        """Hand on the frame still finishing, before the models or the source change."""
        if self._executor is not None:
            for outcome in self._executor.drain():
                self._publish(outcome)

    def _run_commands(self) -> None:
        """Run the queued requests between two frames: the frame still finishing is handed
        on first, so it belongs to the models, source and recording it was taken under."""
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            self._drain()
            try:
                command()
            except Exception as exc:  # a command must never end the thread
                self._say(Notice("internal", f"Unexpected error: {exc}", "error"))

    def _publish(self, outcome: Outcome) -> None:
        frame, result = outcome
        if isinstance(result, BadFrameError):
            self._bad_frames += 1
            self._say(Notice("corrupt", f"Frame {frame.index} skipped ({self._bad_frames} so far): "
                                        f"{result}", "warning"))
            return
        if isinstance(result, Exception):  # an onnxruntime failure mid-run: say it, keep the app alive
            self._say(Notice("inference", f"Analysis of frame {frame.index} failed: "
                                          f"{str(result).splitlines()[0][:300]}", "error"))
            return
        self.frames_analysed += 1
        self.smoother.update(result)
        self.history.add(result)
        self._track_faces(result)
        self._seen_overlays |= overlays_present(result.faces)
        recording_status = self._record(result)
        now = time.monotonic()
        if self._last_frame_time is not None:
            rate = 1.0 / max(now - self._last_frame_time, 1e-6)
            self._fps = rate if self._fps == 0 else 0.9 * self._fps + 0.1 * rate
        self._last_frame_time = now
        traces = {a.face.track_id: t for a in result.faces
                  if (t := self.history.trace(a.face.track_id)) is not None}
        update = LiveUpdate(result=result, traces=traces, available=frozenset(self._available()),
                            inference_fps=self._fps, dropped=self.slot.dropped,
                            model=self.expression_name, recording=recording_status)
        with self._update_lock:
            waiting = self._update is not None
            self._update = update
        if not waiting:
            self.updated.emit()

    def _track_faces(self, result: FrameResult) -> None:
        if self.pipeline is None:
            return
        if result.faces:
            if self._faceless >= NO_FACE_AFTER:
                self.notice_cleared.emit("no_face")
            self._faceless = 0
            return
        self._faceless += 1
        if self._faceless == NO_FACE_AFTER:
            self._say(Notice("no_face", "No face in view: face the camera, move closer, or add light. "
                                        "Recording goes on (rows with faces = 0).", "info"))

    # ---------------------------------------------------------------- models
    def _available(self) -> set[str]:
        keys = set(self._seen_overlays)
        if self.pipeline is not None:
            keys |= {"boxes", "landmarks5"}
            if self.pipeline.landmarker is not None:
                keys.add("landmarks68")
            classifier = self.pipeline.classifier
            if classifier is not None:
                keys.add("label")
                if "cam" in classifier.outputs:
                    keys.add("cam")
                if classifier.regions:
                    keys.add("regions")
        return keys

    def _providers(self) -> dict[str, str]:
        return dict(self.pipeline.providers) if self.pipeline is not None else {}

    def _say(self, notice: Notice) -> None:
        self.notice.emit(notice)

    def _model_error(self, name: str, exc: OccluferError) -> None:
        self._say(Notice(f"model:{name}", str(exc), "error", _fetch_actions(str(exc))))

    def _build(self, device: Device) -> None:
        """(Re)load every model on `device`; on failure keep what runs and say why."""
        try:
            pipeline = build_pipeline(self.store, device=device, threads=self.threads,
                                      detector_model=self.detector_model,
                                      **self.pipeline_options)
        except OccluferError as exc:
            self._model_error(self.detector_model, exc)
            self._emit_models()
            return
        self.notice_cleared.emit(f"model:{self.detector_model}")
        if self.pipeline is not None:  # keep track ids across a device switch
            pipeline.tracker = self.pipeline.tracker
        previous = self.pipeline
        self.pipeline, self.device = pipeline, device
        self._seen_overlays.clear()
        wanted = self.expression_name or self.wanted_expression
        if wanted:
            if not self._load_expression(wanted, announce=False) and previous is not None \
                    and previous.classifier is not None:
                self._attach(previous.classifier)  # keep the old session rather than none
        self._emit_models()

    def _load_expression(self, name: str, announce: bool = True) -> bool:
        if self.pipeline is None:
            self.wanted_expression = name
            self._say(Notice("model:pending", f"{name} will load once the face detector is available.",
                             "warning"))
            return False
        try:
            classifier = ExpressionClassifier.from_store(name, self.store, self.device, self.threads)
        except OccluferError as exc:
            self._model_error(name, exc)
            if announce:
                self._emit_models()
            return False
        self.notice_cleared.emit(f"model:{name}")
        self._attach(classifier)
        if announce:
            self._emit_models()
        return True

    def _attach(self, classifier: ExpressionClassifier) -> None:
        assert self.pipeline is not None
        if self.expression_name and self.expression_name != classifier.name:
            self.pipeline.providers.pop(self.expression_name, None)
        self.pipeline.classifier = classifier
        self.pipeline.providers[classifier.name] = classifier.provider
        self.expression_name = self.wanted_expression = classifier.name
        self._seen_overlays -= {"cam", "regions"}  # what the previous model drew

    def _probe_cuda(self) -> None:
        """Find out whether CUDA really loads, so the device switch can say so before it is
        picked: onnxruntime-gpu lists CUDA even where its libraries are missing, and only a
        session tells (providers.create_session remembers the failure for `cuda_status`).

        Runs in its own thread: loading the CUDA provider library (hundreds of MB) from a cold
        disk can take many seconds, and frames must not wait for it."""
        try:
            create_session(self.store.verified_path(self.detector_model), "cuda", self.threads)
        except OccluferError:
            pass
        if not self._stopping.is_set():
            self.cuda_checked.emit()

    def _emit_models(self) -> None:
        classifier = self.pipeline.classifier if self.pipeline is not None else None
        self.models_changed.emit(ModelsInfo(
            detector=self.detector_model if self.pipeline is not None else None,
            expression=self.expression_name if classifier is not None else None,
            classes=tuple(classifier.classes) if classifier is not None else (),
            has_cam=classifier is not None and "cam" in classifier.outputs,
            providers=self._providers(), device=self.device,
            skipped=dict(self.pipeline.skipped) if self.pipeline is not None else {}))

    def _check_model_files(self) -> None:
        """Say so when a loaded model's file disappears (the session keeps its copy in memory)."""
        now = time.monotonic()
        if now < self._next_file_check:
            return
        self._next_file_check = now + MODEL_FILE_CHECK_SECONDS
        for name in self._providers():  # every model loaded now (detector, landmarks, expression …)
            try:
                location = self.store.location(name)
            except OccluferError:
                continue
            if location.is_file():
                if name in self._deleted:
                    self._deleted.discard(name)
                    self.notice_cleared.emit(f"deleted:{name}")
                continue
            if name not in self._deleted:
                self._deleted.add(name)
                command = f"occlufer models fetch {name}"
                self._say(Notice(
                    f"deleted:{name}",
                    f"The file of model {name} was deleted while running ({location}). The copy "
                    f"already loaded keeps working until the app stops; to load it again, run: {command}",
                    "warning", (("Copy command", f"copy:{command}"),)))

    # ---------------------------------------------------------------- source and recording
    def _new_source(self, info: dict[str, Any]) -> None:
        if self._executor is not None:  # the frame pulled ahead belongs to the old source
            self._executor.discard()
        if self.pipeline is not None:
            self.pipeline.reset()
        self.smoother.reset()
        self.history.clear()
        self._faceless = 0
        self._last_frame_time, self._fps = None, 0.0
        self.notice_cleared.emit("no_face")
        self.source_info = dict(info)

    def _start_recording(self, request: RecordingRequest) -> None:
        if self.recording is not None:
            return
        models = list(self._providers())  # every model loaded now, each with its sha256
        try:
            self.recording = SessionRecording(
                request, store=self.store, schema=SessionSchema(expression_classes(self.store)),
                models=models, providers=self._providers(), device=self.device,
                source=self.source_info, fps=self.source_info.get("fps"))
        except (OccluferError, OSError) as exc:
            self._say(Notice("recording", f"Recording could not start: {exc}", "error"))
            self.recording_changed.emit(None)
            return
        self.notice_cleared.emit("recording")
        self.recording_changed.emit(replace(self.recording.status))  # a copy: the UI never shares it

    def _record(self, result: FrameResult) -> RecordingStatus | None:
        recording = self.recording
        if recording is None:
            return None
        try:
            more = recording.write(result, self.expression_name, self._providers())
        except (RecordingError, OSError) as exc:
            self._say(Notice("recording", f"Recording stopped: {exc}", "error"))
            self._stop_recording(f"error: {exc}")
            return None
        if not more:
            self._stop_recording(f"frame limit ({recording.status.frames} frames) reached")
        return replace(recording.status)

    def _stop_recording(self, reason: str) -> None:
        recording, self.recording = self.recording, None
        if recording is None:
            return
        try:
            status = recording.close(reason)
        except RecordingError as exc:
            self._say(Notice("recording", f"Recording ended with an error: {exc}", "error"))
            status = recording.status
        self._say(Notice("recording", f"Recording saved: {status.folder} ({status.frames} frames, "
                                      f"{status.rows} rows; {reason}).", "info",
                         (("Open folder", f"open:{status.folder}"),)))
        self.recording_changed.emit(replace(status))
