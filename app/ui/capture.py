"""The capture thread: reads a source and leaves each frame in the latest-frame slot.

Opening a camera can take a second and reading one blocks until the next frame, so neither
may happen on the UI thread. Files and the demo are paced at their nominal frame rate (a
video plays at its speed, not as fast as the disk allows); cameras set their own pace.
Everything that goes wrong is reported as a signal with a message written for the user.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from PySide6.QtCore import QThread, Signal

from app.errors import OccluferError, SourceError
from app.sources import CameraSource, FrameSource, ImageSource, VideoSource, open_source
from app.ui.frame_slot import LatestFrameSlot

#: Rate at which a folder of images is shown (one image per half second).
FOLDER_FPS = 2.0


@dataclasses.dataclass(frozen=True)
class SourceRequest:
    """What the user asked to open."""

    spec: str  # `demo`, a camera index, or a path
    width: int | None = None
    height: int | None = None
    loop: bool = False

    def describe(self) -> str:
        if self.spec == "demo":
            return "the demo"
        return f"camera {self.spec}" if self.spec.isdigit() else self.spec


def source_kind(source: FrameSource) -> str:
    if isinstance(source, CameraSource):
        return "camera"
    if isinstance(source, VideoSource):
        return "video"
    if isinstance(source, ImageSource):
        return "images" if len(source.paths) > 1 else "image"
    return "demo" if source.name == "demo" else "other"


class CaptureThread(QThread):
    opened = Signal(object)  # dict: spec, name, kind, fps, size of the first frame
    failed = Signal(str, str)  # what ("open", "lost"), message
    ended = Signal(str)  # message: the file or image list came to its end
    frame_skipped = Signal(str)  # a corrupt frame or unreadable image was skipped

    def __init__(self, request: SourceRequest, slot: LatestFrameSlot, first_index: int = 0) -> None:
        super().__init__()
        self.request, self.slot, self.first_index = request, slot, first_index
        self.frames_read = 0
        self.last_index = first_index - 1
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()

    # ---------------------------------------------------------------- control (any thread)
    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # ---------------------------------------------------------------- the thread
    def run(self) -> None:
        request = self.request
        loop = request.loop or request.spec == "demo"  # the demo runs until stopped
        try:
            source = open_source(request.spec, loop=loop, width=request.width, height=request.height)
        except OccluferError as exc:
            self.failed.emit("open", str(exc))
            return
        except Exception as exc:  # a backend error opening a device: still the user's message
            self.failed.emit("open", f"Cannot open {request.describe()}: {exc}")
            return
        kind = source_kind(source)
        pace = None if kind == "camera" else (FOLDER_FPS if kind == "images" else (source.fps or 30.0))
        try:
            self._read(source, kind, pace)
        finally:
            source.close()

    def _read(self, source: FrameSource, kind: str, pace: float | None) -> None:
        skipped_seen = 0
        announced = False
        started = time.monotonic()
        paced_frames = 0
        frames = iter(source)
        while not self._stop.is_set():
            if not self._running.is_set():
                self._running.wait(0.1)
                started, paced_frames = time.monotonic(), 0  # resume at the nominal rate
                continue
            try:
                frame = next(frames)
            except StopIteration:
                what = {"video": "The video ended", "image": "The image was shown",
                        "images": "The image folder ended"}.get(kind, "The source ended")
                self.ended.emit(f"{what} after {self.frames_read} frames"
                                + ("; turn on Loop to repeat it." if kind != "camera" else "."))
                return
            except SourceError as exc:
                self.failed.emit("lost", str(exc))
                return
            except Exception as exc:  # a decoder or driver error mid-run
                self.failed.emit("lost", f"{self.request.describe()} stopped: {exc}")
                return
            skipped = getattr(source, "skipped", [])
            if len(skipped) > skipped_seen:
                for _, why in skipped[skipped_seen:]:
                    self.frame_skipped.emit(str(why))
                skipped_seen = len(skipped)
            index = self.first_index + frame.index
            frame = dataclasses.replace(frame, index=index)
            if not announced:
                self.opened.emit(self._describe(source, kind, frame.image.shape))
                announced = True
            self.slot.put(frame)
            self.frames_read += 1
            self.last_index = index
            if pace:
                paced_frames += 1
                delay = started + paced_frames / pace - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -1.0:  # fell far behind (machine busy): do not race to catch up
                    started, paced_frames = time.monotonic(), 0

    def _describe(self, source: FrameSource, kind: str, shape: tuple[int, ...]) -> dict[str, Any]:
        return {"spec": self.request.spec, "name": source.name, "kind": kind,
                "fps": source.fps, "width": int(shape[1]), "height": int(shape[0]),
                "loop": self.request.loop, "requested_size": [self.request.width, self.request.height]}
