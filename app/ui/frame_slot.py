"""A one-frame mailbox between the capture thread and the inference thread.

A camera delivers frames whether or not anyone keeps up; queueing them would make the view
lag further behind reality every second. The slot holds only the newest frame: a frame that
arrives before the previous one was taken replaces it, and is counted as dropped.
"""

from __future__ import annotations

import threading

from app.pipeline.records import Frame


class LatestFrameSlot:
    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._ready = threading.Condition()
        self.dropped = 0  # frames replaced before inference took them

    def put(self, frame: Frame) -> None:
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._ready.notify()

    def take(self, timeout: float | None = None) -> Frame | None:
        """The newest frame (and empty the slot), or None if none arrived within `timeout`."""
        with self._ready:
            if self._frame is None:
                self._ready.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def clear(self) -> None:
        with self._ready:
            self._frame = None
