"""`occlufer doctor`: real checks of this machine, a real store, and the exit code's meaning."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from app.cli import main
from app.doctor import (_debian_package, check_display, check_pyside, check_recordings,
                        known_bad_pyside, run_checks, verdict)
from app.runtime.cuda_probe import probe_cuda
from app.runtime.store import ModelStore


def _by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_runs_here_names_why_cuda_is_unavailable_and_exits_0(retinaface_onnx, tmp_path,
                                                                     capsys):
    store_dir = retinaface_onnx.parent
    code = main(["doctor", "--store", str(store_dir), "--recordings", str(tmp_path / "rec"),
                 "--json", str(tmp_path / "doctor.json")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert code == 0 == report["exit_code"], out
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["model retinaface_mnet025"]["status"] == "ok"
    assert "verified" in checks["model resnet18_fast"]["detail"]
    probe = probe_cuda()
    if probe.loads:
        assert checks["cuda"]["status"] == "ok" and "really loads" in checks["cuda"]["detail"]
    else:  # the exact reason and fix the probe found, as a warning: the CPU still runs
        assert checks["cuda"]["status"] == "warn"
        assert probe.reason in checks["cuda"]["detail"] and checks["cuda"]["fix"] == probe.fix
        assert "can run (on the CPU)" in report["summary"]
        # asked to use CUDA, the same machine cannot run: non-zero with the reason
        assert main(["doctor", "--store", str(store_dir), "--device", "cuda",
                     "--recordings", str(tmp_path / "rec")]) == 1
        assert "cannot run" in capsys.readouterr().out
    for name in ("python", "onnxruntime", "pyside6", "display", "cameras", "recordings"):
        assert name in checks and checks[name]["detail"]


def test_a_missing_or_damaged_detector_fails_with_the_command_that_fixes_it(retinaface_onnx,
                                                                            tmp_path):
    empty = ModelStore(root=tmp_path / "empty")
    code, summary = verdict(run_checks(empty, "cpu", tmp_path))
    check = _by_name(run_checks(empty, "cpu", tmp_path))["model retinaface_mnet025"]
    assert code == 1 and "retinaface_mnet025" in summary and "required" in summary
    assert check.fix == "occlufer models fetch retinaface_mnet025"

    damaged = tmp_path / "damaged"
    shutil.copytree(retinaface_onnx.parent, damaged)
    target = damaged / retinaface_onnx.name
    target.write_bytes(target.read_bytes()[:1000])
    check = _by_name(run_checks(ModelStore(root=damaged), "cpu", tmp_path))["model retinaface_mnet025"]
    assert check.status == "fail" and "corrupt" in check.detail
    assert check.fix == "occlufer models fetch --force retinaface_mnet025"


def test_the_known_bad_pyside_and_the_installed_one():
    assert known_bad_pyside("6.12.0", (3, 11)) and not known_bad_pyside("6.12.0", (3, 12))
    assert not known_bad_pyside("6.11.3", (3, 11))
    import PySide6

    check = check_pyside()
    assert PySide6.__version__ in check.detail
    assert check.status == ("fail" if known_bad_pyside(PySide6.__version__, sys.version_info[:2])
                            else "ok")


def test_display_check_without_a_display_warns_and_names_missing_qt_libraries(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert check_display().status == "ok"
    if sys.platform != "linux":
        pytest.skip("the $DISPLAY / xcb check is Linux's")
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    check = check_display()
    assert check.status == "warn" and "no display" in check.detail
    if "cannot load" in check.detail:  # this machine's Qt xcb plugin lacks system libraries
        assert check.fix.startswith("sudo apt-get install lib")
    assert _debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert _debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"


def test_recording_folder_free_space(tmp_path):
    check = check_recordings(tmp_path / "not-yet" / "sessions")
    free = shutil.disk_usage(tmp_path).free / 2**30
    assert "created on the first recording" in check.detail
    reported = float(check.detail.rsplit(",", 1)[1].split("GiB")[0])
    assert abs(reported - free) < 0.5  # what the disk has, give or take other writers
    assert check.status == ("ok" if free >= 1.0 else "warn")
