"""The session viewer offscreen on a real recording (two faces, clean video saved): open it
from the main window's File menu, seek, and see the recorded boxes and labels drawn on the
saved frame; compare with another model re-run on the video; a CSV alone shows plots."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import QSettings

from app.overlays import render
from app.pipeline.records import Frame, FrameResult
from app.session_rows import CSV_NAME, VIDEO_NAME
from app.ui.main_window import MainWindow
from app.ui.session_viewer import VIEWER_OVERLAYS, SessionViewer
from app.ui.settings import AppSettings
from tests.app_support import face_frames, write_video
from tests.session_support import record_session

FRAMES = 30


@pytest.fixture(scope="module")
def session_folder(tmp_path_factory, astronaut_bgr, ferplus_root, model_store,
                   retinaface_onnx) -> Path:
    folder = tmp_path_factory.mktemp("viewer")
    video = write_video(folder / "faces.avi", face_frames(astronaut_bgr, ferplus_root, FRAMES))
    return record_session(folder / "sessions", str(video), model_store, "resnet18_fast", FRAMES)


def _rows(folder: Path) -> list[dict]:
    with (folder / CSV_NAME).open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_open_seek_and_the_drawn_label_is_the_recorded_one(qtbot, session_folder, model_store,
                                                           tmp_path):
    settings = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    window = MainWindow(store=model_store, settings=settings, device="cpu", threads=1)
    qtbot.addWidget(window)
    viewer = window.open_session(session_folder)  # what File -> Open session… calls
    assert isinstance(viewer, SessionViewer)
    qtbot.addWidget(viewer)
    assert viewer.view.isVisible() and viewer.compare_button.isEnabled()

    target = 17
    viewer.slider.setValue(target)  # scrub the timeline
    assert viewer.ordinal == target
    recorded = [r for r in _rows(session_folder) if r["frame"] == str(target)]
    assert len(recorded) == 2
    drawn = {a.face.track_id: a.label for a in viewer.faces}
    assert drawn == {int(r["track_id"]): r["label"] for r in recorded}
    for analysis, row in zip(sorted(viewer.faces, key=lambda a: a.face.track_id),
                             sorted(recorded, key=lambda r: int(r["track_id"]))):
        assert float(np.max(analysis.probs)) == pytest.approx(float(row["confidence"]), abs=1e-4)
        assert analysis.face.box[0] == pytest.approx(float(row["x1"]), abs=0.06)
    # the picture is the saved video's frame with those faces drawn by the app's overlays
    shown = viewer.view.rendered
    capture = cv2.VideoCapture(str(session_folder / VIDEO_NAME))  # frame `target`, read in order
    for _ in range(target + 1):
        ok, raw = capture.read()
        assert ok
    capture.release()
    assert shown.shape == raw.shape and np.abs(shown.astype(int) - raw).max() > 0
    again = render(FrameResult(Frame(raw, target, 0.0), viewer.faces), VIEWER_OVERLAYS)
    assert np.array_equal(shown, again)
    # the side panel's cards name the recorded labels
    headers = {t: card.header.text() for t, card in viewer.face_panel.cards.items()}
    for row in recorded:
        assert f"frame: {row['label']}" in headers[int(row["track_id"])]

    viewer.compare("resnet18_fast_noocc")  # another shipped model, re-run on the saved video
    qtbot.waitUntil(lambda: not viewer.comparing, timeout=120_000)
    assert "resnet18_fast_noocc" in viewer.compared, viewer.banner.texts()
    rerun = viewer.compared["resnet18_fast_noocc"]
    assert set(rerun["model"]) == {"resnet18_fast_noocc"} and rerun.rows == 2 * FRAMES
    assert not viewer.plots.pixmap().isNull()


def test_a_session_without_video_shows_the_plots_alone(qtbot, session_folder, model_store, tmp_path):
    csv_only = tmp_path / "run.csv"
    csv_only.write_bytes((session_folder / CSV_NAME).read_bytes())
    viewer = SessionViewer.open(csv_only, model_store)
    qtbot.addWidget(viewer)
    viewer.show()
    assert not viewer.view.isVisible() and not viewer.compare_button.isEnabled()
    assert not viewer.plots.pixmap().isNull()
    viewer.seek(5)
    assert {a.face.track_id for a in viewer.faces} == {1, 2}
    assert "No video was saved" in " ".join(viewer.banner.texts().values())


def test_a_file_that_is_not_a_session_is_said_in_the_banner(qtbot, model_store, tmp_path):
    settings = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    window = MainWindow(store=model_store, settings=settings, device="cpu", threads=1)
    qtbot.addWidget(window)
    assert window.open_session(tmp_path) is None
    assert "not a session folder" in window.banner.texts()["session"]
