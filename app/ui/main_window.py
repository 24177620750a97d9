"""The main window of `occlufer app`.

Layout: a toolbar (source, resolution, loop, start / pause / stop, model, device, record,
snapshot), the video with a message banner above it, and a side panel (overlay toggles with
opacity and CAM class, smoothing, per-face cards, performance, recording options). The status
bar names the provider every model really runs on.

The window keeps no pipeline state: it forwards the user's choices to `LiveSession` and draws
the `LiveUpdate`s it gets back. Overlay toggles are built from `app.overlays.OVERLAYS`, each a
checkable action with its own shortcut, enabled only while the running models produce what
it draws (its tooltip names the model that would).
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime
from pathlib import Path

import cv2
from PySide6.QtCore import Qt, QTimer, QUrl
from PySide6.QtGui import (QAction, QCloseEvent, QColor, QDesktopServices, QGuiApplication, QIcon,
                           QKeySequence, QPainter, QPixmap)
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGridLayout, QGroupBox,
                               QHBoxLayout, QLabel, QMainWindow, QSlider, QSpinBox, QSplitter, QStyle, QToolBar,
                               QVBoxLayout, QWidget)

from app import __version__
from app.overlays import OVERLAYS, OverlayOptions, render
from app.pipeline.pipeline import STAGES
from app.runtime.providers import cuda_status
from app.runtime.store import ModelStore
from app.sources import IMAGE_SUFFIXES, list_cameras
from app.ui.capture import SourceRequest
from app.ui.face_panel import FacePanel
from app.ui.inference import LiveUpdate, ModelsInfo
from app.ui.live_session import DEMO_ACTION, LiveSession
from app.ui.notices import Notice, NoticeBanner
from app.ui.session_recorder import RecordingRequest, RecordingStatus
from app.ui.settings import AppSettings
from app.ui.video_view import VideoView

RESOLUTIONS = (("640 × 480", "640x480"), ("1280 × 720", "1280x720"), ("1920 × 1080", "1920x1080"),
               ("Native", "native"))
DEVICES = (("Auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"))
OPEN_FILE, OPEN_FOLDER, NO_CAMERA = "__open_file__", "__open_folder__", "__no_camera__"
VIDEO_FILTER = ("Videos and images (*.mp4 *.avi *.mov *.mkv *.webm *.m4v "
                + " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES)) + ");;All files (*)")


def _record_icon() -> QIcon:
    """A red dot: the universal record sign (Qt's standard icons have none)."""
    pixmap = QPixmap(32, 32)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(225, 45, 45))
    painter.drawEllipse(6, 6, 20, 20)
    painter.end()
    return QIcon(pixmap)


