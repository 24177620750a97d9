"""The real window (offscreen) on a real face video with real ONNX models: start, toggle every
overlay, switch the model mid-run, record 100 frames, stop; then read what was written.

Models: RetinaFace, FaceMesh (built by the store from its wheel, when the [convert] extra is
installed), the shipped FERPlus ResNet-18 and a second real ResNet-18 (tests/app_support.py)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QPushButton

from app.overlays import OVERLAYS
from app.runtime.providers import cuda_status
from app.session_rows import SessionSchema, class_column, expression_classes
from app.ui.main_window import MainWindow
from app.ui.settings import AppSettings
from app.runtime.store import ModelStore
from tests.app_support import (FERPLUS_CLASSES, SEVEN_CLASSES, SHIPPED_MODEL, face_frames,
                               install_facemesh, make_store, sha256, write_video)

WAIT_MS = 90_000  # generous: a loaded CI machine analyses a frame in seconds, not ms


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root, facemesh):
    return make_store(tmp_path_factory.mktemp("manifest"), model_store.root, ferplus_root)


@pytest.fixture(scope="module")
def facemesh(model_store) -> bool:
    """Whether the FaceMesh landmark stage can run (built into the session's store)."""
    return install_facemesh(model_store)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory, astronaut_bgr, ferplus_root) -> Path:
    """3 s at 30 fps: the astronaut drifting on the left, a FERPlus face on the right."""
    return write_video(tmp_path_factory.mktemp("video") / "faces.avi",
                       face_frames(astronaut_bgr, ferplus_root, 90))


def open_window(qtbot, store, tmp_path: Path, **kwargs) -> MainWindow:
    settings = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    settings.output_dir = tmp_path / "sessions"
    window = MainWindow(store=store, settings=settings, device="cpu", threads=2, **kwargs)
    qtbot.addWidget(window)
    with qtbot.waitActive(window):
        window.show()
    return window


def wait_for(qtbot, window: MainWindow, condition, timeout: int = WAIT_MS) -> None:
    """qtbot.waitUntil that, on time-out, says where the window was (state, frames, banner)."""
    try:
        qtbot.waitUntil(lambda: bool(condition()), timeout=timeout)
    except Exception as exc:
        update = window.last_update
        raise AssertionError(
            f"timed out: state={window.session.state} shown={window.frames_shown} "
            f"frame={None if update is None else update.result.frame.index} "
            f"model={None if update is None else update.model} banner={window.banner.texts()}") from exc


def press(qtbot, window: MainWindow, shortcut: str) -> None:
    combo = QKeySequence(shortcut)[0]
    qtbot.keyClick(window, combo.key(), combo.keyboardModifiers())


