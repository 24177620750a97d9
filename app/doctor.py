"""`occlufer doctor`: what this machine has, whether occlufer can run on it, and what to do.

Each check says what it found and, when something is wrong, the exact command that fixes it.
Only what stops occlufer from running is a failure (exit 1): a Python or onnxruntime that
cannot work, both onnxruntime packages in one environment, a PySide6 that cannot import or is
the known-bad one, a missing or damaged face detector, no intact expression model, or CUDA
when `--device cuda` asks for it. Everything else (no GPU, no display, no camera, little disk)
is a warning: occlufer runs on the CPU, headless, on files or the demo. CUDA is judged by
creating a tiny session (`app.runtime.cuda_probe`), never by the provider list, which lists
CUDA on every machine. Imports are local to each check so that one broken library is reported
by its check instead of stopping the doctor.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["ok", "warn", "fail"]
#: Below this much free space the recording folder gets a warning (about 10 minutes of
#: 640x480 video.mp4 plus its CSV).
MIN_FREE_GB = 1.0
DETECTOR = "retinaface_mnet025"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


# ---------------------------------------------------------------- python and onnxruntime
def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 10):
        return Check("python", "fail", f"Python {version} ({sys.executable})",
                     "occlufer needs Python >= 3.10")
    return Check("python", "ok", f"Python {version} ({sys.executable})")


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_onnxruntime() -> Check:
    cpu_build, gpu_build = _installed("onnxruntime"), _installed("onnxruntime-gpu")
    if cpu_build and gpu_build:
        return Check("onnxruntime", "fail",
                     f"both onnxruntime {cpu_build} and onnxruntime-gpu {gpu_build} are installed; "
                     "they overwrite each other's files",
                     "pip uninstall -y onnxruntime onnxruntime-gpu && pip install "
                     f"'onnxruntime-gpu[cuda,cudnn]=={gpu_build}'")
    try:
        import onnxruntime as ort
    except Exception as exc:  # a half-installed wheel raises more than ImportError
        return Check("onnxruntime", "fail", f"onnxruntime does not import: {exc}",
                     "pip install --force-reinstall -e .")
    build = "onnxruntime-gpu" if gpu_build else "onnxruntime"
    cuda = getattr(ort, "cuda_version", "") or ""
    return Check("onnxruntime", "ok",
                 f"{build} {ort.__version__}" + (f" (built for CUDA {cuda})" if cuda else "")
                 + f"; providers compiled in: {', '.join(ort.get_available_providers())}")


def check_cuda(required: bool) -> Check:
    """A tiny CUDA session: does it really run on CUDA, and if not why and the fix."""
    try:
        from app.runtime.cuda_probe import probe_cuda

        probe = probe_cuda()
    except Exception as exc:
        return Check("cuda", "fail" if required else "warn", f"the CUDA probe failed: {exc}")
    if probe.loads:
        gpus = ", ".join(probe.gpus) or "a GPU"
        trt = "; TensorRT loads (OCCLUFER_TENSORRT=1 uses it)" if probe.tensorrt else ""
        return Check("cuda", "ok",
                     f"CUDA really loads: a probe session ran on {gpus} (driver supports CUDA "
                     f"{probe.driver_cuda}, |diff| vs CPU {probe.max_abs_diff_vs_cpu:.1e}); "
                     f"--device auto and cuda run on the GPU{trt}")
    status: Status = "fail" if required else "warn"
    return Check("cuda", status,
                 f"CUDA is unavailable: {probe.reason}. occlufer runs on the CPU "
                 "(--device auto says so)", probe.fix)


# ---------------------------------------------------------------- Qt, display, cameras
def known_bad_pyside(version: str, python: tuple[int, int]) -> bool:
    """PySide6 6.12.0 aborts the app on Python < 3.12 (README troubleshooting)."""
    return version == "6.12.0" and python < (3, 12)


def check_pyside() -> Check:
    try:
        import PySide6
        from PySide6 import QtCore  # noqa: F401  (the module the app needs first)
    except Exception as exc:
        return Check("pyside6", "fail", f"PySide6 does not import: {exc}",
                     "pip install 'PySide6-Essentials>=6.6,!=6.12.0'")
    version = PySide6.__version__
    if known_bad_pyside(version, sys.version_info[:2]):
        return Check("pyside6", "fail",
                     f"PySide6 {version} on Python {platform.python_version()}: its Signal.emit "
                     "drops a reference to True on every call and the app aborts with "
                     "`Fatal Python error: bool_dealloc` after a minute or two",
                     "pip install 'PySide6-Essentials!=6.12.0'")
    return Check("pyside6", "ok", f"PySide6 {version} (6.12.0 on Python < 3.12 is the bad one)")


def _debian_package(soname: str) -> str:
    """libxcb-icccm.so.4 -> libxcb-icccm4, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0."""
    stem, _, number = soname.partition(".so.")
    stem = stem.removeprefix("lib")
    return f"lib{stem}{'-' if stem[-1:].isdigit() else ''}{number.split('.')[0]}"


def missing_system_libraries(library: Path) -> list[str]:
    """Shared libraries `library` needs that the loader cannot find (ldd's "not found"; the
    first one from dlopen where ldd is absent)."""
    if shutil.which("ldd"):
        out = subprocess.run(["ldd", str(library)], capture_output=True, text=True).stdout
        found = [line.split()[0] for line in out.splitlines() if "not found" in line]
        return list(dict.fromkeys(found))  # ldd repeats a library each plugin dependency needs
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return [str(exc).split(":")[0]]
    return []


def check_display() -> Check:
    """Where Qt would draw: the platform plugin it would pick and whether it can load."""
    platform_name = os.environ.get("QT_QPA_PLATFORM", "")
    if platform_name in ("offscreen", "minimal"):
        return Check("display", "ok", f"QT_QPA_PLATFORM={platform_name}: windows are drawn "
                                      "offscreen (tests, screenshots), never shown")
    if sys.platform != "linux":
        return Check("display", "ok", f"{platform.system()}: Qt uses the native window system")
    display, wayland = os.environ.get("DISPLAY"), os.environ.get("WAYLAND_DISPLAY")
    plugin_name = platform_name or ("wayland" if wayland and not display else "xcb")
    detail = []
    try:
        import PySide6

        plugin = Path(PySide6.__file__).parent / "Qt" / "plugins" / "platforms" / f"libq{plugin_name}.so"
        missing = missing_system_libraries(plugin) if plugin.is_file() else []
    except Exception:
        plugin, missing = None, []
    fix = ""
    if missing:
        packages = " ".join(sorted({_debian_package(m) for m in missing}))
        detail.append(f"Qt's {plugin_name} platform plugin cannot load: missing {', '.join(missing)}")
        fix = f"sudo apt-get install {packages}   (Debian/Ubuntu package names)"
    if not display and not wayland:
        detail.insert(0, "no display ($DISPLAY and $WAYLAND_DISPLAY unset): `occlufer app` cannot "
                         "open a window; `occlufer run` and `bench` work headless "
                         "(xvfb-run gives a virtual display)")
        return Check("display", "warn", "; ".join(detail), fix)
    where = f"DISPLAY={display}" if display else f"WAYLAND_DISPLAY={wayland}"
    if missing:
        return Check("display", "fail", f"{where}; " + "; ".join(detail), fix)
    return Check("display", "ok", f"{where}, Qt platform {plugin_name}")


def check_cameras() -> Check:
    try:
        from app.sources import list_cameras

        cameras = list_cameras()
    except Exception as exc:
        return Check("cameras", "warn", f"cameras could not be listed: {exc}")
    if not cameras:
        return Check("cameras", "warn", "the OS lists no camera; use --source demo, a video, an "
                                        "image or a folder")
    return Check("cameras", "ok", ", ".join(f"{c.index}: {c.name}" for c in cameras))


# ---------------------------------------------------------------- models and recordings
def check_models(store) -> list[Check]:
    """Every model in the manifest, sha256-verified (the store's own verify). The detector and
    at least one expression model must be intact; the others are optional stages."""
    checks = []
    expression_ok = []
    for name in store.names():
        try:
            state = store.state(name)
            task = store.entry(name).get("task", "")
        except Exception as exc:
            checks.append(Check(f"model {name}", "warn", f"cannot be checked: {exc}"))
            continue
        needs = store.needs_from_dir(name)
        fix = "" if state.status == "ok" else (
            f"occlufer models fetch --force {name}" if state.status == "corrupt"
            else f"occlufer models fetch {name} --from DIR  (DIR holding {needs})" if needs
            else f"occlufer models fetch {name}")
        if state.status == "ok":
            if task == "expression":
                expression_ok.append(name)
            checks.append(Check(f"model {name}", "ok", f"{task}, verified ({state.detail}) {state.path}"))
        else:
            required = name == DETECTOR
            checks.append(Check(f"model {name}", "fail" if required else "warn",
                                f"{task}, {state.status}: {state.detail}"
                                + (" (the face detector is required)" if required else ""), fix))
    if not expression_ok:
        checks.append(Check("expression models", "fail", "no intact expression model",
                            "occlufer models fetch  (resnet18_fast ships in assets/)"))
    return checks


def default_recording_dir() -> Path:
    """The app's recording folder as its settings hold it (else the default)."""
    try:
        from app.ui.settings import AppSettings

        return AppSettings().output_dir
    except Exception:  # no PySide6: the default the app would use
        return Path.home() / "occlufer-sessions"


def check_recordings(folder: Path) -> Check:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free / 2**30
    except OSError as exc:
        return Check("recordings", "warn", f"{folder}: free space unknown ({exc})")
    writable = os.access(existing, os.W_OK)
    detail = (f"{folder} ({'exists' if folder.exists() else 'created on the first recording'}), "
              f"{free:.1f} GiB free")
    if not writable:
        return Check("recordings", "warn", f"{detail}; {existing} is not writable",
                     "choose another recording folder in the app's recording settings")
    if free < MIN_FREE_GB:
        return Check("recordings", "warn", f"{detail}: under {MIN_FREE_GB:.0f} GiB, a recording "
                                           "with video fills it in minutes",
                     "free disk space or choose another recording folder")
    return Check("recordings", "ok", detail)


# ---------------------------------------------------------------- the whole report
def run_checks(store, device: str = "auto", recording_dir: Path | None = None) -> list[Check]:
    """Every check, in the order a user reads them."""
    checks = [check_python(), check_onnxruntime()]
    if checks[-1].status != "fail":
        checks.append(check_cuda(required=device == "cuda"))
    checks += [check_pyside(), check_display(), check_cameras()]
    try:
        checks += check_models(store)
    except Exception as exc:  # e.g. a missing manifest
        checks.append(Check("models", "fail", str(exc)))
    checks.append(check_recordings(recording_dir or default_recording_dir()))
    return checks


def verdict(checks: list[Check]) -> tuple[int, str]:
    """(exit code, one line): 0 when nothing fails."""
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        return 1, "occlufer cannot run: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)
    device = next((c for c in checks if c.name == "cuda" and c.status == "ok"), None)
    return 0, f"occlufer can run (on the {'GPU' if device else 'CPU'})"


def doctor_command(args) -> int:
    """`occlufer doctor [--device cuda] [--json OUT]`."""
    from app.runtime.store import ModelStore

    store = ModelStore(root=Path(args.store) if args.store else None)
    checks = run_checks(store, args.device,
                        Path(args.recordings).expanduser() if args.recordings else None)
    code, summary = verdict(checks)
    for check in checks:
        print(f"{check.status:<4}  {check.name:<32} {check.detail}")
        if check.fix:
            print(f"{'':<6}{'':<32} fix: {check.fix}")
    print(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"exit_code": code, "summary": summary,
                                               "checks": [asdict(c) for c in checks]}, indent=2) + "\n")
    return code


def add_doctor_args(p) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="cuda: fail unless CUDA really loads (default: a missing GPU is a warning)")
    p.add_argument("--store", help="model store directory")
    p.add_argument("--recordings", help="recording folder to check (default: the app's setting)")
    p.add_argument("--json", help="also write the checks as JSON here")