class MainWindow(QMainWindow):
    def __init__(self, store: ModelStore | None = None, settings: AppSettings | None = None,
                 source: str | None = None, model: str | None = None, device: str | None = None,
                 threads: int | None = None, detector: str = "retinaface_mnet025",
                 pipeline_options: dict | None = None) -> None:
        super().__init__()
        self.store = store or ModelStore()
        self.settings = settings or AppSettings()
        self.setWindowTitle(f"occlufer {__version__}")
        self.models_info: ModelsInfo | None = None
        self.recording: RecordingStatus | None = None
        self.last_update: LiveUpdate | None = None
        self.frames_shown = 0
        self.viewers: list = []  # session viewers opened from File -> Open session
        self._shown_times: deque[float] = deque(maxlen=60)
        self._available: frozenset[str] = frozenset()
        self._overlay_options = self.settings.overlays
        self.cameras = list_cameras()

        expression_models = self.store.names(task="expression")
        initial_model = model or self.settings.model or self.store.default_expression_model()
        if initial_model not in expression_models:
            installed = [n for n in expression_models if self.store.location(n).is_file()]
            initial_model = (installed or expression_models or [None])[0]
        initial_device = device or self.settings.device
        self.session = LiveSession(self.store, initial_device, threads, detector, initial_model,
                                   self.settings.smoothing, pipeline_options)

        self._build_actions()
        self._build_toolbar(expression_models, initial_model, initial_device)
        self._build_central()
        self._build_status_bar()
        self._connect_session()
        self._restore_geometry()
        self.banner.action.connect(self._notice_action)
        self._update_available(frozenset())  # every toggle says what it needs until models load

        if not expression_models:
            self.banner.show_notice(Notice(
                "model:none", "No expression model is listed in the model store yet: showing faces, "
                              "tracks and landmarks only. `occlufer models list` shows what is available.",
                "info"))
        if source is not None:
            self.select_source(source)
            QTimer.singleShot(0, self.start)
        elif not self.cameras and self.current_source() not in ("demo",) and not self._is_file_source():
            self._say_no_camera()

    # ---------------------------------------------------------------- construction
    def _action(self, text: str, shortcut: str | None, slot, checkable: bool = False,
                tip: str | None = None) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.setCheckable(checkable)
        action.setToolTip(f"{tip or text} ({shortcut})" if shortcut else (tip or text))
        if checkable:
            action.toggled.connect(slot)
        else:
            action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work wherever the focus is
        return action

    def _build_actions(self) -> None:
        self.start_action = self._action("Start", "F5", self.start, tip="Start or resume the source")
        self.pause_action = self._action("Pause", "Space", self.toggle_pause, tip="Pause / resume")
        self.stop_action = self._action("Stop", "Shift+F5", self.stop, tip="Stop the source")
        self.record_action = self._action("Record", "Ctrl+R", self._record_toggled, checkable=True,
                                          tip="Record frames to CSV + metadata.json")
        self.snapshot_action = self._action("Snapshot", "Ctrl+S", self.snapshot,
                                            tip="Save the frame with its overlays as PNG")
        self.open_file_action = self._action("Open video or image…", "Ctrl+O", self._open_file)
        self.open_folder_action = self._action("Open image folder…", "Ctrl+Shift+O", self._open_folder)
        self.open_session_action = self._action("Open session…", "Ctrl+Alt+O", self._open_session,
                                                tip="Review a recorded session folder")
        self.demo_action = self._action("Demo", "Ctrl+D", self.use_demo, tip="Run the built-in demo")
        self.output_action = self._action("Recording folder…", None, self._choose_output)
        self.quit_action = self._action("Quit", "Ctrl+Q", self.close)
        self.next_model_action = self._action("Next model", "M", self._next_model,
                                              tip="Switch to the next expression model")
        self.opacity_down = self._action("Less opacity", "[", lambda: self._nudge_opacity(-10))
        self.opacity_up = self._action("More opacity", "]", lambda: self._nudge_opacity(10))
        self.overlay_actions: dict[str, QAction] = {}
        for spec in OVERLAYS:
            action = self._action(spec.title, spec.shortcut, lambda on, k=spec.key: self._overlay_toggled(k, on),
                                  checkable=True)
            action.blockSignals(True)
            action.setChecked(spec.key in self._overlay_options.enabled)
            action.blockSignals(False)
            self.overlay_actions[spec.key] = action

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.open_file_action, self.open_folder_action, self.demo_action,
                       self.open_session_action, None,
                       self.snapshot_action, self.output_action, None, self.quit_action):
            file_menu.addSeparator() if action is None else file_menu.addAction(action)
        session_menu = menu.addMenu("&Session")
        for action in (self.start_action, self.pause_action, self.stop_action, None, self.record_action,
                       self.next_model_action):
            session_menu.addSeparator() if action is None else session_menu.addAction(action)
        view_menu = menu.addMenu("&Overlays")
        for action in self.overlay_actions.values():
            view_menu.addAction(action)
        view_menu.addSeparator()
        view_menu.addAction(self.opacity_down)
        view_menu.addAction(self.opacity_up)

    def _set_icons(self) -> None:
        style = self.style()
        icons = {self.start_action: QStyle.StandardPixmap.SP_MediaPlay,
                 self.pause_action: QStyle.StandardPixmap.SP_MediaPause,
                 self.stop_action: QStyle.StandardPixmap.SP_MediaStop,
                 self.snapshot_action: QStyle.StandardPixmap.SP_DialogSaveButton,
                 self.open_file_action: QStyle.StandardPixmap.SP_DialogOpenButton,
                 self.open_folder_action: QStyle.StandardPixmap.SP_DirOpenIcon}
        for action, pixmap in icons.items():
            action.setIcon(style.standardIcon(pixmap))
        self.record_action.setIcon(_record_icon())

    def _build_toolbar(self, expression_models: list[str], model: str | None, device: str) -> None:
        self._set_icons()
        bar = QToolBar("Session")
        bar.setObjectName("sessionToolbar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.addToolBar(bar)

        self.source_combo = QComboBox()
        self.source_combo.setMinimumWidth(230)
        self.source_combo.setToolTip("Camera, video, image, image folder or the built-in demo")
        self._fill_sources()
        self.source_combo.activated.connect(self._source_activated)
        self.resolution_combo = QComboBox()
        for text, value in RESOLUTIONS:
            self.resolution_combo.addItem(text, value)
        self.resolution_combo.setToolTip("Capture size for cameras and the demo (files play at their own size)")
        self._select_data(self.resolution_combo, self.settings.resolution)
        self.loop_check = QCheckBox("Loop")
        self.loop_check.setToolTip("Repeat videos, images and folders when they end")
        self.loop_check.setChecked(self.settings.loop)
        for widget in (QLabel(" Source "), self.source_combo, self.resolution_combo, self.loop_check):
            bar.addWidget(widget)
        bar.addSeparator()
        for action in (self.start_action, self.pause_action, self.stop_action):
            bar.addAction(action)
        bar.addSeparator()

        self.model_combo = QComboBox()
        self.model_combo.setMinimumWidth(170)
        self.model_combo.setToolTip("Expression model (switches live); M cycles through them")
        for name in expression_models:
            state = self.store.location(name).is_file()
            self.model_combo.addItem(name if state else f"{name} (not installed)", name)
        if not expression_models:
            self.model_combo.addItem("no expression model", None)
            self.model_combo.setEnabled(False)
        self._select_data(self.model_combo, model)
        self.model_combo.activated.connect(self._model_activated)
        self.device_combo = QComboBox()
        for text, value in DEVICES:
            self.device_combo.addItem(text, value)
        self._select_data(self.device_combo, device)
        self.device_combo.activated.connect(self._device_activated)
        self._refresh_cuda_item()
        for widget in (QLabel(" Model "), self.model_combo, QLabel(" Device "), self.device_combo):
            bar.addWidget(widget)
        bar.addSeparator()
        bar.addAction(self.record_action)
        bar.addAction(self.snapshot_action)

    def _build_central(self) -> None:
        splitter = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(6, 6, 0, 6)
        self.banner = NoticeBanner()
        self.view = VideoView()
        left_layout.addWidget(self.banner)
        left_layout.addWidget(self.view, 1)
        splitter.addWidget(left)
        splitter.addWidget(self._build_side_panel())
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setSizes([900, 360])
        self.setCentralWidget(splitter)

    def _build_side_panel(self) -> QWidget:
        panel = QWidget()
        panel.setMinimumWidth(330)
        panel.setMaximumWidth(460)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 6, 6)

        overlays = QGroupBox("Overlays")
        grid = QGridLayout(overlays)
        grid.setVerticalSpacing(2)
        self.overlay_checks: dict[str, QCheckBox] = {}
        for i, spec in enumerate(OVERLAYS):
            check = QCheckBox(f"{spec.short}  [{spec.shortcut}]")
            action = self.overlay_actions[spec.key]
            check.setChecked(action.isChecked())
            check.toggled.connect(action.setChecked)
            action.toggled.connect(check.setChecked)
            self.overlay_checks[spec.key] = check
            grid.addWidget(check, i // 3, i % 3)
        form = QFormLayout()
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(round(self._overlay_options.opacity * 100)))
        self.opacity_slider.setToolTip("Opacity of the maps (CAM, parsing, occlusion); [ and ] change it")
        self.opacity_slider.valueChanged.connect(self._opacity_changed)
        self.cam_combo = QComboBox()
        self.cam_combo.addItem("Predicted class", None)
        self.cam_combo.setToolTip("Which class's activation map to show")
        self.cam_combo.activated.connect(self._cam_class_changed)
        form.addRow("Map opacity", self.opacity_slider)
        form.addRow("CAM of", self.cam_combo)
        grid.addLayout(form, (len(OVERLAYS) + 2) // 3, 0, 1, 3)
        self.unavailable_label = QLabel()
        self.unavailable_label.setWordWrap(True)
        self.unavailable_label.setStyleSheet("color: #9aa0a6;")
        grid.addWidget(self.unavailable_label, (len(OVERLAYS) + 2) // 3 + 1, 0, 1, 3)
        layout.addWidget(overlays)

        expression = QGroupBox("Faces")
        expression_layout = QVBoxLayout(expression)
        smoothing_row = QHBoxLayout()
        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setRange(0, 95)
        self.smoothing_slider.setValue(int(round(self.settings.smoothing * 100)))
        self.smoothing_slider.setToolTip("Exponential smoothing of each track's probabilities "
                                         "(0: raw per-frame output)")
        self.smoothing_slider.valueChanged.connect(self._smoothing_changed)
        self.smoothing_value = QLabel()
        self._smoothing_changed(self.smoothing_slider.value())
        smoothing_row.addWidget(QLabel("Smoothing"))
        smoothing_row.addWidget(self.smoothing_slider, 1)
        smoothing_row.addWidget(self.smoothing_value)
        expression_layout.addLayout(smoothing_row)
        self.face_panel = FacePanel(self.settings.plot_seconds)
        expression_layout.addWidget(self.face_panel, 1)
        layout.addWidget(expression, 1)

        performance = QGroupBox("Performance")
        perf_layout = QVBoxLayout(performance)
        self.fps_label = QLabel("–")
        self.latency_label = QLabel("–")
        self.latency_label.setStyleSheet("font-family: monospace;")
        perf_layout.addWidget(self.fps_label)
        perf_layout.addWidget(self.latency_label)
        layout.addWidget(performance)

        recording = QGroupBox("Recording")
        rec_form = QFormLayout(recording)
        self.video_check = QCheckBox("Also save the clean video")
        self.video_check.setChecked(self.settings.record_video)
        self.limit_spin = QSpinBox()
        self.limit_spin.setRange(0, 10_000_000)
        self.limit_spin.setSpecialValueText("until stopped")
        self.limit_spin.setSuffix(" frames")
        self.limit_spin.setValue(self.settings.frame_limit)
        self.output_label = QLabel()
        self.output_label.setWordWrap(True)
        self.output_label.setStyleSheet("color: #9aa0a6;")
        self._show_output_dir()
        rec_form.addRow(self.video_check)
        rec_form.addRow("Stop after", self.limit_spin)
        rec_form.addRow("Folder", self.output_label)
        layout.addWidget(recording)
        return panel

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.rec_label = QLabel()
        self.rec_label.setStyleSheet("color: #ff5a5a; font-weight: bold;")
        self.state_label = QLabel("stopped")
        self.providers_label = QLabel("loading models…")
        self.providers_label.setToolTip("Where each model really runs (from its onnxruntime session)")
        for widget in (self.rec_label, self.state_label, self.providers_label):
            status.addPermanentWidget(widget)

    def _connect_session(self) -> None:
        session = self.session
        session.updated.connect(self._on_update)
        session.notice.connect(self.banner.show_notice)
        session.notice_cleared.connect(self.banner.clear)
        session.models_changed.connect(self._on_models)
        session.recording_changed.connect(self._on_recording)
        session.state_changed.connect(self._on_state)
        session.cuda_checked.connect(self._refresh_cuda_item)
        session.source_opened.connect(self._on_source_opened)
        self._on_state("stopped")

    def _restore_geometry(self) -> None:
        geometry = self.settings.geometry
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1360, 860)

    # ---------------------------------------------------------------- sources
    def _fill_sources(self) -> None:
        combo = self.source_combo
        combo.clear()
        combo.addItem("Demo · astronaut with occluders", "demo")
        for camera in self.cameras:
            combo.addItem(f"Camera {camera.index} · {camera.name}", str(camera.index))
        if not self.cameras:
            combo.addItem("No camera found", NO_CAMERA)
            item = combo.model().item(combo.count() - 1)
            item.setEnabled(False)
        for path in self.settings.recent_files:
            if Path(path).exists():
                combo.addItem(Path(path).name, path)
                combo.setItemData(combo.count() - 1, path, Qt.ItemDataRole.ToolTipRole)
        combo.insertSeparator(combo.count())
        combo.addItem("Open video or image…", OPEN_FILE)
        combo.addItem("Open image folder…", OPEN_FOLDER)
        remembered = self.settings.source
        if remembered and self._select_data(combo, remembered):
            return
        self._select_data(combo, str(self.cameras[0].index) if self.cameras else "demo")

    @staticmethod
    def _select_data(combo: QComboBox, value) -> bool:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)
        return index >= 0

    def current_source(self) -> str | None:
        spec = self.source_combo.currentData()
        return None if spec in (OPEN_FILE, OPEN_FOLDER, NO_CAMERA) else spec

    def _is_file_source(self) -> bool:
        spec = self.current_source()
        return bool(spec) and spec != "demo" and not str(spec).isdigit()

    def select_source(self, spec: str) -> None:
        """Make `spec` (demo, camera index or path) the selected source, adding it if new."""
        spec = str(spec)
        if not self._select_data(self.source_combo, spec):
            label = f"Camera {spec}" if spec.isdigit() else Path(spec).name or spec
            self.source_combo.insertItem(1, label, spec)
            self.source_combo.setItemData(1, spec, Qt.ItemDataRole.ToolTipRole)
            self.source_combo.setCurrentIndex(1)
        if not spec.isdigit() and spec != "demo":
            recent = [spec] + [p for p in self.settings.recent_files if p != spec]
            self.settings.recent_files = recent
        self.settings.source = spec

    def _source_activated(self, _index: int) -> None:
        spec = self.source_combo.currentData()
        if spec == OPEN_FILE:
            self._open_file()
        elif spec == OPEN_FOLDER:
            self._open_folder()
        elif spec is not None and spec != NO_CAMERA:
            self.settings.source = spec

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a video or an image", str(Path.home()), VIDEO_FILTER)
        if path:
            self.select_source(path)
            self.start()
        else:
            self._select_data(self.source_combo, self.settings.source or "demo")

    def _open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images", str(Path.home()))
        if path:
            self.select_source(path)
            self.start()
        else:
            self._select_data(self.source_combo, self.settings.source or "demo")

    def _open_session(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a recorded session folder",
                                                str(self.settings.output_dir))
        if path:
            self.open_session(Path(path))

    def open_session(self, folder: Path):
        """A session viewer window on `folder` (a recording), or a banner saying why not."""
        from app.errors import OccluferError
        from app.ui.session_viewer import SessionViewer

        try:
            viewer = SessionViewer.open(folder, self.store)
        except OccluferError as exc:
            self.banner.show_notice(Notice("session", f"Cannot open the session: {exc}", "error"))
            return None
        self.banner.clear("session")
        self.viewers.append(viewer)
        viewer.resize(1280, 860)
        viewer.show()
        return viewer

    def _say_no_camera(self) -> None:
        self.banner.show_notice(Notice(
            "no_camera", "No camera found (none is connected, or the OS does not list it). "
                         "Try the built-in demo, or open a video, an image or a folder.",
            "warning", (DEMO_ACTION, ("Open file…", "open_file"))))

    def use_demo(self) -> None:
        self.select_source("demo")
        self.start()

    # ---------------------------------------------------------------- start / pause / stop
    def _request(self) -> SourceRequest | None:
        spec = self.current_source()
        if spec is None:
            return None
        value = self.resolution_combo.currentData()
        width = height = None
        if value and value != "native":
            width, height = (int(v) for v in value.split("x"))
        return SourceRequest(spec, width, height, self.loop_check.isChecked())

    def start(self) -> None:
        request = self._request()
        if request is None:
            if not self.cameras:
                self._say_no_camera()
            return
        if self.session.state == "paused" and self.session.request == request:
            self.session.resume()
            return
        self.settings.source, self.settings.loop = request.spec, request.loop
        self.settings.resolution = self.resolution_combo.currentData()
        self.banner.clear("no_camera")
        self.banner.clear("source")
        self.banner.clear("corrupt")
        self.face_panel.clear()
        self.frames_shown = 0
        self._shown_times.clear()
        self.session.start(request)

    def toggle_pause(self) -> None:
        if self.session.state == "running":
            self.session.pause()
        elif self.session.state == "paused":
            self.session.resume()

    def stop(self) -> None:
        self.session.stop()

    def _on_state(self, state: str) -> None:
        self.state_label.setText(state)
        running = state in ("running", "paused", "opening")
        self.pause_action.setEnabled(state in ("running", "paused"))
        self.pause_action.setText("Resume" if state == "paused" else "Pause")
        self.stop_action.setEnabled(running or state in ("lost", "ended"))
        if state == "stopped" and self.view.rendered is None:
            self.view.clear("Stopped. Choose a source and press Start (F5)")

    def _on_source_opened(self, info: dict) -> None:
        self.setWindowTitle(f"occlufer {__version__} · {info.get('name', '')}")
        self.statusBar().showMessage(
            f"Opened {info.get('name')} ({info.get('kind')}, {info.get('width')}×{info.get('height')}"
            + (f", {info['fps']:.0f} fps" if info.get("fps") else "") + ")", 5000)

    # ---------------------------------------------------------------- models and device
    def _model_activated(self, _index: int) -> None:
        name = self.model_combo.currentData()
        if name:
            self.settings.model = name
            self.session.set_model(name)
            self.statusBar().showMessage(f"Loading {name}…", 3000)

    def _next_model(self) -> None:
        count = self.model_combo.count()
        if count > 1 and self.model_combo.isEnabled():
            self.model_combo.setCurrentIndex((self.model_combo.currentIndex() + 1) % count)
            self._model_activated(self.model_combo.currentIndex())

    def switch_model(self, name: str) -> None:
        """Select `name` in the model box and load it (what picking it by hand does)."""
        self._select_data(self.model_combo, name)
        self._model_activated(self.model_combo.currentIndex())

    def _device_activated(self, _index: int) -> None:
        device = self.device_combo.currentData()
        self.settings.device = device
        self.session.set_device(device)
        self.statusBar().showMessage(f"Loading the models on {device.upper()}…", 3000)

    def _refresh_cuda_item(self) -> None:
        status = cuda_status()
        index = self.device_combo.findData("cuda")
        item = self.device_combo.model().item(index)
        item.setEnabled(status.usable is not False)
        item.setToolTip(f"CUDA unavailable: {status.reason}" if status.usable is False else status.reason)
        self.device_combo.setToolTip("Where the models run. " + (
            f"CUDA unavailable: {status.reason}" if status.usable is False else status.reason))

    def _on_models(self, info: ModelsInfo) -> None:
        self.models_info = info
        if info.expression:  # remember what really runs (a model that failed to load is not kept)
            self._select_data(self.model_combo, info.expression)
            self.settings.model = info.expression
        self.settings.device = info.device
        self._select_data(self.device_combo, info.device)
        self._refresh_cuda_item()
        parts = [f"{name} · {provider}" for name, provider in info.providers.items()]
        self.providers_label.setText("   ".join(parts) if parts else "no model loaded")
        current = self.cam_combo.currentData()
        self.cam_combo.clear()
        self.cam_combo.addItem("Predicted class", None)
        for cls in info.classes:
            self.cam_combo.addItem(cls, cls)
        self._select_data(self.cam_combo, current if current in info.classes else None)
        self._set_options(cam_class=self.cam_combo.currentData())
        # until the next frame, judge availability by the new models (and their skip reasons)
        self._update_available(self._available)

    # ---------------------------------------------------------------- overlays
    def _set_options(self, **changes) -> None:
        options = self._overlay_options
        self._overlay_options = OverlayOptions(
            enabled=changes.get("enabled", options.enabled), opacity=changes.get("opacity", options.opacity),
            cam_class=changes.get("cam_class", options.cam_class), use_smoothed=options.use_smoothed)
        self.settings.overlays = self._overlay_options
        self.redraw()

    def overlay_options(self) -> OverlayOptions:
        return self._overlay_options

    def _overlay_toggled(self, key: str, on: bool) -> None:
        enabled = set(self._overlay_options.enabled)
        enabled.add(key) if on else enabled.discard(key)
        self._set_options(enabled=frozenset(enabled))

    def _opacity_changed(self, value: int) -> None:
        self._set_options(opacity=value / 100.0)

    def _nudge_opacity(self, delta: int) -> None:
        self.opacity_slider.setValue(self.opacity_slider.value() + delta)

    def _cam_class_changed(self, _index: int) -> None:
        self._set_options(cam_class=self.cam_combo.currentData())

    def _smoothing_changed(self, value: int) -> None:
        strength = value / 100.0
        self.smoothing_value.setText(f"{strength:.2f}")
        self.session.set_smoothing(strength)
        self.settings.smoothing = strength

    def _missing_reason(self, key: str) -> str:
        """Why an overlay has nothing to draw: the optional stage model that would draw it says
        why it did not load (missing: with the fetch command; damaged), else what would."""
        skipped = self.models_info.skipped if self.models_info is not None else {}
        import app.pipeline.pipeline as chain

        stage_models = {"landmarks68": getattr(chain, "LANDMARK_MODEL", None),
                        "parsing": getattr(chain, "OCCLUSION_MODEL", None),
                        "occlusion": getattr(chain, "OCCLUSION_MODEL", None)}
        name = stage_models.get(key)
        if name in skipped and name in self.store.models:  # listed, but not installed or damaged
            return skipped[name]
        return f"needs {next(s.provided_by for s in OVERLAYS if s.key == key)}"

    def _update_available(self, available: frozenset[str]) -> None:
        """Enable the toggles the running models feed; the others say which model would, in
        their tooltip and in a line under the toggles ("not available with these models")."""
        self._available = available
        missing, reasons = [], []
        for spec in OVERLAYS:
            action, check = self.overlay_actions[spec.key], self.overlay_checks[spec.key]
            on = spec.key in available
            if not on:
                missing.append(spec.short)
                reasons.append(f"<b>{spec.short}</b>: {self._missing_reason(spec.key)}")
            tip = (f"{spec.title} ({spec.shortcut})" if on
                   else f"{spec.title}: not available with the running models; "
                        f"{self._missing_reason(spec.key)}")
            action.setEnabled(on)
            check.setEnabled(on)
            action.setToolTip(tip)
            check.setToolTip(tip)
        # one short line (the side panel's height belongs to the face cards); the reasons in
        # its tooltip, as in each greyed toggle's
        self.unavailable_label.setText(
            "Not available with the running models/stages: " + ", ".join(missing) if missing else "")
        self.unavailable_label.setToolTip("<br>".join(reasons))
        self.unavailable_label.setVisible(bool(missing))

    # ---------------------------------------------------------------- drawing
    def _on_update(self) -> None:
        update = self.session.take_update()
        if update is None:
            return
        self.last_update = update
        self.redraw()
        self.face_panel.show_faces(update.result.faces, update.traces)
        if update.available != self._available:
            self._update_available(update.available)
        now = time.monotonic()
        self._shown_times.append(now)
        self.frames_shown += 1
        self._show_performance(update)
        if update.recording is not None and update.recording.active and self.recording is not None \
                and self.recording.active:
            self.recording = update.recording
            self._show_recording(update.recording)

    def redraw(self) -> None:
        """Render the last result with the current overlay choices (also while paused)."""
        update = self.last_update
        if update is None:
            return
        self.view.show_frame(render(update.result, self._overlay_options), update.result.frame.index)

    def display_fps(self) -> float:
        times = self._shown_times
        if len(times) < 2 or times[-1] - times[0] <= 0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def _show_performance(self, update: LiveUpdate) -> None:
        frame = update.result.frame
        self.fps_label.setText(f"Display {self.display_fps():.1f} fps · inference {update.inference_fps:.1f} fps"
                               f"\nFrame {frame.index} · shown {self.frames_shown} · dropped {update.dropped}")
        latency = update.result.latency_ms
        stages = [s for s in (*STAGES, *sorted(set(latency) - set(STAGES) - {"frame"})) if s in latency]
        cells = [f"{stage:<10}{latency[stage]:6.1f} ms" for stage in stages]
        if "frame" in latency:
            cells.append(f"{'total':<10}{latency['frame']:6.1f} ms")
        # two columns: the side panel's height belongs to the face cards
        lines = ["   ".join(cells[i:i + 2]) for i in range(0, len(cells), 2)]
        self.latency_label.setText("\n".join(lines) or "no analysis (no detector loaded)")

    # ---------------------------------------------------------------- recording and snapshot
    def _record_toggled(self, on: bool) -> None:
        if on:
            self.settings.record_video = self.video_check.isChecked()
            self.settings.frame_limit = self.limit_spin.value()
            self.session.start_recording(RecordingRequest(
                self.settings.output_dir, self.video_check.isChecked(), self.limit_spin.value()))
            self.view.set_badge("REC")
        else:
            self.session.stop_recording()

    def _on_recording(self, status: RecordingStatus | None) -> None:
        self.recording = status
        active = status is not None and status.active
        self.record_action.blockSignals(True)
        self.record_action.setChecked(active)
        self.record_action.blockSignals(False)
        self.record_action.setText("Stop recording" if active else "Record")
        if active:
            self._show_recording(status)
        else:
            self.view.set_badge(None)
            self.rec_label.setText("")

    def _show_recording(self, status: RecordingStatus) -> None:
        seconds = int(time.time() - status.started)
        text = f"REC {seconds // 60:02d}:{seconds % 60:02d} · {status.frames} frames"
        self.view.set_badge(text)
        self.rec_label.setText(f"● {text}")

    def snapshot(self) -> Path | None:
        image = self.view.rendered
        if image is None:
            self.statusBar().showMessage("Nothing to save yet: start a source first.", 4000)
            return None
        folder = self.settings.output_dir
        path = folder / datetime.now().strftime("snapshot-%Y%m%d-%H%M%S-%f.png")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ok = cv2.imwrite(str(path), image)
        except (OSError, cv2.error) as exc:
            ok, path = False, Path(f"{path} ({exc})")
        if not ok:
            self.banner.show_notice(Notice("snapshot", f"Snapshot could not be written: {path}", "error"))
            return None
        self.banner.show_notice(Notice("snapshot", f"Snapshot saved: {path}", "info",
                                       (("Open folder", f"open:{folder}"),)))
        return path

    def _choose_output(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for recordings and snapshots",
                                                str(self.settings.output_dir))
        if path:
            self.settings.output_dir = Path(path)
            self._show_output_dir()

    def _show_output_dir(self) -> None:
        self.output_label.setText(str(self.settings.output_dir))
        self.output_label.setToolTip("File ▸ Recording folder… changes it")

    # ---------------------------------------------------------------- notices
    def _notice_action(self, action: str) -> None:
        if action == "use_demo":
            self.use_demo()
        elif action == "reconnect":
            self.banner.clear("source")
            self.session.reconnect()
        elif action == "open_file":
            self._open_file()
        elif action.startswith("copy:"):
            QGuiApplication.clipboard().setText(action[5:])
            self.statusBar().showMessage(f"Copied: {action[5:]}", 4000)
        elif action.startswith("open:"):
            QDesktopServices.openUrl(QUrl.fromLocalFile(action[5:]))

    # ---------------------------------------------------------------- shutdown
    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.geometry = self.saveGeometry()
        self.settings.sync()
        self.session.close()
        super().closeEvent(event)