def test_window_overlays_model_switch_and_recording(qtbot, store, face_video, tmp_path, facemesh):
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source(str(face_video))
    window.loop_check.setChecked(True)
    window.start()
    wait_for(qtbot, window, lambda: window.last_update is not None
             and len(window.last_update.result.faces) == 2)
    assert "retinaface_mnet025 · CPU" in window.providers_label.text()
    assert "resnet18_fast · CPU" in window.providers_label.text()
    cuda = cuda_status()
    if cuda.usable is False:  # no CUDA libraries here: greyed out with the reason
        wait_for(qtbot, window, lambda: not window.device_combo.model().item(2).isEnabled())
        assert cuda.reason in window.device_combo.toolTip()

    # ---- overlays: pause on one frame, then every toggle must change exactly that frame
    press(qtbot, window, "Space")
    wait_for(qtbot, window, lambda: window.session.state == "paused")
    qtbot.wait(300)  # the last frame in flight arrives
    frame_index = window.view.frame_index
    faces = window.last_update.result.faces
    if facemesh:  # the 68 points are FaceMesh's, in frame pixels, on the faces
        assert "facemesh_468 · CPU" in window.providers_label.text()
        assert "landmarks" in window.latency_label.text()
        for analysis in faces:
            eyes = analysis.landmarks68[[36, 39, 42, 45]].reshape(2, 2, 2).mean(axis=1)
            iod = np.linalg.norm(analysis.face.landmarks5[0] - analysis.face.landmarks5[1])
            assert np.linalg.norm(eyes - analysis.face.landmarks5[:2], axis=1).max() < 0.25 * iod
    # stages this pipeline does not have: disabled, and the window says which model would draw them
    absent = {"regions", "parsing", "occlusion"} | (set() if facemesh else {"landmarks68"})
    for key in absent:
        spec = next(s for s in OVERLAYS if s.key == key)
        assert not window.overlay_actions[key].isEnabled()
        assert "not available" in window.overlay_checks[key].toolTip()
        assert spec.short in window.unavailable_label.text()
        assert key == "landmarks68" or spec.provided_by in window.unavailable_label.toolTip()
    assert "facemesh_468" in window.unavailable_label.toolTip() or facemesh
    card = window.face_panel.cards[faces[0].face.track_id]
    assert "not available" in card.regions.text()  # no occlusion stage: the card says so
    for spec in OVERLAYS:
        action = window.overlay_actions[spec.key]
        if spec.key in absent:
            continue
        assert action.isEnabled(), spec.key
        before = window.view.rendered.copy()
        press(qtbot, window, spec.shortcut)
        assert window.view.frame_index == frame_index
        assert not np.array_equal(window.view.rendered, before), f"toggling {spec.key} changed nothing"
        press(qtbot, window, spec.shortcut)
        assert np.array_equal(window.view.rendered, before), f"toggling {spec.key} twice is not a no-op"
    for key in ("boxes", "landmarks5", "cam", "label") + (("landmarks68",) if facemesh else ()):
        window.overlay_actions[key].setChecked(True)
    before = window.view.rendered.copy()
    window.opacity_slider.setValue(95)
    assert not np.array_equal(window.view.rendered, before), "opacity changes the CAM"
    window.cam_combo.setCurrentIndex(window.cam_combo.findData("surprise"))
    window.cam_combo.activated.emit(window.cam_combo.currentIndex())
    assert window.overlay_options().cam_class == "surprise"

    snapshot = window.snapshot()
    assert snapshot is not None and np.array_equal(cv2.imread(str(snapshot)), window.view.rendered)

    # ---- model switch mid-run
    press(qtbot, window, "Space")
    wait_for(qtbot, window, lambda: window.session.state == "running")
    window.switch_model("resnet18_tiny7")
    wait_for(qtbot, window, lambda: window.last_update.model == "resnet18_tiny7"
                    and bool(window.last_update.result.faces)
                    and window.last_update.result.faces[0].classes == SEVEN_CLASSES)
    assert "resnet18_tiny7 · CPU" in window.providers_label.text()
    assert "resnet18_fast" not in window.providers_label.text()
    assert [window.cam_combo.itemData(i) for i in range(1, window.cam_combo.count())] == list(SEVEN_CLASSES)

    # ---- record 100 frames, switching back to the first model half way
    window.limit_spin.setValue(100)
    window.record_action.trigger()
    wait_for(qtbot, window, lambda: window.recording is not None and window.recording.active)
    assert window.view._badge and window.view._badge.startswith("REC")
    wait_for(qtbot, window, lambda: window.recording.frames >= 50)
    window.switch_model("resnet18_fast")
    wait_for(qtbot, window, lambda: not window.recording.active)
    assert not window.record_action.isChecked() and not window.view._badge
    folder = window.recording.folder
    window.stop()
    wait_for(qtbot, window, lambda: window.session.state == "stopped")

    # ---- the CSV: one schema, 100 frames, two stable tracks, both models
    with (folder / "frames.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    schema = SessionSchema(expression_classes(store))
    assert reader.fieldnames == schema.columns
    frames = sorted({int(r["frame"]) for r in rows})
    assert len(frames) == 100 and frames == sorted(frames)
    faced = [r for r in rows if r["faces"] == "2"]
    assert len(faced) >= 0.9 * len(rows)
    left = {r["track_id"] for r in faced if float(r["x1"]) < 320}
    right = {r["track_id"] for r in faced if float(r["x1"]) >= 320}
    assert len(left) == 1 and len(right) == 1 and left != right, "track ids stay with their faces"
    models = [r["model"] for r in faced]
    assert models[0] == "resnet18_tiny7" and models[-1] == "resnet18_fast"
    for row in faced:
        classes = SEVEN_CLASSES if row["model"] == "resnet18_tiny7" else FERPLUS_CLASSES
        assert sum(float(row[class_column(c)]) for c in classes) == pytest.approx(1.0, abs=2e-3)
        if row["model"] == "resnet18_tiny7":
            assert row["p_contempt"] == ""
        assert row["label"] in classes and row["smoothed_label"] in classes
        assert float(row["frame_ms"]) >= float(row["detect_ms"]) > 0
        assert (float(row["landmarks_ms"]) > 0) if facemesh else row["landmarks_ms"] == ""
        datetime.fromisoformat(row["timestamp"])

    # ---- the metadata: models with sha256, device, providers, source, version, timeline
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["app_version"] and meta["device"] == "cpu" and meta["frames"] == 100
    assert meta["source"]["spec"] == str(face_video) and meta["source"]["kind"] == "video"
    for name in ("retinaface_mnet025", "resnet18_tiny7", "resnet18_fast") + (("facemesh_468",) if facemesh else ()):
        assert meta["models"][name]["sha256"] == sha256(store.location(name))
        assert meta["providers"][name] == "CPU"
    assert [m["model"] for m in meta["model_timeline"]] == ["resnet18_tiny7", "resnet18_fast"]
    assert "frame limit" in meta["stopped_because"]
    datetime.fromisoformat(meta["started"])
    assert str(folder) in window.banner.texts()["recording"]


def test_clean_video_and_settings_are_remembered(qtbot, store, face_video, tmp_path):
    window = open_window(qtbot, store, tmp_path, model="resnet18_tiny7")
    window.select_source(str(face_video))
    window.loop_check.setChecked(True)
    window.video_check.setChecked(True)
    window.limit_spin.setValue(20)
    window.overlay_actions["cam"].setChecked(True)
    window.smoothing_slider.setValue(80)
    window.start()
    wait_for(qtbot, window, lambda: window.frames_shown > 0)
    window.record_action.trigger()
    wait_for(qtbot, window, lambda: window.recording is not None and not window.recording.active)
    video = cv2.VideoCapture(str(window.recording.folder / "video.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    ok, first = video.read()
    assert ok and first.shape == (480, 640, 3)

    # device switch, live: every model is loaded again; here "auto" runs on the CPU
    window.device_combo.setCurrentIndex(window.device_combo.findData("auto"))
    window.device_combo.activated.emit(window.device_combo.currentIndex())
    wait_for(qtbot, window, lambda: window.models_info.device == "auto")
    shown = window.frames_shown
    wait_for(qtbot, window, lambda: window.frames_shown > shown + 3)
    assert window.last_update.model == "resnet18_tiny7"
    assert "retinaface_mnet025 · CPU" in window.providers_label.text()
    assert window.settings.device == "auto"
    window.close()

    again = open_window(qtbot, store, tmp_path)
    assert again.current_source() == str(face_video)
    assert again.model_combo.currentData() == "resnet18_tiny7"
    assert "cam" in again.overlay_options().enabled and again.overlay_actions["cam"].isChecked()
    assert again.smoothing_slider.value() == 80 and again.video_check.isChecked()


def test_occlufer_app_command_line():
    from app.cli import build_parser, cmd_app

    args = build_parser().parse_args(["app", "--source", "demo", "--model", "resnet18_tiny7", "--device", "cpu"])
    assert args.func is cmd_app and (args.source, args.model, args.device) == ("demo", "resnet18_tiny7", "cpu")


def test_notice_buttons_offer_the_demo(qtbot, store, tmp_path):
    """A camera that does not exist: the banner says so and its button starts the demo."""
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source("9")
    window.start()
    wait_for(qtbot, window, lambda: "source" in window.banner.texts())
    assert "Camera 9 cannot be opened" in window.banner.texts()["source"]
    assert window.session.state == "stopped"
    demo = next(b for b in window.banner.findChildren(QPushButton) if b.text() == "Use demo")
    qtbot.mouseClick(demo, Qt.MouseButton.LeftButton)
    wait_for(qtbot, window, lambda: window.last_update is not None and window.last_update.result.faces)
    assert window.current_source() == "demo" and "source" not in window.banner.texts()
    assert window.view.rendered.shape == (480, 640, 3)


def test_model_picker_lists_every_expression_model_in_the_manifest(qtbot, tmp_path):
    """The repository's own manifest: every `task: expression` entry is offered (installed or
    not), so a model registered by a training run appears without code changes."""
    store = ModelStore(root=tmp_path / "models")
    expected = store.names(task="expression")
    window = open_window(qtbot, store, tmp_path)
    combo = window.model_combo
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert listed == expected and SHIPPED_MODEL in listed
    for i, name in enumerate(listed):
        assert combo.itemText(i).endswith("(not installed)") == (not store.location(name).is_file())
