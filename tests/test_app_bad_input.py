"""Bad input never stops the app: it keeps running and the banner says what happened.

A video that ends, a corrupt frame, a source lost mid-recording, a model file deleted while
running, a missing detector, a frame with no face. All real files, real models, real window.
"""

from __future__ import annotations

import csv
import shutil

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton

from tests.app_support import corrupt_frame, face_frames, make_store, write_video
from tests.test_app_window import open_window, wait_for


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root):
    return make_store(tmp_path_factory.mktemp("manifest"), model_store.root, ferplus_root)


@pytest.fixture(scope="module")
def short_frames(astronaut_bgr, ferplus_root) -> list[np.ndarray]:
    return face_frames(astronaut_bgr, ferplus_root, 30)


def click(qtbot, window, text: str) -> None:
    button = next(b for b in window.banner.findChildren(QPushButton) if b.text() == text)
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_a_video_that_ends_is_reported_and_can_be_replayed(qtbot, store, short_frames, tmp_path):
    video = write_video(tmp_path / "short.avi", short_frames[:20])
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source(str(video))
    window.loop_check.setChecked(False)
    window.start()
    wait_for(qtbot, window, lambda: window.session.state == "ended")
    assert "The video ended after 20 frames" in window.banner.texts()["source"]
    wait_for(qtbot, window, lambda: window.view.rendered is not None)  # the last frame stays shown
    # plays again: the session runs and ends a second time, showing frames anew (start()
    # resets the count, so comparing with the first play's count fails whenever that play
    # showed every frame)
    states: list[str] = []
    window.session.state_changed.connect(states.append)
    window.start()
    wait_for(qtbot, window, lambda: "running" in states
             and "ended" in states[states.index("running"):] and window.frames_shown > 0)


def test_a_corrupt_frame_is_skipped_and_said(qtbot, store, short_frames, tmp_path):
    video = write_video(tmp_path / "corrupt.avi", short_frames)
    corrupt_frame(video, 12)
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source(str(video))
    window.loop_check.setChecked(False)
    window.start()
    wait_for(qtbot, window, lambda: window.session.state == "ended")
    notice = window.banner.texts()["corrupt"]
    assert "frame 12 of corrupt.avi cannot be decoded" in notice.lower()
    # the last frames may still be in analysis when the source reports its end
    wait_for(qtbot, window, lambda: window.last_update.result.frame.index > 12)  # went on past it
    assert "after 29 frames" in window.banner.texts()["source"]


def test_source_lost_mid_recording_keeps_the_recording_and_reconnects(qtbot, store, short_frames, tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), short_frames[0])
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source(str(image))
    window.loop_check.setChecked(True)
    window.start()
    wait_for(qtbot, window, lambda: window.frames_shown > 3)
    window.record_action.trigger()
    wait_for(qtbot, window, lambda: window.recording is not None and window.recording.frames > 5)

    kept = image.read_bytes()
    image.unlink()  # the source goes away mid-run
    wait_for(qtbot, window, lambda: window.session.state == "lost")
    assert "Image file not found" in window.banner.texts()["source"]
    assert "recording stays open" in window.banner.texts()["source"]
    assert window.recording.active and window.record_action.isChecked()
    lost_at = window.last_update.result.frame.index

    image.write_bytes(kept)
    click(qtbot, window, "Reconnect")
    wait_for(qtbot, window, lambda: window.session.state == "running"
                    and window.last_update.result.frame.index > lost_at + 5)
    window.record_action.trigger()  # stop
    wait_for(qtbot, window, lambda: not window.recording.active)
    with (window.recording.folder / "frames.csv").open() as fh:
        frames = list(dict.fromkeys(int(r["frame"]) for r in csv.DictReader(fh)))  # 2 faces: 2 rows
    assert frames == sorted(frames), "frame numbers go on across the reconnect, never restart"
    assert min(frames) <= lost_at < max(frames)


def test_model_file_deleted_while_running(qtbot, store, short_frames, tmp_path, ferplus_root):
    private = make_store(tmp_path / "manifest", store.root, ferplus_root)  # own copies of the test models
    video = write_video(tmp_path / "loop.avi", short_frames)
    window = open_window(qtbot, private, tmp_path, model="resnet18_fast")
    window.select_source(str(video))
    window.loop_check.setChecked(True)
    window.start()
    wait_for(qtbot, window, lambda: window.frames_shown > 3)

    model_file = private.location("resnet18_fast")
    backup = model_file.read_bytes()
    model_file.unlink()
    wait_for(qtbot, window, lambda: "deleted:resnet18_fast" in window.banner.texts())
    notice = window.banner.texts()["deleted:resnet18_fast"]
    assert "occlufer models fetch resnet18_fast" in notice and "keeps working" in notice
    shown = window.frames_shown
    wait_for(qtbot, window, lambda: window.frames_shown > shown + 5)
    assert window.last_update.model == "resnet18_fast"  # still classifying from memory

    window.switch_model("resnet18_tiny7")
    wait_for(qtbot, window, lambda: window.last_update.model == "resnet18_tiny7")
    window.switch_model("resnet18_fast")  # its file is gone: refused, the running model stays
    wait_for(qtbot, window, lambda: "model:resnet18_fast" in window.banner.texts())
    assert "Run: occlufer models fetch resnet18_fast" in window.banner.texts()["model:resnet18_fast"]
    assert window.model_combo.currentData() == "resnet18_tiny7"
    click(qtbot, window, "Copy command")
    from PySide6.QtGui import QGuiApplication
    assert QGuiApplication.clipboard().text() == "occlufer models fetch resnet18_fast"

    model_file.write_bytes(backup[: len(backup) // 2])  # back, but damaged
    window.switch_model("resnet18_fast")
    wait_for(qtbot, window, lambda: "damaged" in window.banner.texts().get("model:resnet18_fast", ""))
    shown = window.frames_shown
    wait_for(qtbot, window, lambda: window.frames_shown > shown + 5)
    assert window.last_update.model == "resnet18_tiny7"


def test_missing_detector_still_shows_video_and_names_the_fetch_command(qtbot, short_frames, tmp_path,
                                                                       ferplus_root):
    empty = make_store(tmp_path / "manifest", tmp_path / "empty-store", ferplus_root)
    video = write_video(tmp_path / "clip.avi", short_frames)
    window = open_window(qtbot, empty, tmp_path)
    window.select_source(str(video))
    window.start()
    wait_for(qtbot, window, lambda: window.frames_shown > 3)
    text = window.banner.texts()["model:retinaface_mnet025"]
    assert "occlufer models fetch retinaface_mnet025" in text
    assert window.last_update.result.faces == []
    assert not window.overlay_actions["boxes"].isEnabled()
    assert window.providers_label.text() == "no model loaded"


def test_no_face_is_said_and_cleared(qtbot, store, short_frames, tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((480, 640, 3), 90, np.uint8))
    window = open_window(qtbot, store, tmp_path, model="resnet18_fast")
    window.select_source(str(blank))
    window.loop_check.setChecked(True)
    window.start()
    wait_for(qtbot, window, lambda: "no_face" in window.banner.texts())
    assert "No face in view" in window.banner.texts()["no_face"]
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), short_frames[0])
    window.select_source(str(face))
    window.start()
    wait_for(qtbot, window, lambda: "no_face" not in window.banner.texts()
                    and bool(window.last_update.result.faces))
    shutil.rmtree(tmp_path / "sessions", ignore_errors=True)
