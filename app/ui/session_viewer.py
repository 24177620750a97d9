"""The session viewer: a recorded session, frame by frame, as the app showed it live.

Opened from the main window (File -> Open session…) or with `SessionViewer.open(folder)`.
Built like the main window (a notice banner and the `VideoView` on the left, the `FacePanel`
cards on the right) and drawing with the same `app.overlays.render`, but every box, label
and probability comes from the recorded CSV (`app.session_replay`): nothing is re-inferred,
so what is seen is what was recorded. The saved clean video supplies the pictures; without
one the viewer shows the report's plots alone. "Compare" runs another expression model on the
saved video (through `app.run_rows`, the path of `occlufer run`) in a worker thread and plots
the two models' probabilities per track.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QComboBox, QLabel, QMainWindow, QPushButton, QScrollArea, QSlider,
                               QSplitter, QToolBar, QVBoxLayout, QWidget)

from app.errors import OccluferError
from app.overlays import OverlayOptions, render
from app.pipeline.records import Frame, FrameResult
from app.report import figures
from app.report.summary import frame_clock, row_durations, summarize
from app.runtime.store import ModelStore
from app.session_csv import Session, open_session, read_table
from app.session_replay import RecordedFrames
from app.ui.face_history import TrackTrace
from app.ui.face_panel import FacePanel
from app.ui.notices import Notice, NoticeBanner
from app.ui.video_view import VideoView

#: What the viewer draws: what the CSV holds (boxes, 5 points, the recorded label).
VIEWER_OVERLAYS = OverlayOptions(enabled=frozenset({"boxes", "landmarks5", "label"}),
                                 use_smoothed=False)
PLOT_SECONDS = 10.0


def _pixmap(png: bytes) -> QPixmap:
    pixmap = QPixmap()
    pixmap.loadFromData(png, "PNG")
    return pixmap


class SessionViewer(QMainWindow):
    def __init__(self, session: Session, store: ModelStore | None = None) -> None:
        super().__init__()
        self.session, self.store = session, store or ModelStore()
        self.recorded = RecordedFrames(session.table)
        self.ordinal = -1
        self.faces: list = []  # the FaceAnalysis records drawn now
        self._capture: cv2.VideoCapture | None = None
        self._next_video_frame = 0
        self.compared: dict[str, object] = {}  # model -> SessionTable of its re-run
        self._compare_state: dict[str, object] = {}
        self.setWindowTitle(f"occlufer session viewer: {session.name}")
        self._build()
        if session.video is not None:
            self._capture = cv2.VideoCapture(str(session.video))
            if not self._capture.isOpened():
                self._capture = None
                self.banner.show_notice(Notice("video", f"{session.video.name} cannot be read: "
                                                        "showing the plots alone", "warning"))
        else:
            self.banner.show_notice(Notice("video", "No video was saved with this session "
                                                    "(Record with 'clean video' to get one): "
                                                    "showing the plots alone", "info"))
        for note in session.notes:
            self.banner.show_notice(Notice(f"note:{hash(note)}", note, "warning"))
        self.view.setVisible(self._capture is not None)
        self._timer = QTimer(self)
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll_compare)
        self.seek(0)

    @classmethod
    def open(cls, path: Path | str, store: ModelStore | None = None) -> "SessionViewer":
        return cls(open_session(path), store)

    # ---------------------------------------------------------------- construction
    def _build(self) -> None:
        bar = QToolBar("Timeline")
        bar.setMovable(False)
        self.addToolBar(Qt.ToolBarArea.BottomToolBarArea, bar)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, max(len(self.recorded) - 1, 0))
        self.slider.valueChanged.connect(self.seek)
        self.position = QLabel()
        self.position.setMinimumWidth(190)
        bar.addWidget(self.slider)
        bar.addWidget(self.position)
        bar.addSeparator()
        self.model_combo = QComboBox()
        recorded_models = set(summarize_models(self.session))
        for name in self.store.names(task="expression"):
            if name not in recorded_models:
                self.model_combo.addItem(name, name)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Run this model on the saved video and plot it against "
                                       "the recorded probabilities")
        self.compare_button.clicked.connect(lambda: self.compare(self.model_combo.currentData()))
        self.compare_button.setEnabled(self.session.video is not None and self.model_combo.count() > 0)
        for widget in (QLabel(" Re-run "), self.model_combo, self.compare_button):
            bar.addWidget(widget)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        layout = QVBoxLayout(left)
        layout.setContentsMargins(6, 6, 0, 6)
        self.banner = NoticeBanner()
        self.view = VideoView()
        self.plots = QLabel()
        self.plots.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.plots)
        layout.addWidget(self.banner)
        layout.addWidget(self.view, 3)
        layout.addWidget(scroll, 2)
        splitter.addWidget(left)
        self.face_panel = FacePanel(PLOT_SECONDS)
        self.face_panel.setMinimumWidth(330)
        splitter.addWidget(self.face_panel)
        splitter.setStretchFactor(0, 1)
        splitter.setSizes([900, 360])
        self.setCentralWidget(splitter)
        self._draw_plots()

    def _draw_plots(self) -> None:
        """The report's per-track figures (and comparisons) stacked under the video."""
        table = self.session.table
        clock = frame_clock(table)
        durations = row_durations(table, clock)
        summary = summarize(table)
        images = [figures.png_bytes(figures.track_timeline(table, track, table.classes, durations))
                  for track in summary.tracks]
        recorded_name = ", ".join(summary.models) or "recorded"
        for model, rerun in self.compared.items():
            for track in summary.tracks:
                images.append(figures.png_bytes(
                    figures.comparison(table, rerun, track.track_id, (recorded_name, model))))
        pixmaps = [_pixmap(png) for png in images]
        if not pixmaps:
            self.plots.setText("No face was recorded in this session.")
            return
        width = max(p.width() for p in pixmaps)
        stacked = QPixmap(width, sum(p.height() for p in pixmaps))
        stacked.fill(Qt.GlobalColor.white)
        from PySide6.QtGui import QPainter

        painter = QPainter(stacked)
        y = 0
        for p in pixmaps:
            painter.drawPixmap(0, y, p)
            y += p.height()
        painter.end()
        self.plots.setPixmap(stacked)

    # ---------------------------------------------------------------- timeline
    def seek(self, ordinal: int) -> None:
        """Show analysed frame `ordinal` (0-based position in the session and its video)."""
        if not len(self.recorded):
            return
        ordinal = int(np.clip(ordinal, 0, len(self.recorded) - 1))
        self.ordinal = ordinal
        if self.slider.value() != ordinal:
            self.slider.blockSignals(True)
            self.slider.setValue(ordinal)
            self.slider.blockSignals(False)
        self.faces = self.recorded.faces(ordinal)
        image = self._video_frame(ordinal)
        if image is not None:
            frame = Frame(image=image, index=int(self.recorded.frame_index[ordinal]),
                          timestamp=0.0, source_time=float(self.recorded.times[ordinal]))
            rendered = render(FrameResult(frame=frame, faces=self.faces), VIEWER_OVERLAYS)
            self.view.show_frame(rendered, frame.index)
        self.face_panel.show_faces(self.faces, {a.face.track_id: self._trace(a.face.track_id)
                                                for a in self.faces})
        self.position.setText(f"frame {self.recorded.frame_index[ordinal]} · "
                              f"{self.recorded.times[ordinal]:.2f} s · "
                              f"{ordinal + 1}/{len(self.recorded)}")

    def _video_frame(self, ordinal: int) -> np.ndarray | None:
        """Frame `ordinal` of the saved video (sequential reads while playing forward)."""
        if self._capture is None:
            return None
        if ordinal != self._next_video_frame:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, ordinal)
        ok, image = self._capture.read()
        self._next_video_frame = ordinal + 1
        return image if ok else None

    def _trace(self, track_id: int) -> TrackTrace | None:
        """The track's recorded probabilities over the last PLOT_SECONDS up to now."""
        table, classes = self.session.table, self.recorded.classes
        now = float(self.recorded.times[self.ordinal])
        end = int(self.recorded.stops[self.ordinal])
        seconds = table.seconds()[:end]
        rows = np.flatnonzero((table["track_id"][:end] == track_id) & (seconds >= now - PLOT_SECONDS))
        present = [c for c in classes if len(rows) and not np.isnan(table[f"p_{c}"][rows[-1]])]
        if not len(rows) or not present:
            return None
        probs = np.stack([table[f"p_{c}"][rows] for c in present], axis=1).astype(np.float32)
        keep = ~np.isnan(probs).any(axis=1)
        return TrackTrace(track_id, tuple(present), (now - seconds[rows][keep]).astype(np.float32),
                          probs[keep])

    # ---------------------------------------------------------------- compare
    def compare(self, model: str | None) -> None:
        """Run `model` over the saved video in a worker thread; plots appear when it is done."""
        if model is None or self.session.video is None or self._compare_state.get("running"):
            return
        self.compare_button.setEnabled(False)
        self._compare_state = {"running": True, "model": model}
        self.banner.show_notice(Notice("compare", f"Running {model} on {self.session.video.name}…",
                                       "info"))
        threading.Thread(target=self._run_compare, args=(model,), daemon=True,
                         name="occlufer-compare").start()
        self._timer.start()

    def _run_compare(self, model: str) -> None:
        from app.recording import CsvRecorder
        from app.run_rows import RunRows

        try:
            out = Path(tempfile.mkdtemp(prefix="occlufer-compare-")) / f"{model}.csv"
            with RunRows.open(self.session.video, model=model, store=self.store,
                              device="cpu") as run:
                with CsvRecorder(out, run.columns) as recorder:
                    for rows in run.frames(on_bad_frame=None):
                        for row in rows:
                            recorder.write(row)
            self._compare_state["table"] = read_table(out)
        except (OccluferError, OSError) as exc:
            self._compare_state["error"] = str(exc)
        finally:
            self._compare_state["running"] = False

    def _poll_compare(self) -> None:
        state = self._compare_state
        if state.get("running"):
            return
        self._timer.stop()
        self.compare_button.setEnabled(True)
        if "error" in state:
            self.banner.show_notice(Notice("compare", f"Compare failed: {state['error']}", "error"))
            return
        self.banner.clear("compare")
        self.compared[str(state["model"])] = state["table"]
        self._draw_plots()

    @property
    def comparing(self) -> bool:
        return bool(self._compare_state.get("running")) or self._timer.isActive()

    def closeEvent(self, event) -> None:
        if self._capture is not None:
            self._capture.release()
        super().closeEvent(event)


def summarize_models(session: Session) -> list[str]:
    """The expression models that produced this session's rows."""
    return [m for m in np.unique(session.table["model"]).tolist() if m]
