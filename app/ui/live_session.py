"""A live session: one capture thread feeding one inference thread through the frame slot.

The window talks only to this object (start, pause, stop, reconnect, switch model or device,
record) and listens to its signals; it never touches a thread, a model or a file itself. The
inference thread lives as long as the session, so models stay loaded across source changes;
capture threads come and go with sources.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from app.pipeline.smoothing import DEFAULT_STRENGTH
from app.runtime.providers import Device
from app.runtime.store import ModelStore
from app.ui.capture import CaptureThread, SourceRequest
from app.ui.frame_slot import LatestFrameSlot
from app.ui.inference import InferenceThread, LiveUpdate
from app.ui.notices import Notice
from app.ui.session_recorder import RecordingRequest

DEMO_ACTION = ("Use demo", "use_demo")
RECONNECT_ACTION = ("Reconnect", "reconnect")


class LiveSession(QObject):
    updated = Signal()  # take the update with `take_update()`
    notice = Signal(object)  # Notice
    notice_cleared = Signal(str)
    models_changed = Signal(object)  # ModelsInfo
    recording_changed = Signal(object)  # RecordingStatus | None
    cuda_checked = Signal()
    state_changed = Signal(str)  # "stopped", "opening", "running", "paused", "ended", "lost"
    source_opened = Signal(object)  # dict describing the source

    def __init__(self, store: ModelStore, device: Device = "auto", threads: int | None = None,
                 detector_model: str = "retinaface_mnet025", expression_model: str | None = None,
                 smoothing: float = DEFAULT_STRENGTH, pipeline_options: dict | None = None) -> None:
        super().__init__()
        self.store = store
        self.slot = LatestFrameSlot()
        self.inference = InferenceThread(self.slot, store, device, threads, detector_model,
                                         expression_model, smoothing,
                                         pipeline_options=pipeline_options)
        self.inference.updated.connect(self.updated)
        self.inference.notice.connect(self.notice)
        self.inference.notice_cleared.connect(self.notice_cleared)
        self.inference.models_changed.connect(self.models_changed)
        self.inference.recording_changed.connect(self._recording_changed)
        self.inference.cuda_checked.connect(self.cuda_checked)
        self.capture: CaptureThread | None = None
        self.request: SourceRequest | None = None
        self.state = "stopped"
        self.recording_active = False
        self._next_index = 0
        self._retired: list[CaptureThread] = []
        self.inference.start()

    # ---------------------------------------------------------------- source
    def start(self, request: SourceRequest) -> None:
        """Open `request` (in the capture thread) and start analysing it."""
        self._end_capture()
        self.request = request
        self.inference.new_source({"spec": request.spec})
        self._launch(request, first_index=0)

    def reconnect(self) -> None:
        """Open the same source again; frame numbers go on from where they stopped, and an open
        recording continues in the same files."""
        if self.request is None:
            return
        self._end_capture()
        self._launch(self.request, first_index=self._next_index)

    def _launch(self, request: SourceRequest, first_index: int) -> None:
        capture = CaptureThread(request, self.slot, first_index)
        capture.opened.connect(self._opened)
        capture.failed.connect(self._failed)
        capture.ended.connect(self._ended)
        capture.frame_skipped.connect(
            lambda text: self.notice.emit(Notice("corrupt", text[:1].upper() + text[1:] + ".", "warning")))
        self.capture = capture
        self._set_state("opening")
        capture.start()

    def pause(self) -> None:
        if self.capture is not None and self.state == "running":
            self.capture.pause()
            self._set_state("paused")

    def resume(self) -> None:
        if self.capture is not None and self.state == "paused":
            self.capture.resume()
            self._set_state("running")

    def stop(self) -> None:
        self._end_capture()
        self.stop_recording("the session was stopped")
        self._set_state("stopped")

    def _end_capture(self) -> None:
        capture, self.capture = self.capture, None
        if capture is None:
            return
        for signal in (capture.opened, capture.failed, capture.ended, capture.frame_skipped):
            signal.disconnect()
        capture.stop()
        if not capture.wait(3000):  # a camera driver stuck in read(): let it finish on its own
            self._retired.append(capture)
        self._next_index = max(self._next_index, capture.last_index + 1)
        self.slot.clear()

    def _opened(self, info: dict[str, Any]) -> None:
        self.inference.describe_source(info)
        self.notice_cleared.emit("source")
        self._set_state("running")
        self.source_opened.emit(info)

    def _failed(self, what: str, message: str) -> None:
        if what == "open":
            self._set_state("stopped")
            self.notice.emit(Notice("source", message, "error", (DEMO_ACTION,)))
            return
        self._set_state("lost")
        kept = " The recording stays open and continues when frames come back." if self.recording_active else ""
        self.notice.emit(Notice("source", f"{message}.{kept}".replace("..", "."), "warning",
                                (RECONNECT_ACTION, DEMO_ACTION)))

    def _ended(self, message: str) -> None:
        self._set_state("ended")
        self.notice.emit(Notice("source", message, "info"))
        self.stop_recording("the source ended")

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

    # ---------------------------------------------------------------- models, recording
    def set_model(self, name: str) -> None:
        self.inference.set_model(name)

    def set_device(self, device: Device) -> None:
        self.inference.set_device(device)

    def set_smoothing(self, strength: float) -> None:
        self.inference.set_smoothing(strength)

    def start_recording(self, request: RecordingRequest) -> None:
        self.recording_active = True
        self.inference.start_recording(request)

    def stop_recording(self, reason: str = "stopped by the user") -> None:
        if self.recording_active:
            self.inference.stop_recording(reason)

    def _recording_changed(self, status) -> None:
        self.recording_active = status is not None and status.active
        self.recording_changed.emit(status)

    def take_update(self) -> LiveUpdate | None:
        return self.inference.take_update()

    # ---------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop both threads; an open recording is finished and its metadata written."""
        self._end_capture()
        self.inference.stop()
        self.inference.wait(10000)
        if self.inference.cuda_probe is not None:
            self.inference.cuda_probe.join(10)
        for capture in self._retired:
            capture.wait(1000)
