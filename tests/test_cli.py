"""The `occlufer` command as a user runs it: real processes, real files, real exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import REPO_ROOT
from tests.app_support import run_occlufer as occlufer


@pytest.fixture(scope="module")
def home(retinaface_onnx) -> Path:
    """An OCCLUFER_HOME whose store already holds the default detector (fetched once)."""
    return retinaface_onnx.parent.parent


@pytest.fixture(scope="module")
def video(tmp_path_factory, astronaut_bgr, ferplus_root) -> Path:
    """A real clip: the astronaut plus an upscaled FERPlus face, drifting over 20 frames."""
    fer = cv2.imread(str(ferplus_root / "FER2013Test" / "fer0032230.png"))
    fer = cv2.copyMakeBorder(cv2.resize(fer, (160, 160)), 40, 40, 40, 40, cv2.BORDER_CONSTANT,
                             value=(128, 128, 128))
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (800, 512))
    for i in range(20):
        canvas = np.full((512, 800, 3), 90, np.uint8)
        canvas[:, :512] = np.roll(astronaut_bgr, 3 * i, axis=1)
        canvas[100:340, 540:780] = fer
        writer.write(canvas)
    writer.release()
    return path


def test_detect_json_on_the_astronaut(home, tmp_path, astronaut_bgr):
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), astronaut_bgr)
    out = json.loads(occlufer("detect", str(image), "--json", store=home).stdout)
    assert len(out["faces"]) == 1
    x1, y1, x2, y2 = out["faces"][0]["box"]
    assert abs(x1 - 178) < 15 and abs(y1 - 57) < 20 and abs(x2 - 273) < 15 and abs(y2 - 177) < 20


def test_run_writes_one_row_per_face_per_frame(home, tmp_path, video):
    out = tmp_path / "session.csv"
    done = occlufer("run", "--source", str(video), "--out", str(out), "--device", "cpu",
                    "--threads", "1", store=home)
    assert "CPU" in done.stderr  # the provider each model runs on is reported
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and {r["faces"] for r in rows} == {"2"}
    by_frame: dict[str, set[str]] = {}
    for r in rows:
        by_frame.setdefault(r["frame"], set()).add(r["track_id"])
    assert len({frozenset(ids) for ids in by_frame.values()}) == 1, "track ids stable"
    for column in ("timestamp", "x1", "score", "lm4_y", "detect_ms", "frame_ms"):
        assert rows[0][column] != ""
    assert float(rows[-1]["source_time"]) == pytest.approx(19 / 15, abs=0.01)


def test_run_on_a_frame_without_faces_says_so(home, tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((480, 640, 3), 200, np.uint8))
    out = tmp_path / "s.csv"
    occlufer("run", "--source", str(blank), "--out", str(out), store=home)
    (row,) = list(csv.DictReader(out.open()))
    assert row["faces"] == "0" and row["face"] == "" and row["detect_ms"] != ""


def test_run_the_demo_max_frames(home, tmp_path):
    out = tmp_path / "demo.csv"
    occlufer("run", "--source", "demo", "--max-frames", "5", "--out", str(out), store=home)
    rows = list(csv.DictReader(out.open()))
    assert [r["frame"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert all(r["faces"] == "1" for r in rows)


def _file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "Source not found"),
        (lambda d: _file(d / "empty.mp4", b""), "empty"),
        (lambda d: _file(d / "bad.png", b"\x89PNG junk"), "Cannot decode image"),
        (lambda d: _file(d / "bad.mp4", b"\x00" * 4096), "Cannot decode video"),
        (lambda d: "57", "Camera 57 cannot be opened"),
    ],
)
def test_bad_sources_fail_cleanly_and_write_nothing(home, tmp_path, make, message):
    out = tmp_path / "never.csv"
    done = occlufer("run", "--source", str(make(tmp_path)), "--out", str(out), store=home,
                    check=False)
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_missing_model_names_the_fetch_command(tmp_path, astronaut_bgr):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), astronaut_bgr)
    done = occlufer("detect", str(image), store=tmp_path / "empty-home", check=False)
    assert done.returncode == 2
    assert "occlufer models fetch retinaface_mnet025" in done.stderr


def test_truncated_model_and_wrong_sha_are_refused(tmp_path, retinaface_onnx, astronaut_bgr):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    for suffix in ("", ".source.json"):
        src = retinaface_onnx.with_name(retinaface_onnx.name + suffix)
        (home / "models" / src.name).write_bytes(src.read_bytes())
    model = home / "models" / retinaface_onnx.name
    model.write_bytes(model.read_bytes()[:100_000])
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), astronaut_bgr)
    done = occlufer("detect", str(image), store=home, check=False)
    assert done.returncode == 2 and "damaged" in done.stderr and "--force" in done.stderr
    verify = occlufer("models", "verify", "retinaface_mnet025", store=home, check=False)
    assert verify.returncode == 1 and "corrupt" in verify.stdout
    occlufer("models", "fetch", "retinaface_mnet025", store=home)  # repairs it
    assert occlufer("models", "verify", "retinaface_mnet025", store=home).returncode == 0


def test_models_list_shows_status(home):
    listing = occlufer("models", "list", store=home).stdout
    assert "retinaface_mnet025 " in listing and " ok " in listing


def test_the_runtime_never_imports_torch(home, tmp_path):
    code = (
        "import sys, runpy\n"
        "sys.argv = ['occlufer', 'run', '--source', 'demo', '--max-frames', '2', '--out', "
        f"{str(tmp_path / 'x.csv')!r}]\n"
        "from app import cli\n"
        "rc = cli.main(sys.argv[1:])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "OCCLUFER_HOME": str(home)}, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr


def test_fetch_all_skips_models_that_need_local_files_and_names_the_command(tmp_path):
    """`models fetch` alone (the README's set-up) must not fail on a model only a local
    checkpoint can build; asked for by name, that model fails with the reason."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"models": {"local_only": {
        "task": "detection", "file": "local_only.onnx", "sha256": "0" * 64,
        "sources": [{"kind": "export", "exporter": "retinaface",
                     "input": "retinaface/mobilenet0.25_Final.pth"}]}}}))
    env = {"OCCLUFER_MANIFEST": str(manifest)}
    done = occlufer("models", "fetch", store=tmp_path / "home", extra_env=env)
    assert "local_only: skipped" in done.stdout
    assert "occlufer models fetch local_only --from DIR" in done.stdout
    named = occlufer("models", "fetch", "local_only", store=tmp_path / "home", extra_env=env,
                     check=False)
    assert named.returncode == 1 and "local_only: FAILED" in named.stderr
    assert not (tmp_path / "home" / "models" / "local_only.onnx").exists()
