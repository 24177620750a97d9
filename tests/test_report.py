"""`occlufer report` on real recordings: a demo run, a run killed mid-write, a two-track
session recorded as the app records; and the clear errors for files that are not sessions."""

from __future__ import annotations

import base64
import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from app import ASSETS_DIR, REPO_ROOT
from app.errors import SessionFileError
from app.report import write_report
from app.session_csv import open_session, read_table
from tests.app_support import face_frames, run_occlufer, sha256, write_video
from tests.session_support import record_session

FRAMES = 45


@pytest.fixture(scope="module")
def home(retinaface_onnx) -> Path:
    return retinaface_onnx.parent.parent


@pytest.fixture(scope="module")
def demo_csv(home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo.csv"
    run_occlufer("run", "--source", "demo", "--model", "resnet18_fast", "--max-frames",
                 str(FRAMES), "--device", "cpu", "--threads", "1", "--out", str(out), store=home,
                 timeout=600)
    return out


@pytest.fixture(scope="module")
def two_track_session(tmp_path_factory, astronaut_bgr, ferplus_root, model_store,
                      retinaface_onnx) -> Path:
    """A session folder recorded as the app records it, on a video with two faces."""
    folder = tmp_path_factory.mktemp("two-faces")
    video = write_video(folder / "faces.avi", face_frames(astronaut_bgr, ferplus_root, 40))
    return record_session(folder / "sessions", str(video), model_store, "resnet18_fast", 40)


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_of_a_demo_run(home, demo_csv, tmp_path):
    done = run_occlufer("report", str(demo_csv), "--out", str(tmp_path / "report"), store=home,
                        timeout=600)
    assert "report.html" in done.stdout
    html = (tmp_path / "report" / "report.html").read_text()
    for name in ("track_1", "expression_time", "continuity", "latency", "hidden_parts"):
        png = (tmp_path / "report" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64encode(png).decode() in html, f"{name} embedded in report.html"
    assert "No metadata.json" in html  # a plain run CSV: the report says sha256s are unknown

    report = write_report(demo_csv, tmp_path / "again")
    rows = _csv_rows(demo_csv)
    (track,) = report.summary.tracks
    assert report.summary.rows == len(rows) == FRAMES and track.track_id == 1
    # time per expression is the recorded smoothed labels, one frame (1/30 s) each
    counts = Counter(r["smoothed_label"] for r in rows)
    assert track.expression_seconds == pytest.approx({k: v / 30 for k, v in counts.items()},
                                                     abs=1e-3)
    assert set(report.summary.latency) >= {"detect", "expression", "frame"}


def test_a_run_killed_mid_write_is_reported_up_to_its_last_whole_row(home, tmp_path):
    out = tmp_path / "killed.csv"
    env = {**os.environ, "OCCLUFER_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run", "--source", "demo", "--loop",
                             "--model", "resnet18_fast", "--device", "cpu", "--threads", "1",
                             "--out", str(out)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # until a few flushes (one a second) are on disk
            if out.is_file() and out.read_bytes().count(b"\n") > 40:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    whole = out.read_bytes()
    report = write_report(out, tmp_path / "report")
    assert report.summary.rows >= 40
    assert report.summary.rows == whole.count(b"\n") - 1  # header; a cut last row has no \n

    # the same run cut in the middle of its last row, as a kill between two flushes leaves it
    cut = tmp_path / "cut.csv"
    last_line_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    cut.write_bytes(whole[: last_line_start + 40])
    lines = whole[:last_line_start].count(b"\n") - 1  # whole rows before the cut one
    done = run_occlufer("report", str(cut), "--out", str(tmp_path / "cut-report"), store=home,
                        timeout=600)
    assert "cut mid-write" in done.stderr
    html = (tmp_path / "cut-report" / "report.html").read_text()
    assert "cut mid-write" in html and f"{lines:,}</td>" in html
    assert read_table(cut).rows == lines and read_table(cut).cut


def test_report_of_a_two_track_session_with_its_models(two_track_session, tmp_path):
    session = open_session(two_track_session)
    assert session.video is not None and session.metadata is not None
    report = write_report(session, tmp_path / "report")
    tracks = report.summary.tracks
    assert [t.track_id for t in tracks] == [1, 2]
    assert {"track_1", "track_2"} <= set(report.figures)
    assert all(t.seconds == pytest.approx(40 / 30, abs=0.05) for t in tracks)
    html = report.html.read_text()
    shipped = sha256(ASSETS_DIR / "models" / "resnet18_fast.onnx")  # the file that ran
    assert shipped in html and session.metadata["models"]["retinaface_mnet025"]["sha256"] in html
    assert "ended" in html and "frame limit reached" in html


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"name,age\nada,36\n", "not an occlufer session CSV"),
])
def test_files_that_are_not_sessions_are_clear_errors(home, tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    done = run_occlufer("report", str(path), "--out", str(tmp_path / "r"), store=home, timeout=600,
                        check=False)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def test_a_header_without_rows_and_a_damaged_middle_row_are_clear_errors(demo_csv, tmp_path):
    text = demo_csv.read_text()
    lines = text.splitlines(keepends=True)
    header_only = tmp_path / "header.csv"
    header_only.write_text(lines[0])
    with pytest.raises(SessionFileError, match="no whole row"):
        read_table(header_only)
    damaged = tmp_path / "damaged.csv"
    damaged.write_text("".join(lines[:5] + [lines[5][:30] + "\n"] + lines[6:]))
    with pytest.raises(SessionFileError, match="line 6"):
        read_table(damaged)
