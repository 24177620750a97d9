"""The Qt binding under the app must not corrupt Python's reference counts.

PySide6 6.12.0's `Signal.emit` loses one reference to `True` per call. On Python 3.11, where
`True` is not immortal, the desktop app aborted ("Fatal Python error: bool_dealloc") after
about 2,500 frames - 85 seconds of live video - because the inference thread emits once per
frame. The 30-minute app soak (`python -m app.soak --app`) found it; pyproject.toml excludes
that version. This test fails on any binding with the same bug, without crashing the run."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, QThread, Signal


class _Emitter(QThread):
    fired = Signal()
    carried = Signal(object)

    def run(self) -> None:  # the app emits from worker threads (capture, inference)
        for _ in range(200):
            self.fired.emit()
            self.carried.emit(None)


def test_signal_emit_keeps_the_reference_count_of_true(qapp):
    emitter = _Emitter()
    emitter.fired.connect(lambda: None)
    emitter.carried.connect(lambda _: None)
    before = sys.getrefcount(True)
    emitter.start()
    emitter.wait()

    class Local(QObject):
        fired = Signal()

    local = Local()
    local.fired.connect(lambda: None)
    for _ in range(200):
        local.fired.emit()
    # 600 emits: a binding with the 6.12.0 bug drops 600 references; others drift by a few
    assert sys.getrefcount(True) - before > -60
